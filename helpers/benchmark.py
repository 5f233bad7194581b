"""How fast is training, decoding and attention? ``python -m helpers.benchmark``.

Measures, on the same data and device:

(a) a faithful copy of the FloydHub article's training loop: one sentence at a time, a
    Python loop over every target token, 50% teacher forcing decided per sentence, a new
    tensor per step, a ``.item()`` per sentence and per step on the sentences it feeds its
    own predictions — with an LSTM, hidden size 256 and Luong *concat* attention, for
    ``--duration`` seconds;
(a') the same loop with 100% teacher forcing: the objective (b) trains, so (b)/(a') is
    the speed-up of the implementation alone;
(b) this project's trainer (``helpers.training.train``) with the same model: length-
    bucketed batches, Luong's parallel teacher-forced decoder, no per-batch syncs, the
    output layer only on real tokens, bf16 autocast and pinned memory on a GPU; for a
    fixed number of batches (``--train-batches``), so that the model it leaves, whose
    decoding is timed next, is the same on every run.

It prints target tokens per second for each, then decoding speed — greedy, beam 5, and
beam 5 with the series' first beam search (:mod:`helpers.reference_beam_search`, a Python
loop over candidates) on the same sentences — and ``MultiHeadAttention`` against torch's
fused ``scaled_dot_product_attention`` by sequence length. The last line is the training
speed-up (b)/(a), and (b)/(a'). No figure here is asserted: these are measurements, and
shared machines are noisy.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .attention import MultiHeadAttention
from .batching import BucketBatchSampler, make_loader
from .decoding import BEAM_BATCH_HYPOTHESES, Hypothesis, translate_batch
from .models import ModelConfig, Seq2Seq
from .reference_beam_search import reference_beam_search
from .tasks import TranslationTask, tatoeba_task
from .training import select_device, set_seed, train
from .vocab import SOS_INDEX

#: The hypotheses per batch of ``translate_batch``'s beam search when the series' first
#: beam search (``reference_beam_search``) was its default; the benchmark times it so.
FIRST_SEARCH_BATCH = 256

#: Batches (b) trains before it is timed: the first batches pay for memory allocation
#: and, on a GPU, kernel selection.
WARMUP_BATCHES = 20

#: Batches (b) is timed on, after its warm-up: about 45 s on two CPU cores at hidden 256.
TRAIN_BATCHES = 300


def benchmark_config(task: TranslationTask, hidden_size: int) -> ModelConfig:
    """The article's model shape: an LSTM encoder–decoder with Luong concat attention."""
    return task.model_config(
        embedding_size=hidden_size,
        hidden_size=hidden_size,
        rnn_type="lstm",
        bidirectional=False,
        decoder="luong",
        attention="concat",
        dropout=0.1,
    )


def article_loop_tokens_per_second(
    task: TranslationTask,
    config: ModelConfig,
    device: torch.device,
    duration: float,
    teacher_forcing_ratio: float = 0.5,
) -> tuple[float, int]:
    """(a): train sentence by sentence, token by token, for ``duration`` seconds.

    ``teacher_forcing_ratio`` 0.5 is the article's; 1.0 always feeds the gold previous
    word, the objective of ``helpers.training.train``, and so never reads the model's
    prediction back with ``.item()``.
    """
    if not 0.0 <= teacher_forcing_ratio <= 1.0:
        raise ValueError(f"teacher_forcing_ratio must lie in [0, 1], got {teacher_forcing_ratio}")
    set_seed(0)
    model = Seq2Seq(config).to(device).train()
    encoder_optimizer = torch.optim.Adam(model.encoder.parameters(), lr=1e-3)
    decoder_optimizer = torch.optim.Adam(model.decoder.parameters(), lr=1e-3)
    order = list(range(len(task.train)))
    random.Random(0).shuffle(order)
    tokens, total_loss = 0, 0.0
    start = time.perf_counter()
    for index in order:
        source_ids, target_ids = task.train[index]
        # As in the article: fresh tensors for every sentence and every step.
        source = torch.tensor([source_ids.tolist()], device=device)
        targets = target_ids.tolist()[1:]  # drop <sos>; ends with <eos>
        memory = model.encode(source, torch.tensor([source.size(1)]))
        state = model.decoder.init_state(memory)
        decoder_input = torch.tensor([SOS_INDEX], device=device)
        loss = 0.0
        # As in the article: one coin flip per sentence decides whether the whole sentence
        # is fed the gold previous words or the model's own predictions.
        teacher_forcing = random.random() < teacher_forcing_ratio
        for step, target in enumerate(targets):
            logits, state, _ = model.decoder.step(decoder_input, state, memory, step)
            loss = loss + F.nll_loss(
                F.log_softmax(logits, dim=-1), torch.tensor([target], device=device)
            )
            decoder_input = torch.tensor(
                [target if teacher_forcing else logits.argmax(-1).item()], device=device
            )
        encoder_optimizer.zero_grad()
        decoder_optimizer.zero_grad()
        loss.backward()
        encoder_optimizer.step()
        decoder_optimizer.step()
        # As in the article, which averages the loss to print it: a read-back (.item())
        # per sentence, part of what this loop costs, though nothing here prints it.
        total_loss += loss.item() / len(targets)
        tokens += len(targets)
        if time.perf_counter() - start > duration:
            break
    return tokens / (time.perf_counter() - start), tokens


