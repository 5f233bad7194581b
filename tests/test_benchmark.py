"""The benchmark runs end to end and reports its figures (no timing is asserted)."""

import random
import re
import subprocess
import sys
from collections import Counter

import pytest
import torch

import helpers.benchmark as benchmark
from helpers.benchmark import project_trainer_tokens_per_second
from helpers.data import DataNotFoundError, resolve_data_path
from helpers.models import Seq2Seq
from helpers.reference_beam_search import reference_beam_search
from helpers.tasks import dates_task
from helpers.training import set_seed
from helpers.vocab import SOS_INDEX


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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--hidden-size", "1"], "--hidden-size must be at least 2"),
        (["--max-pairs", "0"], "--max-pairs at least 1"),
        (["--duration", "-1"], "--duration must be a positive number"),
        # inf ran the article's loop through the whole training set, ignoring the time
        (["--duration", "inf"], "--duration must be a positive number of seconds, got inf"),
        (["--train-batches", "-3"], "--train-batches must be at least 1"),
    ],
)
def test_each_meaningless_setting_is_refused_on_its_own(flags, message, capsys, stop_at):
    """In process, one flag at a time (each check must not need another flag wrong too)."""

    stop_at(benchmark, "select_device")  # the step after the checks: minutes of work follow
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_settings_at_the_edge_of_their_range_are_accepted(stop_at):
    """The smallest value each flag's own check allows passes it (whether the data then
    leave enough sentences is checked next, in the test below)."""

    with pytest.raises(stop_at(benchmark, "select_device")):
        benchmark.main(
            ["--hidden-size", "2", "--max-pairs", "1", "--train-batches", "1"]
            + ["--batch-size", "1", "--duration", "1e-9", "--device", "cpu"]
        )


@pytest.mark.parametrize("skip_extras", [False, True])
def test_too_few_pairs_for_a_test_sentence_are_refused_before_anything_trains(
    skip_extras, monkeypatch, capsys, stop_at
):
    """Decoding is timed on the test sentences: with none (a tiny --max-pairs), the run
    used to train for minutes and then divide by zero. Timing training only
    (--skip-extras) needs none."""

    no_test = dates_task(train_size=60, valid_size=8, test_size=0, seed=3)
    monkeypatch.setattr(benchmark, "tatoeba_task", lambda max_pairs: no_test)

    training_started = stop_at(benchmark, "article_loop_tokens_per_second")
    flags = ["--device", "cpu", "--max-pairs", "70"] + (["--skip-extras"] if skip_extras else [])
    if skip_extras:
        with pytest.raises(training_started):
            benchmark.main(flags)
        return
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(flags)
    assert exit_info.value.code == 2
    assert "--max-pairs 70 leaves 60 training pairs and 0 test sentences" in capsys.readouterr().err


def test_too_few_pairs_for_a_vocabulary_are_refused_before_anything_trains(
    tmp_path, monkeypatch, capsys, stop_at
):
    """Pairs with no word seen twice leave no vocabulary: its own ValueError, a traceback."""
    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"w{i}.\tv{i}.\n" for i in range(6)), encoding="utf-8")
    monkeypatch.setenv("PAYING_ATTENTION_DATA", str(data))
    stop_at(benchmark, "article_loop_tokens_per_second")
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--device", "cpu", "--max-pairs", "6", "--skip-extras"])
    assert exit_info.value.code == 2
    assert re.search(r"--max-pairs 6: (source|target)_vocab_size must be", capsys.readouterr().err)


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


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_the_article_loop_counts_each_target_token_once_and_stops_after_its_duration(
    tiny_task, fake_clock, ratio
):
    """(a) trains sentence by sentence in a shuffled order, counts every target token but
    ``<sos>``, and stops after the first sentence that ends past ``duration`` (not at
    it); its speed is those tokens over the whole time taken. With a clock that reads one
    second later at each reading (the start, once per sentence, the end) and a 3 s
    duration, it trains four sentences and divides by five seconds."""

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


