"""The exercise solutions in the notebooks' markdown still fit the code they build on.

A solution sits in a ``<details>`` block as a fenced ``python`` listing, which nbval never
runs (running them all would train several models). These checks are static, and so cheap:
each listing parses, every name it reads is defined somewhere a reader would have it (the
notebook's code cells, an earlier listing of the same notebook, the listing itself, or
Python's builtins), and every ``from helpers... import name`` names something that exists.
A renamed or removed ``helpers`` function or notebook variable fails here, instead of in a
reader's cell.
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
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
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
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]
        if cell["cell_type"] == "markdown"
    )
    assert listings >= 30, f"only {listings} solution listings found: is the fence pattern stale?"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_exercise_solutions_use_only_what_exists(path):
    problems = solution_problems(json.loads(path.read_text(encoding="utf-8")))
    assert not problems, "\n".join(problems)


def test_the_check_catches_what_it_is_for():
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
