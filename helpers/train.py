"""Train a translator from the command line — on one process, or many with torchrun.

Single process (CPU or the GPU when there is one)::

    python -m helpers.train --task tatoeba --decoder luong --output checkpoints/luong.pt

Several processes on one machine, or several machines, with PyTorch
DistributedDataParallel (gloo on CPUs, nccl on GPUs)::

    torchrun --standalone --nproc_per_node=4 -m helpers.train --task tatoeba --output checkpoints/luong.pt
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m helpers.train --task tatoeba --batch-size 1024 --output checkpoints/luong.pt

Each global batch is split across the processes, gradients are averaged, and rank 0 alone
validates, scores BLEU and writes the checkpoint (the same format the notebooks load).

Nothing is lost. Every flag, the output paths and the data are checked before the first
batch. The checkpoint is written (atomically) at the end of *every* epoch, so Ctrl-C or a
crash loses at most one epoch; ``--resume`` continues from it, with the same result as an
uninterrupted run (every process gets its own random state back, so this holds under
torchrun too, with the same number of processes). The final model is saved before it is
scored, so a test sentence the model cannot take (longer than ``max_source_length``)
never costs the trained model.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from .attention import ATTENTION_NAMES
from .batching import BucketBatchSampler, collate_batch, make_loader
from .checkpoints import CheckpointMismatchError, load_checkpoint, save_checkpoint
from .decoding import translate_batch
from .files import atomic_write_bytes, unwritable
from .metrics import alignment_accuracy, corpus_scores
from .models import Seq2Seq
from .recipes import dates_recipe, tatoeba_recipe
from .tasks import dates_task, tatoeba_task
from .training import TrainingHistory, TrainSettings, make_adam, select_device, set_seed, train


class ShardedBatchSampler(Sampler[list[int]]):
    """Gives each of ``world_size`` processes its share of every global batch.

    The wrapped sampler yields *global* batches (identical on every rank, thanks to the
    shared seed); rank ``r`` keeps ``batch[r::world_size]``. One distributed step therefore
    sees exactly the examples one single-process step would. Global batches smaller than
    ``world_size`` are skipped so that every rank runs the same number of steps (DDP
    would hang otherwise).
    """

    def __init__(self, batches: BucketBatchSampler, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) >= self.world_size:
                yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        # The steps each rank takes: the skipped batches do not count (the progress bar's
        # total and a resumed warm-up's step count read this).
        return sum(len(batch) >= self.world_size for batch in self.batches.epoch_batches())


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", choices=["tatoeba", "dates"], default="tatoeba")
    parser.add_argument(
        "--data",
        help="sentence-pair file (default: $PAYING_ATTENTION_DATA, the cache, or a download)",
    )
    parser.add_argument("--decoder", choices=["bahdanau", "luong", "plain"], default="luong")
    parser.add_argument(
        "--attention", choices=ATTENTION_NAMES, help="scoring function (default: the decoder's own)"
    )
    parser.add_argument("--embedding-size", type=int)
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--time-budget", type=float, help="seconds of training at most")
    parser.add_argument("--batch-size", type=int, help="global batch size, split across processes")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: the GPU when there is one)")
    parser.add_argument(
        "--output", required=True, help="checkpoint path (written by rank 0, atomically)"
    )
    parser.add_argument("--summary", help="also write the final figures as JSON here")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose end-of-epoch checkpoint is at --output",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    arguments = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "embedding_size", "hidden_size"):
        value = getattr(arguments, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("learning_rate", "time_budget"):
        value = getattr(arguments, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            parser.error(f"--{name.replace('_', '-')} must be positive and finite, got {value}")
    if not 0 <= arguments.seed < 2**32:  # NumPy's seeding refuses any other, after loading
        parser.error(f"--seed must lie in [0, 2**32), got {arguments.seed}")
    if arguments.dropout is not None and not 0 <= arguments.dropout < 1:
        parser.error(f"--dropout must lie in [0, 1), got {arguments.dropout}")
    for name in ("output", "summary"):
        path = getattr(arguments, name)
        if path is not None:
            problem = unwritable(Path(path))
            if problem:
                parser.error(f"--{name} {path}: {problem}")
    # Each file has one job: the checkpoint, the summary and the data must not overwrite
    # one another (--summary onto --output replaced the trained model with its JSON).
    data = arguments.data or os.environ.get("PAYING_ATTENTION_DATA")
    files = [("--output", arguments.output), ("--summary", arguments.summary), ("--data", data)]
    for index, (name, path) in enumerate(files):
        for other_name, other in files[index + 1 :]:
            if path and other and _same_file(Path(path), Path(other)):
                parser.error(
                    f"{name} and {other_name} are the same file, or differ only in case "
                    f"({path}, {other})"
                )
    output = Path(arguments.output)
    if not arguments.resume and output.is_file():
        if not _is_torch_checkpoint(output):
            parser.error(
                f"--output {output} exists and is not a checkpoint: it would be overwritten. "
                "Give another path, or move that file"
            )
        done = _epochs_of_interrupted_run(output)
        if done is not None:  # a fresh run would overwrite it at its first epoch's end
            parser.error(
                f"--output {output} holds an interrupted run ({done} epoch(s) done): add "
                "--resume to continue it, or give another path (or move that file) to start "
                "afresh"
            )
    summary = Path(arguments.summary) if arguments.summary else None
    if summary is not None and summary.is_file() and not _is_summary(summary):
        parser.error(
            f"--summary {summary} exists and is not a summary this command wrote: it would "
            "be overwritten. Give another path, or move that file"
        )
    return arguments


def _epochs_of_interrupted_run(path: Path) -> int | None:
    """How many epochs the interrupted run whose end-of-epoch checkpoint is at ``path``
    has done, or ``None`` if ``path`` holds no such run (a finished model, say).

    Read with ``mmap``: the weights stay on disk, only the small dictionary around them is
    read."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable or foreign: no run of ours to lose (load says more)
        return None
    extra = payload.get("extra") if isinstance(payload, dict) else None
    if not isinstance(extra, dict) or "resume" not in extra:
        return None
    history = extra.get("history")
    epochs = history.get("epochs") if isinstance(history, dict) else None
    return len(epochs) if isinstance(epochs, list) else 0


