"""Training is defined by epochs, never by the clock: recipes, early stopping, the
progress bar, the full-budget experiment runner and its significance test."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import helpers.experiments as experiments
import helpers.training as training
from helpers.checkpoints import load_checkpoint
from helpers.decoding import translate_batch
from helpers.experiments import (
    SHARED_MODEL,
    TRANSFORMER_VARIANTS,
    VARIANTS,
    quick_settings,
    run_variant,
    slug,
)
from helpers.metrics import (
    alignment_accuracy,
    corpus_scores,
    mean_attention_entropy,
    paired_bootstrap,
)
from helpers.models import Seq2Seq
from helpers.recipes import dates_recipe, tatoeba_recipe, train_model
from helpers.tasks import dates_task
from helpers.training import TrainSettings

TRANSFORMERS = list(TRANSFORMER_VARIANTS)  # "Transformer" and "Transformer at equal time"


@pytest.fixture(scope="module")
def small_dates():
    return dates_task(train_size=400, valid_size=80, test_size=40, seed=5)


@pytest.mark.parametrize("decoder", ["bahdanau", "luong", "plain"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_recipes_train_for_epochs_not_seconds(decoder, device):
    _, settings = tatoeba_recipe(decoder, torch.device(device))
    assert settings.time_budget is None and settings.epochs >= 3
    _, dates_settings = dates_recipe(decoder)
    assert dates_settings.time_budget is None


def test_no_notebook_trains_under_a_time_budget():
    from pathlib import Path

    for notebook in sorted(Path(__file__).resolve().parent.parent.glob("notebooks/*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert "time_budget" not in code, f"{notebook.name} trains under a wall-clock budget"


def test_same_seed_same_numbers_even_when_the_clock_says_otherwise(small_dates, fake_clock):
    """The clock must not change anything: pretend every batch takes an hour."""
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    settings = TrainSettings(epochs=2, batch_size=32, seed=1)
    _, fast = train_model(small_dates, config, settings, device="cpu", progress=False)
    fake_clock(training, tick=3600.0)
    _, slow = train_model(small_dates, config, settings, device="cpu", progress=False)
    assert [r.valid_loss for r in fast.epochs] == [r.valid_loss for r in slow.epochs]
    assert [r.train_loss for r in fast.epochs] == [r.train_loss for r in slow.epochs]
    assert not slow.stopped_by_budget


def test_early_stopping_keeps_the_best_epoch(small_dates, monkeypatch):
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    settings = TrainSettings(epochs=8, batch_size=32, seed=0, early_stopping_patience=2)
    # Validation losses that improve, then get worse: stop 2 epochs after the best (3).
    losses = iter([3.0, 2.0, 1.0, 1.5, 1.7, 0.5, 0.4, 0.3])
    saved = {}

    def fake_validation(model, loader, device=None, amp=False):
        value = next(losses)
        saved[value] = {k: v.clone() for k, v in model.state_dict().items()}
        return value

    monkeypatch.setattr(training, "evaluate_loss", fake_validation)
    model, history = train_model(small_dates, config, settings, device="cpu", progress=False)
    assert [r.valid_loss for r in history.epochs] == [3.0, 2.0, 1.0, 1.5, 1.7]
    assert history.stopped_early and history.best_epoch == 3
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[1.0][name]), f"{name} is not the best epoch's"
    with pytest.raises(ValueError, match="valid_loader"):
        training.train(model, [], None, epochs=1, early_stopping_patience=1, device="cpu")
    with pytest.raises(ValueError, match="epochs"):
        training.train(model, [], None, epochs=0, device="cpu")


@pytest.mark.parametrize(
    "min_delta,losses,stopped_after,best_epoch",
    [
        # a tie is no improvement, and the earlier of two equal epochs stays the best
        (0.0, [2.0, 1.0, 1.0, 1.0, 0.5], 4, 2),
        # a gain under min_delta (5% < 10%, relative: 0.5 would pass an absolute 0.1)
        # resets no patience, but its weights are kept
        (0.1, [20.0, 10.0, 9.5, 9.9, 5.0], 4, 3),
    ],
)
def test_early_stopping_counts_ties_and_small_gains_as_no_improvement(
    small_dates, monkeypatch, min_delta, losses, stopped_after, best_epoch
):
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    settings = TrainSettings(
        epochs=len(losses),
        batch_size=300,
        early_stopping_patience=2,
        early_stopping_min_delta=min_delta,
    )
    values = iter(losses)
    monkeypatch.setattr(training, "evaluate_loss", lambda *args, **kwargs: next(values))
    _, history = train_model(small_dates, config, settings, device="cpu", progress=False)
    assert len(history.epochs) == stopped_after and history.stopped_early
    assert history.best_epoch == best_epoch


def test_one_progress_bar_with_an_eta_that_names_the_model(small_dates, recorded_bars):
    bars = recorded_bars
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    train_loader, valid_loader = small_dates.loaders(32)
    model = __import__("helpers").Seq2Seq(config)
    training.train(
        model, train_loader, valid_loader, epochs=2, device="cpu", progress=True, description="tiny"
    )
    assert len(bars) == 1, "one bar for the whole run, so its ETA covers every epoch"
    bar = bars[0]
    assert bar.desc == "tiny" and bar.total == 2 * len(train_loader) == bar.n
    assert "epoch 2/2" in bar.postfix


def test_a_bar_stopped_early_closes_as_finished_and_says_why(small_dates, recorded_bars):
    bars = recorded_bars
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    train_loader, valid_loader = small_dates.loaders(32)
    model = __import__("helpers").Seq2Seq(config)
    history = training.train(
        model, train_loader, valid_loader, epochs=50, time_budget=0.0, device="cpu", progress=True
    )
    assert history.stopped_by_budget
    bar = bars[0]
    assert bar.total == bar.n, "a bar that ends below its total is drawn as failed (red)"
    assert "time budget" in bar.postfix


def test_variant_names_and_slugs_are_distinct():
    slugs = [slug(name) for name in VARIANTS]
    assert len(set(slugs)) == len(slugs)
    assert slug("Luong general + input feeding") == "luong-general-input-feeding"
    assert slug("Bahdanau (additive)") == "bahdanau"


def assert_the_row_measures_the_saved_models(row, outputs, task, folder, name, beam_size):
    """Each measured column of ``run_variant``'s row, computed again here from the models
    it saved (``folder/{name}.pt`` on ``task``, ``folder/{dates name}.pt`` on the dates
    task, the same task here): BLEU and chrF of the outputs it returned, the attention
    entropy of the greedy translations, and the dates model's gold alignment."""
    prefix, variant_seed = name.split("_", 1)
    model, _ = load_checkpoint(folder / f"{name}.pt")
    greedy = translate_batch(model, task.test_sources, beam_size=1)
    assert [translation.text for translation in greedy] == outputs["greedy"]
    scores = corpus_scores(outputs["greedy"], task.test_references)
    assert (row["test BLEU (greedy)"], row["test chrF (greedy)"]) == (scores.bleu, scores.chrf)
    if beam_size > 1:
        beam = corpus_scores(outputs[f"beam {beam_size}"], task.test_references)
        assert row[f"test BLEU (beam {beam_size})"] == beam.bleu
        assert row[f"test chrF (beam {beam_size})"] == beam.chrf
    entropy = mean_attention_entropy([t.attention for t in greedy], normalise=True)
    assert row["attention entropy"] == pytest.approx(entropy, rel=1e-9)
    dates_model, _ = load_checkpoint(folder / f"{prefix}_dates_{variant_seed}.pt")
    dates_out = translate_batch(dates_model, task.test_sources)
    alignment = alignment_accuracy([t.attention for t in dates_out], task.test_gold_spans)
    assert row["dates gold alignment"] == alignment


