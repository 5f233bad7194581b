"""Child processes leave Ctrl-C to their parent (helpers.processes)."""

import signal
import subprocess
import sys
import threading

from helpers.processes import children_ignore_ctrl_c

# A child that sends itself Ctrl-C, then says whether it lived on.
CTRL_C_TO_ITSELF = (
    "import os, signal, time; os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2); print('alive')"
)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_child_started_in_the_block_ignores_ctrl_c_from_its_start():
    handler = signal.getsignal(signal.SIGINT)
    with children_ignore_ctrl_c():
        ignoring = _python(CTRL_C_TO_ITSELF)
    assert signal.getsignal(signal.SIGINT) is handler  # the parent's own handler is back
    assert ignoring.returncode == 0 and ignoring.stdout == "alive\n", ignoring.stderr
    if handler is not signal.SIG_IGN:  # a parent that ignores it passes that on anyway
        default = _python(CTRL_C_TO_ITSELF)
        assert default.returncode != 0 and "KeyboardInterrupt" in default.stderr


def test_outside_the_main_thread_the_block_changes_nothing():
    """Only the main thread may set a signal handler (``signal.signal`` raises elsewhere)."""
    handler = signal.getsignal(signal.SIGINT)
    errors = []

    def enter():
        try:
            with children_ignore_ctrl_c():
                assert signal.getsignal(signal.SIGINT) is handler
        except BaseException as error:  # noqa: BLE001 - reported to the main thread
            errors.append(error)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert errors == []


def test_a_child_stopped_with_sigterm_unwinds():
    """Its ``finally`` blocks run (temporary files removed, locks released)."""
    code = (
        "import os, signal, time\n"
        "from helpers.processes import unwind_on_sigterm\n"
        "unwind_on_sigterm()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "finally:\n"
        "    print('cleaned up')\n"
    )
    stopped = _python(code)
    assert stopped.stdout == "cleaned up\n", stopped.stderr
    assert stopped.returncode == 128 + signal.SIGTERM
