"""Child processes that leave Ctrl-C to their parent.

Ctrl-C in a terminal sends SIGINT to every process of the foreground group, children
included. The command-line tools that train in child processes
(``python -m helpers.experiments``, ``python -m helpers.reproducibility``) let the parent
decide what stops: their children ignore SIGINT from their first instruction, and the
parent stops them when it decides to (the reproducibility check's training process
unwinds on SIGTERM; the experiments' workers have a signal of their own).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def children_ignore_ctrl_c() -> Iterator[None]:
    """Processes started in this block ignore Ctrl-C (SIGINT) from their first instruction.

    A child inherits an ignored signal through ``exec``, and a Python interpreter that
    starts with SIGINT ignored leaves it ignored (it raises no ``KeyboardInterrupt``).
    Setting it in the child instead would leave a window while the child starts, in
    which Ctrl-C ends it with a traceback. The cost: a Ctrl-C that arrives while the
    block runs (a process start, some milliseconds) is lost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set a handler; and only it gets KeyboardInterrupt
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        # None: a handler set outside Python, which cannot be put back: Python's own, then.
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def unwind_on_sigterm() -> None:
    """In a child: turn the parent's SIGTERM into ``SystemExit``, so that the child
    unwinds as from an error — temporary files are removed and locks released — rather
    than dying outright (which leaves Python to warn of "leaked semaphore objects")."""
    signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signal_number: int, frame: object) -> None:
    raise SystemExit(128 + signal_number)