@pytest.fixture
def built_models(monkeypatch):
    """The models ``helpers.benchmark`` builds, in order, each recording what it trains
    on: per sentence it encodes, the source ids, the decoder inputs it was fed and the
    argmax of each step's logits (``model.sentences``)."""
    built = []

    class RecordedSeq2Seq(Seq2Seq):
        def __init__(self, config):
            super().__init__(config)
            built.append(self)
            self.sentences = []
            real_encode, real_step = self.encode, self.decoder.step

            def encode(source, source_lengths):
                self.sentences.append({"source": source[0].tolist(), "fed": [], "argmax": []})
                return real_encode(source, source_lengths)

            def step(decoder_input, state, memory, step):
                logits, state, weights = real_step(decoder_input, state, memory, step)
                self.sentences[-1]["fed"].append(int(decoder_input))
                self.sentences[-1]["argmax"].append(int(logits.argmax(-1)))
                return logits, state, weights

            self.encode, self.decoder.step = encode, step

    monkeypatch.setattr(benchmark, "Seq2Seq", RecordedSeq2Seq)
    return built


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_the_article_loop_feeds_gold_or_its_own_words_one_coin_per_sentence(
    tiny_task, fake_clock, built_models, ratio
):
    """What (a) and (a') compare depends on it: each sentence, in the shuffled order, is
    fed either the gold previous words ([<sos>, y_1, ..., y_{n-1}]) or the model's own
    previous predictions, by one coin per sentence: always gold at ratio 1, never at 0,
    and both at 0.5. The model's encoder and decoder step are recorded as it trains."""
    fake_clock(benchmark, tick=1.0)
    config = benchmark.benchmark_config(tiny_task, 8)
    benchmark.article_loop_tokens_per_second(
        tiny_task, config, torch.device("cpu"), duration=100.0, teacher_forcing_ratio=ratio
    )
    [model] = built_models
    order = list(range(len(tiny_task.train)))
    random.Random(0).shuffle(order)
    assert [sentence["source"] for sentence in model.sentences] == [
        tiny_task.train[index][0].tolist() for index in order
    ]
    gold_fed = 0
    for index, sentence in zip(order, model.sentences, strict=True):
        gold = tiny_task.train[index][1].tolist()[:-1]  # <sos>, y_1 ... y_{n-1}
        own = [SOS_INDEX, *sentence["argmax"][:-1]]
        assert gold != own  # an untrained model: the two ways of feeding differ
        assert sentence["fed"] in (gold, own)
        gold_fed += sentence["fed"] == gold
    expected = {0.0: (0, 0), 0.5: (15, 45), 1.0: (60, 60)}[ratio]  # of 60 sentences
    assert expected[0] <= gold_fed <= expected[1], gold_fed


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_the_article_loop_refuses_a_teacher_forcing_ratio_outside_0_to_1(tiny_task, ratio):

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


@pytest.mark.parametrize(
    ("device", "batch_size", "lengths"),
    [("cpu", 128, (64, 128, 256, 512, 1024)), ("cuda", 512, (128, 512, 1024, 2048, 4096))],
)
def test_the_benchmark_prints_each_speed_as_measured_and_the_ratios_of_them(
    tiny_task, monkeypatch, capsys, device, batch_size, lengths
):
    """What ``python -m helpers.benchmark`` prints is computed from what it measured:
    each beam search's best of three alternated runs (the first search in its own batches
    of 256 hypotheses), and the speed-ups (b)/(a) and (b)/(a') on the last line. Each
    measurement gets the device and the defaults for it: (b)'s batch of 128 sentences on
    a CPU and 512 on a GPU, and longer self-attention inputs on a GPU (a GPU is faked
    here: every measurement is a stand-in)."""

    monkeypatch.setattr(benchmark, "select_device", lambda name: torch.device(name))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "a stand-in GPU")
    monkeypatch.setattr(benchmark, "tatoeba_task", lambda max_pairs: tiny_task)
    article = iter([(100.0, 2_000), (50.0, 1_000)])  # (a), then (a')
    article_calls = []

    def fake_article(task, config, on, duration, **settings):
        article_calls.append((on, duration, settings))
        return next(article)

    monkeypatch.setattr(benchmark, "article_loop_tokens_per_second", fake_article)
    model = Seq2Seq(benchmark.benchmark_config(tiny_task, 8))
    trainer_calls = []

    def fake_trainer(task, config, on, batches, batch):
        trainer_calls.append((on, batches, batch))
        return 630.0, model

    monkeypatch.setattr(benchmark, "project_trainer_tokens_per_second", fake_trainer)
    speeds = {1: iter([900.0]), 5: iter([300.0, 500.0, 400.0]), "loop": iter([90, 250, 100])}
    decoded = []

    def fake_speed(decoded_model, sentences, beam_size, search=None, batch_size=None):
        assert decoded_model is model  # the model (b) trained
        decoded.append((beam_size, search, batch_size))
        return float(next(speeds["loop" if search is not None else beam_size]))

    monkeypatch.setattr(benchmark, "decoding_sentences_per_second", fake_speed)
    kernel_calls = []
    monkeypatch.setattr(
        benchmark,
        "attention_kernel_rows",
        lambda on, sizes: kernel_calls.append((on, sizes)) or [],
    )
    assert benchmark.main(["--device", device, "--train-batches", "7"]) == 0
    on = torch.device(device)
    assert article_calls == [(on, 20.0, {}), (on, 20.0, {"teacher_forcing_ratio": 1.0})]
    assert trainer_calls == [(on, 7, batch_size)]
    assert kernel_calls == [(on, lengths)]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"device: {device} (")
    assert ("a stand-in GPU" in lines[0]) == (device == "cuda")
    assert f"(b) helpers.training.train (batch {batch_size}," in "\n".join(lines)
    assert any(line.endswith(": 100 target tokens/s (2,000 tokens)") for line in lines)
    assert any(line.endswith(": 50 target tokens/s (1,000 tokens)") for line in lines)
    assert any("7 batches after 20 of warm-up): 630 target tokens/s" in line for line in lines)
    assert "decoding, greedy: 900 sentences/s" in lines
    [beam_line] = [line for line in lines if line.startswith("decoding, beam 5")]
    assert beam_line.startswith("decoding, beam 5: 500 sentences/s")
    assert beam_line.endswith("256 hypotheses per batch): 250 sentences/s; 2.0x")
    assert decoded == [(1, None, None)] + [(5, None, None), (5, reference_beam_search, 256)] * 3
    assert lines[-1] == "speed-up (b)/(a): 6.3x; at the same objective, (b)/(a'): 12.6x"


