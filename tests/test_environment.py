"""Repository-level promises: pinned environments agree, notebooks are committed executed."""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pins_from_lines(lines):
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip().lstrip("-").strip()
        if not line or line.startswith("--") or "==" not in line:
            continue
        name, version = line.split("==", 1)
        pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return pins


def requirements():
    return pins_from_lines((ROOT / "requirements.txt").read_text().splitlines())


def environment_pip_section():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    return [line for line in lines[start + 1 :] if line.startswith("      - ")]


def test_environment_yml_names_the_same_packages_and_versions_as_requirements():
    pins = requirements()
    assert pins, "requirements.txt pins nothing"
    assert pins_from_lines(environment_pip_section()) == pins
    assert pins["torch"] == "2.13.0"
    text = (ROOT / "environment.yml").read_text()
    assert "python=3.11" in text and "conda-forge" in text


def test_environment_yml_gets_python_and_pytorch_where_binder_does():
    """Conda users and Binder (.binder/, see test_binder.py) get the same Python and the
    same CPU-only PyTorch index."""
    binder = ROOT / ".binder"
    assert (binder / "runtime.txt").read_text().strip() == "python-3.11"
    index = "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert index in (binder / "requirements.txt").read_text().splitlines()
    assert f"      - {index}" in environment_pip_section()


def test_every_requirement_is_pinned_exactly():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", line), f"not an exact pin: {line}"


def test_notebooks_are_committed_executed_top_to_bottom():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 1
    for path in notebooks:
        notebook = json.loads(path.read_text())
        code = [
            cell
            for cell in notebook["cells"]
            if cell["cell_type"] == "code" and "".join(cell["source"]).strip()
        ]
        counts = [cell.get("execution_count") for cell in code]
        assert counts == list(range(1, len(code) + 1)), f"{path.name}: execution counts {counts}"
        errors = [
            o for cell in code for o in cell.get("outputs", []) if o.get("output_type") == "error"
        ]
        assert not errors, f"{path.name} was committed with an error output"
        assert "sys.path" not in "".join("".join(cell["source"]) for cell in code), (
            f"{path.name} edits sys.path"
        )


def test_the_offline_data_is_ignored_by_git():
    for name in (
        "data/deu-eng.tsv",
        "data/deu-eng-50k.tsv",
        "checkpoints/model.pt",
        ".venv/bin/python",
    ):
        result = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
        assert result.returncode == 0, f"{name} is not ignored by .gitignore"
    result = subprocess.run(["git", "check-ignore", "-q", "data/README.md"], cwd=ROOT)
    assert result.returncode == 1, "data/README.md must stay tracked"


def test_the_committed_results_are_not_ignored_by_git():
    """The full-budget runs are results to commit, not a cache (a bare ``runs/`` pattern
    in .gitignore once hid them)."""
    import pytest

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [
        "results/comparison/runs/luong-general_seed7.json",
        "results/comparison/translations/luong-general_seed7.json.gz",
        "results/comparison/summary.csv",
        "results/reproducibility.json",
    ]
    ignored = subprocess.run(
        ["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert ignored == [], f"git would not commit {ignored}"
    # ... while checkpoints and data stay out.
    kept_out = subprocess.run(
        ["git", "check-ignore", "checkpoints/04_luong.pt", "data/deu-eng.tsv", "runs/x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert kept_out == ["checkpoints/04_luong.pt", "data/deu-eng.tsv", "runs/x"]


def test_the_package_builds_without_a_deprecation_and_names_its_licence(tmp_path):
    """``make setup`` installs ``helpers`` with pip, which builds it with the newest
    setuptools the index offers. setuptools deprecated the license table that
    pyproject.toml once used ("By 2027-Feb-18 ... your builds will no longer be
    supported"): a warning today, every fresh install broken then. The build, from a copy
    of what it reads, must warn of nothing deprecated, and the wheel must carry the licence."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    shutil.copytree(
        ROOT / "helpers", source / "helpers", ignore=shutil.ignore_patterns("__pycache__")
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = built.stdout + built.stderr
    assert built.returncode == 0, output[-4000:]
    deprecated = [line for line in output.splitlines() if "deprecat" in line.lower()]
    assert not deprecated, "\n".join(deprecated)
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
