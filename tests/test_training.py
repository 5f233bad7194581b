"""The training loop, seeding, the loss, and a real training run on the dates task."""

import math
import random
import time
import warnings

import numpy as np
import pytest
import torch

from helpers.checkpoints import load_checkpoint, save_checkpoint
from helpers.decoding import translate_batch
from helpers.metrics import alignment_accuracy
from helpers.models import Seq2Seq
from helpers.recipes import (
    dates_recipe,
    epoch_snapshot_path,
    load_epoch_snapshot,
    train_model,
    train_or_load,
)
from helpers.tasks import copy_task, dates_task
from helpers.training import (
    TrainSettings,
    batch_loss,
    evaluate_loss,
    make_adam,
    select_device,
    sequence_loss,
    set_seed,
    train,
)
from helpers.vocab import PAD_INDEX

#: Torch's thread count when this file was imported, before any test changed it.
_SESSION_THREADS = torch.get_num_threads()


@pytest.fixture(scope="module")
def small_dates():
    return dates_task(train_size=600, valid_size=100, test_size=100, seed=3)


@pytest.fixture(scope="module")
def small_copy():
    """Targets of 2 to 12 characters: a per-token mean differs from a per-sentence one
    (every dates target has the same length)."""
    return copy_task(train_size=600, test_size=100, min_length=2, max_length=12, seed=0)


def test_loss_ignores_padding():
    logits = torch.randn(2, 3, 7)
    target = torch.tensor([[4, 5, PAD_INDEX], [6, PAD_INDEX, PAD_INDEX]])
    changed = logits.clone()
    changed[0, 2] = 100.0  # garbage at padded positions must not matter
    changed[1, 1:] = -100.0
    assert sequence_loss(changed, target) == pytest.approx(float(sequence_loss(logits, target)))
    manual = torch.nn.functional.cross_entropy(
        torch.stack([logits[0, 0], logits[0, 1], logits[1, 0]]), torch.tensor([4, 5, 6])
    )
    assert float(sequence_loss(logits, target)) == pytest.approx(float(manual))
    with pytest.raises(ValueError, match="do not match"):
        sequence_loss(logits, target[:, :2])
    # A target of nothing but <pad> has no mean loss (cross_entropy would give NaN); a sum
    # over no tokens is 0. "none" is refused: its zeros at the padding, averaged, would
    # bring back the very mistake this function exists to avoid.
    only_padding = torch.full_like(target, PAD_INDEX)
    with pytest.raises(ValueError, match=r"no real token \(only <pad>\)"):
        sequence_loss(logits, only_padding)
    assert float(sequence_loss(logits, only_padding, reduction="sum")) == 0.0
    with pytest.raises(ValueError, match='reduction must be "mean" or "sum", got \'none\''):
        sequence_loss(logits, target, reduction="none")


