"""python -m helpers.train: one process, and two CPU processes under torchrun (DDP, gloo)."""

import json
import subprocess
import sys
import time

import pytest
import torch

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


def run(command, tmp_path, name, extra=()):
    output, summary = tmp_path / f"{name}.pt", tmp_path / f"{name}.json"
    result = subprocess.run(
        [*command, *ARGS, *extra, "--output", str(output), "--summary", str(summary)],
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


def test_a_two_process_run_killed_after_an_epoch_resumes_exactly(tmp_path):
    """Each rank draws its own dropout masks; --resume must give each its own random
    state back (not rank 0's, not a fresh seed), so the resumed run is the whole run."""
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"
    ]  # fmt: skip
    dropout = ["--dropout", "0.3"]
    whole, _ = run([*torchrun], tmp_path, "whole", extra=dropout)
    partial = tmp_path / "partial.pt"
    process = subprocess.Popen(
        [*torchrun, *ARGS, *dropout, "--output", str(partial)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.terminate()  # torchrun passes SIGTERM on: the workers die mid-epoch
    process.wait(timeout=60)
    _, extra = load_checkpoint(partial)
    if "resume" not in extra or len(extra["history"]["epochs"]) != 1:
        pytest.skip("the run got past its first epoch before it could be killed")
    assert len(extra["resume"]["random_state_by_rank"]) == 2
    run([*torchrun], tmp_path, "partial", extra=[*dropout, "--resume"])
    whole_model, whole_extra = load_checkpoint(whole)
    resumed_model, resumed_extra = load_checkpoint(partial)
    for name, tensor in whole_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name
    assert (
        whole_extra["history"]["epochs"][-1]["train_loss"]
        == (resumed_extra["history"]["epochs"][-1]["train_loss"])
    )


def _tiny_problem():
    from helpers.models import ModelConfig, Seq2Seq

    torch.manual_seed(0)
    model = Seq2Seq(
        ModelConfig(12, 12, embedding_size=8, hidden_size=8, dropout=0.0, decoder="luong")
    )
    generator = torch.Generator().manual_seed(1)
    examples = []
    for target_length in (1, 7, 7, 7):  # one short target, three long: unequal shards
        source = torch.randint(4, 12, (5,), generator=generator)
        target = torch.randint(4, 12, (target_length,), generator=generator)
        examples.append((source, torch.cat([torch.tensor([1]), target, torch.tensor([2])])))
    return model, examples


def _one_step(model, examples):
    from torch.utils.data import DataLoader

    from helpers.batching import collate_batch
    from helpers.training import train

    loader = DataLoader(examples, batch_size=len(examples), collate_fn=collate_batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the step is the gradient
    train(model, loader, epochs=1, optimizer=optimizer, clip=1e9, progress=False, device="cpu")


def _ddp_worker(rank, init_file, result_file):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from helpers.train import end_distributed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model, examples = _tiny_problem()
    shard = examples[:1] if rank == 0 else examples[1:]  # 2 tokens against 24
    wrapped = DistributedDataParallel(model)
    _one_step(wrapped, shard)
    if rank == 0:
        torch.save(model.state_dict(), result_file)
    del wrapped
    end_distributed()  # as the CLI ends: a barrier, the wrapper freed, then the teardown


def test_a_ddp_step_with_unequal_shards_is_the_single_process_step(tmp_path):
    """The loss is a mean over the global batch's tokens, not a mean of per-rank means."""
    import torch.multiprocessing as mp

    single_model, examples = _tiny_problem()
    _one_step(single_model, examples)
    result = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    ddp_state = torch.load(result, weights_only=True)
    for name, tensor in single_model.state_dict().items():
        assert torch.allclose(tensor, ddp_state[name], atol=1e-6), name


def test_end_distributed_frees_the_ddp_wrapper_before_the_group_goes(tmp_path):
    """A dropped DDP wrapper that only the cycle collector can free (in torch 2.13 the first
    wrapper of a process is held by a cycle through a frame of torch's lazy attribute
    lookup) keeps the gloo group alive through its reducer. end_distributed must free it
    before the teardown, not leave it to interpreter shutdown, where gloo's running threads
    abort the process."""
    import gc
    import weakref

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from helpers.train import end_distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    was_enabled = gc.isenabled()
    gc.disable()  # no collection by chance in between: only end_distributed's counts
    try:
        wrapped = DistributedDataParallel(torch.nn.Linear(3, 3))
        wrapped(torch.randn(2, 3)).sum().backward()
        wrapped.__dict__["cycle"] = wrapped  # such a cycle, whatever torch's state
        alive = weakref.ref(wrapped)
        del wrapped
        assert alive() is not None
        end_distributed()
        assert alive() is None
        assert not dist.is_initialized()
    finally:
        if was_enabled:
            gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()
