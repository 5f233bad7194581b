"""The benchmark runs end to end and reports its figures (no timing is asserted)."""

import re
import subprocess
import sys

import pytest
import torch

from helpers.benchmark import project_trainer_tokens_per_second
from helpers.data import DataNotFoundError, resolve_data_path
from helpers.models import Seq2Seq
from helpers.tasks import dates_task
from helpers.training import set_seed


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
            "--train-batches",
            "30",
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
    assert any(
        line.startswith("(b) helpers.training.train") and "30 batches after 20 of warm-up" in line
        for line in lines
    )
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
    "flags",
    [["--duration", "0"], ["--duration", "nan"], ["--batch-size", "0"], ["--train-batches", "0"]],
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


def test_the_benchmarks_model_is_trained_on_fixed_batches_so_every_run_decodes_the_same():
    """Decoding is timed on the model (b) leaves; trained for a time budget, that model,
    and so how long its outputs are and how fast they decode, changed with the machine's
    speed. Trained on a fixed number of batches it is the same on every run."""
    task = dates_task(train_size=300, valid_size=20, test_size=20, seed=1)
    config = task.model_config(embedding_size=8, hidden_size=16, decoder="luong")
    runs = [
        project_trainer_tokens_per_second(
            task, config, torch.device("cpu"), batches=12, batch_size=32, warmup_batches=3
        )
        for _ in range(2)
    ]
    (first_speed, first), (second_speed, second) = runs
    assert first_speed > 0 and second_speed > 0
    for (name, left), (_, right) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(left, right), name
    set_seed(0)  # the benchmark's initial weights: the runs above did train
    untrained = Seq2Seq(config)
    assert not torch.equal(untrained.decoder.embedding.weight, first.decoder.embedding.weight)
