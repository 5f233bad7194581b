"""Execute notebooks for committing: the one way the series' committed outputs are made.

    python tools/execute_notebooks.py notebooks/05_visualization.ipynb [more.ipynb ...]

Each notebook runs top to bottom in a fresh kernel (nbclient), from its own folder, with
``PAYING_ATTENTION_PROGRESS=0`` (no progress bars: minutes of widget updates in a saved
file) and *without* ``MPLBACKEND`` (an inherited Agg would stop the inline backend, and the
figures would never be saved as PNG). A cell that fails stops the run with the error and
leaves the notebook file as it was; so does Ctrl-C, which interrupts the running cell as
JupyterLab's stop button does (press it twice for a cell that ignores the interrupt), and
so does SIGTERM. Either ends with one line and exit status 128 + the signal's number.

The executed notebook is written back atomically (temporary file, then ``os.replace``) with
the widget clutter stripped: notebook-level widget state (``metadata.widgets``, a
snapshot of every widget's state, images included, that only a live kernel could use), the
``text/plain`` repr of widget views (``VBox(children=(...))`` on GitHub) and their stale
model ids (so that JupyterLab hides an un-run widget instead of reporting it missing).

For each notebook it records the wall time and the kernel's peak resident memory (VmHWM
of the kernel process, read just before the kernel shuts down) in
``results/notebook-resources.csv``: one row per notebook, replaced when it is run again.
Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import io
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from helpers.files import unwritable
from helpers.reproducibility import NOTEBOOK_RESOURCES, cpu_capability, cpu_description

ROOT = Path(__file__).resolve().parents[1]
RESOURCES_CSV = NOTEBOOK_RESOURCES  # the file on_committed_machine reads
RESOURCE_COLUMNS = [
    "notebook", "seconds", "peak_memory_mib", "cpu", "cpu_capability", "torch_threads", "date"
]  # fmt: skip
# A guard against a hung cell, like the Makefile's nbval limit: not a speed target.
CELL_TIMEOUT = 3600
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# Asked of the kernel after the last cell, without importing torch if the notebook did not.
TORCH_THREADS_EXPRESSION = (
    "__import__('sys').modules['torch'].get_num_threads() "
    "if 'torch' in __import__('sys').modules else ''"
)


class NotebookChangedError(RuntimeError):
    """The notebook file was edited while it executed: writing would lose the edit."""


# Ctrl-C, and what a job scheduler or `kill` sends.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """The first stop signal received while a notebook ran, if any."""

    signal_number: int | None = None


class RunStopped(Exception):
    """Ctrl-C or SIGTERM stopped the run; the kernel is shut down, the file unchanged."""

    def __init__(self, signal_number: int) -> None:
        self.signal_number = signal_number
        self.what = "interrupted" if signal_number == signal.SIGINT else "terminated"
        super().__init__(f"{self.what} by signal {signal_number}")


@dataclass
class RunRecord:
    """What one execution cost."""

    notebook: str
    seconds: float
    peak_memory_mib: float | None
    cpu: str
    cpu_capability: str
    torch_threads: str
    date: str

    def row(self) -> dict[str, str]:
        return {
            "notebook": self.notebook,
            "seconds": f"{self.seconds:.1f}",
            "peak_memory_mib": ""
            if self.peak_memory_mib is None
            else f"{self.peak_memory_mib:.0f}",
            "cpu": self.cpu,
            "cpu_capability": self.cpu_capability,
            "torch_threads": self.torch_threads,
            "date": self.date,
        }


# --- the kernel's environment and resources --------------------------------------------


def kernel_environment() -> dict[str, str]:
    """Ours, minus MPLBACKEND, with progress bars off."""
    environment = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    environment["PAYING_ATTENTION_PROGRESS"] = "0"
    return environment


def peak_resident_mib(pid: int) -> float | None:
    """The process's peak resident set size (VmHWM) in MiB, or None when unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            kibibytes = int(line.split()[1])  # "VmHWM:   123456 kB"
            return kibibytes / 1024
    return None


# --- the notebook file -------------------------------------------------------------------


def strip_widget_clutter(notebook: nbformat.NotebookNode) -> None:
    """Drop what only a live kernel could use: the saved widget state, the text repr of
    widget views and their model ids. Figures and text outputs stay."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                data.pop("text/plain", None)
                # A random id that changes on every run and points at no saved state: with
                # an empty one, JupyterLab hides the un-run widget instead of showing
                # "Error displaying widget: model not found".
                data[WIDGET_VIEW] = {**data[WIDGET_VIEW], "model_id": ""}


def write_atomically(path: Path, text: str) -> None:
    """Write beside ``path``, then rename over it: never half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def update_resources(csv_path: Path, records: list[RunRecord]) -> None:
    """Replace the rows of the notebooks just run, keep the others, sorted by notebook."""
    rows: dict[str, dict[str, str]] = {}
    if csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as stream:
            for row in csv.DictReader(stream):
                rows[row["notebook"]] = {column: row.get(column, "") for column in RESOURCE_COLUMNS}
    for record in records:
        rows[record.notebook] = record.row()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESOURCE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for name in sorted(rows):
        writer.writerow(rows[name])
    write_atomically(csv_path, buffer.getvalue())


