"""Proof that the series' numbers do not depend on how fast or busy the machine is.

Trains notebook 04's recipe (the model whose test BLEU the notebook asserts) several
times, each in a fresh process, and compares the per-epoch losses and the test scores:

* ``unloaded``: the default thread count, nothing else running;
* ``loaded``: the same, while a busy loop pinned to one core competes for the CPU;
* ``1 thread``: a different thread count (the sums inside matrix products are split
  differently, so the last digits change).

::

    python -m helpers.reproducibility                  # 04's Luong recipe, all its epochs
    python -m helpers.reproducibility --epochs 2       # a quicker check

It prints a table and writes ``results/reproducibility.json``. Runs on the same machine
and thread count must agree bit for bit, loaded or not (exit code 1 otherwise).

:func:`on_committed_machine` tells a notebook whether it runs on the kind of machine
that executed its committed outputs: the condition for its trained numbers to be those to
the last digit (necessary, not sufficient: another PyTorch build also moves them).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import multiprocessing
import os
import platform
import queue as queue_module
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .files import atomic_write_bytes, unwritable
from .processes import children_ignore_ctrl_c, unwind_on_sigterm

RESULT = Path(__file__).resolve().parent.parent / "results" / "reproducibility.json"
#: Written by ``tools/execute_notebooks.py``: where and how each committed notebook ran.
NOTEBOOK_RESOURCES = RESULT.parent / "notebook-resources.csv"


def cpu_model_name() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), or ``None`` where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_description() -> str:
    """The CPU model and the cores this process may use, e.g. "AMD EPYC 7B13 (2 cores)"."""
    model = cpu_model_name() or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} cores)"


def cpu_capability() -> str:
    """The instruction set PyTorch's CPU kernels use here ("AVX512", "AVX2", …).

    One CPU name can cover several generations of a virtual CPU ("AMD EPYC" both with
    and without AVX-512), and kernels for another instruction set sum in another order.
    """
    return torch.backends.cpu.get_cpu_capability()


def on_committed_machine(notebook: str, resources: str | os.PathLike = NOTEBOOK_RESOURCES) -> bool:
    """Whether this process runs on the kind of machine that executed ``notebook``'s
    committed outputs: the same CPU model and core count, the same instruction set for
    PyTorch's kernels (:func:`cpu_capability`), and the same torch thread count, as its row
    of ``results/notebook-resources.csv``.

    Only there can a notebook train, to the last digit, the models whose numbers its
    text quotes: another CPU or thread count rounds differently, and training amplifies
    that (docs/reproducibility.md). The check is necessary, not sufficient: one CPU name
    and instruction set can still cover several generations of a virtual CPU, and another
    PyTorch build also rounds differently. A notebook asserts its quoted numbers to their quoted precision only
    where this is true, and elsewhere only what held on the other CPUs measured.
    """
    try:
        with open(resources, newline="", encoding="utf-8") as stream:
            rows = {row["notebook"]: row for row in csv.DictReader(stream)}
    except OSError:
        return False
    row = rows.get(Path(notebook).name)
    return (
        row is not None
        and row["cpu"] == cpu_description()
        and row.get("cpu_capability") == cpu_capability()
        and row["torch_threads"] == str(torch.get_num_threads())
    )


def _busy_loop(core: int) -> None:  # pragma: no cover - runs in a child process
    """Burn one core: the competing load of a busy laptop or a shared CI machine."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {core})
    while True:
        pass


def _train_once(decoder: str, epochs: int | None, threads: int | None, queue) -> None:
    """Child process: train the recipe from scratch and report its numbers."""
    unwind_on_sigterm()  # stopped by the parent (see run())
    os.environ["PAYING_ATTENTION_PROGRESS"] = "0"
    if threads is not None:
        torch.set_num_threads(threads)
    from .decoding import translate_batch
    from .metrics import corpus_scores
    from .recipes import tatoeba_recipe, train_model
    from .tasks import tatoeba_task
    from .training import TrainSettings

    task = tatoeba_task(seed=0)
    model_settings, settings = tatoeba_recipe(decoder, "cpu")
    if epochs is not None:
        settings = TrainSettings(**{**settings.to_dict(), "epochs": epochs})
    started = time.perf_counter()
    model, history = train_model(task, task.model_config(**model_settings), settings, "cpu")
    seconds = time.perf_counter() - started
    translations = translate_batch(model, task.test_sources)
    scores = corpus_scores([t.text for t in translations], task.test_references)
    queue.put(
        {
            "threads": torch.get_num_threads(),
            "train seconds": round(seconds, 1),
            "train loss": [r.train_loss for r in history.epochs],
            "valid loss": [r.valid_loss for r in history.epochs],
            "test BLEU (greedy)": scores.bleu,
            "test chrF (greedy)": scores.chrf,
        }
    )