def test_run_variant_measures_a_real_model(small_dates, tmp_path, monkeypatch):
    monkeypatch.setenv("PAYING_ATTENTION_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("PAYING_ATTENTION_PROGRESS", "0")
    row, outputs = run_variant(
        "Luong dot", quick_settings(seed=0, epochs=1), small_dates, small_dates, "cpu", "t", 2
    )
    assert row["variant"] == "Luong dot" and row["epochs run"] == 1
    assert 0 <= row["test BLEU (greedy)"] <= 100 and 0 <= row["dates gold alignment"] <= 1
    assert 0 < row["attention entropy"] <= 1
    assert len(outputs["greedy"]) == len(outputs["beam 2"]) == len(small_dates.test_sources)
    assert (tmp_path / "t_luong-dot_seed0.pt").is_file()
    assert_the_row_measures_the_saved_models(
        row, outputs, small_dates, tmp_path, "t_luong-dot_seed0", beam_size=2
    )
    again, _ = run_variant(
        "Luong dot", quick_settings(seed=0, epochs=1), small_dates, None, "cpu", "t", 1
    )
    assert again["loaded from cache"] and again["test BLEU (greedy)"] == row["test BLEU (greedy)"]
    # The same run kept under another notebook's name (07 reads 06's Luong model so) is
    # served and saved under this prefix; another seed is not that run, and trains.
    kept_by_06 = tmp_path / "t_luong-dot_seed0.pt"
    served, other_seed = (
        run_variant(
            "Luong dot",
            quick_settings(seed, 1),
            small_dates,
            None,
            "cpu",
            "u",
            1,
            same_run=kept_by_06,
        )[0]
        for seed in (0, 1)
    )
    assert served["loaded from cache"] and served["test BLEU (greedy)"] == row["test BLEU (greedy)"]
    assert (tmp_path / "u_luong-dot_seed0.pt").is_file()
    assert not other_seed["loaded from cache"]
    with pytest.raises(ValueError, match="unknown variant"):
        run_variant("Luong cosine", quick_settings(0), small_dates)


def test_paired_bootstrap_separates_a_real_difference_from_none():
    references = [["Ich bin müde."], ["Er schläft.", "Er pennt."], ["Das ist gut."]] * 40
    good = ["Ich bin müde.", "Er schläft.", "Das ist gut."] * 40
    bad = ["Ich bin.", "Sie läuft.", "Das ist gut."] * 40
    (row,) = paired_bootstrap(("good", good), [("bad", bad)], references, samples=300)
    assert row["difference"] < -20 and row["p_value"] < 0.05
    # One sentence in 120 differs: a small difference, which the test must not call real.
    nearly = ["Ich bin.", *good[1:]]
    (close,) = paired_bootstrap(("good", good), [("nearly", nearly)], references, samples=300)
    assert -5 < close["difference"] < 0 and close["p_value"] > 0.05
    with pytest.raises(ValueError, match="hypotheses"):
        paired_bootstrap(("good", good), [("short", good[:3])], references)


def test_a_difference_is_significant_only_if_every_seed_agrees():
    import pandas as pd

    from helpers.experiments import pairwise_verdicts

    rows = []
    for seed in range(3):
        rows += [
            {"seed": seed, "variant A": "x", "variant B": "y", "B - A": 2.0, "p value": 0.001},
            # z beats x in two seeds, loses in one: not a finding
            {
                "seed": seed,
                "variant A": "x",
                "variant B": "z",
                "B - A": -1.0 if seed == 2 else 1.5,
                "p value": 0.01,
            },
            # w is worse in every seed, but one test is not significant
            {
                "seed": seed,
                "variant A": "x",
                "variant B": "w",
                "B - A": -3.0,
                "p value": 0.2 if seed == 1 else 0.001,
            },
            {"seed": seed, "variant A": "y", "variant B": "w", "B - A": -5.0, "p value": 0.001},
            # p = alpha in one seed is not below it
            {
                "seed": seed,
                "variant A": "y",
                "variant B": "z",
                "B - A": 1.0,
                "p value": 0.05 if seed == 0 else 0.001,
            },
        ]
    table = pairwise_verdicts(pd.DataFrame(rows))
    # One row per pair, in the order the tests list them (the comparison's table order).
    pairs = list(zip(table["variant A"], table["variant B"], strict=True))
    assert pairs == [("x", "y"), ("x", "z"), ("x", "w"), ("y", "w"), ("y", "z")]
    assert list(table["seeds"]) == [3] * 5
    assert list(table["seeds with p < 0.05"]) == [3, 3, 2, 3, 2]
    verdicts = table.set_index(["variant A", "variant B"])
    assert verdicts.loc[("x", "y"), "verdict"] == "B better"
    assert verdicts.loc[("x", "z"), "verdict"] == "not significant"
    assert verdicts.loc[("x", "w"), "verdict"] == "not significant"
    assert verdicts.loc[("y", "w"), "verdict"] == "A better"
    assert verdicts.loc[("y", "z"), "verdict"] == "not significant"
    assert verdicts.loc[("x", "y"), "mean B - A (BLEU)"] == 2.0


def test_the_transformer_trains_with_its_own_recipe_and_the_shared_stopping_rule():
    from helpers.experiments import TRAINING_OVERRIDES, full_settings

    shared, transformer = full_settings(seed=1), full_settings(seed=1, variant="Transformer")
    assert full_settings(seed=1, variant="Luong dot") == shared
    assert (transformer.warmup_steps, transformer.adam_beta2) == (400, 0.98)
    assert transformer.label_smoothing == 0.1 and transformer.lr_decay is None
    for name in ("epochs", "batch_size", "early_stopping_patience", "early_stopping_min_delta"):
        assert getattr(transformer, name) == getattr(shared, name), name
    assert transformer.seed == 1
    assert set(TRAINING_OVERRIDES) <= {"Transformer", "Transformer at equal time"}
    # The live replication's settings differ from the full budget only in length and stopping.
    for variant in (None, "Transformer"):
        quick, full = quick_settings(1, 2, variant).to_dict(), full_settings(1, variant).to_dict()
        differing = {key for key in full if quick[key] != full[key]}
        assert differing == {"epochs", "early_stopping_patience", "early_stopping_min_delta"}


def test_the_equal_time_transformer_is_the_transformer_stopped_early(small_dates):
    from helpers.experiments import EQUAL_TIME_EPOCHS, full_settings, variant_config

    full = full_settings(seed=2, variant="Transformer").to_dict()
    equal_time = full_settings(seed=2, variant="Transformer at equal time").to_dict()
    assert {key for key in full if full[key] != equal_time[key]} == {"epochs"}
    assert equal_time["epochs"] == EQUAL_TIME_EPOCHS < full["epochs"]
    same_model = variant_config("Transformer", small_dates)
    assert variant_config("Transformer at equal time", small_dates) == same_model
    # Its files must not overwrite the full run's.
    assert slug("Transformer at equal time") != slug("Transformer")


def test_each_experiment_runs_only_its_own_variants(capsys):
    from helpers.experiments import EXPERIMENTS, TRANSFORMER_VARIANTS, main

    comparison, transformer = EXPERIMENTS["comparison"], EXPERIMENTS["transformer"]
    assert comparison[0] is VARIANTS and transformer[0] is TRANSFORMER_VARIANTS
    assert not set(VARIANTS) & set(TRANSFORMER_VARIANTS), "07's table would gain a row"
    assert comparison[1].name == "comparison" and transformer[1].name == "transformer"
    with pytest.raises(SystemExit):
        main(["--experiment", "transformer", "--variants", "Luong dot"])
    assert "in the transformer experiment" in capsys.readouterr().err


def test_run_variant_trains_and_measures_the_transformer(small_dates, tmp_path, monkeypatch):
    from helpers.experiments import full_settings

    monkeypatch.setenv("PAYING_ATTENTION_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("PAYING_ATTENTION_PROGRESS", "0")
    settings = TrainSettings(**{**full_settings(0, "Transformer").to_dict(), "epochs": 1})
    row, outputs = run_variant("Transformer", settings, small_dates, small_dates, "cpu", "t", 1)
    assert row["config"]["decoder"] == "transformer" and row["config"]["feedforward_size"] == 1024
    assert row["settings"]["warmup_steps"] == 400
    assert 0 < row["attention entropy"] <= 1 and 0 <= row["dates gold alignment"] <= 1
    assert len(outputs["greedy"]) == len(small_dates.test_sources)
    assert_the_row_measures_the_saved_models(
        row, outputs, small_dates, tmp_path, "t_transformer_seed0", beam_size=1
    )


def test_dates_architecture_keeps_the_architecture_and_drops_the_sizes():
    from helpers.experiments import ALL_VARIANTS, dates_architecture
    from helpers.recipes import dates_recipe

    transformer = dates_architecture("Transformer")
    assert transformer["decoder"] == "transformer" and transformer["decoder_layers"] == 2
    assert "feedforward_size" not in transformer and "dropout" not in transformer
    model_settings, _ = dates_recipe(**transformer)
    # The dates recipe's small size and score, the variant's layers and heads.
    assert (model_settings["hidden_size"], model_settings["dropout"]) == (64, 0.0)
    assert model_settings["attention"] == "scaled_dot" and model_settings["encoder_heads"] == 4
    assert dates_architecture("Luong local-p") == ALL_VARIANTS["Luong local-p"]
    assert dates_recipe(**dates_architecture("Bahdanau (additive)"))[0]["attention"] == "additive"


def test_measure_speed_times_training_and_both_decoders(small_dates, monkeypatch):
    config = small_dates.model_config(embedding_size=8, hidden_size=16)
    trained, _ = train_model(small_dates, config, TrainSettings(epochs=1, batch_size=32), "cpu")
    timed = []

    def recording_speed(model, sentences, beam_size):
        timed.append((model, len(sentences), beam_size))
        return real_speed(model, sentences, beam_size)

    real_speed = experiments.decoding_sentences_per_second
    monkeypatch.setattr(experiments, "decoding_sentences_per_second", recording_speed)
    speed = experiments.measure_speed(
        {"tiny": trained}, small_dates, "cpu", training_batches=3, sentences=8
    )
    assert timed == [(trained, 8, 1), (trained, 8, 5)]  # the trained model, greedy and beam 5
    assert list(speed.index) == ["tiny"]
    row = speed.loc["tiny"]
    assert row["parameters"] == sum(p.numel() for p in trained.parameters())
    for column in ("train target tokens/s", "greedy sentences/s", "beam-5 sentences/s"):
        assert row[column] > 0, column


def test_speed_needs_the_full_budget_checkpoint(tmp_path, monkeypatch, capsys):
    from helpers.experiments import main

    monkeypatch.setenv("PAYING_ATTENTION_CHECKPOINTS", str(tmp_path))
    assert main(["--experiment", "transformer", "--measure-speed", "--output", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: no full-budget checkpoint of 'Luong general'")
    # The command it suggests runs: Luong general belongs to the comparison experiment.
    assert (
        "python -m helpers.experiments --experiment comparison --variants 'Luong general' "
        "--seeds 0" in error
    )
    assert not (tmp_path / "speed.json").exists()


def test_train_model_calls_back_after_each_epoch_without_changing_the_training(small_dates):
    from helpers.decoding import greedy_decode

    config = small_dates.model_config(embedding_size=8, hidden_size=16, dropout=0.1)
    settings = TrainSettings(epochs=2, batch_size=64, seed=3)
    batch = next(iter(small_dates.loaders(batch_size=8)[1]))
    seen = []

    def measure(model, record):
        # What notebook 05 does: decode with the model as trained so far.
        seen.append(
            (
                record.epoch,
                model.training,
                len(greedy_decode(model, batch.source, batch.source_lengths)),
            )
        )

    watched, watched_history = train_model(
        small_dates, config, settings, "cpu", on_epoch_end=measure
    )
    plain, plain_history = train_model(small_dates, config, settings, "cpu")
    assert [(epoch, training) for epoch, training, _ in seen] == [(1, True), (2, True)]
    assert [r.valid_loss for r in watched_history.epochs] == [
        r.valid_loss for r in plain_history.epochs
    ]
    for name, parameter in plain.state_dict().items():
        assert torch.equal(parameter, watched.state_dict()[name]), name


def test_exact_quoted_numbers_are_asserted_only_on_the_committed_machine(tmp_path, monkeypatch):
    """Notebooks assert their quoted trained numbers exactly only on the kind of machine
    that executed them: the CPU and thread count of their row in notebook-resources.csv."""
    import helpers.reproducibility as reproducibility

    here = reproducibility.cpu_description()
    assert here.endswith(" cores)") and "(" in here
    model_name = reproducibility.cpu_model_name()
    if model_name is not None:  # Linux: /proc/cpuinfo's name, not platform's "x86_64"
        assert here.startswith(f"{model_name} (")
    threads = torch.get_num_threads()
    isa = reproducibility.cpu_capability()
    assert isa == torch.backends.cpu.get_cpu_capability() and isa
    other_isa = "AVX2" if isa != "AVX2" else "AVX512"
    resources = tmp_path / "notebook-resources.csv"
    resources.write_text(
        "notebook,seconds,peak_memory_mib,cpu,cpu_capability,torch_threads,date\n"
        f'05_visualization.ipynb,60.0,900,"{here}",{isa},{threads},2026-12-03\n'
        f'08_transformer.ipynb,60.0,900,"Another CPU (2 cores)",{isa},{threads},2026-12-03\n'
        f'06_self_attention.ipynb,60.0,900,"{here}",{isa},{threads + 1},2026-12-03\n'
        f'04_training.ipynb,60.0,900,"{here}",{other_isa},{threads},2026-12-03\n',
        encoding="utf-8",
    )
    check = reproducibility.on_committed_machine
    assert check("05_visualization.ipynb", resources)
    assert check("notebooks/05_visualization.ipynb", resources), "a path names the same notebook"
    assert not check("08_transformer.ipynb", resources), "another CPU"
    assert not check("06_self_attention.ipynb", resources), "another thread count"
    # One CPU name, two instruction sets: "AMD EPYC" without AVX-512 trained other models.
    assert not check("04_training.ipynb", resources), "another instruction set"
    assert not check("07_comparison.ipynb", resources), "no row"
    assert not check("05_visualization.ipynb", tmp_path / "missing.csv")
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    assert not check("05_visualization.ipynb", resources)
    assert check("06_self_attention.ipynb", resources)
    # The committed file names every notebook, with the columns read here.
    committed = reproducibility.NOTEBOOK_RESOURCES.read_text(encoding="utf-8").splitlines()
    assert committed[0].split(",")[3:6] == ["cpu", "cpu_capability", "torch_threads"]
    assert {line.split(",")[0] for line in committed[1:]} >= {
        "05_visualization.ipynb",
        "08_transformer.ipynb",
    }


def test_notebook_04s_models_are_the_full_budgets_and_only_luongs_schedule_differs():
    """The comparison's Bahdanau and Luong general rows are 04's two models trained
    longer: the same architecture; Bahdanau's 3 epochs are the full budget's first ones,
    and Luong's recipe differs from the full budget's only in its learning-rate schedule
    and epochs (what the notebooks and results/README say)."""
    cpu = torch.device("cpu")
    for variant, decoder in {"Bahdanau (additive)": "bahdanau", "Luong general": "luong"}.items():
        model_settings, _ = tatoeba_recipe(decoder, cpu)
        assert model_settings == {**SHARED_MODEL, **VARIANTS[variant]}, variant
    _, bahdanau = tatoeba_recipe("bahdanau", cpu)
    assert bahdanau == quick_settings(seed=0, epochs=bahdanau.epochs, variant="Bahdanau (additive)")
    _, luong = tatoeba_recipe("luong", cpu)
    full = quick_settings(seed=0, epochs=luong.epochs, variant="Luong general").to_dict()
    differing = {key for key, value in luong.to_dict().items() if full[key] != value}
    assert differing == {"learning_rate", "lr_decay"}
    assert luong.learning_rate > full["learning_rate"] and luong.lr_decay < full["lr_decay"]


def test_reproducibility_report_names_its_machine_and_fails_when_runs_differ(tmp_path, monkeypatch):
    """``python -m helpers.reproducibility`` writes which CPU ran it, compares each run
    with the unloaded one, and exits 1 when the loaded run is not bit-identical. The
    training runs are replaced by fixed numbers here (each takes minutes); the
    comparison, the report and the exit code are what is tested."""
    import helpers.reproducibility as reproducibility

    calls = []

    def fake_run(unloaded_loss):
        def run(decoder, epochs, threads, load):
            calls.append((decoder, epochs, threads, load))
            loss = unloaded_loss if not load else 1.5
            return {
                "threads": threads or 2,
                "train seconds": 1.0,
                "train loss": [2.0, loss if threads is None else loss + 1e-4],
                "valid loss": [2.5, 2.25],
                "test BLEU (greedy)": 40.0 if threads is None else 40.25,
                "test chrF (greedy)": 56.0,
            }

        return run

    output = tmp_path / "reproducibility.json"
    monkeypatch.setattr(reproducibility, "run", fake_run(1.5))
    assert reproducibility.main(["--epochs", "2", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["cpu"] == reproducibility.cpu_description()
    assert report["epochs"] == 2 and set(report["runs"]) == {
        "unloaded",
        "loaded (busy loop on core 0)",
        "1 thread",
    }
    assert all(value == 0 for value in report["loaded vs unloaded"].values())
    assert report["1 thread vs unloaded"]["max |train loss difference|"] == pytest.approx(1e-4)
    assert report["1 thread vs unloaded"]["|test BLEU difference|"] == pytest.approx(0.25)
    # unloaded with torch's default threads, then beside a busy loop, then on one thread
    assert calls == [("luong", 2, None, False), ("luong", 2, None, True), ("luong", 2, 1, False)]

    monkeypatch.setattr(reproducibility, "run", fake_run(1.25))  # the loaded run now differs
    assert reproducibility.main(["--epochs", "2", "--output", str(output)]) == 1
    report = json.loads(output.read_text())
    assert report["loaded vs unloaded"]["max |train loss difference|"] == pytest.approx(0.25)
    for bad in ("0", "-1"):
        with pytest.raises(SystemExit) as stopped:
            reproducibility.main(["--epochs", bad, "--output", str(output)])
        assert stopped.value.code == 2


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_the_reproducibility_check_refuses_an_output_it_cannot_write_before_training(
    where, tmp_path, monkeypatch, capsys
):
    """It found out only when it wrote the report, after three trainings."""
    import helpers.reproducibility as reproducibility

    def no_training(*arguments):
        raise AssertionError("trained before the output was checked")

    monkeypatch.setattr(reproducibility, "run", no_training)
    (tmp_path / "a file").write_text("keep me")
    output = tmp_path if where == "a folder" else tmp_path / "a file" / "report.json"
    with pytest.raises(SystemExit) as stopped:
        reproducibility.main(["--epochs", "1", "--output", str(output)])
    assert stopped.value.code == 2 and f"--output {output}:" in capsys.readouterr().err
    assert (tmp_path / "a file").read_text() == "keep me"


def test_the_reproducibility_check_stops_when_a_training_process_dies(
    tmp_path, monkeypatch, capsys
):
    """The child printed its error and ended; the parent waited on the queue forever."""
    import queue

    import helpers.reproducibility as reproducibility

    class EndedProcess:
        exitcode = 1

        def is_alive(self):
            return False

    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"ended \(exit code 1\) without a result"):
        reproducibility._result_of(EndedProcess(), queue.Queue(), poll_seconds=0.01)
    assert time.monotonic() - started < 5
    # A result put just before the process ended is still read.
    ready = queue.Queue()
    ready.put({"threads": 2})
    assert reproducibility._result_of(EndedProcess(), ready, poll_seconds=0.01) == {"threads": 2}

    def failing_run(decoder, epochs, threads, load):
        raise RuntimeError("the training run's process ended (exit code 1) without a result")

    monkeypatch.setattr(reproducibility, "run", failing_run)
    output = tmp_path / "report.json"
    assert reproducibility.main(["--epochs", "1", "--output", str(output)]) == 1
    assert capsys.readouterr().err.startswith("error: unloaded: the training run's process")
    assert not output.exists()

    class KilledProcess(EndedProcess):
        exitcode = -9

    with pytest.raises(RuntimeError, match="was killed by signal 9"):
        reproducibility._result_of(KilledProcess(), queue.Queue(), poll_seconds=0.01)


def test_the_reproducibility_run_returns_when_its_process_fails(tmp_path, monkeypatch):
    """The real process, failing at once on a missing data file (a few seconds)."""
    import helpers.reproducibility as reproducibility

    monkeypatch.setenv("PAYING_ATTENTION_DATA", str(tmp_path / "missing.tsv"))
    with pytest.raises(RuntimeError, match=r"ended \(exit code 1\) without a result"):
        reproducibility.run("luong", 1, None, False)


def test_ctrl_c_in_the_reproducibility_check_stops_its_processes(tmp_path, monkeypatch, capsys):
    """Ctrl-C stopped the parent, which stopped the busy loop but left the training process
    to run on (it would have printed its own traceback, had the terminal's signal reached
    it; the children now ignore it)."""
    import multiprocessing.context

    import helpers.reproducibility as reproducibility

    started = []
    real_start = multiprocessing.context.SpawnProcess.start

    def start(process):
        started.append(process)
        real_start(process)

    def interrupted(worker, queue):
        raise KeyboardInterrupt

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start)
    monkeypatch.setattr(reproducibility, "_result_of", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reproducibility.run("luong", 1, None, load=True)
    assert len(started) == 2  # the busy loop and the training
    assert not any(process.is_alive() for process in started)

    def interrupted_run(*arguments):
        raise KeyboardInterrupt

    monkeypatch.setattr(reproducibility, "run", interrupted_run)
    output = tmp_path / "report.json"
    assert reproducibility.main(["--epochs", "1", "--output", str(output)]) == 130
    assert capsys.readouterr().err == "interrupted during the unloaded run: no report written\n"
    assert not output.exists()


def test_every_committed_full_budget_run_still_counts_as_done(recorded_data):
    """``python -m helpers.experiments`` skips a run whose committed JSON holds the cache
    key the current code computes for it. A change to the fingerprint, ``CACHE_VERSION``,
    a config or settings key, or the Tatoeba task would silently retrain all of them (a
    day of CPU) and leave the committed results describing other code: change a key on
    purpose, with new runs, never by accident. The key includes the data's content, so
    this is checked on the data the runs were trained on, the offline copy whose sha256
    data/README.md records."""

    stale = []
    for variants, out_dir in experiments.EXPERIMENTS.values():  # the comparison, the Transformer
        runs = sorted((out_dir / "runs").glob("*.json"))
        assert len(runs) >= len(variants), out_dir
        stale += [
            f"{out_dir.name}/{path.name}"
            for path in runs
            for run in [json.loads(path.read_text())]
            if not experiments._done(run["variant"], run["seed"], out_dir)
        ]
    assert stale == [], "these committed runs no longer match the code's cache keys"


@pytest.mark.parametrize("experiment", ["comparison", "transformer"])
def test_summarising_the_committed_runs_rewrites_the_committed_tables(
    experiment, recorded_data, tmp_path, monkeypatch
):
    """``python -m helpers.experiments --summarise-only`` over the committed runs and
    translations writes the committed ``runs.csv``, ``summary.csv`` and
    ``significance.csv`` byte for byte (means, spreads, table order, the paired bootstrap
    of every pair of variants per seed), and keeps the wall time of the invocation that
    trained. Notebooks 07 and 08 read these tables."""
    import shutil

    _, committed = experiments.EXPERIMENTS[experiment]
    output = tmp_path / experiment
    for folder in ("runs", "translations"):
        shutil.copytree(committed / folder, output / folder)
    shutil.copy(committed / "provenance.json", output / "provenance.json")
    arguments = ["--experiment", experiment, "--summarise-only", "--output", str(output)]
    monkeypatch.setattr(experiments.torch.cuda, "is_available", lambda: False)  # as committed
    assert experiments.main(arguments) == 0
    for table in ("runs.csv", "summary.csv", "significance.csv"):
        assert (output / table).read_bytes() == (committed / table).read_bytes(), table
    written = json.loads((output / "provenance.json").read_text())
    before = json.loads((committed / "provenance.json").read_text())
    # A summary trains nothing: what the record says of the invocation that trained stays.
    for field in (
        "code of the runs",
        "train seconds, all runs",
        "hardware of the runs",
        "seeds",
        "variants",
        *experiments.INVOCATION_FIELDS,
    ):
        assert written[field] == before[field], field
    # The comparison's record predates the "experiment" field and the training overrides.
    assert {key: written["budget"][key] for key in before["budget"]} == before["budget"]
    assert written["experiment"] == experiment


def test_the_runner_trains_what_is_missing_records_it_and_skips_what_is_done(
    small_dates, tmp_path, monkeypatch, capsys, fake_clock
):
    """``python -m helpers.experiments`` end to end, in one process on the small dates
    task: each run's JSON records the run's code, machine and threads beside its metrics,
    its translations are kept (and are the ones it scored), the tables and the
    significance test cover what is on disk, a second invocation trains nothing, and
    an invocation that trains nothing (``--summarise-only``, or every run done) keeps
    the wall time of the invocation that trained."""
    from concurrent.futures import ThreadPoolExecutor

    from helpers.checkpoints import load_checkpoint
    from helpers.decoding import translate_batch
    from helpers.files import checkpoint_path
    from helpers.metrics import corpus_scores

    monkeypatch.setenv("PAYING_ATTENTION_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("PAYING_ATTENTION_PROGRESS", "0")
    monkeypatch.setattr(experiments.torch.cuda, "is_available", lambda: False)  # the CPU defaults
    monkeypatch.setattr(experiments, "_tasks", lambda: (small_dates, small_dates))
    monkeypatch.setattr(
        experiments,
        "full_settings",
        lambda seed, variant=None: TrainSettings(epochs=2, batch_size=64, seed=seed),
    )
    # Worker threads instead of spawned processes, so the stand-ins above reach the runs.
    monkeypatch.setattr(
        experiments, "ProcessPoolExecutor", lambda workers, **options: ThreadPoolExecutor(workers)
    )
    threads = []
    monkeypatch.setattr(experiments.torch, "set_num_threads", threads.append)
    # Four invocations, two readings each: 5.04 s, 7 s, 20 s and 1 s of wall time.
    fake_clock(experiments, 0.0, 5.04, 100.0, 107.0, 200.0, 220.0, 300.0, 301.0)
    output = tmp_path / "results" / "comparison"  # folders made on the way
    variants = ["Luong dot", "Luong general"]
    # Each run once, however often it is named: two workers on one run would collide.
    arguments = [
        *("--variants", *variants, variants[0]),
        *("--seeds", "0", "0", "--threads", "3", "--output", str(output)),
    ]

    assert experiments.main(arguments) == 0
    assert "2 run(s) to do, 2 at a time" in capsys.readouterr().out
    assert threads == [3, 3]
    for variant in variants:
        run = json.loads((output / "runs" / f"{slug(variant)}_seed0.json").read_text())
        assert run["variant"] == variant and run["seed"] == 0 and run["epochs run"] == 2
        epochs = run["history"]["epochs"]
        losses = [epoch["valid_loss"] for epoch in epochs]
        assert run["best epoch"] == 2  # no early stopping: the last epoch's weights
        assert run["valid loss"] == min(losses)
        assert run["valid perplexity"] == pytest.approx(math.exp(min(losses)))
        assert run["last-epoch valid improvement"] == pytest.approx(
            (losses[0] - min(losses)) / losses[0]
        )
        speeds = [epoch["target_tokens_per_second"] for epoch in epochs]
        assert min(speeds) <= run["target tokens/s"] <= max(speeds)  # their time-weighted mean
        assert run["code"] == experiments.code_state()
        assert run["hardware"] == experiments.hardware()
        assert run["torch threads"] == 3 and run["device"] == "cpu"
        translations = experiments.load_translations(variant, 0, output)
        assert set(translations) == {"greedy", "beam 5"}
        # No time stamp in the gzip header: the same translations give the same file.
        kept = experiments._translations_path(output, variant, 0).read_bytes()
        assert kept[4:8] == bytes(4)
        model, _ = load_checkpoint(checkpoint_path(f"full_{slug(variant)}_seed0.pt"))
        for name, beam_size in (("greedy", 1), ("beam 5", 5)):
            decoded = translate_batch(model, small_dates.test_sources, beam_size=beam_size)
            assert translations[name] == [hypothesis.text for hypothesis in decoded], name
        scores = corpus_scores(translations["greedy"], small_dates.test_references)
        assert scores.bleu == run["test BLEU (greedy)"]
        assert experiments._done(variant, 0, output)
    runs = experiments.load_results(output)["runs"]
    assert list(runs["variant"]) == variants
    [pair] = experiments.load_results(output)["significance"].to_dict(orient="records")
    assert (pair["variant A"], pair["variant B"], pair["seed"]) == (*variants, 0)
    provenance = json.loads((output / "provenance.json").read_text())
    assert provenance["wall seconds"] == 5.0  # to a tenth of a second
    assert provenance["train seconds, all runs"] == round(runs["train seconds"].sum(), 1)
    assert provenance["variants"] == variants and provenance["seeds"] == [0]
    assert provenance["torch threads per worker"] == 3 and provenance["workers"] == 2
    # A command that can be run again as it is written (the variants' names hold spaces).
    assert provenance["command"] == (
        "python -m helpers.experiments --variants 'Luong dot' 'Luong general' 'Luong dot' "
        f"--seeds 0 0 --threads 3 --output {output}"
    )
    trained_record = provenance

    assert experiments.main(arguments) == 0
    assert "0 run(s) to do" in capsys.readouterr().out
    assert threads == [3, 3]  # nothing trained
    # An invocation that trains nothing keeps the record of the one that trained (its own
    # 7 s would replace the training's wall time), and the seeds and variants are those of
    # the runs the summary covers, not those it was asked for.
    assert json.loads((output / "provenance.json").read_text()) == trained_record
    summary_only = ["--summarise-only", "--seeds", "7", "--variants", "Luong dot"]
    assert experiments.main([*summary_only, "--threads", "9", "--output", str(output)]) == 0
    assert json.loads((output / "provenance.json").read_text()) == trained_record
    # With a GPU the runs default to it, one at a time (a first record says so).
    (output / "provenance.json").unlink()
    monkeypatch.setattr(experiments.torch.cuda, "is_available", lambda: True)
    assert experiments.main([*arguments, "--summarise-only"]) == 0
    provenance = json.loads((output / "provenance.json").read_text())
    assert provenance["device"] == "cuda" and provenance["workers"] == 1

    # A run counts as done only with its translations, and only with this code's key.
    experiments._translations_path(output, "Luong dot", 0).unlink()
    assert not experiments._done("Luong dot", 0, output)
    general = output / "runs" / "luong-general_seed0.json"
    general.write_text(json.dumps({**json.loads(general.read_text()), "cache key": "old"}))
    assert not experiments._done("Luong general", 0, output)
    # An invocation that trains again records its own wall time.
    monkeypatch.setattr(experiments.torch.cuda, "is_available", lambda: False)
    fake_clock(experiments, 400.0, 412.0)
    assert experiments.main(arguments) == 0
    assert "2 run(s) to do" in capsys.readouterr().out
    assert json.loads((output / "provenance.json").read_text())["wall seconds"] == 12.0


def test_last_epoch_improvement_is_the_best_loss_relative_gain_of_the_last_epoch():
    from helpers.experiments import _last_epoch_improvement
    from helpers.training import EpochRecord, TrainingHistory

    def history(*losses):
        return TrainingHistory(
            [EpochRecord(epoch, 1.0, loss, 1.0, 1.0, 1.0) for epoch, loss in enumerate(losses, 1)]
        )

    assert _last_epoch_improvement(history(3.0, 2.0, 1.9)) == pytest.approx(0.05)
    assert _last_epoch_improvement(history(3.0, 2.0, 2.5)) == 0.0  # worse: no gain
    assert math.isnan(_last_epoch_improvement(history(3.0)))


def test_an_unknown_experiment_is_refused(capsys):
    with pytest.raises(SystemExit) as stopped:
        experiments.main(["--experiment", "nope"])
    assert stopped.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--workers", "0"], ["--threads", "0"]])
def test_the_runner_refuses_no_workers_or_no_threads(flags, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        experiments.main([*flags, "--output", str(tmp_path)])
    assert stopped.value.code == 2
    assert "--workers and --threads must be at least 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "banana"], "--device: unknown device 'banana'"),
        (["--device", "meta"], "--device: device 'meta' holds no values"),
        (["--seeds", "0", "-1"], "a seed must lie in 0 to 2**32 - 1, got -1"),
        (["--seeds", str(2**32)], f"a seed must lie in 0 to 2**32 - 1, got {2**32}"),
        (["--seeds", "1.5"], "'1.5' is not a whole number"),
    ],
)
def test_the_runners_flags_are_checked_before_anything_runs(flags, message, tmp_path, capsys):
    """Not in each worker, after it has loaded the data (or, for a seed, never: a
    summary accepted any)."""
    with pytest.raises(SystemExit) as stopped:
        experiments.main([*flags, "--output", str(tmp_path / "out")])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_cuda_device_without_a_gpu_is_refused_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiments.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        experiments.main(["--device", "cuda", "--output", str(tmp_path / "out")])
    assert stopped.value.code == 2
    assert "--device: device 'cuda' was asked for, but torch.cuda.is_available() is False" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("where", ["a file", "under a file"])
@pytest.mark.parametrize("mode", [[], ["--measure-speed"]])
def test_an_output_that_cannot_be_a_folder_is_refused_before_anything_runs(
    where, mode, tmp_path, capsys
):
    """A measurement took minutes before its folder was made, and lost them there."""
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    output = blocker if where == "a file" else blocker / "results"
    with pytest.raises(SystemExit) as stopped:
        experiments.main([*mode, "--output", str(output)])
    assert stopped.value.code == 2 and f"--output {output}:" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"


def test_summarising_a_missing_folder_is_refused_and_makes_no_folder(tmp_path, capsys):
    missing = tmp_path / "nothing here"
    with pytest.raises(SystemExit) as stopped:
        experiments.main(["--summarise-only", "--output", str(missing)])
    assert stopped.value.code == 2
    assert f"--summarise-only: {missing} is not a folder of runs" in capsys.readouterr().err
    assert not missing.exists()


def _committed_runs_copy(tmp_path: Path, seeds=(0,)) -> Path:
    """Two committed comparison runs and stand-in tables, without their translations."""
    import shutil

    _, committed = experiments.EXPERIMENTS["comparison"]
    output = tmp_path / "comparison"
    (output / "runs").mkdir(parents=True)
    for name in ("luong-dot", "luong-general"):
        for seed in seeds:
            shutil.copy(committed / "runs" / f"{name}_seed{seed}.json", output / "runs")
    for table in ("runs.csv", "summary.csv", "significance.csv"):
        (output / table).write_text(f"the earlier {table}\n")
    return output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"variant": "Luong dot", "seed"', "is not a run file: Expecting"),
        (b"[1, 2]", "is not a run file: it holds a list, not an object"),
        (b'{"variant": "Luong dot"}', "is not a run file: it needs the fields"),
        ('{"variant": "Luong d\u00f6t"}'.encode("latin-1"), "is not a run file: 'utf-8'"),
        (
            b'{"variant": "Foo", "seed": 0, "train seconds": 1.0, "cache key": "k"}',
            "holds a run of an unknown variant 'Foo'",
        ),
    ],
)
def test_a_bad_run_file_is_named_and_changes_no_table(
    content, message, tmp_path, capsys, monkeypatch
):
    """Cut short, not UTF-8, another shape or an unknown variant: the file is named, and
    no table is half rewritten (runs.csv was written before the summary failed)."""
    monkeypatch.setattr(experiments, "_tasks", lambda: (None, None))
    output = _committed_runs_copy(tmp_path)
    bad = output / "runs" / "luong-dot_seed0.json"
    bad.write_bytes(content)
    assert experiments.main(["--summarise-only", "--output", str(output)]) == 1
    assert capsys.readouterr().err.startswith(f"error: {bad} {message}")
    for table in ("runs.csv", "summary.csv", "significance.csv"):
        assert (output / table).read_text() == f"the earlier {table}\n", table
    assert not (output / "provenance.json").exists()


def test_a_bad_run_file_is_named_when_the_runner_checks_what_is_done(tmp_path, capsys, monkeypatch):
    """Training, not summarising: the file was not named (a bare JSON error), and a run
    without its cache key was a KeyError traceback."""
    monkeypatch.setattr(experiments, "_tasks", lambda: (None, None))
    output = _committed_runs_copy(tmp_path)
    bad = output / "runs" / "luong-dot_seed0.json"
    experiments._translations_path(output, "Luong dot", 0).parent.mkdir()
    experiments._translations_path(output, "Luong dot", 0).write_bytes(b"")
    flags = ["--variants", "Luong dot", "--seeds", "0", "--output", str(output)]
    for content, message in (
        (b'{"variant": "Luong dot", "seed"', "is not a run file: Expecting"),
        (
            b'{"variant": "Luong dot", "seed": 0, "train seconds": 1.0}',
            "is not a run file: it needs the fields",
        ),
    ):
        bad.write_bytes(content)
        assert experiments.main(flags) == 1
        assert capsys.readouterr().err.startswith(f"error: {bad} {message}")


def test_when_a_run_fails_no_queued_run_starts(tmp_path, monkeypatch, capsys):
    """The pool used to run every queued job (hours of training) before it reported the
    failure; then the one job waiting in its queue still started after the failure."""
    from concurrent.futures import ThreadPoolExecutor

    started = []

    def job(variant, seed, threads, out_dir, *rest):
        started.append(seed)
        if seed == 0:
            raise ValueError(f"{variant} {seed} went wrong")
        time.sleep(0.3)  # still running when the first fails
        return _fake_run(Path(out_dir), variant, seed)

    monkeypatch.setattr(experiments, "_job", job)
    monkeypatch.setattr(experiments, "_done", lambda variant, seed, out_dir: False)
    monkeypatch.setattr(
        experiments, "ProcessPoolExecutor", lambda workers, **options: ThreadPoolExecutor(workers)
    )
    seeds = ["--seeds", "0", "1", "2", "3", "4", "5"]
    flags = ["--variants", "Luong dot", *seeds, "--workers", "2", "--device", "cpu"]
    assert experiments.main([*flags, "--output", str(tmp_path)]) == 1
    assert sorted(started) == [0, 1]  # the two workers' first runs; none after the failure
    error = capsys.readouterr().err
    assert "Luong dot seed 0 failed: no further run starts" in error
    assert "error: Luong dot seed 0: Luong dot 0 went wrong" in error
    assert (tmp_path / "runs" / "luong-dot_seed1.json").is_file()  # finished, and kept


def _fake_run(out_dir: Path, variant: str, seed: int) -> str:
    """A run file as ``_job`` writes one, without the training."""
    path = out_dir / "runs" / f"{slug(variant)}_seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"variant": variant, "seed": seed, "train seconds": 1.0, "cache key": "x"}
    path.write_text(json.dumps({**row, "test BLEU (greedy)": 1.0, "epochs run": 1}))
    return str(path)


_SLOW_JOB = """
import json, multiprocessing, os, time
from pathlib import Path

from helpers import experiments
from helpers.experiments import slug


def job(*arguments):
    experiments._train_and_write = _run  # the real _job, around a run that only waits
    return experiments._job(*arguments)


def _run(variant, seed, threads, out_dir, *rest):
    lock = multiprocessing.RLock()  # as tqdm makes one: killed, Python warns it leaked
    Path(out_dir, f"started_{seed}").write_text(str(os.getpid()))
    seconds = os.environ["JOB_SECONDS"].split(",")[seed]  # per seed
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:  # Python keeps running, as in training: Ctrl-C reaches it
        time.sleep(0.05)
    if str(seed) in os.environ.get("JOB_FAILS", "").split(","):
        Path(out_dir, f"failed_{seed}").touch()
        raise ValueError(f"seed {seed} went wrong")
    path = Path(out_dir, "runs", f"{slug(variant)}_seed{seed}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"variant": variant, "seed": seed, "train seconds": 1.0, "cache key": "x"}
    path.write_text(json.dumps({**row, "test BLEU (greedy)": 1.0, "epochs run": 1}))
    return str(path)
"""

_RUN_EXPERIMENTS = """
import signal, sys
import slow_job
from helpers import experiments

if __name__ == "__main__":  # not in the spawned workers, which import this file
    # As in a terminal: a shell that starts a command in the background (a CI script,
    # say) makes it ignore SIGINT, and the spawned workers would inherit that.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    experiments._job = slow_job.job  # the workers import it by name
    experiments._done = lambda variant, seed, out_dir: False
    sys.exit(experiments.main(sys.argv[1:]))
"""


def _start_experiments(tmp_path: Path, job_seconds: str, fails: str = "") -> subprocess.Popen:
    """``python -m helpers.experiments`` in a process group of its own, as a terminal
    runs it, on three runs that only wait, two at a time."""
    (tmp_path / "slow_job.py").write_text(_SLOW_JOB)
    (tmp_path / "run_experiments.py").write_text(_RUN_EXPERIMENTS)
    repository = Path(__file__).resolve().parent.parent
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repository)]),
        "JOB_SECONDS": job_seconds,  # per seed
        "JOB_FAILS": fails,  # the seeds whose run fails
    }
    flags = ["--variants", "Luong dot", "--seeds", "0", "1", "2", "--workers", "2"]
    return subprocess.Popen(
        [sys.executable, str(tmp_path / "run_experiments.py"), *flags, "--device", "cpu"]
        + ["--output", str(tmp_path / "out")],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, which Ctrl-C signals as a whole
    )


