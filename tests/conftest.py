"""Fixtures shared by several test files."""

import io

import pytest
from tqdm.auto import tqdm

import helpers.training as training


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