def test_the_trainer_is_timed_from_seed_0_on_the_batches_after_its_warm_up(monkeypatch):
    """(b) builds its model from seed 0, trains untimed on the first ``warmup_batches``
    of the shuffled, bucketed order (seed 0, one epoch after another), then on the next
    ``batches``; its speed is that second call's. ``train`` is replaced by a recorder."""
    from helpers.batching import BucketBatchSampler
    from helpers.training import EpochRecord, TrainingHistory

    task = dates_task(train_size=300, valid_size=20, test_size=20, seed=1)
    config = task.model_config(embedding_size=8, hidden_size=16, decoder="luong")
    calls = []

    def recording_train(model, train_loader, valid_loader, **settings):
        calls.append(
            {
                "weights": {name: value.clone() for name, value in model.state_dict().items()},
                "batches": list(train_loader.batch_sampler),
                "valid_loader": valid_loader,
                "epochs": settings["epochs"],
                "pinned": train_loader.pin_memory,
            }
        )
        speed = 1000.0 * len(calls)  # the warm-up's figure must not be the one returned
        return TrainingHistory([EpochRecord(1, 1.0, float("nan"), float("nan"), 1.0, speed)])

    monkeypatch.setattr(benchmark, "train", recording_train)
    speed, model = benchmark.project_trainer_tokens_per_second(
        task, config, torch.device("cpu"), batches=12, batch_size=32, warmup_batches=3
    )
    assert speed == 2000.0 and len(calls) == 2

    sampler = BucketBatchSampler(task.train.length_keys, 32, shuffle=True, seed=0)
    order = []
    for epoch in range(2):  # 10 batches an epoch: the 15 used span two
        sampler.set_epoch(epoch)
        order += sampler.epoch_batches()
    assert [call["batches"] for call in calls] == [order[:3], order[3:15]]
    assert order[:10] != sorted(order[:10], key=lambda batch: task.train.length_keys[batch[0]])
    assert all(call["valid_loader"] is None and call["epochs"] == 1 for call in calls)
    assert not any(call["pinned"] for call in calls)  # page-locked memory only for a GPU
    set_seed(0)
    initial = Seq2Seq(config).state_dict()
    for name, value in initial.items():
        assert torch.equal(calls[0]["weights"][name], value), name
    assert model.source_vocab is task.source_vocab and model.target_vocab is task.target_vocab
    calls.clear()  # for a GPU (only named: train is the recorder), both loaders pin
    benchmark.project_trainer_tokens_per_second(
        task, config, torch.device("cuda"), batches=12, batch_size=32, warmup_batches=3
    )
    assert [call["pinned"] for call in calls] == [True, True]


