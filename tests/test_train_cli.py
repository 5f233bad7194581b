"""python -m helpers.train loses nothing: inputs checked first, a checkpoint every epoch,
--resume, Ctrl-C, and a model that is saved even when scoring fails."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers.checkpoints import load_checkpoint

DATES = ["-m", "helpers.train", "--task", "dates", "--batch-size", "64", "--no-progress"]
DATES += ["--hidden-size", "32", "--embedding-size", "16"]


def cli(*flags, timeout=600):
    return subprocess.run([sys.executable, *flags], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--learning-rate", "-1"], "--learning-rate must be positive"),
        (["--dropout", "1.5"], "--dropout must lie in"),
        (["--device", "gpu"], "unknown device 'gpu'"),
    ],
)
def test_bad_flags_are_refused_before_anything_runs(tmp_path, flags, message):
    result = cli(*DATES, *flags, "--output", str(tmp_path / "model.pt"), timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "model.pt").exists()


def test_the_checkpoint_the_summary_and_the_data_never_overwrite_one_another(
    tmp_path, monkeypatch, capsys
):
    """``--summary`` onto ``--output`` replaced the trained model with its JSON, and
    ``--output`` onto the data file turned the data into a checkpoint after one epoch.
    Refused before anything runs, however the path is spelled; an earlier checkpoint at
    ``--output`` may still be replaced."""
    from helpers.train import parse_arguments

    monkeypatch.delenv("PAYING_ATTENTION_DATA", raising=False)
    data, checkpoint = tmp_path / "small.tsv", tmp_path / "m.pt"
    data.write_text("Go.\tGeh.\n")
    same_data = str(tmp_path / "sub" / ".." / "small.tsv")
    (tmp_path / "sub").mkdir()
    for flags, message in [
        (["--output", str(checkpoint), "--summary", str(checkpoint)], "--output and --summary are the same file"),
        (["--data", str(data), "--output", same_data], "--output and --data are the same file"),
        (["--data", str(data), "--output", str(checkpoint), "--summary", same_data], "--summary and --data are the same file"),
        (["--output", str(data)], f"--output {data} exists and is not a checkpoint"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as refused:
            parse_arguments(flags)
        assert refused.value.code == 2 and message in capsys.readouterr().err, flags
    monkeypatch.setenv("PAYING_ATTENTION_DATA", str(data))  # the data by default
    with pytest.raises(SystemExit):
        parse_arguments(["--output", str(checkpoint), "--summary", str(data)])
    assert "--summary and --data are the same file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one file on macOS and Windows
        parse_arguments(["--output", str(tmp_path / "M.pt"), "--summary", str(tmp_path / "m.pt")])
    assert (
        "--output and --summary are the same file, or differ only in case"
        in capsys.readouterr().err
    )
    assert data.read_text() == "Go.\tGeh.\n" and not checkpoint.exists()
    torch.save({"weights": torch.ones(2)}, checkpoint)  # an earlier run's
    arguments = parse_arguments(
        ["--output", str(checkpoint), "--summary", str(tmp_path / "s.json")]
    )
    assert arguments.output == str(checkpoint)
    assert parse_arguments(
        ["--output", str(data), "--data", str(tmp_path / "other.tsv"), "--resume"]
    )
    # --summary replaced any file, a model or notes; an earlier summary may be replaced.
    notes, summary = tmp_path / "notes.md", tmp_path / "s.json"
    notes.write_text("# my notes\n")
    for not_a_summary in (notes, checkpoint):
        with pytest.raises(SystemExit):
            parse_arguments(["--output", str(tmp_path / "n.pt"), "--summary", str(not_a_summary)])
        assert f"--summary {not_a_summary} exists and is not a summary this command wrote" in (
            capsys.readouterr().err
        )
    summary.write_text(json.dumps({"task": "dates", "test_bleu": 1.0}))
    assert parse_arguments(["--output", str(tmp_path / "n.pt"), "--summary", str(summary)])


def test_an_output_that_cannot_be_written_is_refused_before_training(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("in the way")
    for output, message in [
        (tmp_path, "is a directory"),
        (a_file / "model.pt", "is a file, so no folder can be made under it"),
    ]:
        started = time.perf_counter()
        result = cli(*DATES, "--output", str(output), timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert time.perf_counter() - started < 30, "it trained before checking"
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = cli(*DATES, "--output", str(locked / "model.pt"), timeout=60)
        assert result.returncode == 2 and "cannot write" in result.stderr


def test_too_few_sentences_are_refused_before_training(tmp_path):
    data = tmp_path / "tiny.tsv"
    data.write_text("".join(f"Sentence {i}.\tSatz {i}.\n" for i in range(5)))
    result = cli(
        "-m", "helpers.train", "--data", str(data), "--epochs", "1", "--no-progress",
        "--output", str(tmp_path / "model.pt"), timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "too few sentences" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "model.pt").exists()


def test_resume_continues_an_interrupted_run_exactly(tmp_path):
    whole = tmp_path / "whole.pt"
    assert cli(*DATES, "--epochs", "2", "--output", str(whole)).returncode == 0
    # A finished run cannot be resumed by accident ...
    refused = cli(*DATES, "--epochs", "3", "--resume", "--output", str(whole))
    assert refused.returncode == 2 and "a finished model" in refused.stderr
    # ... but its end-of-epoch checkpoint can: interrupt a run after its first epoch.
    partial = tmp_path / "partial.pt"
    process = subprocess.Popen(
        [sys.executable, *DATES, "--epochs", "2", "--output", str(partial)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not partial.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before it could be interrupted")
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted: the checkpoint of epoch 1" in stderr and "--resume" in stderr
    resumed = cli(*DATES, "--epochs", "2", "--resume", "--output", str(partial))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1 of 2" in resumed.stdout
    whole_model, whole_extra = load_checkpoint(whole)
    resumed_model, resumed_extra = load_checkpoint(partial)
    for name, tensor in whole_model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name
    losses = [
        [(e["train_loss"], e["valid_loss"]) for e in extra["history"]["epochs"]]
        for extra in (whole_extra, resumed_extra)
    ]
    assert losses[0] == losses[1]
    assert whole_extra["summary"]["test_bleu"] == resumed_extra["summary"]["test_bleu"]
    assert "resume" not in resumed_extra  # finished now


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    result = cli(*DATES, "--epochs", "1", "--resume", "--output", str(tmp_path / "none.pt"))
    assert result.returncode == 2 and "cannot resume: no checkpoint at" in result.stderr


def test_a_failed_scoring_never_costs_the_trained_model(tmp_path):
    # Every sentence is longer than the model's max_source_length (64 tokens), so
    # scoring the test set fails after training. The model must be on disk anyway.
    words = " ".join(f"w{i}" for i in range(70))
    data = tmp_path / "long.tsv"
    data.write_text("".join(f"{words} {i}.\tSatz {i}.\n" for i in range(60)))
    output, summary = tmp_path / "model.pt", tmp_path / "summary.json"
    result = cli(
        "-m", "helpers.train", "--data", str(data), "--epochs", "1", "--no-progress",
        "--hidden-size", "16", "--embedding-size", "8",
        "--output", str(output), "--summary", str(summary), timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"the model is saved at {output}, but scoring failed" in result.stderr
    _, extra = load_checkpoint(output)
    assert len(extra["history"]["epochs"]) == 1 and "test_error" in extra["summary"]
    assert "test_error" in json.loads(summary.read_text())


def test_a_time_budget_stop_is_said_and_recorded_in_the_summary(tmp_path):
    output, summary = tmp_path / "model.pt", tmp_path / "summary.json"
    result = cli(
        *DATES, "--epochs", "50", "--time-budget", "0.5",
        "--output", str(output), "--summary", str(summary), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stopped by the --time-budget of 0.5 s" in result.stdout
    recorded = json.loads(summary.read_text())
    assert recorded["stopped_by_time_budget"] is True and recorded["epochs"] < 50
    _, extra = load_checkpoint(output)
    assert extra["summary"]["stopped_by_time_budget"] is True
    assert extra["history"]["stopped_by_budget"] is True


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize(("pool_batches", "drop_last"), [(50, False), (1, False), (2, True)])
def test_each_rank_gets_its_share_of_every_global_batch_and_all_ranks_take_the_same_steps(
    world_size, pool_batches, drop_last
):
    """Rank r keeps ``batch[r::world_size]`` of each global batch, so one distributed
    step sees exactly one single-process step's examples; a global batch smaller than the
    world is skipped by every rank (DDP would hang on unequal steps), and the length is
    the number of steps each rank takes, in every epoch."""
    from helpers.batching import BucketBatchSampler
    from helpers.train import ShardedBatchSampler

    lengths = [(index % 7, index % 5) for index in range(43)]  # batches of 8, then 3
    for epoch in range(3):
        plan = BucketBatchSampler(
            lengths, 8, seed=4, pool_batches=pool_batches, drop_last=drop_last
        )
        plan.set_epoch(epoch)
        global_batches = plan.epoch_batches()
        shared = [batch for batch in global_batches if len(batch) >= world_size]
        per_rank = []
        for rank in range(world_size):
            sampler = BucketBatchSampler(
                lengths, 8, seed=4, pool_batches=pool_batches, drop_last=drop_last
            )
            sampler.set_epoch(epoch)
            sharded = ShardedBatchSampler(sampler, rank, world_size)
            assert len(sharded) == len(shared)
            per_rank.append(list(sharded))
            assert sampler.epoch == epoch + 1  # iterating moved on; len() did not
        assert [len(shards) for shards in per_rank] == [len(shared)] * world_size
        for step, batch in enumerate(shared):
            shards = [per_rank[rank][step] for rank in range(world_size)]
            assert shards == [batch[rank::world_size] for rank in range(world_size)]
            assert sorted(sum(shards, [])) == sorted(batch)
    assert (len(shared) < len(global_batches)) == (world_size > 3 and not drop_last)


def test_every_process_gets_its_own_dropout_masks_and_rank_0_the_single_process_ones():
    """After identical initial weights, each rank draws its own dropout masks (identical
    masks on every shard would waste the extra processes), reproducibly; rank 0's stream
    is left as one process would have it."""
    from helpers.train import seed_process_stream

    def masks_after_seeding(rank):
        torch.manual_seed(5)
        torch.rand(3)  # the model's initialisation has drawn from the stream already
        seed_process_stream(5, rank)
        return torch.nn.functional.dropout(torch.ones(1000), p=0.5)

    torch.manual_seed(5)
    torch.rand(3)
    single_process = torch.nn.functional.dropout(torch.ones(1000), p=0.5)
    masks = [masks_after_seeding(rank) for rank in range(4)]
    assert torch.equal(masks[0], single_process)
    for rank in range(4):
        assert torch.equal(masks_after_seeding(rank), masks[rank])  # reproducible
        for other in range(rank):
            assert not torch.equal(masks[rank], masks[other]), (rank, other)


def test_every_flag_reaches_the_model_and_the_training_settings(tmp_path):
    """Flags override the recipe (the notebooks' own settings) and nothing else."""
    from helpers.recipes import dates_recipe, tatoeba_recipe
    from helpers.train import _settings_for, parse_arguments

    cpu = torch.device("cpu")
    output = str(tmp_path / "m.pt")
    arguments = parse_arguments(
        ["--task", "dates", "--decoder", "luong", "--attention", "dot", "--hidden-size", "40",
         "--embedding-size", "12", "--dropout", "0.3", "--epochs", "4", "--time-budget", "9",
         "--batch-size", "16", "--learning-rate", "0.01", "--seed", "7", "--output", output]
    )  # fmt: skip
    model, settings = _settings_for(arguments, cpu)
    recipe_model, recipe_settings = dates_recipe("luong")
    assert model == recipe_model | dict(
        attention="dot", hidden_size=40, embedding_size=12, dropout=0.3
    )
    assert settings.to_dict() == recipe_settings.to_dict() | dict(
        epochs=4, time_budget=9.0, batch_size=16, learning_rate=0.01, seed=7
    )
    plain = parse_arguments(["--decoder", "bahdanau", "--output", output])
    model, settings = _settings_for(plain, cpu)
    assert (model, settings) == tatoeba_recipe("bahdanau", cpu)
    assert settings.seed == 0 and settings.time_budget is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--hidden-size", "0"], "--hidden-size must be at least 1"),
        (["--embedding-size", "-2"], "--embedding-size must be at least 1"),
        (["--time-budget", "0"], "--time-budget must be positive"),
        (["--time-budget", "nan"], "--time-budget must be positive"),
        (["--learning-rate", "0"], "--learning-rate must be positive"),
        (["--dropout", "1"], "--dropout must lie in [0, 1)"),
        (["--dropout", "-0.1"], "--dropout must lie in [0, 1)"),
        # inf passed "> 0" and trained an all-NaN model that was saved and scored.
        (["--learning-rate", "inf"], "--learning-rate must be positive and finite"),
        # NumPy refused these only after the data had loaded, with a traceback.
        (["--seed", "-1"], "--seed must lie in [0, 2**32)"),
        (["--seed", str(2**32)], "--seed must lie in [0, 2**32)"),
    ],
)
def test_flags_out_of_range_are_refused_in_process(flags, message, capsys, tmp_path):
    from helpers.train import parse_arguments

    with pytest.raises(SystemExit) as stopped:
        parse_arguments([*flags, "--output", str(tmp_path / "m.pt")])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_flags_at_the_edge_of_their_range_are_accepted(tmp_path):
    from helpers.train import parse_arguments

    for fine in (["--dropout", "0"], ["--hidden-size", "1"], ["--time-budget", "0.1"]):
        parse_arguments([*fine, "--output", str(tmp_path / "m.pt")])