def _wait_for(condition, seconds: float = 120.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if process is not None and process.poll() is not None:
            raise AssertionError(f"it ended before the Ctrl-C: {process.communicate()}")
        time.sleep(0.05)


def test_ctrl_c_lets_the_runs_in_progress_finish_and_starts_no_other(tmp_path):
    """Ctrl-C used to reach the workers too: each lost its run and took the next one
    from the queue, while the parent waited for the whole queue."""
    process = _start_experiments(tmp_path, job_seconds="4,4,4")
    out = tmp_path / "out"
    try:
        _wait_for(
            lambda: (out / "started_0").exists() and (out / "started_1").exists(), process=process
        )
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted: no further run starts; the 2 run(s) in progress finish" in stderr
    assert f"interrupted: the finished runs are in {out}" in stderr
    assert sorted(path.name for path in (out / "runs").iterdir()) == [
        "luong-dot_seed0.json",
        "luong-dot_seed1.json",
    ]
    assert not (out / "started_2").exists()
    assert not (out / "runs.csv").exists()  # no tables of a part of the runs


@pytest.mark.parametrize(
    ("job_seconds", "in_progress"),
    [("600,600,600", 2), ("2,600,600", 1)],
    ids=["both workers busy", "one worker idle"],
)
def test_a_second_ctrl_c_stops_the_runs_in_progress(tmp_path, job_seconds, in_progress):
    """Terminating the workers instead broke the pool: an idle worker's half-read queue
    printed a traceback, and a killed one "leaked semaphore objects"."""
    out = tmp_path / "out"
    process = _start_experiments(tmp_path, job_seconds=job_seconds)
    # With one run left, seed 0's run finishes between the two: its worker waits, idle.
    finished = out / "runs" / "luong-dot_seed0.json"
    stderr = _ctrl_c_twice(process, out, before_second=finished if in_progress == 1 else None)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"stopping the {in_progress} run(s) in progress: their training is lost" in stderr
    assert "leaked" not in stderr  # the workers ended in order
    for seed in (0, 1):
        worker = int((out / f"started_{seed}").read_text())
        _wait_for(lambda worker=worker: not _alive(worker), seconds=10)
    kept = ["luong-dot_seed0.json"] if in_progress == 1 else []
    assert sorted(path.name for path in (out / "runs").glob("*")) == kept


def test_a_failed_runs_error_is_shown_even_after_ctrl_c(tmp_path):
    """The failure's line promised that its error would follow; two Ctrl-Cs dropped it."""
    out = tmp_path / "out"
    process = _start_experiments(tmp_path, job_seconds="1,600,600", fails="0")
    stderr = _ctrl_c_twice(process, out, before_first=out / "failed_0")
    assert process.returncode == 130, stderr
    assert "Luong dot seed 0 failed: no further run starts, and the 1 run(s)" in stderr
    assert "error: Luong dot seed 0: seed 0 went wrong" in stderr
    assert "Traceback" not in stderr


def _ctrl_c_twice(
    process: subprocess.Popen,
    out: Path,
    before_first: Path | None = None,
    before_second: Path | None = None,
) -> str:
    """Ctrl-C once both runs have started (and ``before_first`` exists), then again (once
    ``before_second`` exists, and a second later); the command's stderr."""
    started = [out / "started_0", out / "started_1", *([before_first] if before_first else [])]
    try:
        _wait_for(lambda: all(path.exists() for path in started), process=process)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        if before_second is not None:
            _wait_for(before_second.exists, process=process)
        time.sleep(1.0)  # the parent has taken the first
        os.killpg(process.pid, signal.SIGINT)
        return process.communicate(timeout=60)[1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_corrupt_provenance_record_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiments, "_tasks", lambda: (None, None))
    output = _committed_runs_copy(tmp_path)
    (output / "provenance.json").write_text('{"wall seconds": ')
    assert experiments.main(["--summarise-only", "--output", str(output)]) == 1
    assert capsys.readouterr().err.startswith(
        f"error: {output / 'provenance.json'} is not a provenance record"
    )


def test_without_translations_an_earlier_significance_table_is_removed(tmp_path, monkeypatch):
    """Kept, it would test other runs than the summary beside it describes."""
    monkeypatch.setattr(experiments, "_tasks", lambda: (None, None))
    output = _committed_runs_copy(tmp_path, seeds=(0, 1))
    assert experiments.main(["--summarise-only", "--output", str(output)]) == 0
    assert not (output / "significance.csv").exists()
    summary = pd.read_csv(output / "summary.csv", index_col="variant")
    assert list(summary.index) == ["Luong dot", "Luong general"]
    assert list(summary["seeds"]) == [2, 2]


def test_one_worker_and_one_thread_are_enough(tmp_path, capsys):
    arguments = ["--workers", "1", "--threads", "1", "--summarise-only", "--output", str(tmp_path)]
    assert experiments.main(arguments) == 1
    assert capsys.readouterr().err.startswith("error: no runs under")  # past the check


def test_the_committed_results_load_with_every_table_and_history():
    """What notebooks 07 and 08 read: every run's history beside its row, the summary in
    table order, the significance tests, and the speed record where one was made."""

    for experiment, (variants, out_dir) in experiments.EXPERIMENTS.items():
        results = experiments.load_results(out_dir)
        runs = results["runs"]
        assert len(runs) == len(variants) * len(experiments.SEEDS), experiment
        assert list(results["summary"].index) == list(variants)
        assert (results["summary"]["seeds"] == len(experiments.SEEDS)).all()
        assert set(results["histories"]) == set(zip(runs["variant"], runs["seed"], strict=True))
        for _, row in runs.iterrows():
            history = results["histories"][row["variant"], row["seed"]]
            assert len(history) == row["epochs run"]
            # runs.csv keeps six significant digits
            assert history["valid_loss"].min() == pytest.approx(row["valid loss"], rel=1e-5)
        assert results["significance"] is not None
        assert results["provenance"]["seeds"] == list(experiments.SEEDS)
    assert experiments.load_results(experiments.RESULTS_DIR)["speed"] is None
    speed = experiments.load_results(experiments.TRANSFORMER_RESULTS_DIR)["speed"]
    # The baseline first, then the Transformer (measured before the equal-time variant,
    # which is the same model stopped earlier, was added).
    assert [row["variant"] for row in speed["rows"]] == ["Luong general", "Transformer"]


def test_a_run_without_significance_or_speed_files_loads_them_as_none(tmp_path):
    import shutil

    for name in ("runs.csv", "summary.csv", "provenance.json"):
        shutil.copy(experiments.RESULTS_DIR / name, tmp_path / name)
    results = experiments.load_results(tmp_path)
    assert results["significance"] is None and results["speed"] is None
    assert results["histories"] == {}
    assert len(results["runs"]) == len(VARIANTS) * len(experiments.SEEDS)


def test_hardware_names_the_cpu_from_cpuinfo_else_the_platform_else_unknown(monkeypatch):
    monkeypatch.setattr(experiments, "cpu_model_name", lambda: "AMD EPYC 9999")
    monkeypatch.setattr(experiments.platform, "processor", lambda: "x86_64")
    assert experiments.hardware()["cpu"] == "AMD EPYC 9999"
    monkeypatch.setattr(experiments, "cpu_model_name", lambda: None)
    assert experiments.hardware()["cpu"] == "x86_64"
    monkeypatch.setattr(experiments.platform, "processor", lambda: "")
    assert experiments.hardware()["cpu"] == "unknown"


def test_speed_is_measured_only_on_the_full_budget_models(small_dates, tmp_path, monkeypatch):
    """``--measure-speed`` times the seed-0 full-budget checkpoints of the experiment and
    its baselines (for the Transformer, Luong general), refuses a checkpoint trained with
    other settings, and records how it measured beside the figures."""
    import pandas as pd

    from helpers.checkpoints import save_checkpoint
    from helpers.files import checkpoint_path

    monkeypatch.setenv("PAYING_ATTENTION_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setattr(experiments, "_tasks", lambda: (small_dates, small_dates))
    for variant in ("Luong general", *TRANSFORMERS):
        config = experiments.variant_config(variant, small_dates)
        model = Seq2Seq(config).attach_vocabularies(
            small_dates.source_vocab, small_dates.target_vocab
        )
        key = experiments.cache_key(config, experiments.full_settings(0, variant), small_dates)
        save_checkpoint(
            model, checkpoint_path(f"full_{slug(variant)}_seed0.pt"), extra={"cache_key": key}
        )
    measured = []

    def fake_measure_speed(models, task, device, training_batches, sentences):
        measured.append((list(models), task, training_batches, sentences))
        return pd.DataFrame({"variant": list(models), "beam-5 sentences/s": 1.0}).set_index(
            "variant"
        )

    monkeypatch.setattr(experiments, "measure_speed", fake_measure_speed)
    monkeypatch.setattr(experiments.torch, "set_num_threads", lambda threads: None)
    output = tmp_path / "results" / "transformer"  # folders made on the way
    arguments = ["--experiment", "transformer", "--measure-speed", "--seeds", "2", "0"]
    assert experiments.main([*arguments, "--output", str(output)]) == 0
    assert measured == [(["Luong general", *TRANSFORMERS], small_dates, 300, 500)]
    assert experiments.main([*arguments, "--output", str(output)]) == 0  # measured again
    assert len(measured) == 2
    record = json.loads((output / "speed.json").read_text())
    assert record["models"] == "the full-budget checkpoints of seed 0"
    assert record["training"] == "helpers.training.train on 300 batches of 128 after 20 of warm-up"
    assert [row["variant"] for row in record["rows"]] == ["Luong general", *TRANSFORMERS]

    # A checkpoint at the full budget's path but trained otherwise is refused.
    config = experiments.variant_config("Luong general", small_dates)
    other = experiments.cache_key(config, quick_settings(0, 1, "Luong general"), small_dates)
    save_checkpoint(
        Seq2Seq(config).attach_vocabularies(small_dates.source_vocab, small_dates.target_vocab),
        checkpoint_path("full_luong-general_seed0.pt"),
        extra={"cache_key": other},
    )
    with pytest.raises(
        ValueError, match="not trained with the full-budget settings of 'Luong general'"
    ):
        experiments._full_model("Luong general", 0, small_dates, "cpu")


def test_code_state_names_the_commit_and_edits_to_helpers_only(tmp_path, monkeypatch):
    """Each full-budget run records the commit it was trained with, and whether
    ``helpers/`` (not the notebooks or results beside it) had uncommitted edits; where
    git is missing or cannot tell, it says "unknown"."""
    import subprocess

    def git(*command):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *command],
            cwd=tmp_path, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    (tmp_path / "helpers").mkdir()
    module = tmp_path / "helpers" / "experiments.py"
    module.write_text("# the code\n")
    (tmp_path / "notes.md").write_text("notes\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    monkeypatch.setattr(experiments, "__file__", str(module))
    commit = git("rev-parse", "HEAD")
    assert experiments.code_state() == {"commit": commit, "uncommitted changes": False}
    (tmp_path / "notes.md").write_text("edited\n")  # outside helpers/: not the code
    assert experiments.code_state()["uncommitted changes"] is False
    module.write_text("# the code, edited\n")
    assert experiments.code_state() == {"commit": commit, "uncommitted changes": True}

    assert experiments._git("no-such-git-command") == "unknown"
    monkeypatch.setattr(experiments, "__file__", str(tmp_path.parent / "nowhere" / "x.py"))
    assert experiments._git("rev-parse", "HEAD") == "unknown"  # no such folder
    monkeypatch.setattr(experiments, "__file__", str(module))
    monkeypatch.setenv("PATH", "")  # no git at all
    assert experiments.code_state()["commit"] == "unknown"


def test_an_unknown_decoder_names_the_recipes_there_are():
    for decoder in ("transformer", "Luong"):  # a bare KeyError before
        with pytest.raises(
            ValueError, match=r"decoder must be one of \['bahdanau', 'luong', 'plain'\]"
        ):
            tatoeba_recipe(decoder, torch.device("cpu"))
