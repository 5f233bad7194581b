"""The committed notebooks are clean pages: what a reader sees on GitHub (or before running
anything) holds no warnings, no stderr, no tracebacks, and cells numbered 1..n as one
top-to-bottom run leaves them.

These tests read the committed JSON only; they execute nothing. Re-execute a notebook with
``python tools/execute_notebooks.py notebooks/NN_name.ipynb`` to fix what they find.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# Output data that is not text a reader reads (base64 images, widget references).
NON_TEXT_PREFIXES = ("image/", "application/vnd.jupyter.widget")


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def as_text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def output_texts(output: dict) -> list[tuple[str, str]]:
    """``(where, text)`` for every piece of text an output shows."""
    kind = output["output_type"]
    if kind == "stream":
        return [(f"stream {output.get('name')}", as_text(output.get("text", "")))]
    if kind == "error":
        return [("error", "\n".join([output.get("ename", ""), output.get("evalue", "")]))]
    return [
        (f"{kind} {mime}", as_text(value))
        for mime, value in output.get("data", {}).items()
        if not mime.startswith(NON_TEXT_PREFIXES)
    ]


def problems_in(notebook: dict) -> list[str]:
    """One line per stderr stream, warning, error or traceback among the outputs."""
    found = []
    for number, cell in enumerate(code_cells(notebook), start=1):
        for output in cell.get("outputs", []):
            where = f"code cell {number} (execution count {cell.get('execution_count')})"
            if output["output_type"] == "error":
                found.append(f"{where}: error output {output.get('ename')}: {output.get('evalue')}")
            if output["output_type"] == "stream" and output.get("name") == "stderr":
                text = as_text(output.get("text", "")).strip().splitlines()
                found.append(f"{where}: stderr: {text[0] if text else '(empty)'}")
            for kind, text in output_texts(output):
                for marker in ("Warning", "Traceback"):
                    if marker in text:
                        line = next(line for line in text.splitlines() if marker in line)
                        found.append(f"{where}: {marker!r} in {kind}: {line.strip()[:200]}")
    return found


def execution_count_problems(notebook: dict) -> list[str]:
    """Non-empty code cells must read 1, 2, …, n: one run, top to bottom, nothing skipped,
    nothing run twice. Each execute_result must carry its cell's count."""
    found = []
    cells = [cell for cell in code_cells(notebook) if as_text(cell["source"]).strip()]
    counts = [cell.get("execution_count") for cell in cells]
    expected = list(range(1, len(cells) + 1))
    if counts != expected:
        found.append(f"execution counts are {counts}, expected {expected}")
    for cell in cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "execute_result" and output.get(
                "execution_count"
            ) != cell.get("execution_count"):
                found.append(
                    f"cell [{cell.get('execution_count')}] has an execute_result numbered "
                    f"{output.get('execution_count')}"
                )
    return found


def test_there_are_notebooks_to_check():
    assert len(NOTEBOOKS) >= 7, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_outputs_have_no_stderr_warnings_or_errors(path):
    problems = problems_in(load(path))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_execution_counts_run_one_to_n(path):
    problems = execution_count_problems(load(path))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


# --- the checks themselves must be able to fail ------------------------------------------


def notebook_with(*cells: dict) -> dict:
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def code(source: str, count: int | None, *outputs: dict) -> dict:
    return {
        "cell_type": "code",
        "source": source,
        "execution_count": count,
        "outputs": list(outputs),
        "metadata": {},
    }


def test_the_checks_catch_what_they_are_for():
    clean = notebook_with(
        code("1 + 1", 1, {"output_type": "execute_result", "execution_count": 1, "data": {}}),
        code("", None),
        code("print('hi')", 2, {"output_type": "stream", "name": "stdout", "text": ["hi\n"]}),
    )
    assert problems_in(clean) == [] and execution_count_problems(clean) == []

    warning = {
        "output_type": "stream",
        "name": "stderr",
        "text": ["x.py:3: DeprecationWarning: on_submit is deprecated\n"],
    }
    found = problems_in(notebook_with(code("w()", 1, warning)))
    assert any("stderr" in line for line in found)
    assert any("'Warning'" in line for line in found)

    shown_warning = {
        "output_type": "display_data",
        "data": {"text/plain": ["UserWarning: careful"], "image/png": "V2FybmluZw=="},
    }
    assert len(problems_in(notebook_with(code("w()", 1, shown_warning)))) == 1

    error = {
        "output_type": "error",
        "ename": "ValueError",
        "evalue": "bad",
        "traceback": ["Traceback (most recent call last)"],
    }
    assert problems_in(notebook_with(code("boom()", 1, error)))

    assert execution_count_problems(notebook_with(code("a", 1), code("b", 3)))
    assert execution_count_problems(notebook_with(code("a", 2), code("b", 1)))
    assert execution_count_problems(notebook_with(code("a", None)))
    result_mismatch = {"output_type": "execute_result", "execution_count": 4, "data": {}}
    assert execution_count_problems(notebook_with(code("a", 1, result_mismatch)))