def test_a_global_batch_smaller_than_the_world_is_refused_before_anything_starts(
    tmp_path, monkeypatch, capsys, stop_at
):
    """Each process takes its share of every global batch; with fewer sentences per batch
    than processes there is nothing to share."""
    import helpers.train as train_cli
    from helpers.train import main

    monkeypatch.setenv("WORLD_SIZE", "4")
    flags = [*DATES[2:], "--output", str(tmp_path / "m.pt")]
    assert main([*flags, "--batch-size", "3"]) == 2
    assert "--batch-size 3 is smaller than the 4 processes" in capsys.readouterr().err

    # One sentence each is enough: the run gets to the next step, choosing the device.
    with pytest.raises(stop_at(train_cli, "select_device")):
        main([*flags, "--batch-size", "4"])


def test_a_summary_path_that_cannot_be_written_is_refused_too(tmp_path, capsys):
    from helpers.train import parse_arguments, unwritable

    with pytest.raises(SystemExit):
        parse_arguments(["--output", str(tmp_path / "m.pt"), "--summary", str(tmp_path)])
    assert f"--summary {tmp_path}: is a directory" in capsys.readouterr().err
    assert unwritable(tmp_path / "new" / "folders" / "m.pt") is None  # made on the way
    assert (tmp_path / "new" / "folders").is_dir()
    assert list((tmp_path / "new" / "folders").iterdir()) == []  # the probe is gone
    existing = tmp_path / "existing.pt"
    existing.write_bytes(b"")
    assert unwritable(existing) is None