def test_the_article_loop_trains_its_model_down_its_loss(tiny_task, fake_clock, built_models):
    """(a) is a real training loop, not only a timing: after one pass over 60 sentences of
    teacher-forced Adam the model it trained has a lower loss on them than it started
    with."""
    from helpers.batching import collate_batch
    from helpers.training import batch_loss

    fake_clock(benchmark, tick=1.0)
    config = benchmark.benchmark_config(tiny_task, 16)
    benchmark.article_loop_tokens_per_second(
        tiny_task, config, torch.device("cpu"), duration=100.0, teacher_forcing_ratio=1.0
    )
    [trained] = built_models
    set_seed(0)
    untrained = Seq2Seq(config)
    batch = collate_batch([tiny_task.train[index] for index in range(len(tiny_task.train))])
    with torch.no_grad():
        losses = [float(batch_loss(model.eval(), batch)) for model in (untrained, trained)]
    assert losses[1] < losses[0] - 0.1, losses


def test_the_benchmarks_model_is_the_articles_shape():
    """What (a) and (b) train, as the benchmark prints it: an LSTM encoder–decoder with
    Luong concat attention, one direction, the article's dropout of 0.1."""

    task = dates_task(train_size=60, valid_size=8, test_size=8, seed=3)
    config = benchmark.benchmark_config(task, 32)
    assert (config.rnn_type, config.bidirectional, config.decoder, config.attention) == (
        "lstm",
        False,
        "luong",
        "concat",
    )
    assert (config.embedding_size, config.hidden_size, config.dropout) == (32, 32, 0.1)


def test_attention_kernel_rows_report_milliseconds_per_call_and_the_matrix_size(fake_clock):
    """Each path is run once untimed, then ``repeats`` times between two clock readings
    (10 times, or 3 from 1,024 tokens on): a clock one second later at each reading
    gives 1000 / repeats ms per call. The matrix is batch × heads × L² float32s."""

    fake_clock(benchmark, tick=1.0)
    rows = benchmark.attention_kernel_rows(
        torch.device("cpu"), (16, 1024), batch=3, size=8, heads=2
    )
    assert [row["length"] for row in rows] == [16, 1024]
    for row, repeats in zip(rows, (10, 3), strict=True):
        for path in ("explicit (need_weights=True)", "fused SDPA (need_weights=False)"):
            assert row[f"{path} ms"] == pytest.approx(1000.0 / repeats)
        assert row["attention matrix MiB"] == pytest.approx(3 * 2 * row["length"] ** 2 * 4 / 2**20)
        assert not any("peak" in key for key in row)  # GPU memory only on a GPU


def test_each_attention_path_is_timed_under_its_own_name(fake_clock, monkeypatch):
    """The explicit path (``need_weights=True``) and the fused one are not swapped: with
    a stand-in layer that takes 1 s a call for the first and 3 s for the second, the
    rows say 1,000 and 3,000 ms per call, at a short length (one warm-up call, then 10
    timed) and from 1,024 tokens on (one, then 3): the calls are counted too."""

    clock = fake_clock(benchmark)
    calls = Counter()

    class StandInLayer(torch.nn.Module):
        def __init__(self, size, heads):
            super().__init__()

        def forward(self, query, keys, values, need_weights):
            calls[query.size(1), need_weights] += 1
            clock.advance(1.0 if need_weights else 3.0)
            return query, None

    monkeypatch.setattr(benchmark, "MultiHeadAttention", StandInLayer)
    rows = benchmark.attention_kernel_rows(torch.device("cpu"), (4, 1024), batch=1, size=8, heads=2)
    for row in rows:
        assert row["explicit (need_weights=True) ms"] == pytest.approx(1000.0)
        assert row["fused SDPA (need_weights=False) ms"] == pytest.approx(3000.0)
    assert calls == {(4, True): 11, (4, False): 11, (1024, True): 4, (1024, False): 4}


def test_ctrl_c_ends_the_benchmark_with_one_line_and_keeps_what_it_printed(
    tiny_task, monkeypatch, capsys
):
    """Interrupted during the article's second loop, the benchmark has printed (a) and
    says in one line, with no traceback, that it stopped there (exit status 130, as a
    shell reports SIGINT)."""
    monkeypatch.setattr(benchmark, "tatoeba_task", lambda max_pairs: tiny_task)
    article = iter([(100.0, 2_000)])

    def article_then_ctrl_c(task, config, on, duration, **settings):
        try:
            return next(article)
        except StopIteration:
            raise KeyboardInterrupt from None

    monkeypatch.setattr(benchmark, "article_loop_tokens_per_second", article_then_ctrl_c)
    assert benchmark.main(["--device", "cpu"]) == 130
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1].endswith(": 100 target tokens/s (2,000 tokens)")
    assert captured.err == (
        "interrupted: the figures printed above are complete; nothing else was measured\n"
    )