# --- executing ---------------------------------------------------------------------------


async def _execute(
    client: NotebookClient, environment: dict[str, str], stop: StopRequest
) -> tuple[float | None, str]:
    """Start a kernel and run every cell (as ``NotebookClient.async_execute`` does), then,
    with the kernel still alive, ask it for torch's thread count and read its peak memory;
    shut the kernel down.

    Ctrl-C while a cell runs interrupts that cell, as JupyterLab's stop button does: it
    then fails like any cell, and the run ends. Ctrl-C while the kernel starts, a second
    Ctrl-C (for a cell that ignores the interrupt) or SIGTERM stops the run at once. The
    signal is recorded in ``stop``; the kernel is shut down either way.

    Returns ``(peak resident MiB, torch threads)``.
    """
    # Not nbclient's async_setup_kernel: its own SIGINT handler shuts the kernel down while
    # a cell still runs in it (the cell fails with "Kernel died", and the kernel and that
    # shutdown each print a traceback), and until the kernel is ready no handler of ours
    # could replace it.
    client.reset_execution_trackers()
    loop = asyncio.get_running_loop()
    running = asyncio.current_task()
    assert running is not None
    kernel_ready = stopped_at_once = False
    pending: list[asyncio.Future] = []  # held, so the interrupt is not collected

    def on_signal(signal_number: int) -> None:
        nonlocal stopped_at_once
        first = stop.signal_number is None
        if first:
            stop.signal_number = signal_number
        if kernel_ready and first and signal_number == signal.SIGINT:
            assert client.km is not None
            pending.append(asyncio.ensure_future(_maybe_await(client.km.interrupt_kernel())))
        else:
            stopped_at_once = True
            running.cancel()

    for signal_number in STOP_SIGNALS:
        loop.add_signal_handler(signal_number, on_signal, signal_number)
    client.km = client.create_kernel_manager()
    try:
        await client.async_start_new_kernel(env=environment)
        await client.async_start_new_kernel_client()
        assert client.kc is not None
        kernel_ready = True
        info = await client.async_wait_for_reply(await _maybe_await(client.kc.kernel_info()))
        if info is not None and "language_info" in info["content"]:
            client.nb.metadata["language_info"] = info["content"]["language_info"]
        for index, cell in enumerate(client.nb.cells):
            if stop.signal_number is not None:  # pressed between two cells
                raise asyncio.CancelledError
            await client.async_execute_cell(
                cell, index, execution_count=client.code_cells_executed + 1
            )
        # store_history=False: no execution count used, nothing in the notebook.
        message_id = await _maybe_await(
            client.kc.execute(
                "",
                silent=True,
                store_history=False,
                user_expressions={"threads": TORCH_THREADS_EXPRESSION},
            )
        )
        reply = await client.async_wait_for_reply(message_id)
        if stop.signal_number is not None:  # pressed after the last cell began
            raise asyncio.CancelledError
        threads = ""
        if reply is not None:
            result = reply["content"].get("user_expressions", {}).get("threads", {})
            threads = result.get("data", {}).get("text/plain", "").strip("'\"")
        # The kernel is the process the provisioner started (python -m ipykernel_launcher).
        process = getattr(client.km.provisioner, "process", None)
        peak = peak_resident_mib(process.pid) if process is not None else None
    finally:
        for signal_number in STOP_SIGNALS:
            loop.remove_signal_handler(signal_number)
        await _shut_down_kernel(client, gently=kernel_ready and not stopped_at_once)
    return peak, threads


async def _shut_down_kernel(client: NotebookClient, gently: bool) -> None:
    """Shut the kernel down and close the client's channels, as nbclient's clean-up does.

    ``gently=False`` kills it instead, for a run stopped at once: ``shutdown_kernel``
    first interrupts the kernel, which in the middle of its start-up prints a
    KeyboardInterrupt traceback, and then asks it to exit, which in the middle of a cell
    makes it print a ZMQError traceback when the cell's reply finds its socket closed.
    """
    manager = client.km
    if manager is None:  # nbclient already cleaned up after a failed start
        return
    try:
        if gently:
            if await _maybe_await(manager.is_alive()):
                await _maybe_await(manager.shutdown_kernel())
        elif manager.has_kernel:
            await manager.provisioner.kill()
            await manager.provisioner.wait()
    finally:
        await _maybe_await(manager.cleanup_resources())
        if client.kc is not None:
            await _maybe_await(client.kc.stop_channels())
            client.kc = None
        client.km = None