def test_a_folder_or_file_without_write_permission_is_refused(tmp_path, monkeypatch, capsys):
    """What a read-only folder or file does for a normal user, faked in-process so that it
    is checked as root too (root may write anywhere, so the subprocess test above skips
    it there): the folder's probe file fails with EACCES, or the file is not writable."""
    import helpers.files
    from helpers.train import parse_arguments, unwritable

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    folder = tmp_path / "locked"
    folder.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(helpers.files.tempfile, "NamedTemporaryFile", refused)
        assert unwritable(folder / "m.pt") == f"cannot write in {folder} (Permission denied)"
        with pytest.raises(SystemExit) as stopped:
            parse_arguments(["--output", str(folder / "m.pt")])
    assert stopped.value.code == 2
    assert f"--output {folder / 'm.pt'}: cannot write in {folder}" in capsys.readouterr().err
    existing = folder / "m.pt"
    existing.write_bytes(b"")
    monkeypatch.setattr(
        helpers.files.os, "access", lambda path, mode: not (path == existing and mode == os.W_OK)
    )
    assert unwritable(existing) == "exists and is read-only"
    assert unwritable(folder / "other.pt") is None


def test_resuming_with_other_settings_is_refused_but_more_epochs_are_allowed(
    tmp_path, monkeypatch, capsys
):
    """``--resume`` continues a run only with its own settings: another learning rate
    (or batch size, seed …) would make the result no run at all. More epochs than the
    interrupted run planned is what resuming is for."""
    import helpers.train as train_cli

    partial = tmp_path / "partial.pt"
    flags = [*DATES[2:], "--output", str(partial)]
    real_save = train_cli.save_checkpoint

    def save_then_interrupt(model, path, extra):  # Ctrl-C just after epoch 1's checkpoint
        real_save(model, path, extra=extra)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "save_checkpoint", save_then_interrupt)
    assert train_cli.main([*flags, "--epochs", "1"]) == 130
    assert f"interrupted: the checkpoint of epoch 1 is at {partial}" in capsys.readouterr().err
    monkeypatch.setattr(train_cli, "save_checkpoint", real_save)

    assert train_cli.main([*flags, "--epochs", "2", "--resume", "--learning-rate", "0.5"]) == 2
    error = capsys.readouterr().err
    assert "cannot resume" in error and "was trained with other settings" in error
    assert "'learning_rate': (0.003, 0.5)" in error
    # Forgetting --resume overwrote the interrupted run at the new run's first epoch; asking
    # for no more epochs than were done turned it into a finished model nothing resumes.
    written = partial.read_bytes()
    with pytest.raises(SystemExit) as refused:
        train_cli.main([*flags, "--epochs", "2"])
    assert refused.value.code == 2
    assert f"--output {partial} holds an interrupted run (1 epoch(s) done): add --resume" in (
        capsys.readouterr().err
    )
    assert partial.read_bytes() == written
    assert train_cli.main([*flags, "--epochs", "2", "--resume"]) == 0
    assert "resuming after epoch 1 of 2" in capsys.readouterr().out
    _, extra = load_checkpoint(partial)
    assert len(extra["history"]["epochs"]) == 2 and extra["settings"]["epochs"] == 2
    assert "resume" not in extra