def _is_summary(path: Path) -> bool:
    """Whether ``path`` holds a summary that ``--summary`` wrote (a JSON object that
    names its task), which a new run may replace."""
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(written, dict) and "task" in written


def _same_file(path: Path, other: Path) -> bool:
    """The same file, or names that would be on a case-insensitive file system (macOS,
    Windows), where ``M.pt`` and ``m.pt`` are one file."""
    if path.exists() and other.exists():
        return os.path.samefile(path, other)
    return str(path.resolve()).casefold() == str(other.resolve()).casefold()


def _is_torch_checkpoint(path: Path) -> bool:
    """Whether ``path`` looks like a file ``torch.save`` wrote (a zip with a pickle
    inside): an earlier run's checkpoint may be replaced, anything else may not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _settings_for(arguments: argparse.Namespace, device: torch.device):
    if arguments.task == "tatoeba":
        model, settings = tatoeba_recipe(arguments.decoder, device)
    else:
        model, settings = dates_recipe(arguments.decoder)
    for name in ("embedding_size", "hidden_size", "dropout", "attention"):
        if getattr(arguments, name) is not None:
            model[name] = getattr(arguments, name)
    overrides = {
        "epochs": arguments.epochs,
        "time_budget": arguments.time_budget,
        "batch_size": arguments.batch_size,
        "learning_rate": arguments.learning_rate,
    }
    values = settings.to_dict() | {
        key: value for key, value in overrides.items() if value is not None
    }
    values["seed"] = arguments.seed
    return model, TrainSettings(**values)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world_size > 1
    if arguments.batch_size is not None and arguments.batch_size < world_size:
        # Each process takes its share of every global batch (ShardedBatchSampler).
        return _fail(
            f"error: --batch-size {arguments.batch_size} is smaller than the {world_size} "
            "processes: each needs at least one sentence of every batch",
            distributed=False,
        )
    try:
        device = select_device(arguments.device)
    except ValueError as error:
        return _fail(f"error: {error}", distributed=False)
    rank = 0
    if distributed:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()
        if device.type == "cpu":
            # Each process gets its share of the cores instead of all of them fighting.
            torch.set_num_threads(
                max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
            )
    is_main = rank == 0

    try:
        task = tatoeba_task(arguments.data) if arguments.task == "tatoeba" else dates_task()
        model_settings, settings = _settings_for(arguments, device)
        config = task.model_config(**model_settings)
    except (OSError, ValueError) as error:  # missing or malformed data, impossible sizes
        return _fail(f"error: {error}", distributed)
    sizes = task.summary()
    if len(task.valid) == 0 or not task.test_sources:
        return _fail(
            f"error: too few sentences to train and score: {sizes}. The validation and "
            "test splits need at least one sentence each (about 20 distinct English "
            "sentences or more)",
            distributed,
        )
    set_seed(settings.seed)  # identical initial weights on every rank
    model = Seq2Seq(config).attach_vocabularies(task.source_vocab, task.target_vocab).to(device)
    global_batches = BucketBatchSampler(
        task.train.length_keys, settings.batch_size, shuffle=True, seed=settings.seed
    )
    optimizer = make_adam(model, settings.learning_rate, settings.adam_beta2)
    output = Path(arguments.output)
    previous: TrainingHistory | None = None
    saved_random_states: list[dict[str, torch.Tensor]] = []
    if arguments.resume:
        try:
            previous, saved_random_states = _restore(
                output, model, optimizer, global_batches, config, settings, device
            )
        except (FileNotFoundError, CheckpointMismatchError) as error:
            return _fail(f"error: cannot resume: {error}", distributed)
        if len(previous.epochs) > settings.epochs:
            # It would save the model as finished after more epochs than asked for, with
            # its resume state gone. (As many as were done: the run is finished and scored,
            # which is how a run whose final save failed is completed.)
            return _fail(
                f"error: cannot resume: {output} has {len(previous.epochs)} epochs done "
                f"already, more than --epochs {settings.epochs} asks for. Give --epochs "
                f"{len(previous.epochs)} or more",
                distributed,
            )
    if len(saved_random_states) == world_size:
        # Every rank continues its own random stream (its dropout masks) where it was.
        _set_random_state(saved_random_states[rank], device)
    elif rank == 0 and saved_random_states:  # a checkpoint that kept rank 0's state only
        _set_random_state(saved_random_states[0], device)
    else:
        # The same initial weights everywhere (above), but each rank its own dropout masks.
        # (A run resumed with another number of processes shards its batches differently
        # anyway.)
        seed_process_stream(settings.seed, rank)
    train_loader = DataLoader(
        task.train,
        batch_sampler=ShardedBatchSampler(global_batches, rank, world_size),
        collate_fn=collate_batch,
        pin_memory=device.type == "cuda",
    )
    valid_loader = (
        make_loader(task.valid, 4 * settings.batch_size, shuffle=False) if is_main else None
    )
    trained = DistributedDataParallel(model, broadcast_buffers=False) if distributed else model
    if is_main:
        print(f"{arguments.task}: {sizes} | {world_size} process(es) on {device}", flush=True)
        if previous is not None:
            print(f"resuming after epoch {len(previous.epochs)} of {settings.epochs}", flush=True)

    history_so_far = TrainingHistory(list(previous.epochs) if previous else [])

    def save_epoch(record) -> None:
        """The end-of-epoch checkpoint: everything --resume needs to continue exactly."""
        history_so_far.epochs.append(record)
        random_states = _random_state(device)  # every rank's, gathered on every rank
        if distributed:
            gathered: list = [None] * world_size
            dist.all_gather_object(gathered, random_states)
            random_states = gathered
        else:
            random_states = [random_states]
        if is_main:
            save_checkpoint(
                model,
                output,
                extra={
                    "history": history_so_far.to_dict(),
                    "settings": settings.to_dict(),
                    "resume": {
                        "optimizer": optimizer.state_dict(),
                        "random_state_by_rank": random_states,
                        "sampler_epoch": global_batches.epoch,
                    },
                },
            )

    start = time.perf_counter()
    try:
        history = train(
            trained,
            train_loader,
            valid_loader,
            **settings.loop_arguments(),
            device=device,
            optimizer=optimizer,
            progress=is_main and not arguments.no_progress,
            on_epoch_end=save_epoch,
            history=previous,
        )
    except (FloatingPointError, ValueError) as error:  # diverged, or NaN weights at a save
        done = len(history_so_far.epochs)
        where = f"the checkpoint of epoch {done} is at {output}" if done else "no epoch was saved"
        return _fail(f"error: training stopped: {error}\n{where}", distributed)
    except KeyboardInterrupt:
        done = len(history_so_far.epochs)
        if is_main:
            where = f"the checkpoint of epoch {done} is at {output}" if done else "no epoch ended"
            print(
                f"\ninterrupted: {where}; continue with the same command and --resume"
                if done
                else f"\ninterrupted before the first epoch ended: {where}",
                file=sys.stderr,
            )
        return 130
    seconds = time.perf_counter() - start
    status = 0
    if is_main:
        # Saved before scoring: the trained model is safe whatever the test data holds.
        save_checkpoint(
            model, output, extra={"history": history.to_dict(), "settings": settings.to_dict()}
        )
        summary = {
            "task": arguments.task,
            "processes": world_size,
            "device": str(device),
            "epochs": len(history.epochs),
            "stopped_by_time_budget": history.stopped_by_budget,
            "train_seconds": seconds,
            "final_valid_loss": history.epochs[-1].valid_loss,
        }
        try:
            model.eval()
            translations = translate_batch(model, task.test_sources, beam_size=1)
            scores = corpus_scores([t.text for t in translations], task.test_references)
            summary |= {
                "test_bleu": scores.bleu,
                "test_chrf": scores.chrf,
                "bleu_signature": scores.bleu_signature,
            }
            if task.test_gold_spans is not None and model.config.decoder != "plain":
                summary["gold_alignment"] = alignment_accuracy(  # (plain: nothing attends)
                    [t.attention for t in translations], task.test_gold_spans
                )
        except ValueError as error:
            summary["test_error"] = str(error)
            print(
                f"error: the model is saved at {output}, but scoring failed: {error}",
                file=sys.stderr,
            )
            status = 1
        save_checkpoint(
            model,
            output,
            extra={
                "history": history.to_dict(),
                "settings": settings.to_dict(),
                "summary": summary,
            },
        )
        if arguments.summary:
            atomic_write_bytes(Path(arguments.summary), json.dumps(summary, indent=2).encode())
        if history.stopped_by_budget:
            print(f"stopped by the --time-budget of {settings.time_budget:g} s", flush=True)
        print(json.dumps(summary, indent=2), flush=True)
    if distributed:
        del trained  # the DDP wrapper: end_distributed frees it before the group goes
        end_distributed()
    return status


def seed_process_stream(seed: int, rank: int) -> None:
    """Give process ``rank`` its own random stream (dropout masks, sampling) from ``seed``.

    Called after the model is built, so every process has the same initial weights.
    Identical dropout masks on every shard would waste the extra processes'
    regularisation, so each rank ``r > 0`` reseeds with ``seed + 1_000_003 * r``
    (distinct for every rank). Rank 0 keeps the single-process stream untouched: one
    process under torchrun trains exactly what ``python -m helpers.train`` does.
    """
    if rank > 0:
        torch.manual_seed(seed + 1_000_003 * rank)


def end_distributed() -> None:
    """Tear the process group down on every rank once all of them are done with it.

    The barrier keeps a rank that finished early (or skipped rank 0's saving and scoring)
    from closing its connections while a peer still talks to it. ``gc.collect()`` then
    frees the caller's dropped DistributedDataParallel wrapper now: the first wrapper of a
    process sits in a reference cycle (in torch 2.13, through a frame that torch's lazy
    attribute lookup keeps), so only the cycle collector frees it, and with it the gloo
    group its reducer holds. Left to chance, that can happen during interpreter shutdown,
    while gloo's threads are still running, and the process aborts ("terminate called
    without an active exception"). Callers drop their references to the wrapper first.
    """
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def _fail(message: str, distributed: bool) -> int:
    print(message, file=sys.stderr)
    if distributed:
        dist.destroy_process_group()
    return 2


def _restore(
    output: Path,
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    sampler: BucketBatchSampler,
    config,
    settings: TrainSettings,
    device: torch.device,
) -> tuple[TrainingHistory, list[dict[str, torch.Tensor]]]:
    """Load the end-of-epoch checkpoint at ``output`` into a fresh model and optimizer.

    Returns the history so far and each process's random state when it was saved (one
    per rank; only rank 0's for checkpoints written before every rank's was kept)."""
    saved, extra = load_checkpoint(
        output,
        device,
        expected_config=config,
        source_vocab=model.source_vocab,
        target_vocab=model.target_vocab,
    )
    if "resume" not in extra:
        raise CheckpointMismatchError(f"{output} is a finished model, not an interrupted run")
    stored = extra["settings"]
    changed = {
        key: (stored.get(key), value)
        for key, value in settings.to_dict().items()
        if key != "epochs" and stored.get(key) != value
    }
    if changed:
        raise CheckpointMismatchError(f"{output} was trained with other settings: {changed}")
    model.load_state_dict(saved.state_dict())
    optimizer.load_state_dict(extra["resume"]["optimizer"])
    sampler.set_epoch(extra["resume"]["sampler_epoch"])
    resume = extra["resume"]
    # Checkpoints written before every rank's state was kept hold rank 0's CPU state only.
    random_states = resume.get("random_state_by_rank") or [{"cpu": resume["torch_rng"]}]
    return TrainingHistory.from_dict(extra["history"]), random_states


def _random_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random generators: the CPU's, and the GPU's where dropout runs."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_random_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


if __name__ == "__main__":
    sys.exit(main())
