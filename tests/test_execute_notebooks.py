"""tools/execute_notebooks.py on a small temporary notebook (never on the series' own: they
take minutes)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location(
        "execute_notebooks", ROOT / "tools" / "execute_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def small_notebook(path: Path, *sources: str, kernel_name: str = "python3") -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": kernel_name,
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    notebook.cells = [nbformat.v4.new_markdown_cell("# a test notebook")] + [
        nbformat.v4.new_code_cell(source) for source in sources
    ]
    nbformat.write(notebook, path)
    return path


def test_executes_strips_widget_clutter_and_records_memory(tool, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # must not reach the kernel
    notebook = small_notebook(
        tmp_path / "small.ipynb",
        "import os\nprint(os.getcwd())\nprint(os.environ.get('MPLBACKEND', 'no backend set'))\n"
        "print(os.environ['PAYING_ATTENTION_PROGRESS'])",
        # a widget view: its text/plain repr and the notebook's widget state must go
        "import ipywidgets\nipywidgets.IntSlider(value=3, description='beam')",
        # with Agg leaking in, this figure would never be saved
        "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()",
        # ~40 MiB that the kernel must hold at once: the peak memory must see it
        "block = bytearray(40 * 1024 * 1024)\nblock[::4096] = b'x' * len(block[::4096])\n6 * 7",
    )
    resources = tmp_path / "results" / "notebook-resources.csv"
    resources.parent.mkdir()
    resources.write_text(
        "notebook,seconds,peak_memory_mib,cpu,cpu_capability,torch_threads,date\n"
        "other.ipynb,12.0,345,some cpu,AVX512,2,2026-01-01\n"
        "small.ipynb,999.0,1,stale,stale,1,2000-01-01\n"
    )

    assert tool.main([str(notebook), "--resources", str(resources)]) == 0

    executed = json.loads(notebook.read_text())
    assert "widgets" not in executed["metadata"]
    assert executed["metadata"]["language_info"]["name"] == "python"
    code = [cell for cell in executed["cells"] if cell["cell_type"] == "code"]
    assert [cell["execution_count"] for cell in code] == [1, 2, 3, 4]
    printed = "".join(code[0]["outputs"][0]["text"]).splitlines()
    # the notebook's folder as cwd; ipykernel's own inline backend, not our Agg; no bars
    assert printed == [str(tmp_path), "module://matplotlib_inline.backend_inline", "0"]
    (view,) = code[1]["outputs"]
    assert set(view["data"]) == {"application/vnd.jupyter.widget-view+json"}
    assert view["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] == ""
    assert [output["data"]["image/png"][:4] for output in code[2]["outputs"]] == ["iVBO"]
    assert "".join(code[3]["outputs"][0]["data"]["text/plain"]) == "42"
    assert notebook.read_text().endswith("}\n")
    assert not list(tmp_path.glob(".small.ipynb.*"))  # no temporary file left behind

    with open(resources, newline="") as stream:
        rows = {row["notebook"]: row for row in csv.DictReader(stream)}
    assert list(rows) == ["other.ipynb", "small.ipynb"]
    assert rows["other.ipynb"]["peak_memory_mib"] == "345"  # other rows are kept
    row = rows["small.ipynb"]
    assert 40 + 10 < float(row["peak_memory_mib"]) < 2000  # the 40 MiB block, plus Python
    assert 0 < float(row["seconds"]) < 120
    assert row["cpu"] and row["cpu"] != "stale" and row["date"] != "2000-01-01"
    assert row["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert row["torch_threads"] == ""  # torch was never imported: not imported to ask


def test_the_peak_is_the_kernels_and_torchs_threads_are_asked_for(tool, tmp_path):
    """The recorded peak is the kernel's own: the 40 MiB block it holds shows as a
    difference against the same notebook without it (the tool's memory, or the kernel's
    at start, would show none). A kernel that imported torch reports its thread count."""
    with_block = small_notebook(
        tmp_path / "with_block.ipynb",
        "import torch\ntorch.set_num_threads(1)",
        "block = bytearray(40 * 1024 * 1024)\nblock[::4096] = b'x' * len(block[::4096])",
    )
    without = small_notebook(
        tmp_path / "without.ipynb", "import torch\ntorch.set_num_threads(1)", "block = None"
    )
    held = tool.execute_notebook(with_block)
    bare = tool.execute_notebook(without)
    assert held.torch_threads == bare.torch_threads == "1"
    assert held.peak_memory_mib - bare.peak_memory_mib > 35, (held, bare)


def test_a_failing_cell_fails_loudly_and_leaves_the_file_alone(tool, tmp_path, capsys):
    notebook = small_notebook(tmp_path / "broken.ipynb", "x = 1", "raise ValueError('boom')")
    before = notebook.read_bytes()
    resources = tmp_path / "resources.csv"
    assert tool.main([str(notebook), "--resources", str(resources)]) == 1
    assert notebook.read_bytes() == before
    error = capsys.readouterr().err
    assert "FAILED" in error and "ValueError" in error and "boom" in error
    assert not resources.exists()


def test_strip_widget_clutter_keeps_figures_and_text(tool):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["widgets"] = {"state": {}}
    cell = nbformat.v4.new_code_cell("x")
    view = {"model_id": "abc123", "version_major": 2, "version_minor": 0}
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={"application/vnd.jupyter.widget-view+json": view, "text/plain": "VBox(...)"},
        ),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "Fig"}),
    ]
    notebook.cells = [cell]
    tool.strip_widget_clutter(notebook)
    assert "widgets" not in notebook.metadata
    assert dict(cell.outputs[0]["data"]) == {
        "application/vnd.jupyter.widget-view+json": {**view, "model_id": ""}
    }
    assert dict(cell.outputs[1]["data"]) == {"image/png": "iVBOR", "text/plain": "Fig"}


def test_a_notebook_edited_while_it_runs_is_not_overwritten(tool, tmp_path, capsys):
    notebook = small_notebook(
        tmp_path / "edited.ipynb",
        # stands for a person saving the notebook in JupyterLab during the run
        "with open('edited.ipynb', 'a') as stream:\n    stream.write(' ')",
    )
    assert tool.main([str(notebook), "--resources", str(tmp_path / "r.csv")]) == 1
    assert "changed on disk" in capsys.readouterr().err
    assert notebook.read_text().endswith("}\n ")  # the edit is still there


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"print('a script')\n", "NotJSONError"),
        (b"{}", "is not a notebook: "),
        (b'{"cells": [', "NotJSONError"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_every_notebook_is_read_before_any_runs(tool, tmp_path, capsys, content, problem):
    """A bad second file was found only after the first notebook had run (an hour, for
    some) and been rewritten."""
    good = small_notebook(tmp_path / "good.ipynb", "6 * 7")
    before = good.read_bytes()
    bad = tmp_path / "bad.ipynb"
    bad.write_bytes(content)
    resources = tmp_path / "resources.csv"
    with pytest.raises(SystemExit) as stopped:
        tool.main([str(good), str(bad), "--resources", str(resources)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"{bad} is not a notebook" in error and problem in error
    assert good.read_bytes() == before and not resources.exists()


@pytest.mark.parametrize("timeout", ["0", "-1"])
def test_a_timeout_that_turns_the_limit_off_is_refused(tool, tmp_path, capsys, timeout):
    good = small_notebook(tmp_path / "good.ipynb", "6 * 7")
    with pytest.raises(SystemExit) as stopped:
        tool.main([str(good), "--timeout", timeout, "--resources", str(tmp_path / "r.csv")])
    assert stopped.value.code == 2
    assert f"--timeout must be at least 1 second, got {timeout}" in capsys.readouterr().err


def test_a_resources_file_that_cannot_be_written_is_refused_before_running(tool, tmp_path, capsys):
    good = small_notebook(tmp_path / "good.ipynb", "6 * 7")
    before = good.read_bytes()
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    resources = blocker / "resources.csv"
    with pytest.raises(SystemExit) as stopped:
        tool.main([str(good), "--resources", str(resources)])
    assert stopped.value.code == 2
    assert f"--resources {resources}: {blocker} is a file" in capsys.readouterr().err
    assert good.read_bytes() == before and blocker.read_text() == "keep me"


def test_a_notebook_named_twice_runs_once(tool, tmp_path, monkeypatch):
    good = small_notebook(tmp_path / "good.ipynb", "6 * 7")
    monkeypatch.chdir(tmp_path / "..")
    ran = []

    def record(path, timeout):
        ran.append(path)
        return tool.RunRecord(path.name, 1.0, None, "a CPU", "AVX2", "2", "2026-01-01")

    monkeypatch.setattr(tool, "execute_notebook", record)
    same = Path(tmp_path.name) / "good.ipynb"  # relative: another spelling of the same file
    assert tool.main([str(good), str(same), "--resources", str(tmp_path / "r.csv")]) == 0
    assert ran == [good]


def process_is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process: not gone, and not a zombie waiting to be reaped
    (in a container nothing may ever reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:  # Linux: the state follows the command's closing parenthesis
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # gone since os.kill, or no /proc (macOS): then trust os.kill
        return not Path("/proc").is_dir()


def start_tool(notebook: Path, resources: Path, **environment: str) -> subprocess.Popen:
    """The tool as a terminal starts it: in a process group of its own."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "execute_notebooks.py"), str(notebook)]
        + ["--resources", str(resources)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **environment},
    )