def test_resume_refuses_fewer_epochs_than_were_done_and_finishes_with_as_many(
    tmp_path, monkeypatch, capsys
):
    """Fewer: it saved a "finished" model of more epochs than asked, its resume state gone.
    As many: the run is finished (saved and scored), as when its final save failed."""
    import helpers.train as train_cli

    partial = tmp_path / "partial.pt"
    flags = [*DATES[2:], "--output", str(partial)]
    real_save = train_cli.save_checkpoint
    saves = []

    def save_twice_then_interrupt(model, path, extra):  # Ctrl-C after epoch 2's checkpoint
        real_save(model, path, extra=extra)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "save_checkpoint", save_twice_then_interrupt)
    assert train_cli.main([*flags, "--epochs", "3"]) == 130
    monkeypatch.setattr(train_cli, "save_checkpoint", real_save)
    capsys.readouterr()
    written = partial.read_bytes()
    assert train_cli.main([*flags, "--epochs", "1", "--resume"]) == 2
    error = capsys.readouterr().err
    assert "2 epochs done already, more than --epochs 1 asks for. Give --epochs 2 or more" in error
    assert partial.read_bytes() == written
    assert train_cli.main([*flags, "--epochs", "2", "--resume"]) == 0
    _, extra = load_checkpoint(partial)
    assert len(extra["history"]["epochs"]) == 2 and "resume" not in extra
    assert "test_bleu" in extra["summary"]