async def _maybe_await(value):
    return await value if asyncio.iscoroutine(value) or asyncio.isfuture(value) else value


def execute_notebook(path: Path, timeout: int = CELL_TIMEOUT) -> RunRecord:
    """Execute ``path`` in a fresh kernel and write it back; return what it cost.

    Raises ``CellExecutionError`` when a cell fails, ``NotebookChangedError`` when the
    file was edited while it ran, and ``RunStopped`` on Ctrl-C or SIGTERM (after shutting
    the kernel down); in each case the file is left as it is.
    """
    path = path.resolve()
    original = path.read_bytes()
    notebook = nbformat.reads(original.decode("utf-8"), as_version=4)
    kernel_name = notebook.metadata.get("kernelspec", {}).get("name", "python3")
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent)}},  # the kernel's cwd
        allow_errors=False,
    )
    started = time.monotonic()
    stop = StopRequest()
    try:
        peak, threads = asyncio.run(_execute(client, kernel_environment(), stop))
    except (asyncio.CancelledError, Exception):
        # After Ctrl-C the run ends with the cell's KeyboardInterrupt (a CellExecutionError)
        # or a cancellation; the kernel is shut down.
        if stop.signal_number is not None:
            raise RunStopped(stop.signal_number) from None
        raise
    seconds = time.monotonic() - started
    strip_widget_clutter(notebook)
    nbformat.validate(notebook)
    if path.read_bytes() != original:  # someone saved it meanwhile: keep their version
        raise NotebookChangedError(
            f"{path} changed on disk while it ran; not overwritten: run it again"
        )
    text = nbformat.writes(notebook)
    write_atomically(path, text if text.endswith("\n") else text + "\n")
    return RunRecord(
        notebook=path.name,
        seconds=seconds,
        peak_memory_mib=peak,
        cpu=cpu_description(),
        cpu_capability=cpu_capability(),  # the kernel's torch is this process's
        torch_threads=threads,
        date=dt.date.today().isoformat(),
    )


def not_a_notebook(path: Path) -> str | None:
    """Why ``path`` cannot be read as a notebook, or ``None``."""
    try:
        notebook = nbformat.reads(path.read_bytes().decode("utf-8"), as_version=4)
        nbformat.validate(notebook)
    except UnicodeDecodeError as error:
        return f"not UTF-8 ({error.reason} at byte {error.start})"
    except Exception as error:  # nbformat's NotJSONError, ValidationError, a missing key, …
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{type(error).__name__}: {first_line}"[:300]
    return None


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="the .ipynb files to execute")
    parser.add_argument(
        "--resources",
        type=Path,
        default=RESOURCES_CSV,
        help=f"CSV of time and memory per notebook (default: {RESOURCES_CSV.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--timeout", type=int, default=CELL_TIMEOUT, help="seconds allowed per cell"
    )
    options = parser.parse_args(arguments)
    if options.timeout < 1:  # nbclient reads 0 or less as "no limit": a hung cell hangs it
        parser.error(f"--timeout must be at least 1 second, got {options.timeout}")
    missing = [str(path) for path in options.notebooks if not path.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    # Each once, and each read now: a bad file found after an hour-long notebook has run
    # (and been rewritten) stops the run too late.
    first_spelling: dict[Path, Path] = {}
    for path in options.notebooks:
        first_spelling.setdefault(path.resolve(), path)
    options.notebooks = list(first_spelling.values())
    for path in options.notebooks:
        problem = not_a_notebook(path)
        if problem is not None:
            parser.error(f"{path} is not a notebook: {problem}")
    problem = unwritable(options.resources)
    if problem is not None:
        parser.error(f"--resources {options.resources}: {problem}")
    records: list[RunRecord] = []
    try:
        for path in options.notebooks:
            print(f"executing {path} ...", flush=True)
            try:
                record = execute_notebook(path, options.timeout)
            except CellExecutionError as error:
                print(
                    f"FAILED: {path}: a cell raised; the file is unchanged.\n{error}",
                    file=sys.stderr,
                )
                return 1
            except NotebookChangedError as error:
                print(f"FAILED: {error}", file=sys.stderr)
                return 1
            except RunStopped as stopped:
                print(f"{stopped.what}: {path} is unchanged", file=sys.stderr)
                return 128 + stopped.signal_number
            except KeyboardInterrupt:  # a third Ctrl-C, while the kernel shuts down
                print(f"interrupted: {path} is unchanged", file=sys.stderr)
                return 128 + signal.SIGINT
            records.append(record)
            memory = "?" if record.peak_memory_mib is None else f"{record.peak_memory_mib:.0f} MiB"
            print(
                f"  {record.seconds:.0f} s, kernel peak {memory}, torch threads "
                f"{record.torch_threads or '-'}",
                flush=True,
            )
    finally:  # what did run is recorded, even when a later notebook fails
        if records:
            update_resources(options.resources, records)
            print(f"recorded in {options.resources}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
