"""Binder builds what CI tests: .binder/ installs the top-level pins, then runs postBuild.

Three checks, from cheap to slow:

* the files in .binder/ say what the README promises (static, instant);
* repo2docker, the tool Binder builds with, renders the Dockerfile it would build
  (``jupyter-repo2docker --no-build``: no Docker daemon, no network) and that
  Dockerfile uses Python 3.11, pip-installs .binder/requirements.txt once the whole
  repository is in the image, then runs .binder/postBuild;
* SLOW (about 100 s): the same steps in a fresh virtual environment —
  ``python3.11 -m venv``, ``pip install -r .binder/requirements.txt``,
  ``.binder/postBuild`` — then ``helpers`` imports and the data loads.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / ".binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
OFFLINE_DATA = ROOT.parent / "shared" / "data" / "deu-eng-50k.tsv"


def pins(path):
    """``{name: version}`` for the exact pins of a requirements file (no ``-r`` lines)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==", 1)
            found[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return found


def repository_copy(destination):
    """The files a clone of the working tree would hold: tracked and untracked, not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # skips files deleted in the working tree
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


# ----------------------------------------------------------------- the files themselves


def test_binder_folder_reuses_the_top_level_pins_and_fetches_the_data():
    requirements = [
        line.split("#", 1)[0].strip()
        for line in (BINDER / "requirements.txt").read_text().splitlines()
    ]
    requirements = [line for line in requirements if line]
    # Nothing pinned twice: the top-level file, the one CI tests, is the only source.
    assert requirements == [f"--extra-index-url {CPU_INDEX}", "-r ../requirements.txt"]
    assert pins(ROOT / "requirements.txt")["torch"] == "2.13.0"
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"

    post_build = BINDER / "postBuild"
    assert os.access(post_build, os.X_OK), ".binder/postBuild must be executable"
    commands = [
        line.strip()
        for line in post_build.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "python -m pip install --no-deps -e ." in commands
    assert commands[-1] == "python -m helpers fetch"
    # With .binder/ present repo2docker ignores top-level configuration: none may linger
    # there and look as if it mattered.
    assert not (ROOT / "postBuild").exists()


def test_binder_starts_with_passive_openmp_waiting():
    """Binder's CPUs are shared: spinning OpenMP threads would slow training tenfold."""
    start = BINDER / "start"
    assert os.access(start, os.X_OK), ".binder/start must be executable"
    lines = [line for line in start.read_text().splitlines() if not line.startswith("#")]
    assert "export OMP_WAIT_POLICY=PASSIVE" in lines
    assert lines[-1] == 'exec "$@"', "start must hand over to the command Binder gives it"
    # Started with ACTIVE, so that the policy printed is the one start sets, not one that
    # this run inherited (OMP_WAIT_POLICY=PASSIVE make test, as docs/reproducibility.md
    # suggests on a busy machine).
    finished = subprocess.run(
        [str(start), sys.executable, "-c", "import os; print(os.environ['OMP_WAIT_POLICY'])"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_WAIT_POLICY": "ACTIVE"},
    )
    assert finished.stdout.strip() == "PASSIVE"


def test_readme_badge_opens_the_reading_path_in_jupyterlab():
    readme = (ROOT / "README.md").read_text()
    badge = re.search(
        r"\[!\[Binder\]\(https://mybinder\.org/badge_logo\.svg\)\]\(([^)]+)\)", readme
    )
    assert badge, "README.md has no Binder badge"
    url = badge.group(1)
    prefix = "https://mybinder.org/v2/gh/paying-attention/paying-attention/HEAD?urlpath=lab/tree/"
    assert url.startswith(prefix), url
    assert (ROOT / url.removeprefix(prefix)).name == "00_index.ipynb"
    assert (ROOT / url.removeprefix(prefix)).is_file()
    assert readme.index(url) < readme.index("## The notebooks"), "the badge belongs at the top"


# ----------------------------------------------------------- repo2docker's Dockerfile


@pytest.fixture(scope="module")
def dockerfile(tmp_path_factory):
    """What ``jupyter-repo2docker --no-build`` prints for a clean copy of the repository,
    as Binder runs it (user jovyan, uid 1000); its log goes to stderr."""
    pytest.importorskip("repo2docker", reason="requirements-test.txt installs repo2docker")
    copy = repository_copy(tmp_path_factory.mktemp("repo"))
    result = subprocess.run(
        [sys.executable, "-m", "repo2docker", "--no-build", "--debug"]
        + ["--user-id", "1000", "--user-name", "jovyan", str(copy)],
        cwd=copy,  # repo2docker also reads a repo2docker_config.py from here
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, result.stderr


def test_repo2docker_builds_python_3_11_from_the_binder_folder(dockerfile):
    text, log = dockerfile
    assert "Building conda environment for python=3.11" in log
    # The base environment is repo2docker's lock file for Python 3.11, copied in under
    # an escaped name (``.`` → ``-2e``, ``-`` → ``-2d``).
    locks = re.findall(r"environment-2epy-2d(\d+)-2e(\d+)-2dlinux-2d\w+-2elock", text)
    assert locks == [("3", "11")], locks
    # .binder/ wins: the top-level environment.yml (for conda users) is not used.
    assert "environment.yml" not in text


def test_repo2docker_installs_the_pins_after_copying_the_repository_then_runs_post_build(
    dockerfile,
):
    lines = [line.strip() for line in dockerfile[0].splitlines()]
    pip_install = (
        'RUN ${KERNEL_PYTHON_PREFIX}/bin/pip install --no-cache-dir -r ".binder/requirements.txt"'
    )
    assert lines.count(pip_install) == 1
    copy_repository = next(
        i
        for i, line in enumerate(lines)
        if re.fullmatch(r"COPY --chown=\S+ src/ \$\{REPO_DIR\}/", line)
    )
    # `-r ../requirements.txt` is a local reference, so repo2docker installs the file
    # only once the whole repository is in the image, not in its early cached layer
    # (where only .binder/requirements.txt would exist and `-r` would fail).
    assert lines.index(pip_install) > copy_repository
    post_build = lines.index("RUN ./.binder/postBuild")
    assert post_build > lines.index(pip_install)


# ------------------------------------------------------- the same steps, in a fresh venv


def binder_pip_version():
    """The pip in repo2docker's Python 3.11 base environment (Binder's pip), if known."""
    try:
        import repo2docker
    except ImportError:
        return None
    locks = Path(repo2docker.__file__).parent / "buildpacks" / "conda"
    for lock in sorted(locks.glob("environment.py-3.11-linux-64.lock")):
        found = re.search(r"/pip-([\d.]+)-[^/]*\.conda", lock.read_text())
        if found:
            return found.group(1)
    return None


def python_3_11():
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if not found:
        pytest.skip("Binder runs Python 3.11 (.binder/runtime.txt); no python3.11 here")
    return found


def scratch_for_the_venv(tmp_path):
    """Where the throw-away venv goes: RAM (/dev/shm) when it has room, else ``tmp_path``.

    The venv holds ~51,000 files (1.6 GB): on this project's 2-core machines deleting
    it from disk took 3 minutes, as long as installing it; from RAM, a second. Where it
    lies changes nothing in what pip installs.
    """
    shm = Path("/dev/shm")
    try:
        with open("/proc/mounts") as mounts:
            options = {f[1]: f[3].split(",") for f in (line.split() for line in mounts)}
        usable = (
            "noexec" not in options.get(str(shm), ["noexec"])
            and os.access(shm, os.W_OK)
            and shutil.disk_usage(shm).free > 6 * 2**30
        )
    except OSError:
        usable = False
    if usable:
        return Path(tempfile.mkdtemp(prefix="paying-attention-binder-", dir=shm))
    return tmp_path


@pytest.mark.slow
def test_binder_steps_in_a_fresh_venv_give_helpers_and_the_data(tmp_path, record_property):
    """SLOW: about 100 s (measured on 2 cores busy with a training job, about 1 minute of
    CPU), nearly all of it pip unpacking torch, spaCy and Jupyter.

    The steps are Binder's, on a clean copy of the repository: a Python 3.11 venv with
    Binder's pip (the version in repo2docker's Python 3.11 lock file), ``pip install -r
    .binder/requirements.txt`` (the file unchanged, with its PyTorch CPU index), then
    ``.binder/postBuild``. Differences from Binder's build, none in what gets installed:

    * pip's cache stays on (repo2docker passes ``--no-cache-dir``), so where the index
      allows caching a second run downloads nothing;
    * pip gives up on an unreachable index at once (``PIP_RETRIES=1``): where
      download.pytorch.org cannot be reached, pip's default 5 retries with back-off
      cost 8 s per package looked up (measured), about 20 minutes for the ~150
      packages; PyPI, and any local mirrors or wheels configured for pip (pip.conf,
      ``PIP_FIND_LINKS``), still serve the pins;
    * ``python -m helpers fetch`` copies ``$PAYING_ATTENTION_DATA`` (or
      ../shared/data/deu-eng-50k.tsv) when such an offline copy exists, instead of
      downloading; the checks afterwards run without that variable, as on Binder.
    """
    timings = {}
    repo = repository_copy(tmp_path / "repo")
    scratch = scratch_for_the_venv(tmp_path)
    venv = scratch / "venv"
    bin_dir = venv / "bin"
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "VIRTUAL_ENV",
            "PYTHONPATH",
            "PYTHONHOME",
            "PAYING_ATTENTION_DATA",
            "PAYING_ATTENTION_DATA_DIR",
            "PIP_NO_CACHE_DIR",
        }
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PIP_RETRIES="1",
        PIP_TIMEOUT="15",
        PIP_DEFAULT_TIMEOUT="15",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )

    def step(name, command, step_env=env, timeout=900, cwd=repo):
        start = time.perf_counter()
        result = subprocess.run(
            command, cwd=cwd, env=step_env, capture_output=True, text=True, timeout=timeout
        )
        timings[name] = round(time.perf_counter() - start, 1)
        assert result.returncode == 0, (
            f"{name} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
        return result.stdout

    try:
        step("venv", [python_3_11(), "-m", "venv", str(venv)])
        pip = binder_pip_version()
        if pip:
            step("pip", [str(bin_dir / "python"), "-m", "pip", "install", "-q", f"pip=={pip}"])
        step("requirements", ["pip", "install", "-r", ".binder/requirements.txt"])

        post_build_env = dict(env)
        offline = os.environ.get("PAYING_ATTENTION_DATA") or (
            str(OFFLINE_DATA) if OFFLINE_DATA.is_file() else None
        )
        if offline:
            post_build_env["PAYING_ATTENTION_DATA"] = offline
        step("postBuild", ["./.binder/postBuild"], step_env=post_build_env)

        # What the reader gets: no environment variable, the data in the repository's cache,
        # and helpers importable from notebooks/, where the kernels run (from the top of the
        # repository, Python would find ./helpers even had postBuild installed nothing).
        cached = repo / "data" / "deu-eng.tsv"
        kernels = repo / "notebooks"
        where = step("where", ["python", "-m", "helpers", "where"], cwd=kernels)
        assert where.strip() == str(cached)
        if offline:
            assert cached.read_bytes() == Path(offline).read_bytes()
        report = json.loads(
            step(
                "import",
                [
                    "python",
                    "-c",
                    "import importlib.metadata as m, json, sys, torch, helpers\n"
                    "pairs = helpers.load_pairs(max_pairs=10)\n"
                    "json.dump({'helpers': helpers.__file__, 'pairs': pairs,\n"
                    "  'cuda': torch.version.cuda, 'python': list(sys.version_info[:2]),\n"
                    "  'versions': {d.metadata['Name']: d.version for d in m.distributions()}},\n"
                    "  sys.stdout)",
                ],
                cwd=kernels,
            )
        )
        step("pip check", ["python", "-m", "pip", "check"])
    finally:
        print("Binder steps in a fresh venv, seconds:", timings)
        record_property("binder_step_seconds", timings)
        shutil.rmtree(venv if scratch == tmp_path else scratch, ignore_errors=True)

    assert report["python"] == [3, 11]
    assert Path(report["helpers"]) == repo / "helpers" / "__init__.py"
    assert "paying-attention-helpers" in report["versions"]  # postBuild's editable install
    assert len(report["pairs"]) == 10 and all(len(pair) == 2 for pair in report["pairs"])
    assert report["cuda"] is None, "Binder must get the CPU-only PyTorch build"
    installed = {
        re.sub(r"[-_.]+", "-", name.lower()): version.split("+")[0]
        for name, version in report["versions"].items()
    }
    expected = pins(ROOT / "requirements.txt")
    assert {name: installed.get(name) for name in expected} == expected
