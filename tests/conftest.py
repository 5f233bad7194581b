"""Fixtures shared by several test files."""

import hashlib
import io
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

import helpers.training as training

#: The CPU random generators and thread count as this session began (before any test or
#: fixture ran): every test starts from them.
_SESSION_START = (
    random.getstate(),
    np.random.get_state(),
    torch.get_rng_state(),
    torch.get_num_threads(),
)


@pytest.fixture(autouse=True)
def session_start_state():
    """Every test starts from the CPU random state and thread count the session began with.

    Tests and fixtures that train call ``set_seed``, which seeds Python's, NumPy's and
    torch's global generators for the whole process, and the experiment runner sets
    torch's thread count. Without this, a test would draw from whatever state the tests
    (or module fixtures) before it left, so its result could change with the order the
    tests run in, or with a test added before it. Set when each test starts, after any
    module or session fixture it uses is built. (A GPU's generator is not reset: CI has
    no GPU.)
    """
    python_state, numpy_state, torch_state, threads = _SESSION_START
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)
    torch.set_num_threads(threads)


@pytest.fixture
def recorded_bars(monkeypatch):
    """The progress bars ``train`` creates, drawn into a string instead of the terminal."""
    bars = []

    class RecordingBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)
            self.hidden = self.disable  # close() sets disable, so keep what train() asked for
            bars.append(self)

    monkeypatch.setattr(training, "tqdm", RecordingBar)
    return bars


@pytest.fixture(scope="session")
def recorded_data() -> Path:
    """The offline Tatoeba copy the committed full-budget runs were trained on (its sha256
    is the one ``data/README.md`` records); the test is skipped on any other data, since
    the runs' cache keys and test references come from the data's content."""
    from helpers.data import DataNotFoundError, resolve_data_path

    try:
        data = resolve_data_path(download=False)
    except DataNotFoundError:
        pytest.skip("no data file available")
    readme = Path(__file__).resolve().parent.parent / "data" / "README.md"
    recorded = re.search(r"sha256: `([0-9a-f]{64})`", readme.read_text(encoding="utf-8"))
    assert recorded, "data/README.md must record the offline copy's sha256"
    if hashlib.sha256(data.read_bytes()).hexdigest() != recorded.group(1):
        pytest.skip(f"{data} is not the copy the runs were trained on")
    return data


class FakeClock:
    """Stands in for a module's ``time``: ``perf_counter`` returns the given readings in
    turn, then moves on by ``tick`` seconds at each reading; ``advance`` moves it by hand
    (a stub "doing work")."""

    def __init__(self, readings=(), tick: float = 0.0, start: float = 0.0):
        self.readings, self.tick, self.now = list(readings), tick, start

    def perf_counter(self) -> float:
        if self.readings:
            return self.readings.pop(0)
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock(monkeypatch):
    """``fake_clock(module, *readings, tick=...)`` replaces ``module.time`` (that module's
    name only, not the ``time`` module everyone shares) with a :class:`FakeClock`."""

    def install(module, *readings: float, tick: float = 0.0) -> FakeClock:
        clock = FakeClock(readings, tick)
        monkeypatch.setattr(module, "time", clock)
        return clock

    return install


@pytest.fixture
def stop_at(monkeypatch):
    """``stop_at(module, name)`` replaces ``module.name`` with a stand-in that raises, and
    returns the exception it raises: a command's checks can be tested in process, up to
    the step after them, without running the minutes of work that follow.

    ``with pytest.raises(stop_at(benchmark, "select_device")): benchmark.main(flags)``
    passes only if the flags got through every check before the device is chosen.
    """

    def install(module, name: str) -> type[Exception]:
        class Reached(Exception):
            pass

        def stand_in(*args, **kwargs):
            raise Reached(f"{module.__name__}.{name} was reached")

        monkeypatch.setattr(module, name, stand_in)
        return Reached

    return install


class HostCopies(torch.overrides.TorchFunctionMode):
    """Inside it, records every copy of host data onto ``device`` (``shapes``: each
    copy's shape): ``torch.tensor``/``as_tensor``/``new_tensor`` of data not already
    there (``torch.from_numpy`` makes no copy and is not seen; its ``.to`` is), a CPU tensor's ``.to``/``.cuda`` given a device, and ``copy_``
    from a CPU tensor. With ``device="meta"`` these are the copies a GPU would make;
    with ``"cpu"``, the calls that would be copies if the model were on a GPU (so a CPU
    tensor given to ``tensor``/``as_tensor``/``new_tensor`` with a ``device`` counts)."""

    FROM_DATA = ("tensor", "as_tensor", "new_tensor")

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if isinstance(result, torch.Tensor) and result.device.type == self.device.type:
            if name in self.FROM_DATA:
                data = args[1] if name == "new_tensor" else args[0]
                copied = not (isinstance(data, torch.Tensor) and data.device == result.device)
                # On "cpu" a CPU tensor sent to an explicit device is already "there", but
                # on a GPU it would be a copy (torch.as_tensor(cpu_steps, device=device)).
                copied |= (
                    self.device.type == "cpu"
                    and isinstance(data, torch.Tensor)
                    and kwargs.get("device") is not None
                )
            elif name in ("to", "cuda"):
                asked = [*args[1:], kwargs.get("device")]
                copied = args[0].device.type == "cpu" and any(
                    isinstance(where, (str, torch.device)) for where in asked
                )
            else:
                copied = name == "copy_" and args[1].device.type == "cpu"
            if copied:
                self.shapes.append(tuple(result.shape))
        return result


@pytest.fixture
def host_copies():
    """``with host_copies("meta") as copies:`` records the host-to-device copies made
    inside (:class:`HostCopies`)."""
    return HostCopies
