"""The benchmark runs end to end and reports its figures (no timing is asserted)."""

import re
import subprocess
import sys

import pytest

from helpers.data import DataNotFoundError, resolve_data_path


def test_benchmark_prints_both_speeds_and_the_ratio_last():
    try:
        resolve_data_path(download=False)
    except DataNotFoundError:
        pytest.skip("no data file available")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "helpers.benchmark",
            "--duration",
            "1",  # the output's form is under test here, not the speeds
            "--hidden-size",
            "64",
            "--max-pairs",
            "4000",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("(a) article's loop") for line in lines)
    assert any(line.startswith("(a') the same loop, 100% teacher forcing") for line in lines)
    assert any(line.startswith("(b) helpers.training.train") for line in lines)
    [beam_line] = [line for line in lines if line.startswith("decoding, beam 5")]
    beam = re.fullmatch(
        r"decoding, beam 5: ([0-9,]+) sentences/s \(1,024 hypotheses per batch\); the "
        r"series' first beam search .*, 256 hypotheses per batch\): ([0-9,]+) sentences/s; "
        r"([0-9.]+)x",
        beam_line,
    )
    assert beam, beam_line  # the tensorised search and the old loop, timed side by side
    assert all(float(beam.group(i).replace(",", "")) > 0 for i in (1, 2, 3))
    match = re.fullmatch(
        r"speed-up \(b\)/\(a\): ([0-9.]+)x; at the same objective, \(b\)/\(a'\): ([0-9.]+)x",
        lines[-1],
    )
    assert match and float(match.group(1)) > 0 and float(match.group(2)) > 0


@pytest.mark.parametrize(
    "flags", [["--duration", "0"], ["--duration", "nan"], ["--batch-size", "0"]]
)
def test_benchmark_refuses_meaningless_settings(flags):
    result = subprocess.run(
        [sys.executable, "-m", "helpers.benchmark", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "must be" in result.stderr and "Traceback" not in result.stderr
