"""python -m helpers.train: one process, and two CPU processes under torchrun (DDP, gloo)."""

import json
import subprocess
import sys

import pytest

from helpers.checkpoints import load_checkpoint
from helpers.decoding import translate

ARGS = [
    "-m",
    "helpers.train",
    "--task",
    "dates",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--no-progress",
    "--seed",
    "0",
]


def run(command, tmp_path, name):
    output, summary = tmp_path / f"{name}.pt", tmp_path / f"{name}.json"
    result = subprocess.run(
        [*command, *ARGS, "--output", str(output), "--summary", str(summary)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output, json.loads(summary.read_text())


def test_two_processes_under_torchrun_match_one_process(tmp_path):
    single_checkpoint, single = run([sys.executable], tmp_path, "single")
    double_checkpoint, double = run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
        tmp_path,
        "ddp",
    )
    print("single:", single, "\nddp:", double)
    assert single["processes"] == 1 and double["processes"] == 2
    # Each DDP step sees the same global batch as the single-process step, and the loss is
    # normalised by the global token count, so each step is the single-process step up to
    # the order of floating-point sums (the dates recipe has no dropout). The two runs
    # agree to a fraction of a percent, not just roughly.
    assert double["final_valid_loss"] == pytest.approx(single["final_valid_loss"], abs=1e-3)
    assert double["gold_alignment"] == pytest.approx(single["gold_alignment"], abs=0.02)
    assert double["test_bleu"] == pytest.approx(single["test_bleu"], abs=1)
    # Rank 0 wrote a checkpoint the notebooks can load.
    model, extra = load_checkpoint(double_checkpoint)
    assert extra["summary"]["processes"] == 2
    assert translate(model, "24 November 2026").text == "2026-11-24"
