"""Browser tests: what a reader of the series actually sees in JupyterLab.

The fixtures start JupyterLab exactly as ``make lab`` does (the Makefile recipe, with the
environment of the test run passed through) on a temporary copy of ``notebooks/``, and drive
the system Chromium through Playwright. Everything they start is stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UI_DIR = Path(__file__).resolve().parent

# Chromium as root in a container, with the network closed: no sandbox (root), no GPU, and
# none of the background traffic (updates, sync, QUIC probes) that would only hit refused
# connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

SERVER_START_TIMEOUT = float(os.environ.get("PAYING_ATTENTION_UI_SERVER_TIMEOUT", 240))


# --- ordering -----------------------------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Run the browser tests last, after the unit tests and after nbval's notebooks.

    ``make test`` runs ``pytest tests notebooks`` in one session, so pytest collects
    ``tests/ui`` before ``notebooks/``. The browser test of notebook 05 loads the models that
    notebook 04 trains (``checkpoints/04_*.pt``); run before nbval has executed 04, it would
    have to train them itself, for minutes. So every item under ``tests/ui/`` moves to the
    very end, keeping its own relative order, and everything else keeps the order pytest
    collected it in (unit tests, then each notebook's cells top to bottom). ``trylast`` makes
    this the last word on the order, after any other plugin's reordering.
    """
    ui, other = [], []
    for item in items:
        (ui if UI_DIR in Path(str(item.path)).resolve().parents else other).append(item)
    items[:] = other + ui


# --- the browser ------------------------------------------------------------------------------


def find_chromium() -> str | None:
    """The system Chromium: $PAYING_ATTENTION_CHROMIUM, /usr/bin/chromium, or on the PATH."""
    override = os.environ.get("PAYING_ATTENTION_CHROMIUM")
    if override:
        return override if Path(override).is_file() else shutil.which(override)
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    found = find_chromium()
    if not found:
        pytest.skip(
            "no Chromium found for the browser tests: install the system one "
            "(Debian/Ubuntu: `apt-get install chromium`; .ci/run does it) or point "
            "PAYING_ATTENTION_CHROMIUM at a Chromium binary"
        )
    return found


@pytest.fixture(scope="session")
def browser(chromium_executable):
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="Playwright is a test pin: pip install -r requirements-test.txt",
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_executable, args=CHROMIUM_ARGS, timeout=120_000
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, artifacts):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    console = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        yield page
    finally:
        (artifacts / "browser-console.log").write_text("\n".join(console) + "\n")
        context.close()


# --- artefacts ----------------------------------------------------------------------------


@pytest.fixture
def artifacts(request) -> Path:
    """Where a test leaves its screenshots: $PAYING_ATTENTION_ARTIFACTS/<test>, or
    test-artifacts/ui/<test> at the top of the repository (ignored by git)."""
    base = os.environ.get("PAYING_ATTENTION_ARTIFACTS")
    folder = (Path(base) if base else ROOT / "test-artifacts" / "ui") / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


# --- JupyterLab, started by `make lab` ------------------------------------------------------


@dataclass
class Lab:
    url: str  # http://127.0.0.1:PORT
    token: str
    notebook_dir: Path
    log: Path

    def api(self, path: str, method: str = "GET", timeout: float = 10.0):
        request = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
            data=b"" if method == "POST" else None,
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def kernel_state(self, notebook: str) -> str | None:
        """The server's view of the notebook's kernel: 'idle', 'busy', 'starting', or None
        while the notebook has no kernel."""
        try:
            sessions = self.api("/api/sessions")
        except (OSError, urllib.error.URLError, ValueError):
            return None
        for session in sessions or []:
            if session.get("path") == notebook and session.get("kernel"):
                return session["kernel"].get("execution_state")
        return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, characters: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-characters:]
    except OSError:
        return "(no log)"


def descendants(pid: int) -> list:
    """Every process below ``pid``. Kernels run in sessions of their own (jupyter_client
    starts them with start_new_session=True), so killing the server's process group alone
    would leave them behind."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def stop(process: subprocess.Popen, lab: Lab | None) -> None:
    """Stop `make lab` and everything below it: kernels first, through the server's API, then
    the server, then its process group, then any straggler, each step with a time limit."""
    import psutil

    below = descendants(process.pid)
    if lab is not None:
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            for kernel in lab.api("/api/kernels") or []:
                lab.api(f"/api/kernels/{kernel['id']}", method="DELETE", timeout=20)
            lab.api("/api/shutdown", method="POST")
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    alive = [p for p in below if p.is_running()]
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.terminate()
    _, alive = psutil.wait_procs(alive, timeout=10)
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.kill()


def clear_outputs(notebook: Path) -> None:
    """The notebooks are committed executed, figures included: clear them, so that every
    image the tests find was drawn by the kernel that JupyterLab started."""
    content = json.loads(notebook.read_text())
    for cell in content["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebook.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab as a reader starts it: ``make lab`` from the top of the repository, on a
    temporary copy of notebooks/ (the notebooks find the trained models through
    helpers.files.checkpoint_path(), wherever they run from).

    The test run's environment goes through unchanged, MPLBACKEND included: under
    ``make test`` that is MPLBACKEND=Agg, and it is the lab recipe's job (``env -u
    MPLBACKEND``) to keep it away from the kernels. Run on its own, the test sets
    MPLBACKEND=Agg itself when the shell has none, so that it checks the same thing.
    """
    base = tmp_path_factory.mktemp("lab")
    notebook_dir = base / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebook_dir, ignore=shutil.ignore_patterns(".ipynb_*"))
    for notebook in notebook_dir.glob("*.ipynb"):
        clear_outputs(notebook)
    log = base / "lab.log"
    port, token = free_port(), secrets.token_hex(24)

    environment = dict(os.environ)
    environment.setdefault("MPLBACKEND", "Agg")  # a hostile shell: `make lab` must undo it
    environment["PAYING_ATTENTION_PROGRESS"] = "0"
    arguments = [
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        # A fresh JupyterLab: no workspace or settings left over from a reader's own use, no
        # news or update checks (the network is closed).
        f"--LabApp.workspaces_dir={base / 'workspaces'}",
        f"--LabApp.user_settings_dir={base / 'user-settings'}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    command = ["make", "lab", f"NOTEBOOK_DIR={notebook_dir}", "ARGS=" + " ".join(arguments)]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    server = Lab(url=f"http://127.0.0.1:{port}", token=token, notebook_dir=notebook_dir, log=log)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"`make lab` exited with {process.returncode}:\n{log_tail(log)}")
            try:
                server.api("/api/status", timeout=5)
                break
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"JupyterLab did not answer in {SERVER_START_TIMEOUT:.0f} s:\n{log_tail(log)}"
                )
            time.sleep(1)
        yield server
    finally:
        stop(process, server if process.poll() is None else None)
        artefact_base = os.environ.get("PAYING_ATTENTION_ARTIFACTS")
        folder = Path(artefact_base) if artefact_base else ROOT / "test-artifacts" / "ui"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, folder / "jupyterlab.log")