def test_a_run_that_diverges_stops_with_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    import helpers.train as train_cli

    def diverge(*args, **kwargs):
        raise FloatingPointError("the training loss became nan in epoch 1")

    monkeypatch.setattr(train_cli, "train", diverge)
    output = tmp_path / "model.pt"
    assert train_cli.main([*DATES[2:], "--epochs", "1", "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert "error: training stopped: the training loss became nan" in error
    assert "no epoch was saved" in error and not output.exists()


@pytest.mark.parametrize(("valid_size", "test_size"), [(0, 20), (20, 0)])
def test_an_empty_validation_or_test_split_alone_is_refused(
    valid_size, test_size, tmp_path, monkeypatch, capsys
):
    """Either split empty is enough, said in one line before anything trains: with no
    validation sentences ``train`` would stop on its own error (a traceback), and with
    no test sentences there would be nothing to score."""
    import helpers.train as train_cli
    from helpers.tasks import dates_task

    monkeypatch.setattr(
        train_cli, "dates_task", lambda: dates_task(300, valid_size, test_size, seed=1)
    )
    output = tmp_path / "m.pt"
    assert train_cli.main([*DATES[2:], "--output", str(output)]) == 2
    assert "too few sentences to train and score" in capsys.readouterr().err
    assert not output.exists()


def test_the_summary_records_the_run_and_its_scores(tmp_path, monkeypatch, capsys, fake_clock):
    """The summary (printed last, written with --summary, and kept in the checkpoint) says
    what ran, for how long by the command's own clock, and how well the model scores."""
    import helpers.train as train_cli
    from helpers.decoding import translate_batch
    from helpers.metrics import alignment_accuracy, corpus_scores
    from helpers.tasks import dates_task

    task = dates_task(300, 20, 20, seed=1)
    monkeypatch.setattr(train_cli, "dates_task", lambda: task)
    fake_clock(train_cli, 100.0, 130.0)  # read when training starts and when it ends
    output, summary_path = tmp_path / "m.pt", tmp_path / "summary.json"
    flags = [*DATES[2:], "--epochs", "2", "--device", "cpu", "--output", str(output)]
    assert train_cli.main([*flags, "--summary", str(summary_path)]) == 0
    summary = json.loads(summary_path.read_text())
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.rindex("\n{") + 1 :]) == summary
    _, extra = load_checkpoint(output)
    assert extra["summary"] == summary
    last_epoch = extra["history"]["epochs"][-1]
    run = ["task", "processes", "device", "epochs", "stopped_by_time_budget", "train_seconds"]
    assert {key: summary[key] for key in [*run, "final_valid_loss"]} == {
        "task": "dates",
        "processes": 1,
        "device": "cpu",
        "epochs": 2,
        "stopped_by_time_budget": False,
        "train_seconds": 30.0,
        "final_valid_loss": last_epoch["valid_loss"],
    }
    # The scores are the saved model's, decoded greedily (the notebooks also report beam 5).
    model, _ = load_checkpoint(output)
    translations = translate_batch(model, task.test_sources, beam_size=1)
    scores = corpus_scores([t.text for t in translations], task.test_references)
    assert (summary["test_bleu"], summary["test_chrf"]) == (scores.bleu, scores.chrf)
    assert summary["bleu_signature"] == scores.bleu_signature
    assert summary["gold_alignment"] == alignment_accuracy(  # dates have gold alignments
        [t.attention for t in translations], task.test_gold_spans
    )