def test_device_is_chosen_by_calling_cuda_is_available(monkeypatch):
    monkeypatch.delenv("PAYING_ATTENTION_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device().type == "cpu"
    with pytest.raises(ValueError, match="'cuda' was asked for, but torch.cuda.is_available"):
        select_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        select_device("gpu")
    monkeypatch.setenv("PAYING_ATTENTION_DEVICE", "cuda:0")
    with pytest.raises(ValueError, match="'cuda:0' was asked for"):
        select_device()
    monkeypatch.delenv("PAYING_ATTENTION_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device().type == "cuda"
    assert select_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("cuda") == torch.device("cuda")  # no index: the current GPU
    assert select_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="'cuda:1' was asked for, but only 1 GPU"):
        select_device("cuda:1")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    # Accepted before, then failed inside torch: "meta" has no values, "mps" no Mac here.
    with pytest.raises(ValueError, match="device 'meta' holds no values to train or decode"):
        select_device("meta")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'mps' was asked for, but torch.backends.mps"):
        select_device("mps")


def test_train_runs_where_it_is_told_and_otherwise_where_select_device_says(
    small_dates, monkeypatch
):
    config = small_dates.model_config(embedding_size=8, hidden_size=8)
    train_loader, _ = small_dates.loaders(batch_size=200)
    arguments = dict(epochs=1, progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # so cuda:7 cannot exist
    monkeypatch.setenv("PAYING_ATTENTION_DEVICE", "cuda:7")
    train(Seq2Seq(config), train_loader, device="cpu", **arguments)  # an explicit device wins
    with pytest.raises(ValueError, match="'cuda:7' was asked for"):
        train(Seq2Seq(config), train_loader, **arguments)
    monkeypatch.setenv("PAYING_ATTENTION_DEVICE", "cpu")
    history = train(Seq2Seq(config), train_loader, **arguments)
    assert len(history.epochs) == 1
    # An explicit device is checked like any other: it was torch's bare AssertionError.
    with pytest.raises(ValueError, match="'cuda' was asked for, but torch.cuda.is_available"):
        train(Seq2Seq(config), train_loader, device="cuda", **arguments)


def test_an_optimizer_made_for_another_model_is_refused(small_dates):
    """It stepped the other model's weights: this one trained nothing, and the history
    looked like any other."""
    config = small_dates.model_config(embedding_size=8, hidden_size=8)
    train_loader, _ = small_dates.loaders(batch_size=200)
    model, other = Seq2Seq(config), Seq2Seq(config)
    arguments = dict(epochs=1, progress=False, device="cpu")
    with pytest.raises(ValueError, match="optimizer holds none of the model's parameters"):
        train(model, train_loader, optimizer=make_adam(other, 1e-2), **arguments)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    train(model, train_loader, optimizer=make_adam(model, 1e-2), **arguments)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_validation_loss_is_the_mean_over_every_real_token_not_over_batches(small_copy):
    """Batches and sentences hold different numbers of target tokens: the loss is their
    sum over the total count (the perplexity's definition), not the mean of the batch
    means, nor of the sentence means."""
    torch.manual_seed(0)
    model = Seq2Seq(small_copy.model_config(embedding_size=8, hidden_size=16)).eval()
    _, valid_loader = small_copy.loaders(batch_size=8)  # 32-sentence batches: 32, 32, 32, 4
    total, tokens, batch_means, sentence_means = 0.0, 0, [], []
    with torch.no_grad():
        for batch in valid_loader:
            logits = model(batch.source, batch.source_lengths, batch.decoder_input).logits
            total += float(sequence_loss(logits, batch.decoder_target, reduction="sum"))
            tokens += int((batch.decoder_target != PAD_INDEX).sum())
            batch_means.append(float(sequence_loss(logits, batch.decoder_target)))
            for row in range(len(logits)):
                sentence = sequence_loss(logits[row : row + 1], batch.decoder_target[row : row + 1])
                sentence_means.append(float(sentence))
    assert len(batch_means) == 4 and len(sentence_means) == 100
    assert evaluate_loss(model, valid_loader) == pytest.approx(total / tokens, rel=1e-5)
    assert total / tokens != pytest.approx(sum(batch_means) / len(batch_means), rel=1e-4)
    assert total / tokens != pytest.approx(sum(sentence_means) / len(sentence_means), rel=1e-4)


def test_a_cpu_run_repeats_exactly_with_the_same_seed(small_dates):
    config = small_dates.model_config(
        embedding_size=8, hidden_size=16, decoder="bahdanau", attention="additive"
    )
    settings = TrainSettings(epochs=2, batch_size=32, seed=7, teacher_forcing_ratio=0.5)
    first, first_history = train_model(small_dates, config, settings, device="cpu", progress=False)
    second, second_history = train_model(
        small_dates, config, settings, device="cpu", progress=False
    )
    for (name, left), (_, right) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(left, right), name
    assert first_history.epochs[-1].valid_loss == second_history.epochs[-1].valid_loss
    third, _ = train_model(  # only the seed differs: teacher forcing still draws its coins
        small_dates,
        config,
        TrainSettings(epochs=2, batch_size=32, seed=8, teacher_forcing_ratio=0.5),
        device="cpu",
        progress=False,
    )
    assert not torch.equal(first.decoder.generator.weight, third.decoder.generator.weight), (
        "another seed must differ"
    )


#: The generators' states and thread count that the first test of the pair below leaves.
_LEFT_BY_SEEDING: dict[str, object] = {}


def test_a_test_that_seeds_the_global_generators():
    """The first half of a pair: seeds everything (as every training test does), changes
    the thread count too, and records the state it leaves behind."""
    set_seed(11)
    torch.set_num_threads(_SESSION_THREADS + 1)
    _LEFT_BY_SEEDING.update(
        python=random.getstate(),
        numpy=np.random.get_state()[1].copy(),
        torch=torch.get_rng_state(),
    )


def test_the_next_test_does_not_inherit_that_seed():
    """The conftest fixture puts the session's starting random state and thread count
    back before each test, so no test's numbers depend on which tests ran before it."""
    if not _LEFT_BY_SEEDING:
        pytest.skip("runs only after test_a_test_that_seeds_the_global_generators")
    assert random.getstate() != _LEFT_BY_SEEDING["python"]
    assert not np.array_equal(np.random.get_state()[1], _LEFT_BY_SEEDING["numpy"])
    assert not torch.equal(torch.get_rng_state(), _LEFT_BY_SEEDING["torch"])
    assert torch.get_num_threads() == _SESSION_THREADS


def test_opt_in_time_budget_stops_training_and_still_validates(small_dates):
    """A budget stop (opt-in) ends training mid-epoch, and that epoch's validation loss is
    still computed, on the weights training ended with."""
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    settings = TrainSettings(epochs=50, batch_size=8, time_budget=0.5)
    model, history = train_model(small_dates, config, settings, device="cpu", progress=False)
    assert history.stopped_by_budget
    assert len(history.epochs) < 50
    # The epoch cut short is validated on the weights it ended with, like any other.
    _, valid_loader = small_dates.loaders(settings.batch_size, settings.seed)
    assert history.epochs[-1].valid_loss == pytest.approx(
        evaluate_loss(model, valid_loader), rel=1e-6
    )


def test_train_or_load_caches_by_settings_and_never_serves_stale_models(small_dates, tmp_path):
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    settings = TrainSettings(epochs=1, batch_size=32)
    path = tmp_path / "cached.pt"
    model, _, cached = train_or_load(
        small_dates, config, settings, path, device="cpu", progress=False
    )
    assert not cached
    again, _, cached = train_or_load(
        small_dates, config, settings, path, device="cpu", progress=False
    )
    assert cached
    for left, right in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(left, right)
    _, _, cached = train_or_load(
        small_dates,
        config,
        TrainSettings(epochs=1, batch_size=32, learning_rate=5e-3),
        path,
        device="cpu",
        progress=False,
    )
    assert not cached, "another learning rate must retrain"
    other_config = small_dates.model_config(embedding_size=8, hidden_size=16, attention="dot")
    _, _, cached = train_or_load(
        small_dates, other_config, settings, path, device="cpu", progress=False
    )
    assert not cached, "another attention must retrain"


def test_train_or_load_keeps_a_file_that_is_not_one_of_its_runs(small_dates, tmp_path):
    """A checkpoint of ``python -m helpers.train`` (no cache key), or any other file, at a
    notebook's checkpoint path is renamed, not overwritten; one of its own runs with
    another key is retrained over, silently, as documented."""
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    settings = TrainSettings(epochs=1, batch_size=32)
    path = tmp_path / "04_luong.pt"
    cli_model = Seq2Seq(config).attach_vocabularies(
        small_dates.source_vocab, small_dates.target_vocab
    )
    save_checkpoint(cli_model, path, extra={"history": {"epochs": []}})  # the CLI's: no key
    cli_bytes = path.read_bytes()
    with pytest.warns(
        UserWarning,
        match=r"04_luong.pt could not be read as a run saved by train_or_load \(it has no cache "
        r"key .*\), so it was moved to .*04_luong.pt.kept ",
    ):
        _, _, cached = train_or_load(small_dates, config, settings, path, "cpu", False)
    assert not cached and (tmp_path / "04_luong.pt.kept").read_bytes() == cli_bytes
    assert "cache_key" in load_checkpoint(path)[1]
    # Its own run, with another key: replaced without a word.
    other = TrainSettings(epochs=1, batch_size=32, learning_rate=5e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_or_load(small_dates, config, other, path, "cpu", False)
    assert sorted(child.name for child in tmp_path.iterdir()) == ["04_luong.pt", "04_luong.pt.kept"]
    # Anything else is kept too, under the next free name; and a run served from another
    # notebook's path (same_run) does not overwrite it either.
    path.write_text("my notes")
    with pytest.warns(
        UserWarning, match=r"\(is not a readable checkpoint.*moved to .*04_luong.pt.kept2"
    ):
        _, _, cached = train_or_load(
            small_dates, config, other, path, "cpu", False, same_run=tmp_path / "nowhere.pt"
        )
    assert (tmp_path / "04_luong.pt.kept2").read_text() == "my notes"
    served = tmp_path / "05_luong.pt"
    served.write_text("more notes")
    with pytest.warns(UserWarning, match="moved to .*05_luong.pt.kept"):
        _, _, cached = train_or_load(
            small_dates, config, other, served, "cpu", False, same_run=path
        )
    assert cached and (tmp_path / "05_luong.pt.kept").read_text() == "more notes"
    # An epoch snapshot's name is protected the same way; a snapshot of its own is not.
    snapshot = epoch_snapshot_path(path, 1)
    snapshot.write_text("notes beside a snapshot")
    with pytest.warns(UserWarning, match=r"04_luong.epoch1.pt could not .*moved to .*\.kept"):
        train_or_load(small_dates, config, settings, path, "cpu", False, snapshot_epochs=[1])
    assert snapshot.with_name(f"{snapshot.name}.kept").read_text() == "notes beside a snapshot"
    assert "cache_key" in load_checkpoint(snapshot)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_or_load(small_dates, config, other, path, "cpu", False, snapshot_epochs=[1])


def test_epoch_snapshots_are_the_weights_of_a_shorter_run_and_change_nothing(small_dates, tmp_path):
    """A run's early epochs can be studied from these snapshots instead of training them
    again (notebook 05's entropy during training, once 04 and 05 adopt them): each must be
    exactly the model a run of that many epochs gives."""
    config = small_dates.model_config(embedding_size=8, hidden_size=16, dropout=0.2)
    settings = TrainSettings(epochs=3, batch_size=32, lr_decay=0.8, seed=5)
    path = tmp_path / "run.pt"
    model, history, _ = train_or_load(
        small_dates, config, settings, path, device="cpu", progress=False, snapshot_epochs=(1, 2)
    )
    assert epoch_snapshot_path(path, 2) == tmp_path / "run.epoch2.pt"
    assert not epoch_snapshot_path(path, 3).exists()
    plain, _ = train_model(small_dates, config, settings, device="cpu", progress=False)
    for (name, left), right in zip(
        model.state_dict().items(), plain.state_dict().values(), strict=True
    ):
        assert torch.equal(left, right), f"saving snapshots changed the run: {name}"
    for epoch in (1, 2):
        snapshot, valid_loss = load_epoch_snapshot(
            small_dates, config, settings, path, epoch, "cpu"
        )
        assert not snapshot.training
        assert valid_loss == history.epochs[epoch - 1].valid_loss
        shorter, _ = train_model(
            small_dates,
            config,
            TrainSettings(**{**settings.to_dict(), "epochs": epoch}),
            device="cpu",
            progress=False,
        )
        for (name, left), right in zip(
            snapshot.state_dict().items(), shorter.state_dict().values(), strict=True
        ):
            assert torch.equal(left, right), (epoch, name)
    first = load_epoch_snapshot(small_dates, config, settings, path, 1, "cpu")[0]
    assert not all(
        torch.equal(left, right)
        for left, right in zip(
            first.state_dict().values(), model.state_dict().values(), strict=True
        )
    ), "epoch 1's snapshot must not be the final model"
    # Absent, or from another run: None, so that the caller trains instead.
    assert load_epoch_snapshot(small_dates, config, settings, path, 3, "cpu") is None
    other = TrainSettings(**{**settings.to_dict(), "learning_rate": 5e-3})
    assert load_epoch_snapshot(small_dates, config, other, path, 1, "cpu") is None
    wider = small_dates.model_config(embedding_size=8, hidden_size=24, dropout=0.2)
    assert load_epoch_snapshot(small_dates, wider, settings, path, 1, "cpu") is None
    epoch_snapshot_path(path, 2).write_bytes(b"truncated")
    assert load_epoch_snapshot(small_dates, config, settings, path, 2, "cpu") is None
    for wrong in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="snapshot_epochs"):
            train_or_load(
                small_dates,
                config,
                settings,
                tmp_path / "x.pt",
                "cpu",
                False,
                snapshot_epochs=(wrong,),
            )
    # The last epoch is an epoch of the run too: its snapshot is the final model.
    last = tmp_path / "last.pt"
    final, _, _ = train_or_load(
        small_dates, config, settings, last, "cpu", False, snapshot_epochs=(3,)
    )
    snapshot, _ = load_epoch_snapshot(small_dates, config, settings, last, 3, "cpu")
    assert _same_weights(snapshot, final)


def _same_weights(left: torch.nn.Module, right: torch.nn.Module) -> bool:
    return all(
        torch.equal(a, b)
        for a, b in zip(left.state_dict().values(), right.state_dict().values(), strict=True)
    )


def test_the_batched_optimiser_step_trains_exactly_the_per_parameter_loop(small_dates, monkeypatch):
    """train() updates (Adam) and clips all parameters with one call per operation
    (``foreach``), for speed: the trained weights must be the per-parameter loops' bit
    for bit, or every committed number would move (as ``fused=True`` would make them)."""
    config = small_dates.model_config(embedding_size=8, hidden_size=16, decoder="luong")

    def run(optimiser=None):
        set_seed(5)
        model = Seq2Seq(config)
        train_loader, valid_loader = small_dates.loaders(batch_size=32, seed=5)
        history = train(
            model,
            train_loader,
            valid_loader,
            epochs=2,
            learning_rate=5e-3,
            clip=0.5,  # low enough that clipping acts
            device="cpu",
            progress=False,
            optimizer=optimiser(model) if optimiser else None,
        )
        return model, history

    batched, batched_history = run()
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils,
        "clip_grad_norm_",
        lambda parameters, max_norm, foreach=None: clip(parameters, max_norm, foreach=False),
    )
    looped, looped_history = run(
        lambda model: torch.optim.Adam(model.parameters(), lr=5e-3, foreach=False)
    )
    assert _same_weights(batched, looped)
    assert batched_history.epochs[-1].valid_loss == looped_history.epochs[-1].valid_loss
    fused, _ = run(lambda model: torch.optim.Adam(model.parameters(), lr=5e-3, fused=True))
    assert not _same_weights(batched, fused), "the test must tell another rounding apart"


def test_a_run_another_notebook_keeps_is_served_under_this_notebooks_name(small_dates, tmp_path):
    """Notebook 05 reads 02's dates model (the same run under 02's file name) instead of
    training it again, and keeps it under its own name, where 08 looks for it."""
    config = small_dates.model_config(embedding_size=8, hidden_size=16, dropout=0.0)
    settings = TrainSettings(epochs=2, batch_size=32, seed=3)
    kept = tmp_path / "02_kept.pt"
    original, original_history, _ = train_or_load(small_dates, config, settings, kept, "cpu", False)

    served_path = tmp_path / "05_served.pt"
    served, history, cached = train_or_load(
        small_dates, config, settings, served_path, "cpu", False, same_run=kept
    )
    assert cached, "the other notebook's run must be served, not trained again"
    assert _same_weights(served, original) and history.epochs == original_history.epochs
    # Saved under this notebook's name: a plain reload, without same_run, finds it.
    reloaded, _, cached_again = train_or_load(
        small_dates, config, settings, served_path, "cpu", False
    )
    assert cached_again and _same_weights(reloaded, original)

    # Another run (another seed, or another config) is never served from it: it trains.
    other_seed = TrainSettings(**{**settings.to_dict(), "seed": 4})
    other_config = small_dates.model_config(embedding_size=8, hidden_size=24, dropout=0.0)
    for other_settings, other_config_, name in [
        (other_seed, config, "seed.pt"),
        (settings, other_config, "config.pt"),
    ]:
        _, _, cached = train_or_load(
            small_dates, other_config_, other_settings, tmp_path / name, "cpu", False,
            same_run=kept,
        )  # fmt: skip
        assert not cached, name
    # A missing file is no error either: it trains.
    _, _, cached = train_or_load(
        small_dates, config, settings, tmp_path / "fresh.pt", "cpu", False,
        same_run=tmp_path / "missing.pt",
    )  # fmt: skip
    assert not cached


def test_bahdanau_learns_the_gold_alignment_of_the_dates_task():
    """The issue's acceptance check: a small Bahdanau model, CPU, alignment ≥ 0.9."""
    task = dates_task(train_size=6000, valid_size=300, test_size=300, seed=0)
    config = task.model_config(
        embedding_size=32, hidden_size=64, decoder="bahdanau", attention="additive", dropout=0.0
    )
    model, history = train_model(
        task,
        config,
        TrainSettings(epochs=4, batch_size=64, learning_rate=3e-3),
        device="cpu",
        progress=False,
    )
    translations = translate_batch(model, task.test_sources)
    exact = sum(
        t.text == refs[0] for t, refs in zip(translations, task.test_references, strict=True)
    ) / len(translations)
    alignment = alignment_accuracy([t.attention for t in translations], task.test_gold_spans)
    print(f"dates: exact match {exact:.3f}, gold-alignment accuracy {alignment:.3f}")
    assert exact >= 0.95
    assert alignment >= 0.9


def test_label_smoothing_puts_no_mass_on_padding():
    from helpers.training import smoothed_cross_entropy

    torch.manual_seed(0)
    vocab, epsilon = 9, 0.2
    logits = torch.randn(5, vocab)
    target = torch.tensor([4, 5, 6, 7, 8])
    # The target distribution of OpenNMT-py / joeynmt: 1 - eps on the gold token, eps
    # spread evenly over the V - 2 tokens that are neither gold nor <pad>, 0 on <pad>.
    expected_distribution = torch.full((5, vocab), epsilon / (vocab - 2))
    expected_distribution[:, PAD_INDEX] = 0.0
    expected_distribution[torch.arange(5), target] = 1 - epsilon
    assert torch.allclose(expected_distribution.sum(-1), torch.ones(5))
    expected = -(expected_distribution * logits.log_softmax(-1)).sum(-1).mean()
    loss = smoothed_cross_entropy(logits, target, epsilon)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    # torch's own label smoothing does put mass on <pad>: the two must differ.
    assert float(loss) != pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, target, label_smoothing=epsilon))
    )
    # The gradient pushes <pad>'s probability down, never towards a target share.
    logits.requires_grad_(True)
    smoothed_cross_entropy(logits, target, epsilon, reduction="sum").backward()
    probabilities = logits.detach().softmax(-1)
    assert torch.allclose(logits.grad[:, PAD_INDEX], probabilities[:, PAD_INDEX], atol=1e-6)
    # Zero smoothing is plain cross-entropy; out-of-range smoothing is refused.
    plain = logits.detach()
    assert float(smoothed_cross_entropy(plain, target)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(plain, target))
    )
    with pytest.raises(ValueError, match="label_smoothing"):
        smoothed_cross_entropy(logits, target, 1.0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_smoothed_cross_entropy_means_the_same_reduction_with_and_without_smoothing(
    label_smoothing,
):
    from helpers.training import smoothed_cross_entropy

    torch.manual_seed(0)
    logits, target = torch.randn(4, 7), torch.tensor([3, 4, 5, 6])
    total = smoothed_cross_entropy(logits, target, label_smoothing, reduction="sum")
    mean = smoothed_cross_entropy(logits, target, label_smoothing, reduction="mean")
    assert total.shape == mean.shape == ()
    assert float(total) == pytest.approx(4 * float(mean), rel=1e-6)
    # "none" used to give per-token losses without smoothing and their sum with it.
    for reduction in ("none", "avg", "Sum"):
        with pytest.raises(ValueError, match='reduction must be "mean" or "sum"'):
            smoothed_cross_entropy(logits, target, label_smoothing, reduction=reduction)
    # A mean over no tokens is not a loss (F.cross_entropy returns NaN); a sum is 0.
    nothing = torch.empty(0, dtype=torch.long)
    with pytest.raises(ValueError, match="no target tokens"):
        smoothed_cross_entropy(logits[:0], nothing, label_smoothing)
    assert float(smoothed_cross_entropy(logits[:0], nothing, label_smoothing, "sum")) == 0.0
    # Shapes that do not pair one logit row with one target token.
    with pytest.raises(ValueError, match=r"logits must be \(N, V\) and target \(N,\)"):
        smoothed_cross_entropy(logits, target[:3], label_smoothing)
    with pytest.raises(ValueError, match=r"logits must be \(N, V\)"):
        smoothed_cross_entropy(logits[None], target[None], label_smoothing)


def test_evaluate_loss_restores_the_mode_and_refuses_empty_data(small_dates):
    config = small_dates.model_config(embedding_size=8, hidden_size=16, dropout=0.5)
    model = Seq2Seq(config)
    _, valid_loader = small_dates.loaders(batch_size=32)
    model.train()
    first = evaluate_loss(model, valid_loader)
    assert model.training, "evaluate_loss must hand a training model back in training mode"
    assert evaluate_loss(model, valid_loader) == first  # dropout was off while evaluating
    model.eval()
    evaluate_loss(model, valid_loader)
    assert not model.training
    with pytest.raises(ValueError, match="no target tokens"):
        evaluate_loss(model, [])
    # train() says so before its first batch, not after an epoch of training.
    train_loader, _ = small_dates.loaders(batch_size=32)
    before = [parameter.clone() for parameter in model.parameters()]
    with pytest.raises(ValueError, match="valid_loader holds no batches"):
        train(model, train_loader, [], epochs=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="train_loader holds no batches"):
        train(model, [], valid_loader, epochs=1, device="cpu", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    "decoder,overrides",
    [
        ("bahdanau", {}),
        ("luong", {"input_feeding": True}),
        ("luong", {"attention": "local-p"}),
        ("plain", {}),
        ("luong", {"encoder": "self_attention"}),
        ("transformer", {"encoder": "self_attention"}),
    ],
)
def test_the_gpus_bf16_autocast_path_runs_on_the_cpu(small_dates, decoder, overrides):
    """On a GPU, training runs under bf16 autocast (``amp``). CI has no GPU, so the same
    path runs here on the CPU: every model family trains and validates under it, the
    output layer really computes in bf16, the weights stay float32, and the losses stay
    within bf16's rounding of the float32 run."""
    model_settings, _ = dates_recipe(decoder, **overrides)
    config = small_dates.model_config(**model_settings)
    losses, seen = {}, []
    for amp in (False, True):
        torch.manual_seed(0)
        model = Seq2Seq(config)
        output_layer = model.decoder.output_layer

        def recording_output_layer(features, amp=amp, output_layer=output_layer):
            logits = output_layer(features)
            seen.append((amp, logits.dtype))
            return logits

        model.decoder.output_layer = recording_output_layer
        train_loader, valid_loader = small_dates.loaders(32, 0)
        history = train(
            model, train_loader, valid_loader, epochs=1, device="cpu", amp=amp, progress=False
        )
        record = history.epochs[-1]
        losses[amp] = (record.train_loss, record.valid_loss)
        assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert {dtype for amp, dtype in seen if amp} == {torch.bfloat16}
    assert {dtype for amp, dtype in seen if not amp} == {torch.float32}
    assert losses[True] == pytest.approx(losses[False], rel=1e-2)
    assert losses[True] != losses[False]  # the same numbers would mean autocast never ran


@pytest.mark.parametrize(
    "decoder,overrides",
    [
        ("bahdanau", {}),
        ("luong", {}),
        ("luong", {"input_feeding": True, "rnn_type": "lstm", "bidirectional": True}),
        ("luong", {"attention": "local-p"}),
        ("plain", {}),
        ("luong", {"encoder": "self_attention"}),
        ("transformer", {"encoder": "self_attention"}),
    ],
)
def test_a_training_step_never_reads_a_value_back_from_the_device(
    small_dates, decoder, overrides, host_copies
):
    """On a GPU a training step must not wait for the device: no ``.item()``, no
    ``.cpu()``, no boolean-mask selection (whose size only the GPU knows). Tensors on the
    ``meta`` device have shapes but no values, so any such read fails there: a whole step
    (forward, loss, backward, with teacher forcing below 1 too) on ``meta`` proves the
    step needs none. ``torch.cuda.set_sync_debug_mode`` confirmed it on a GPU for the RNN
    models (docs/performance.md).

    Copies the other way, host to device, are recorded: the RNN encoders send their two
    orderings of the batch (sorted by length, and back) once per batch, and nothing else
    may go over, least of all once per decoder step (``torch.tensor([step],
    device=...)`` in the step loop did, before)."""
    model_settings, _ = dates_recipe(decoder, **overrides)
    config = small_dates.model_config(**model_settings)
    model = Seq2Seq(config).to("meta")
    batch = next(iter(small_dates.loaders(8, 0)[0])).to("meta")
    target_steps = batch.decoder_target.size(1)
    assert target_steps >= 10  # so that a copy per step could not hide among the allowed
    for teacher_forcing_ratio in (1.0, 0.5):
        with host_copies("meta") as copies:
            loss = batch_loss(model, batch, teacher_forcing_ratio, label_smoothing=0.1)
            loss.backward()
        assert loss.device.type == "meta" and loss.shape == ()
        rnn_encoder = config.encoder == "rnn"
        assert copies.shapes == ([(8,), (8,)] if rnn_encoder else []), copies.shapes


def test_the_copy_recorder_sees_each_kind_of_host_to_device_copy(host_copies):
    """The recorder (conftest) misses none of the copies it claims to see, and counts
    nothing else, else the tests that use it could not fail, or could not pass."""
    on_meta = torch.zeros(3, device="meta")
    with host_copies("meta") as copies:
        torch.tensor([4], device="meta")
        torch.as_tensor([1.0, 2.0], device="meta")
        on_meta.new_tensor([5, 6, 7, 8])
        torch.ones(2, 2).to("meta")
        torch.ones(5).to(device=torch.device("meta"), non_blocking=True)
        on_meta.copy_(torch.ones(3))
        on_meta.to("meta"), on_meta + 1, torch.zeros(6, device="meta")  # not copies
        torch.ones(2).to(torch.float64), torch.tensor([1, 2])  # CPU to CPU
    assert copies.shapes == [(1,), (2,), (4,), (2, 2), (5,), (3,)]
    on_cpu = torch.arange(5)
    with host_copies("cpu") as copies:  # on a CPU: what would be a copy on a GPU
        torch.tensor([[1, 2]]), torch.from_numpy(np.zeros(3)).to("cpu"), torch.ones(4).to("cpu")
        torch.as_tensor(on_cpu, device="cpu")  # a CPU tensor sent to the model's device
        torch.ones(2).to(torch.float64), torch.ones(3) * 2  # no device asked for
        torch.as_tensor(on_cpu)  # no device asked for: stays where it is on a GPU too
    assert copies.shapes == [(1, 2), (3,), (4,), (5,)]


def test_the_loss_reads_exactly_the_real_target_positions(small_dates):
    """``batch.target_positions`` (found on the CPU) selects the same tokens, in the same
    order, as the boolean mask it replaces, so the loss is the masked loss bit for bit."""
    model_settings, _ = dates_recipe("luong")
    torch.manual_seed(0)
    model = Seq2Seq(small_dates.model_config(**model_settings)).eval()
    batch = next(iter(small_dates.loaders(16, 0)[0]))
    real = batch.decoder_target != PAD_INDEX
    assert torch.equal(batch.target_positions, real.flatten().nonzero().squeeze(1))
    assert batch.target_token_count == int(real.sum())
    full = model(batch.source, batch.source_lengths, batch.decoder_input)
    masked = torch.nn.functional.cross_entropy(full.logits[real], batch.decoder_target[real])
    assert torch.equal(batch_loss(model, batch), masked)
    with pytest.raises(ValueError, match="output_positions"):
        model(batch.source, batch.source_lengths, batch.decoder_input, 1.0, real)


def test_the_epochs_train_loss_is_the_token_weighted_mean_of_its_batches(small_copy):
    """With a learning rate of 0 the weights never move, so the epoch's reported training
    loss must equal the validation-style loss over the same loader: every real target
    token counted once, whatever the batch sizes."""
    torch.manual_seed(0)
    model = Seq2Seq(small_copy.model_config(embedding_size=8, hidden_size=16, dropout=0.0))
    train_loader, _ = small_copy.loaders(batch_size=48)  # 600 pairs: a short last batch
    started = time.perf_counter()
    history = train(model, train_loader, epochs=1, learning_rate=0.0, device="cpu", progress=False)
    elapsed = time.perf_counter() - started
    record = history.epochs[0]
    assert record.train_loss == pytest.approx(evaluate_loss(model, train_loader), rel=1e-5)
    assert 0 < record.seconds <= elapsed  # the epoch's own time, measured, never asserted
    tokens = sum(batch.target_token_count for batch in train_loader)
    assert record.target_tokens_per_second == pytest.approx(tokens / record.seconds)


def test_continuing_a_run_with_its_optimiser_equals_running_it_straight(small_dates):
    """``train(..., history=..., optimizer=...)`` (the command line's --resume) takes up
    the epoch count and the warm-up schedule's step count where the first call left them:
    two epochs in two calls give the weights of two epochs in one."""
    config = small_dates.model_config(embedding_size=8, hidden_size=16, dropout=0.0)
    loop = dict(learning_rate=3e-3, warmup_steps=20, device="cpu", progress=False)
    torch.manual_seed(0)
    straight = Seq2Seq(config)
    straight_history = train(straight, small_dates.loaders(32, 0)[0], epochs=2, **loop)
    torch.manual_seed(0)
    continued = Seq2Seq(config)
    optimizer = make_adam(continued, loop["learning_rate"])
    loader = small_dates.loaders(32, 0)[0]  # its sampler counts the epochs it has served
    first = train(continued, loader, epochs=1, optimizer=optimizer, **loop)
    both = train(continued, loader, epochs=2, optimizer=optimizer, history=first, **loop)
    assert [record.epoch for record in both.epochs] == [1, 2]
    assert [r.train_loss for r in both.epochs] == [r.train_loss for r in straight_history.epochs]
    assert _same_weights(straight, continued)
    with pytest.raises(ValueError, match="continuing a run is not supported with early stop"):
        train(continued, loader, loader, epochs=3, history=first, early_stopping_patience=1, **loop)


def test_amp_and_the_progress_bar_follow_the_device_and_the_environment(
    small_dates, monkeypatch, recorded_bars
):
    """Unless told, bf16 autocast follows the device (off on the CPU, on on a GPU: CI has
    none, so that half is faked), and the bar shows unless ``PAYING_ATTENTION_PROGRESS=0``
    (what CI and the notebook runner set)."""
    import helpers.training as training

    assert training.amp_by_default(torch.device("cuda", 0))
    assert not training.amp_by_default(torch.device("cpu"))
    assert not training.amp_by_default(torch.device("meta"))

    enabled = []
    autocast = training._autocast
    monkeypatch.setattr(
        training, "_autocast", lambda device, on: enabled.append(on) or autocast(device, on)
    )

    config = small_dates.model_config(embedding_size=8, hidden_size=8)
    train_loader, valid_loader = small_dates.loaders(batch_size=200)
    for setting in (None, "1", "0"):
        if setting is None:
            monkeypatch.delenv("PAYING_ATTENTION_PROGRESS", raising=False)
        else:
            monkeypatch.setenv("PAYING_ATTENTION_PROGRESS", setting)
        train(Seq2Seq(config), train_loader, valid_loader, epochs=1, device="cpu")
    assert [bar.hidden for bar in recorded_bars] == [False, False, True]  # only by "0"
    assert enabled and not any(enabled)  # the CPU: float32 throughout

    # train asks the device's default (on a GPU, True), and an explicit amp overrides it.
    enabled.clear()
    monkeypatch.setattr(training, "amp_by_default", lambda device: True)
    train(Seq2Seq(config), train_loader, valid_loader, epochs=1, device="cpu")
    assert enabled and all(enabled)
    enabled.clear()
    train(Seq2Seq(config), train_loader, valid_loader, epochs=1, device="cpu", amp=False)
    assert enabled and not any(enabled)


def test_a_time_budget_is_agreed_across_processes_by_default_only_under_ddp(
    small_dates, monkeypatch
):
    """Under DDP each process must stop after the same batch, or the others wait forever
    at the next all-reduce: the budget check is synchronised whenever the world has more
    than one process, unless told otherwise. (The 2-process run itself is in
    tests/test_distributed.py; here the world size is faked, and the token count's
    all-reduce with it.)"""
    import helpers.training as training

    synchronised = []

    def budget_spent(started, budget, synchronise, device):
        synchronised.append(synchronise)
        return False

    monkeypatch.setattr(training, "_budget_spent", budget_spent)
    monkeypatch.setattr(
        training, "_global_token_count", lambda local, world, device: torch.tensor(float(local))
    )
    config = small_dates.model_config(embedding_size=8, hidden_size=8)
    train_loader, _ = small_dates.loaders(batch_size=300)  # two batches
    for world, asked, expected in ((1, None, False), (2, None, True), (2, False, False)):
        monkeypatch.setattr(training, "_world_size", lambda world=world: world)
        synchronised.clear()
        train(
            Seq2Seq(config),
            train_loader,
            epochs=1,
            time_budget=1e9,
            synchronise_budget=asked,
            device="cpu",
            progress=False,
        )
        assert synchronised == [expected] * 2, (world, asked)


def test_the_warmup_needs_at_least_one_step(small_dates):
    config = small_dates.model_config(embedding_size=8, hidden_size=8)
    train_loader, _ = small_dates.loaders(batch_size=300)
    arguments = dict(epochs=1, device="cpu", progress=False)
    train(Seq2Seq(config), train_loader, warmup_steps=1, **arguments)  # full rate at step 1
    with pytest.raises(ValueError, match="warmup_steps must be a whole number >= 1, got 0"):
        train(Seq2Seq(config), train_loader, warmup_steps=0, **arguments)
    with pytest.raises(ValueError, match=r"warmup_steps \(10\) and lr_decay \(0.8\) are two"):
        train(Seq2Seq(config), train_loader, warmup_steps=10, lr_decay=0.8, **arguments)


def test_a_history_round_trips_and_older_ones_load_without_the_later_fields():
    from helpers.training import EpochRecord, TrainingHistory

    record = EpochRecord(1, 2.5, 2.25, math.exp(2.25), 3.0, 100.0)
    history = TrainingHistory([record], stopped_by_budget=False, stopped_early=True, best_epoch=1)
    assert TrainingHistory.from_dict(history.to_dict()) == history
    fresh = TrainingHistory()  # what train() starts from
    assert not fresh.stopped_early and not fresh.stopped_by_budget and fresh.best_epoch is None
    # written before early stopping existed: it cannot have stopped early
    older = {"epochs": [record.__dict__], "stopped_by_budget": True}
    loaded = TrainingHistory.from_dict(older)
    assert loaded.stopped_by_budget and not loaded.stopped_early and loaded.best_epoch is None
    assert loaded.best_valid_loss == 2.25 and loaded.total_seconds == 3.0


def test_recipes_use_the_device_they_are_given_and_pin_memory_only_for_a_gpu(
    small_dates, tmp_path, monkeypatch
):
    """A device passed in is used as given; ``select_device`` picks one only when none
    is. Page-locked memory is asked for only when the batches go to a GPU."""
    import helpers.recipes as recipes

    guesses = []

    def select_device():  # as on a machine with a GPU
        guesses.append("guessed")
        return torch.device("cuda")

    monkeypatch.setattr(recipes, "select_device", select_device)
    assert recipes.tatoeba_recipe("luong")[0]["hidden_size"] == 512 and guesses == ["guessed"]
    assert recipes.tatoeba_recipe("luong", "cuda")[0]["hidden_size"] == 512
    assert recipes.tatoeba_recipe("luong", torch.device("cpu"))[0]["hidden_size"] == 256
    assert guesses == ["guessed"]

    pinned = []
    real_loaders = type(small_dates).loaders

    class LoadersMade(Exception):
        pass

    def recording_loaders(task, batch_size=64, seed=0, pin_memory=False):
        pinned.append(pin_memory)
        if pin_memory:  # a GPU run: stop before anything is copied to it
            raise LoadersMade
        return real_loaders(task, batch_size, seed, pin_memory=pin_memory)

    monkeypatch.setattr(type(small_dates), "loaders", recording_loaders)
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    settings = TrainSettings(epochs=1, batch_size=64)
    with pytest.raises(LoadersMade):
        recipes.train_model(small_dates, config, settings, device=torch.device("cuda"))
    with pytest.raises(LoadersMade):
        recipes.train_model(small_dates, config, settings)  # the guessed GPU
    path = tmp_path / "model.pt"
    for expect_loaded in (False, True):  # trains and saves, then loads on the given device
        _, _, loaded = recipes.train_or_load(small_dates, config, settings, path, "cpu", False)
        assert loaded == expect_loaded
    assert pinned == [True, True, False]
    assert guesses == ["guessed"] * 2


def test_numpy_numbers_in_the_settings_and_config_give_a_checkpoint_that_loads(
    small_dates, tmp_path
):
    """A sweep over ``np.logspace``/``np.arange`` hands NumPy scalars to the settings and
    the config. Training used to run to its end and then fail to save ("a safe load
    cannot read back numpy.float64"), or save a checkpoint that would not load, over a
    good one. They become plain Python, so the run is kept and is the plain-number run."""
    numpy_config = small_dates.model_config(
        embedding_size=np.int64(8), hidden_size=16, dropout=np.float64(0.1), rnn_type=np.str_("gru")
    )
    assert type(numpy_config.dropout) is float and type(numpy_config.rnn_type) is str
    settings = TrainSettings(epochs=np.int64(1), batch_size=32, learning_rate=np.float64(3e-3))
    assert type(settings.epochs) is int and type(settings.learning_rate) is float
    path = tmp_path / "numpy.pt"
    train_or_load(small_dates, numpy_config, settings, path, device="cpu", progress=False)
    loaded, extra = load_checkpoint(path)
    assert loaded.config == numpy_config
    # The same run as with plain numbers: served from the cache, not trained again.
    plain = TrainSettings(epochs=1, batch_size=32, learning_rate=3e-3)
    _, _, cached = train_or_load(
        small_dates,
        small_dates.model_config(embedding_size=8, hidden_size=16, dropout=0.1),
        plain,
        path,
        device="cpu",
        progress=False,
    )
    assert cached


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"clip": -1.0}, "clip"),  # gradient ascent: the loss rose every epoch
        ({"clip": 0.0}, "clip"),  # the weights never moved
        ({"clip": float("nan")}, "clip"),
        ({"lr_decay": 0.0}, "lr_decay"),  # was ignored without a word
        ({"lr_decay": 1.5}, "lr_decay"),
        ({"lr_decay": float("nan")}, "lr_decay"),
        ({"early_stopping_min_delta": 5.0}, "early_stopping_min_delta"),
        ({"early_stopping_min_delta": float("nan")}, "early_stopping_min_delta"),
        ({"learning_rate": float("inf")}, "learning_rate"),  # Adam refuses NaN, not inf
    ],
)
def test_training_numbers_that_make_no_sense_are_refused_before_a_batch(
    small_dates, arguments, message
):
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    model = Seq2Seq(config)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    train_loader, valid_loader = small_dates.loaders(32)
    with pytest.raises(ValueError, match=message):
        train(model, train_loader, valid_loader, epochs=1, progress=False, **arguments)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed: a batch ran"