def project_trainer_tokens_per_second(
    task: TranslationTask,
    config: ModelConfig,
    device: torch.device,
    batches: int,
    batch_size: int,
    warmup_batches: int = WARMUP_BATCHES,
) -> tuple[float, Seq2Seq]:
    """(b): ``helpers.training.train`` on a fixed number of batches, timed after a fixed
    warm-up; returns target tokens per second and the model, which decoding is timed on.

    A fixed amount of training, not a time budget, so the model is the same on every
    run (at one thread count): how long its translations are, and so how fast they
    decode, does not depend on how fast the machine trained it.
    """
    set_seed(0)
    model = Seq2Seq(config).attach_vocabularies(task.source_vocab, task.target_vocab)
    sampler = BucketBatchSampler(task.train.length_keys, batch_size, shuffle=True, seed=0)
    order: list[list[int]] = []
    while len(order) < warmup_batches + batches:
        order += list(sampler)  # each pass is the next epoch, in its own order

    def loader(first: int, count: int) -> DataLoader:
        return make_loader(
            task.train,
            batch_size,
            pin_memory=device.type == "cuda",
            batch_sampler=order[first : first + count],
        )

    train(model, loader(0, warmup_batches), None, epochs=1, device=device, progress=False)
    [record] = train(
        model, loader(warmup_batches, batches), None, epochs=1, device=device, progress=False
    ).epochs
    return record.target_tokens_per_second, model


def decoding_sentences_per_second(
    model: Seq2Seq,
    sentences: Sequence[str],
    beam_size: int,
    search: Callable[..., list[Hypothesis]] | None = None,
    batch_size: int | None = None,
) -> float:
    """Sentences per second through ``translate_batch``, by default with its default
    batches (256 sentences for greedy search, 1,024 hypotheses for beam search).
    ``search`` replaces :func:`helpers.decoding.beam_search`, e.g. with
    :func:`helpers.reference_beam_search.reference_beam_search` to time the old loop.
    """
    translate_batch(model, sentences[:64], beam_size=beam_size, search=search)  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    translate_batch(model, sentences, beam_size=beam_size, batch_size=batch_size, search=search)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return len(sentences) / (time.perf_counter() - start)