def test_a_model_without_attention_gets_no_gold_alignment_score(tmp_path, monkeypatch, capsys):
    """The plain decoder's maps are stand-in zeros: their argmax, the first source token,
    was scored as an alignment (0.194 in one run). Its summary now leaves the score out."""
    import helpers.train as train_cli
    from helpers.tasks import dates_task

    monkeypatch.setattr(train_cli, "dates_task", lambda: dates_task(300, 20, 20, seed=1))
    output = tmp_path / "plain.pt"
    flags = [*DATES[2:], "--decoder", "plain", "--epochs", "1", "--device", "cpu"]
    assert train_cli.main([*flags, "--output", str(output)]) == 0
    _, extra = load_checkpoint(output)
    assert "test_bleu" in extra["summary"] and "gold_alignment" not in extra["summary"]
    assert "test_error" not in extra["summary"]


def test_a_gpu_runs_random_state_is_restored_on_a_cpu_without_its_gpu_part(monkeypatch):
    """A run checkpointed on a GPU keeps the GPU's random state too; continued on a
    machine without one, the CPU's state is restored and the GPU's left alone. On a GPU
    both are restored. (The GPU's setter is a recorder here: CI has no GPU.)"""
    from helpers.train import _random_state, _set_random_state

    restored_on_gpu = []
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: restored_on_gpu.append(device)
    )
    torch.manual_seed(3)
    state = _random_state(torch.device("cpu"))
    assert list(state) == ["cpu"]
    expected = torch.rand(4)
    gpu_state = state | {"cuda": torch.zeros(16, dtype=torch.uint8)}
    torch.manual_seed(4)
    _set_random_state(gpu_state, torch.device("cpu"))
    assert torch.equal(torch.rand(4), expected) and restored_on_gpu == []
    _set_random_state(gpu_state, torch.device("cuda", 1))
    assert restored_on_gpu == [torch.device("cuda", 1)]
    _set_random_state(state, torch.device("cuda", 1))  # a CPU run continued on a GPU
    assert restored_on_gpu == [torch.device("cuda", 1)]


