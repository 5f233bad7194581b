"""The committed notebooks are clean pages: what a reader sees on GitHub (or before running
anything) holds no warnings, no stderr, no tracebacks, and cells numbered 1..n as one
top-to-bottom run leaves them; and the exercise solutions in their markdown still fit the
code they build on.

These tests read the committed JSON only; they execute nothing. Re-execute a notebook with
``python tools/execute_notebooks.py notebooks/NN_name.ipynb`` to fix what they find.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import re
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


# --- exercise solutions ---------------------------------------------------------------
# A solution sits in a ``<details>`` block as a fenced ``python`` listing, which nbval
# never runs (running them all would train several models). These checks are static:
# each listing parses, every name it reads is defined somewhere a reader would have it
# (the notebook's code cells, an earlier listing of the same notebook, the listing
# itself, or Python's builtins), and every ``from helpers... import name`` exists. A
# renamed or removed ``helpers`` function or notebook variable fails here, instead of
# in a reader's cell.

FENCED_PYTHON = re.compile(r"```python\n(.*?)```", re.DOTALL)


def defined_names(tree: ast.AST) -> set[str]:
    """Every name a piece of code binds anywhere (assignments, loops, imports, defs, ...)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def python_source(cell: dict) -> str:
    source = as_text(cell["source"])
    # IPython magics and shell escapes are not Python.
    return "\n".join(
        line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))
    )


def solution_problems(notebook: dict) -> list[str]:
    """What is wrong with the fenced Python listings in a notebook's markdown cells."""
    known = set(dir(builtins))
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            known |= defined_names(ast.parse(python_source(cell)))
    problems = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for listing in FENCED_PYTHON.findall(python_source(cell)):
            where = f"markdown cell {index}, listing starting {listing.strip()[:40]!r}"
            try:
                tree = ast.parse(listing)
            except SyntaxError as error:
                problems.append(f"{where}: does not parse ({error.msg}, line {error.lineno})")
                continue
            known |= defined_names(tree)  # a reader runs the listings in order
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                    if node.id not in known:
                        problems.append(f"{where}: reads {node.id!r}, defined nowhere")
                elif (
                    isinstance(node, ast.ImportFrom)
                    and (node.module or "").split(".")[0] == "helpers"
                ):
                    module = importlib.import_module(node.module)
                    problems.extend(
                        f"{where}: {node.module} has no {alias.name!r}"
                        for alias in node.names
                        if not hasattr(module, alias.name)
                    )
    return problems


def test_the_notebooks_have_solutions_to_check():
    listings = sum(
        len(FENCED_PYTHON.findall(python_source(cell)))
        for path in NOTEBOOKS
        for cell in load(path)["cells"]
        if cell["cell_type"] == "markdown"
    )
    assert listings >= 30, f"only {listings} solution listings found: is the fence pattern stale?"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_exercise_solutions_use_only_what_exists(path):
    problems = solution_problems(load(path))
    assert not problems, "\n".join(problems)


def test_the_solution_check_catches_what_it_is_for():
    def notebook(*cells):
        return {"cells": [{"cell_type": kind, "source": source} for kind, source in cells]}

    fine = notebook(
        ("code", "model = 1\n%matplotlib inline"),
        (
            "markdown",
            "```python\nfrom helpers.decoding import translate_batch\nscores = [model]\n```",
        ),
        ("markdown", "```python\nprint(scores, len(scores))\n```"),
    )
    assert solution_problems(fine) == []
    broken = notebook(
        ("code", "model = 1"),
        ("markdown", "```python\nfrom helpers.decoding import translate_everything\n```"),
        ("markdown", "```python\nprint(notebook_04_run(model))\n```"),
        ("markdown", "```python\nfor x in\n```"),
    )
    found = solution_problems(broken)
    assert len(found) == 3, found
    assert "no 'translate_everything'" in found[0]
    assert "reads 'notebook_04_run'" in found[1]
    assert "does not parse" in found[2]