def attention_kernel_rows(
    device: torch.device, lengths: Sequence[int], batch: int = 8, size: int = 256, heads: int = 4
) -> list[dict]:
    """Forward time (and peak GPU memory) of self-attention over ``L`` tokens: our explicit
    path, which materialises the weights, and the fused ``scaled_dot_product_attention``."""
    layer = MultiHeadAttention(size, heads).to(device).eval()
    rows = []
    for length in lengths:
        states = torch.randn(batch, length, size, device=device)
        row = {"length": length}
        for name, need_weights in (
            ("explicit (need_weights=True)", True),
            ("fused SDPA (need_weights=False)", False),
        ):

            def run(states=states, need_weights=need_weights):
                return layer(states, states, states, need_weights=need_weights)

            with torch.no_grad():
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                repeats = 3 if length >= 1024 else 10
                start = time.perf_counter()
                for _ in range(repeats):
                    run()
                if device.type == "cuda":
                    torch.cuda.synchronize()
            row[f"{name} ms"] = (time.perf_counter() - start) / repeats * 1e3
            if device.type == "cuda":
                row[f"{name} peak MiB"] = torch.cuda.max_memory_allocated() / 2**20
        row["attention matrix MiB"] = batch * heads * length * length * 4 / 2**20
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; Ctrl-C ends it with one line (it writes no file, and each figure
    is printed as soon as it is measured, so what was printed stands)."""
    try:
        return _run_benchmark(argv)
    except KeyboardInterrupt:
        print(
            "interrupted: the figures printed above are complete; nothing else was measured",
            file=sys.stderr,
        )
        return 130


def _run_benchmark(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", help="cpu or cuda (default: the GPU when there is one)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds to run each of the article's loops"
    )
    parser.add_argument(
        "--train-batches",
        type=int,
        default=TRAIN_BATCHES,
        help=f"batches to time (b) on, after {WARMUP_BATCHES} of warm-up (default {TRAIN_BATCHES})",
    )
    parser.add_argument(
        "--batch-size", type=int, help="batch size of (b) (default 128 on CPU, 512 on GPU)"
    )
    parser.add_argument("--max-pairs", type=int, default=50_001)
    parser.add_argument("--skip-extras", action="store_true", help="only the training comparison")
    arguments = parser.parse_args(argv)
    if not math.isfinite(arguments.duration) or arguments.duration <= 0:  # NaN and inf too
        parser.error(f"--duration must be a positive number of seconds, got {arguments.duration}")
    if arguments.hidden_size < 2 or arguments.max_pairs < 1:
        parser.error("--hidden-size must be at least 2 and --max-pairs at least 1")
    if arguments.train_batches < 1:
        parser.error(f"--train-batches must be at least 1, got {arguments.train_batches}")
    if arguments.batch_size is not None and arguments.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        device = select_device(arguments.device)
    except ValueError as error:
        parser.error(str(error))
    batch_size = arguments.batch_size or (512 if device.type == "cuda" else 128)
    hardware = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"device: {device} ({hardware}); torch {torch.__version__}")
    task = tatoeba_task(max_pairs=arguments.max_pairs)
    if not task.train or (not arguments.skip_extras and not task.test_sources):
        # Said now, not after minutes of training: decoding speed is timed on test sentences.
        parser.error(
            f"--max-pairs {arguments.max_pairs} leaves {len(task.train)} training pairs and "
            f"{len(task.test_sources)} test sentences: give more pairs (decoding is timed "
            "on the test sentences; --skip-extras times training only)"
        )
    try:
        config = benchmark_config(task, arguments.hidden_size)
    except ValueError as error:  # too few pairs for a vocabulary, say
        parser.error(f"--max-pairs {arguments.max_pairs}: {error}")
    print(
        f"model: LSTM, hidden {arguments.hidden_size}, Luong concat attention; {len(task.train):,} training pairs"
    )

    article_speed, article_tokens = article_loop_tokens_per_second(
        task, config, device, arguments.duration
    )
    print(
        f"(a) article's loop (batch 1, per-token steps, 50% teacher forcing): {article_speed:,.0f} target tokens/s ({article_tokens:,} tokens)"
    )
    gold_speed, gold_tokens = article_loop_tokens_per_second(
        task, config, device, arguments.duration, teacher_forcing_ratio=1.0
    )
    print(
        f"(a') the same loop, 100% teacher forcing (our objective): {gold_speed:,.0f} target tokens/s ({gold_tokens:,} tokens)"
    )
    ours_speed, model = project_trainer_tokens_per_second(
        task, config, device, arguments.train_batches, batch_size
    )
    print(
        f"(b) helpers.training.train (batch {batch_size}, bucketed, parallel Luong decoder; "
        f"{arguments.train_batches:,} batches after {WARMUP_BATCHES} of warm-up): "
        f"{ours_speed:,.0f} target tokens/s"
    )

    if not arguments.skip_extras:
        sentences = task.test_sources[:1000]
        greedy = decoding_sentences_per_second(model, sentences, 1)
        print(f"decoding, greedy: {greedy:,.0f} sentences/s")
        # Alternate the two beam searches and keep each one's best of three: the machine's
        # speed drifts, and a ratio of two runs minutes apart would measure the drift.
        # Each runs as translate_batch ran it by default in its day (docs/performance.md).
        beam, loop = 0.0, 0.0
        for _ in range(3):
            beam = max(beam, decoding_sentences_per_second(model, sentences, 5))
            loop = max(
                loop,
                decoding_sentences_per_second(
                    model, sentences, 5, reference_beam_search, batch_size=FIRST_SEARCH_BATCH
                ),
            )
        print(
            f"decoding, beam 5: {beam:,.0f} sentences/s ({BEAM_BATCH_HYPOTHESES:,} hypotheses "
            "per batch); the series' first beam search (a Python loop over candidates, "
            f"helpers.reference_beam_search, {FIRST_SEARCH_BATCH} hypotheses per batch): {loop:,.0f} "
            f"sentences/s; {beam / loop:.1f}x"
        )
        lengths = (
            (64, 128, 256, 512, 1024) if device.type == "cpu" else (128, 512, 1024, 2048, 4096)
        )
        print("self-attention forward, batch 8, d_model 256, 4 heads (ms; peak MiB on GPU):")
        for row in attention_kernel_rows(device, lengths):
            print(
                "  "
                + ", ".join(
                    f"{key} {value:,.1f}" if isinstance(value, float) else f"{key} {value}"
                    for key, value in row.items()
                )
            )

    print(
        f"speed-up (b)/(a): {ours_speed / article_speed:.1f}x; at the same objective, (b)/(a'): {ours_speed / gold_speed:.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