def test_a_diverged_run_stops_with_an_error_before_the_epoch_is_recorded(small_dates):
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    model = Seq2Seq(config)
    with torch.no_grad():
        model.decoder.embedding.weight[5:, 0] = float("nan")  # every loss becomes NaN
    recorded = []
    with pytest.raises(FloatingPointError, match="training loss became nan in epoch 1"):
        train(
            model,
            small_dates.loaders(32)[0],
            epochs=2,
            progress=False,
            on_epoch_end=recorded.append,  # where train_or_load and the CLI save
        )
    assert recorded == []


def test_train_and_evaluate_loss_want_a_loader_of_batches_not_a_dataset(small_dates):
    model = Seq2Seq(small_dates.model_config(embedding_size=8, hidden_size=16))
    with pytest.raises(TypeError, match="train_loader must yield Batch objects"):
        train(model, small_dates.train, epochs=1, progress=False)
    with pytest.raises(TypeError, match="loader must yield Batch objects"):
        evaluate_loss(model, small_dates.valid)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": "8"}, "batch_size must be a whole number >= 1, got '8'"),
        ({"epochs": 0}, "epochs must be a whole number >= 1, got 0"),
        ({"epochs": 1.5}, "epochs must be a whole number >= 1, got 1.5"),
        ({"seed": None}, "seed must be a whole number >= 0"),
        ({"time_budget": float("nan")}, "time_budget must be a finite number of seconds >= 0"),
        ({"time_budget": -5}, "time_budget must be a finite number of seconds >= 0"),
        ({"teacher_forcing_ratio": 1.5}, r"teacher_forcing_ratio must lie in \[0, 1\]"),
        ({"early_stopping_patience": 0}, "early_stopping_patience must be a whole number >= 1"),
        ({"warmup_steps": 2.5}, "warmup_steps must be a whole number >= 1, got 2.5"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
    ],
)  # fmt: skip
def test_impossible_train_settings_are_refused_when_they_are_made(settings, message):
    """TrainSettings checked nothing: batch_size="8" failed later on a bare comparison,
    epochs=0 or a NaN learning rate waited for train(), and train() itself read a NaN
    time budget as none and a negative one as spent."""
    with pytest.raises(ValueError, match=message):
        TrainSettings(**settings)
    loop_only = {key: value for key, value in settings.items() if key not in ("batch_size", "seed")}
    if loop_only:  # train() checks its own arguments the same way, before any batch
        with pytest.raises(ValueError, match=message):
            train(torch.nn.Linear(1, 1), [object()], **loop_only, device="cpu")
    import numpy as np

    assert TrainSettings(epochs=np.int64(3), time_budget=np.float32(2.0)).epochs == 3


def test_set_seed_wants_a_whole_number():
    for seed in (1.5, None, -1):  # NumPy's bare TypeError, or its range error
        with pytest.raises(ValueError, match="seed must be a whole number >= 0"):
            set_seed(seed)