def run(decoder: str, epochs: int | None, threads: int | None, load: bool) -> dict:
    """One training run in a fresh process, optionally beside a busy loop on core 0.

    Ctrl-C in a terminal signals every process of its group; the children ignore it, and
    the parent stops them both on its way out (a training cut short has nothing to keep).
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    hog = context.Process(target=_busy_loop, args=(0,), daemon=True) if load else None
    worker = context.Process(target=_train_once, args=(decoder, epochs, threads, queue))
    try:
        with children_ignore_ctrl_c():
            if hog is not None:
                hog.start()
            worker.start()
        result = _result_of(worker, queue)
        worker.join()
    finally:
        for process in (worker, hog):
            if process is not None and process.pid is not None and process.is_alive():
                process.terminate()
                process.join()
    return result


def _result_of(worker, queue, poll_seconds: float = 1.0) -> dict:
    """The run's result, or a ``RuntimeError`` as soon as its process has ended without
    one (it printed its own traceback): waiting on the queue alone would wait forever."""
    while True:
        try:
            return queue.get(timeout=poll_seconds)
        except queue_module.Empty:
            if not worker.is_alive():
                try:  # it may have put its result just before it ended
                    return queue.get(timeout=poll_seconds)
                except queue_module.Empty:
                    how = (
                        f"was killed by signal {-worker.exitcode} (out of memory?)"
                        if worker.exitcode is not None and worker.exitcode < 0
                        else f"ended (exit code {worker.exitcode}) without a result; its "
                        "error is printed above"
                    )
                    raise RuntimeError(f"the training run's process {how}") from None


def compare(reference: dict, other: dict) -> dict:
    """Largest absolute differences between two runs' numbers."""

    def largest(key: str) -> float:
        return max(abs(a - b) for a, b in zip(reference[key], other[key], strict=True))

    return {
        "max |train loss difference|": largest("train loss"),
        "max |valid loss difference|": largest("valid loss"),
        "|test BLEU difference|": abs(
            reference["test BLEU (greedy)"] - other["test BLEU (greedy)"]
        ),
        "|test chrF difference|": abs(
            reference["test chrF (greedy)"] - other["test chrF (greedy)"]
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.reproducibility", description=__doc__)
    parser.add_argument("--decoder", default="luong", choices=["luong", "bahdanau"])
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--output", type=Path, default=RESULT)
    arguments = parser.parse_args(argv)
    if arguments.epochs is not None and arguments.epochs < 1:
        parser.error("--epochs must be at least 1")
    problem = unwritable(arguments.output)  # before three trainings, not after them
    if problem is not None:
        parser.error(f"--output {arguments.output}: {problem}")
    runs = {}
    for name, threads, load in [
        ("unloaded", None, False),
        ("loaded (busy loop on core 0)", None, True),
        ("1 thread", 1, False),
    ]:
        print(f"training: {name} ...", flush=True)
        try:
            runs[name] = run(arguments.decoder, arguments.epochs, threads, load)
        except RuntimeError as error:
            print(f"error: {name}: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"interrupted during the {name} run: no report written", file=sys.stderr)
            return 130
        print(
            f"  {runs[name]['threads']} thread(s), {runs[name]['train seconds']:.0f} s, "
            f"test BLEU {runs[name]['test BLEU (greedy)']:.2f}",
            flush=True,
        )
    reference = runs["unloaded"]
    report = {
        "decoder": arguments.decoder,
        "epochs": len(reference["valid loss"]),
        "cpu": cpu_description(),
        "cpu capability": cpu_capability(),
        "cpu cores": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "runs": runs,
        "loaded vs unloaded": compare(reference, runs["loaded (busy loop on core 0)"]),
        "1 thread vs unloaded": compare(reference, runs["1 thread"]),
    }
    atomic_write_bytes(arguments.output, json.dumps(report, indent=1).encode())
    for key in ("loaded vs unloaded", "1 thread vs unloaded"):
        print(key, {k: f"{v:.3g}" for k, v in report[key].items()})
    identical = all(v == 0 for v in report["loaded vs unloaded"].values())
    print(
        "loaded and unloaded runs are bit-identical ✓"
        if identical
        else "loaded and unloaded runs DIFFER ✗"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