def wait_for_pid(pid_file: Path, tool_process: subprocess.Popen) -> int:
    """The pid the kernel wrote to ``pid_file``, once it has."""
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()):
        assert tool_process.poll() is None, tool_process.communicate()[1]
        assert time.monotonic() < deadline, "the kernel never wrote its pid"
        time.sleep(0.1)
    return int(pid_file.read_text())


def assert_stopped_cleanly(
    tool_process, signal_number, notebook, before, resources, kernel_pid, seconds=60
):
    """Exit status 128 + the signal, one line and no traceback; the notebook unchanged,
    nothing recorded, and the kernel gone."""
    _, errors = tool_process.communicate(timeout=seconds)
    assert tool_process.returncode == 128 + signal_number, errors
    what = "interrupted" if signal_number == signal.SIGINT else "terminated"
    assert errors.strip().splitlines()[-1] == f"{what}: {notebook} is unchanged"
    assert "Traceback" not in errors, errors
    assert notebook.read_bytes() == before
    assert not resources.exists()
    deadline = time.monotonic() + 10
    while process_is_running(kernel_pid):
        assert time.monotonic() < deadline, "the kernel outlived the tool"
        time.sleep(0.1)


WRITE_PID = "import os, time\nopen('kernel.pid', 'w').write(str(os.getpid()))\n"