def test_the_command_line_trains_exactly_what_the_notebooks_recipe_trains(tmp_path, monkeypatch):
    """``python -m helpers.train`` on one process is the notebooks' ``train_model`` with
    the same settings: the same initial weights, the same shuffled batches, the same
    random stream for dropout (on here: the dates recipe has none), so the same weights
    bit for bit and the same losses."""
    import helpers.train as train_cli
    from helpers.recipes import dates_recipe, train_model
    from helpers.tasks import dates_task

    task = dates_task(300, 20, 20, seed=1)
    monkeypatch.setattr(train_cli, "dates_task", lambda: task)
    output = tmp_path / "m.pt"
    flags = [*DATES[2:], "--epochs", "2", "--device", "cpu", "--seed", "5", "--dropout", "0.2"]
    assert train_cli.main([*flags, "--output", str(output)]) == 0
    from_command_line, extra = load_checkpoint(output)

    model_settings, settings = dates_recipe("luong")
    model_settings |= {"hidden_size": 32, "embedding_size": 16, "dropout": 0.2}
    settings = type(settings)(**settings.to_dict() | {"epochs": 2, "batch_size": 64, "seed": 5})
    assert extra["settings"] == settings.to_dict()
    from_recipe, history = train_model(
        task, task.model_config(**model_settings), settings, "cpu", progress=False
    )
    for (name, left), (_, right) in zip(
        from_command_line.state_dict().items(), from_recipe.state_dict().items(), strict=True
    ):
        assert torch.equal(left, right), name
    for key in ("train_loss", "valid_loss"):  # validated on the same fixed batches too
        assert [epoch[key] for epoch in extra["history"]["epochs"]] == [
            getattr(record, key) for record in history.epochs
        ]


def test_an_output_path_is_required(capsys):
    from helpers.train import parse_arguments

    with pytest.raises(SystemExit) as stopped:
        parse_arguments(["--task", "dates"])
    assert stopped.value.code == 2 and "--output" in capsys.readouterr().err
