"""The benchmark runs end to end and reports its figures (no timing is asserted)."""

import re
import subprocess
import sys

import pytest
import torch

from helpers.benchmark import project_trainer_tokens_per_second
from helpers.data import DataNotFoundError, resolve_data_path
from helpers.models import Seq2Seq
from helpers.reference_beam_search import reference_beam_search
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


@pytest.fixture(scope="module")
def tiny_task():
    return dates_task(train_size=60, valid_size=8, test_size=8, seed=3)


@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_the_article_loop_counts_each_target_token_once_and_stops_after_its_duration(
    tiny_task, fake_clock, ratio
):
    """(a) trains sentence by sentence in a shuffled order, counts every target token but
    ``<sos>``, and stops after the first sentence that ends past ``duration`` (not at
    it); its speed is those tokens over the whole time taken. With a clock that reads one
    second later at each reading (the start, once per sentence, the end) and a 3 s
    duration, it trains four sentences and divides by five seconds."""
    import helpers.benchmark as benchmark

    fake_clock(benchmark, tick=1.0)
    config = benchmark.benchmark_config(tiny_task, 8)
    speed, tokens = benchmark.article_loop_tokens_per_second(
        tiny_task, config, torch.device("cpu"), duration=3.0, teacher_forcing_ratio=ratio
    )
    order = list(range(len(tiny_task.train)))
    benchmark.random.Random(0).shuffle(order)
    expected = sum(len(tiny_task.train[index][1]) - 1 for index in order[:4])
    assert tokens == expected
    assert speed == pytest.approx(expected / 5)


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_the_article_loop_refuses_a_teacher_forcing_ratio_outside_0_to_1(tiny_task, ratio):
    import helpers.benchmark as benchmark

    config = benchmark.benchmark_config(tiny_task, 8)
    with pytest.raises(ValueError, match="teacher_forcing_ratio"):
        benchmark.article_loop_tokens_per_second(
            tiny_task, config, torch.device("cpu"), 1.0, teacher_forcing_ratio=ratio
        )


def test_decoding_speed_times_only_the_full_call_after_a_warm_up(
    tiny_task, monkeypatch, fake_clock
):
    """Sentences per second: the sentences over the time of one ``translate_batch`` call
    on all of them, after an untimed warm-up on the first 64 with the same search."""
    import helpers.benchmark as benchmark

    clock = fake_clock(benchmark)
    calls = []

    def recording_translate_batch(model, sentences, beam_size, batch_size=None, search=None):
        calls.append((len(sentences), beam_size, batch_size, search))
        clock.advance(100.0 if len(calls) == 1 else 4.0)  # the warm-up, then the timed call

    monkeypatch.setattr(benchmark, "translate_batch", recording_translate_batch)
    model = Seq2Seq(tiny_task.model_config())
    speed = benchmark.decoding_sentences_per_second(
        model, ["a"] * 100, 5, search=reference_beam_search, batch_size=256
    )
    assert speed == pytest.approx(100 / 4.0)
    assert calls == [(64, 5, None, reference_beam_search), (100, 5, 256, reference_beam_search)]


def test_the_benchmark_prints_each_speed_as_measured_and_the_ratios_of_them(
    tiny_task, monkeypatch, capsys
):
    """What ``python -m helpers.benchmark`` prints is computed from what it measured:
    each beam search's best of three alternated runs (the first search in its own batches
    of 256 hypotheses), and the speed-ups (b)/(a) and (b)/(a') on the last line."""
    import helpers.benchmark as benchmark

    monkeypatch.setattr(benchmark, "tatoeba_task", lambda max_pairs: tiny_task)
    article = iter([(100.0, 2_000), (50.0, 1_000)])  # (a), then (a')
    monkeypatch.setattr(
        benchmark, "article_loop_tokens_per_second", lambda *args, **kwargs: next(article)
    )
    model = Seq2Seq(benchmark.benchmark_config(tiny_task, 8))
    monkeypatch.setattr(
        benchmark, "project_trainer_tokens_per_second", lambda *args: (630.0, model)
    )
    speeds = {1: iter([900.0]), 5: iter([300.0, 500.0, 400.0]), "loop": iter([90, 250, 100])}
    decoded = []

    def fake_speed(decoded_model, sentences, beam_size, search=None, batch_size=None):
        assert decoded_model is model  # the model (b) trained
        decoded.append((beam_size, search, batch_size))
        return float(next(speeds["loop" if search is not None else beam_size]))

    monkeypatch.setattr(benchmark, "decoding_sentences_per_second", fake_speed)
    monkeypatch.setattr(benchmark, "attention_kernel_rows", lambda device, lengths: [])
    assert benchmark.main(["--device", "cpu", "--train-batches", "7"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.endswith(": 100 target tokens/s (2,000 tokens)") for line in lines)
    assert any(line.endswith(": 50 target tokens/s (1,000 tokens)") for line in lines)
    assert any("7 batches after 20 of warm-up): 630 target tokens/s" in line for line in lines)
    assert "decoding, greedy: 900 sentences/s" in lines
    [beam_line] = [line for line in lines if line.startswith("decoding, beam 5")]
    assert beam_line.startswith("decoding, beam 5: 500 sentences/s")
    assert beam_line.endswith("256 hypotheses per batch): 250 sentences/s; 2.0x")
    assert decoded == [(1, None, None)] + [(5, None, None), (5, reference_beam_search, 256)] * 3
    assert lines[-1] == "speed-up (b)/(a): 6.3x; at the same objective, (b)/(a'): 12.6x"