def test_ctrl_c_ends_with_one_line_and_leaves_the_file_and_no_kernel(tool, tmp_path):
    """Ctrl-C while a cell runs: exit status 130 and one line, not nbclient's tracebacks;
    the notebook unchanged, nothing recorded, the kernel shut down. A terminal signals
    the tool's process group; the kernel is not in it (jupyter_client starts kernels in
    a session of their own), so the tool alone receives it, as here."""
    notebook = small_notebook(tmp_path / "slow.ipynb", WRITE_PID + "time.sleep(120)")
    before = notebook.read_bytes()
    resources = tmp_path / "r.csv"
    tool_process = start_tool(notebook, resources)
    kernel_pid = wait_for_pid(tmp_path / "kernel.pid", tool_process)
    assert os.getsid(kernel_pid) != os.getsid(tool_process.pid)  # as the docstring says
    os.killpg(tool_process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert_stopped_cleanly(tool_process, signal.SIGINT, notebook, before, resources, kernel_pid)


def test_sigterm_while_a_cell_runs_stops_as_cleanly(tool, tmp_path):
    """SIGTERM (``kill``, a job scheduler) stops at once, with exit status 143 and one
    line; nbclient's own handler made it a failed cell, "Kernel died", with tracebacks."""
    notebook = small_notebook(tmp_path / "slow.ipynb", WRITE_PID + "time.sleep(120)")
    before = notebook.read_bytes()
    resources = tmp_path / "r.csv"
    tool_process = start_tool(notebook, resources)
    kernel_pid = wait_for_pid(tmp_path / "kernel.pid", tool_process)
    os.kill(tool_process.pid, signal.SIGTERM)
    assert_stopped_cleanly(tool_process, signal.SIGTERM, notebook, before, resources, kernel_pid)


def test_ctrl_c_while_the_kernel_starts_stops_as_cleanly(tool, tmp_path):
    """Before the kernel is ready nbclient's handler used to get Ctrl-C: it shut the
    half-started kernel down with an interrupt (a KeyboardInterrupt traceback from the
    kernel's imports) and the tool died of a CancelledError, status 1. A kernel that
    never becomes ready holds the tool in that window for as long as the test needs."""
    kernel_folder = tmp_path / "jupyter" / "kernels" / "never-ready"
    kernel_folder.mkdir(parents=True)
    pid_file = tmp_path / "kernel.pid"
    never_ready = (
        "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
    )
    spec = {
        "argv": [sys.executable, "-c", never_ready, str(pid_file), "{connection_file}"],
        "display_name": "never ready",
        "language": "python",
    }
    (kernel_folder / "kernel.json").write_text(json.dumps(spec))
    notebook = small_notebook(tmp_path / "never.ipynb", "1 + 1", kernel_name="never-ready")
    before = notebook.read_bytes()
    resources = tmp_path / "r.csv"
    tool_process = start_tool(notebook, resources, JUPYTER_PATH=str(tmp_path / "jupyter"))
    kernel_pid = wait_for_pid(pid_file, tool_process)
    time.sleep(1)  # the client is waiting for the kernel to answer
    os.killpg(tool_process.pid, signal.SIGINT)
    # well before nbclient's 60 s start-up timeout would have ended it anyway
    assert_stopped_cleanly(
        tool_process, signal.SIGINT, notebook, before, resources, kernel_pid, seconds=30
    )


def test_ctrl_c_after_the_last_cell_began_still_leaves_the_file(tool, tmp_path):
    """A Ctrl-C that reaches the tool while the last cell runs, when that cell goes on to
    finish (here it catches the interrupt), used to be lost: the notebook was written
    and recorded, exit status 0."""
    last_cell = (
        WRITE_PID + "import signal\n"
        "try:\n"
        "    os.kill(int(os.environ['JPY_PARENT_PID']), signal.SIGINT)\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    pass"
    )
    notebook = small_notebook(tmp_path / "last.ipynb", "x = 1", last_cell)
    before = notebook.read_bytes()
    resources = tmp_path / "r.csv"
    tool_process = start_tool(notebook, resources)
    kernel_pid = wait_for_pid(tmp_path / "kernel.pid", tool_process)
    assert_stopped_cleanly(tool_process, signal.SIGINT, notebook, before, resources, kernel_pid)


def test_a_second_ctrl_c_stops_a_cell_that_ignores_the_first(tool, tmp_path):
    """The first Ctrl-C interrupts the cell; one that catches the interrupt and goes on
    is stopped by a second, which kills the kernel."""
    stubborn = (
        WRITE_PID + "while True:\n"
        "    try:\n"
        "        time.sleep(1)\n"
        "    except KeyboardInterrupt:\n"
        "        open('interrupted', 'w').close()"
    )
    notebook = small_notebook(tmp_path / "stubborn.ipynb", stubborn)
    before = notebook.read_bytes()
    resources = tmp_path / "r.csv"
    tool_process = start_tool(notebook, resources)
    kernel_pid = wait_for_pid(tmp_path / "kernel.pid", tool_process)
    os.killpg(tool_process.pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    while not (tmp_path / "interrupted").exists():
        assert time.monotonic() < deadline, "the first Ctrl-C never reached the cell"
        time.sleep(0.1)
    time.sleep(1)
    assert tool_process.poll() is None  # the cell ignored it, and the tool waits
    os.killpg(tool_process.pid, signal.SIGINT)
    assert_stopped_cleanly(tool_process, signal.SIGINT, notebook, before, resources, kernel_pid)
