"""Turning a trained model into translations: batched greedy and beam search.

Both searches run a bounded ``for`` loop of at most ``max_length`` steps (the article's
``while True`` could spin forever on a model that never emits ``<eos>``) and return,
for every sentence, the output tokens and the attention matrix that produced them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .batching import collate_batch
from .checks import is_finite_number, require_tensor, whole_number_lengths
from .data import get_tokenizer
from .models import Seq2Seq
from .vocab import (
    EOS_INDEX,
    EOS_TOKEN,
    PAD_INDEX,
    PAD_TOKEN,
    SOS_INDEX,
    SOS_TOKEN,
    UNK_TOKEN,
    reject_text,
)


@dataclass
class Hypothesis:
    """One decoded output.

    Attributes:
        token_ids: target indices, ending with ``<eos>`` when the search emitted it.
        attention: ``(len(token_ids), source_length)`` — row ``t`` is the attention
            used to emit ``token_ids[t]``; empty columns for a model without attention.
        score: the model's log-probability of ``token_ids``, :math:`\\log P(Y \\mid X)`
            (the sum over steps, ``<eos>`` included), for greedy and beam search alike.
            Beam search *ranks* finished hypotheses by ``score / length_penalty(len)``
            but reports this unnormalised value, so scores of the two searches compare.
    """

    token_ids: list[int]
    attention: Tensor
    score: float

    @property
    def finished(self) -> bool:
        return bool(self.token_ids) and self.token_ids[-1] == EOS_INDEX


@dataclass
class Translation:
    """``translate``'s answer: the text, its tokens and the attention matrix.

    ``attention`` is ``(len(output_tokens), len(source_tokens))``; ``output_tokens``
    ends with ``"<eos>"`` when the model ended the sentence itself. ``score`` is
    :attr:`Hypothesis.score`.
    """

    source: str
    text: str
    source_tokens: list[str]
    output_tokens: list[str]
    attention: Tensor
    score: float


def sentence_max_lengths(
    model: Seq2Seq, source_lengths: Tensor, max_length: int | None = None
) -> Tensor:
    """The most tokens each sentence may emit (``<eos>`` included), ``(B,)`` long.

    ``max_length`` applies to every sentence when given. By default a sentence may emit
    ``2 * its own source length + 10`` tokens (translations are rarely more than twice
    as long as their source), capped at ``model.config.max_target_length``. The limit is
    each sentence's own: a model that never stops produces the same output for a sentence
    alone as next to a long one, so scores do not depend on batch size or bucketing.
    """
    # Checked here, first thing in both searches: an empty batch or float lengths met a
    # bare "max(): Expected reduction dim" or "slice indices must be integers" later.
    require_tensor("source_lengths", source_lengths)
    if source_lengths.dim() != 1 or source_lengths.numel() == 0:
        raise ValueError(
            f"source_lengths must be (B,) for a batch of at least one sentence, got shape "
            f"{tuple(source_lengths.shape)}"
        )
    whole_number_lengths(source_lengths)
    if max_length is not None:
        _check_positive_int("max_length", max_length)
        return torch.full_like(source_lengths, max_length, dtype=torch.long)
    return (source_lengths.long() * 2 + 10).clamp(max=model.config.max_target_length)


#: ``translate_batch``'s default batches: greedy search decodes this many sentences at once,
#: beam search this many hypotheses (``BEAM_BATCH_HYPOTHESES // beam_size`` sentences).
GREEDY_BATCH_SENTENCES = 256
BEAM_BATCH_HYPOTHESES = 1024


def _check_positive_int(name: str, value: object) -> None:
    # numbers.Integral: a NumPy integer (e.g. from a sweep over np.arange) is an int too.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def _check_alpha(alpha: object) -> None:
    # numbers.Real: a NumPy float (a sweep over np.linspace(..., dtype=np.float32)) counts.
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a number, got {alpha!r} ({type(alpha).__name__})")
    if not is_finite_number(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")


_NEVER_EMITTED = (PAD_INDEX, SOS_INDEX)


def mask_special_logits(logits: Tensor, in_place: bool = False) -> Tensor:
    """``logits`` (float32) with ``<pad>`` and ``<sos>`` set to −inf: a search never emits them.

    ``<pad>`` only fills batches and ``<sos>`` only starts the decoder; neither is a word
    of the output, so both are removed before the softmax instead of being filtered out
    of the text afterwards. ``in_place=True`` writes into float32 ``logits`` (two columns)
    instead of copying all ``B × V`` of them: for a search's fresh logits, nothing else
    reads them.
    """
    masked = logits.float()  # logits itself when it is float32 already, else a copy
    if masked is logits and not in_place:
        masked = logits.clone()
    for index in _NEVER_EMITTED:  # a fill through a view: no index tensor to send to a GPU
        masked[..., index] = -math.inf
    return masked


@contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the body in ``eval()`` mode and without gradients; restore the old mode after.

    Decoding needs dropout off; a caller in the middle of training must get its model
    back in training mode (it would otherwise silently train without dropout).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _empty_attention(batch: int, source_length: int, device: torch.device) -> Tensor:
    """Stand-in weights for a model without attention (the plain decoder)."""
    return torch.zeros(batch, source_length, device=device)


def greedy_decode(
    model: Seq2Seq, source: Tensor, source_lengths: Tensor, max_length: int | None = None
) -> list[Hypothesis]:
    """Pick the most likely token at every step, for a whole batch at once.

    Args:
        source: ``(B, S)`` source indices; source_lengths: ``(B,)``.
        max_length: the most tokens to emit (``<eos>`` included); by default each
            sentence's own :func:`sentence_max_lengths`.

    Returns one :class:`Hypothesis` per sentence. Restores the model's train/eval mode.
    """
    with evaluation_mode(model):
        device = model.device
        limits = sentence_max_lengths(model, source_lengths, max_length)
        steps = int(limits.max())  # read on the CPU, before the limits go to the device
        limits = limits.to(device, non_blocking=True)
        memory = model.encode(source, source_lengths)  # checked on the CPU, then moved
        state = model.decoder.init_state(memory)
        batch, source_length = source.shape
        tokens = model.start_tokens(batch)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        emitted, attentions, scores = [], [], torch.zeros(batch, device=device)
        for step in range(steps):
            logits, state, weights = model.decoder.step(tokens, state, memory, step)
            log_probabilities = torch.log_softmax(mask_special_logits(logits), dim=-1)
            best_scores, tokens = log_probabilities.max(dim=-1)
            scores += torch.where(finished, torch.zeros_like(best_scores), best_scores)
            emitted.append(tokens)
            attentions.append(
                weights if weights is not None else _empty_attention(batch, source_length, device)
            )
            # A sentence ends at <eos> or at its own length limit, whichever comes first.
            finished |= (tokens == EOS_INDEX) | (limits <= step + 1)
            if bool(finished.all()):  # the one wait for the device per step: stop early?
                break
        emitted_matrix = torch.stack(emitted, 1).cpu()
        attention_matrix = torch.stack(attentions, 1).float().cpu()
        limits, scores = limits.cpu(), scores.cpu()
    hypotheses = []
    for row in range(batch):
        ids = emitted_matrix[row, : int(limits[row])].tolist()
        length = ids.index(EOS_INDEX) + 1 if EOS_INDEX in ids else len(ids)
        real = int(source_lengths[row])
        hypotheses.append(
            # clone(): a view would keep the whole batch's matrix alive with each result
            Hypothesis(
                ids[:length], attention_matrix[row, :length, :real].clone(), float(scores[row])
            )
        )
    return hypotheses


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length penalty ``((5 + |Y|) / 6) ** alpha`` (Wu et al. 2016).

    Log-probabilities only go down as a hypothesis grows, so plain beam search prefers
    short outputs; dividing by this penalty (``alpha`` ≈ 0.6) evens that out.
    ``alpha = 0`` switches it off.
    """
    return ((5.0 + length) / 6.0) ** alpha


def beam_search(
    model: Seq2Seq,
    source: Tensor,
    source_lengths: Tensor,
    beam_size: int = 5,
    max_length: int | None = None,
    alpha: float = 0.6,
) -> list[Hypothesis]:
    """Batched beam search with a length penalty, in tensor operations.

    Every sentence keeps ``beam_size`` (``k``) partial hypotheses. At each step each of
    them is extended by every token, and among the ``2k`` best continuations:

    * one that ends in ``<eos>`` is set aside as *finished*, ranked by
      ``log P / length_penalty(|Y|, alpha)``, until the sentence has ``k`` of them —
      then it is done;
    * the first ``k`` that do not end become the next step's beams.

    A sentence also stops at its own :func:`sentence_max_lengths`. The answer is its best
    finished hypothesis, or, if none finished, its best live beam. With ``beam_size=1``
    this is exactly greedy search.

    How it stays fast. As in joeynmt's ``search.py``, the ``k`` beams of every sentence
    step together as one batch and finished sentences leave it, so the decoder runs only
    on sentences still searching. Beyond it (joeynmt keeps the best ``k`` and copies the
    histories): candidates are chosen with tensor operations over the whole batch
    (:func:`best_continuations`, then ``cumsum``/``scatter``), not a Python loop; each
    step stores only its tokens, attention rows and *back-pointers* (which beam each one
    extends), and the outputs are traced back once at the end. No tensor is copied to
    the CPU inside the loop, but dropping the finished sentences waits for the device
    once per step: the ``nonzero`` that does it must know how many sentences are left.

    Args:
        source: ``(B, S)`` source indices; source_lengths: ``(B,)``.
        beam_size: ``k`` ≥ 1; max_length: as in :func:`greedy_decode`; alpha: ≥ 0.

    Returns the best :class:`Hypothesis` of each sentence (``score`` = its log-probability).
    """
    _check_positive_int("beam_size", beam_size)
    _check_alpha(alpha)
    with evaluation_mode(model):
        return _beam_search(model, source, source_lengths, beam_size, max_length, alpha)


def _beam_search(
    model: Seq2Seq,
    source: Tensor,
    source_lengths: Tensor,
    k: int,
    max_length: int | None,
    alpha: float,
) -> list[Hypothesis]:
    require_tensor("source", source)  # read below before encode checks the rest
    device = model.device
    batch, source_length = source.shape
    limits = sentence_max_lengths(model, source_lengths, max_length)
    steps = int(limits.max())  # read on the CPU, before the limits go to the device
    limits = limits.to(device, non_blocking=True)
    beam_offsets = torch.arange(k, device=device)
    active = torch.arange(batch, device=device)  # original index of each sentence still searching
    # encode checks the source on the CPU, then moves it
    memory = model.encode(source, source_lengths).select(active.repeat_interleave(k))
    state = model.decoder.init_state(memory)
    tokens = model.start_tokens(batch * k)
    beam_scores = torch.full((batch, k), -math.inf, device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: keep one alive so they do not repeat

    # What each step leaves behind, for the whole batch (rows of finished sentences unused).
    step_tokens: list[Tensor] = []  # (batch, k): the token each beam emitted at this step
    step_parents: list[Tensor] = []  # (batch, k): the previous step's beam it extends
    step_attention: list[Tensor] = []  # (batch, k, S): the weights used to emit it
    # Finished hypotheses: k slots per sentence (+1 slot that absorbs the rejected).
    finished_count = torch.zeros(batch, dtype=torch.long, device=device)
    finished_ranking = torch.full((batch, k + 1), -math.inf, device=device)  # log P / lp
    finished_log_probability = torch.full((batch, k + 1), -math.inf, device=device)
    finished_step = torch.zeros(batch, k + 1, dtype=torch.long, device=device)
    finished_parent = torch.zeros(batch, k + 1, dtype=torch.long, device=device)
    finished_attention = torch.zeros(batch, k + 1, source_length, device=device)
    # For a sentence that ends without any finished hypothesis: its live beams at the end.
    final_step = torch.zeros(batch, dtype=torch.long, device=device)
    final_scores = torch.full((batch, k), -math.inf, device=device)

    for step in range(steps):
        n = active.numel()
        logits, state, weights = model.decoder.step(tokens, state, memory, step)
        if weights is None:
            weights = _empty_attention(n * k, source_length, device)
        weights = weights.float().view(n, k, source_length)
        log_probabilities = torch.log_softmax(mask_special_logits(logits, in_place=True), -1)
        scores, parents, candidates = best_continuations(
            log_probabilities.view(n, k, -1), beam_scores, 2 * k
        )  # (n, 2k) each, best first
        alive = scores > -math.inf
        ends = alive & (candidates == EOS_INDEX)
        continues = alive & ~ends
        # Candidates are read best first: the first k that continue become the beams, and
        # nothing after the k-th of them is looked at (the Python loop's `break`).
        continuing_before = continues.long().cumsum(-1) - continues.long()
        looked_at = continuing_before < k
        # Finished ones are kept while the sentence has fewer than k.
        ends = ends & looked_at
        ends &= finished_count[active].unsqueeze(1) + ends.long().cumsum(-1) <= k

        finished_slot = torch.where(
            ends, finished_count[active].unsqueeze(1) + ends.long().cumsum(-1) - 1, k
        )
        length = step + 1
        ranking = torch.where(ends, scores / length_penalty(length, alpha), -math.inf)
        parent_attention = weights.gather(1, parents.unsqueeze(-1).expand(-1, -1, source_length))
        for store, values in (
            (finished_ranking, ranking),
            (finished_log_probability, torch.where(ends, scores, -math.inf)),
            (finished_step, torch.full_like(parents, step)),
            (finished_parent, parents),
        ):
            store[active] = store[active].scatter(1, finished_slot, values)
        finished_attention[active] = finished_attention[active].scatter(
            1, finished_slot.unsqueeze(-1).expand(-1, -1, source_length), parent_attention
        )
        finished_count[active] += ends.sum(-1)

        # The next beams: the first k continuing candidates, dead beams (−inf) if fewer.
        beam_slot = torch.where(continues & looked_at, continuing_before, k)
        kept = continues & looked_at

        beam_scores = _place_in_slots(scores, beam_slot, kept, k, -math.inf)
        tokens_kept = _place_in_slots(candidates, beam_slot, kept, k, EOS_INDEX)
        parents_kept = _place_in_slots(parents, beam_slot, kept, k, 0)
        step_tokens.append(
            tokens.new_full((batch, k), EOS_INDEX).index_copy(0, active, tokens_kept)
        )
        step_parents.append(tokens.new_zeros(batch, k).index_copy(0, active, parents_kept))
        step_attention.append(
            weights.new_zeros(batch, k, source_length).index_copy(
                0, active, _place_in_slots(parent_attention, beam_slot, kept, k, 0.0)
            )
        )

        ended = (finished_count[active] >= k) | (limits[active] <= length)
        final_step[active] = torch.where(ended, step, final_step[active])
        final_scores[active] = torch.where(ended.unsqueeze(1), beam_scores, final_scores[active])
        # Reorder every beam's state to follow its parent, then drop ended sentences.
        # The one wait for the device in a step: how many sentences are left.
        still = (~ended).nonzero().squeeze(1)
        if still.numel() == 0:
            break
        state = state.select((still.unsqueeze(1) * k + parents_kept[still]).flatten())
        if still.numel() < n:  # a sentence ended: its k copies of the source leave the batch
            memory = memory.select((still.unsqueeze(1) * k + beam_offsets).flatten())
            active = active[still]
            tokens_kept, beam_scores = tokens_kept[still], beam_scores[still]
        tokens = tokens_kept.flatten()

    return _trace_back(
        source_lengths,
        torch.stack(step_tokens).cpu(),
        torch.stack(step_parents).cpu(),
        torch.stack(step_attention).cpu(),
        finished_count.cpu(),
        finished_ranking[:, :k].cpu(),
        finished_log_probability[:, :k].cpu(),
        finished_step[:, :k].cpu(),
        finished_parent[:, :k].cpu(),
        finished_attention[:, :k].cpu(),
        final_step.cpu(),
        final_scores.cpu(),
    )


def best_continuations(
    log_probabilities: Tensor, beam_scores: Tensor, count: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``count`` best one-token extensions of each sentence's beams, best first.

    Args:
        log_probabilities: ``(n, k, V)`` each beam's next-token log-probabilities.
        beam_scores: ``(n, k)`` each beam's log-probability so far (−inf: an empty beam).
        count: how many to return (at most ``k · V``).

    Returns ``(scores, parents, tokens)``, each ``(n, count)``: ``scores`` =
    ``beam_scores[parent] + log_probabilities[parent, token]``, the same values, in the
    same order, as ``topk`` over all ``k · V`` totals. The parents and tokens of equal
    scores may come in another order than that ``topk`` gives, and those of −inf scores
    mean nothing (such a token may even be ≥ V): callers keep only finite scores.

    Why not just that ``topk``. Building the ``(n, k·V)`` totals and selecting from them
    costs two passes over the largest tensor of the search. Instead each beam's
    vocabulary is cut into blocks of about ``√V`` tokens, and only the ``count``
    (beam, block) pairs with the highest "beam score + block maximum" are searched: a
    continuation in any other block scores no higher than each of those ``count``
    maxima, so the chosen blocks already hold ``count`` continuations at least as good
    as it. One cheap pass (the block maxima) replaces two.
    """
    n, k, vocab_size = log_probabilities.shape
    count = min(count, k * vocab_size)
    block = max(1, math.isqrt(vocab_size))
    full_blocks = vocab_size // block
    rows = log_probabilities.reshape(n * k, vocab_size)
    maxima = [rows[:, : full_blocks * block].view(n * k, full_blocks, block).amax(-1)]
    if full_blocks * block < vocab_size:  # the last, shorter block
        maxima.append(rows[:, full_blocks * block :].amax(-1, keepdim=True))
    blocks_per_beam = full_blocks + len(maxima) - 1
    # A beam's score shifts all its tokens alike (and rounding keeps the order).
    block_totals = torch.cat(maxima, 1).view(n, k, blocks_per_beam) + beam_scores.unsqueeze(-1)
    chosen = block_totals.view(n, k * blocks_per_beam).topk(min(count, k * blocks_per_beam), -1)[1]
    parents = chosen // blocks_per_beam  # (n, c) the beam and block of each chosen block
    first_token = (chosen % blocks_per_beam) * block
    tokens = (first_token.unsqueeze(-1) + torch.arange(block, device=chosen.device)).flatten(1)
    parents = parents.repeat_interleave(block, dim=1)  # (n, c · block)
    inside = tokens < vocab_size
    rows_of = (torch.arange(n, device=chosen.device).unsqueeze(1) * k + parents) * vocab_size
    values = rows.view(-1)[(rows_of + tokens.clamp(max=vocab_size - 1))]
    totals = beam_scores.gather(1, parents) + values
    totals = totals.masked_fill(~inside, -math.inf)
    scores, picked = totals.topk(count, -1)
    return scores, parents.gather(1, picked), tokens.gather(1, picked)


def _place_in_slots(values: Tensor, slots: Tensor, keep: Tensor, k: int, fill: float) -> Tensor:
    """``(n, 2k, ...)`` candidate values → ``(n, k, ...)``: kept ones at their ``slots``.

    ``slots`` ``(n, 2k)`` holds each kept candidate's new beam index (distinct, < k) and
    ``k`` for the rest, which land in a spare column that is cut off; empty beams get ``fill``.
    """
    extra = [1] * (values.dim() - 2)
    where = slots.view(*slots.shape, *extra).expand_as(values)
    kept = keep.view(*keep.shape, *extra).expand_as(values)
    shape = (values.size(0), k + 1, *values.shape[2:])
    placed = values.new_full(shape, fill).scatter(1, where, values.masked_fill(~kept, fill))
    return placed[:, :k]


def _trace_back(
    source_lengths: Tensor,
    step_tokens: Tensor,
    step_parents: Tensor,
    step_attention: Tensor,
    finished_count: Tensor,
    finished_ranking: Tensor,
    finished_log_probability: Tensor,
    finished_step: Tensor,
    finished_parent: Tensor,
    finished_attention: Tensor,
    final_step: Tensor,
    final_scores: Tensor,
) -> list[Hypothesis]:
    """Follow the back-pointers from each sentence's best hypothesis to the first step.

    All sentences walk back together, one step at a time: ``beams[t, b]`` is the beam
    that sentence ``b``'s answer sat in at step ``t`` (for ``t`` up to its last step).
    The step tensors are on the CPU.
    """
    steps, batch, _ = step_tokens.shape
    sentences = torch.arange(batch)
    ended = finished_count > 0  # else: nothing ended within the limit, take a live beam
    best_finished = finished_ranking.argmax(-1)  # the first of equals, as max() would
    best_live = final_scores.argmax(-1)  # live beams all have one length
    # The last step whose token is not the closing <eos>, and the beam it was in.
    last = torch.where(ended, finished_step[sentences, best_finished] - 1, final_step)
    beam = torch.where(ended, finished_parent[sentences, best_finished], best_live)
    beams = torch.zeros(steps, batch, dtype=torch.long)
    for step in range(steps - 1, -1, -1):
        beams[step] = beam
        beam = torch.where(step <= last, step_parents[step, sentences, beam], beam)
    path_tokens = step_tokens.gather(2, beams.unsqueeze(-1)).squeeze(-1).T  # (batch, steps)
    path_attention = step_attention[torch.arange(steps).unsqueeze(1), sentences, beams]
    # (steps, batch, S) → (batch, steps + 1, S), the closing <eos>'s row after the path
    path_attention = torch.cat(
        [
            path_attention.transpose(0, 1),
            path_attention.new_zeros(batch, 1, path_attention.size(-1)),
        ],
        1,
    )
    eos_row = (last + 1).clamp(max=steps)
    path_attention[sentences[ended], eos_row[ended]] = finished_attention[
        sentences[ended], best_finished[ended]
    ]
    scores = torch.where(
        ended,
        finished_log_probability[sentences, best_finished],
        final_scores[sentences, best_live],
    ).tolist()
    results = []
    for sentence, (ids, length, finished, real) in enumerate(
        zip(
            path_tokens.tolist(),
            (last + 1).tolist(),
            ended.tolist(),
            source_lengths.tolist(),
            strict=True,
        )
    ):
        ids = ids[:length] + [EOS_INDEX] if finished else ids[:length]
        attention = path_attention[sentence, : len(ids), :real].clone()
        results.append(Hypothesis(ids, attention, scores[sentence]))
    return results


def decode(
    model: Seq2Seq,
    source: Tensor,
    source_lengths: Tensor,
    beam_size: int = 1,
    max_length: int | None = None,
    alpha: float = 0.6,
    search: Callable[..., list[Hypothesis]] | None = None,
) -> list[Hypothesis]:
    """Greedy for ``beam_size == 1``, beam search otherwise: ``search`` if given (called
    as :func:`beam_search` is), else :func:`beam_search`."""
    _check_positive_int("beam_size", beam_size)
    if beam_size == 1:
        return greedy_decode(model, source, source_lengths, max_length)
    search = search or beam_search
    return search(model, source, source_lengths, beam_size, max_length, alpha)


def _prepare_source(model: Seq2Seq, sentence: object) -> list[str]:
    if model.source_vocab is None or model.target_vocab is None:
        raise ValueError(
            "the model has no vocabularies: call model.attach_vocabularies(...) or load a checkpoint"
        )
    if not isinstance(sentence, str):
        raise TypeError(f"translate expects a str sentence, got {type(sentence).__name__}")
    if not sentence.strip():
        raise ValueError("cannot translate an empty or whitespace-only sentence")
    tokens = get_tokenizer(model.config.source_tokenizer)(sentence)
    if len(tokens) > model.config.max_source_length:
        raise ValueError(
            f"the sentence has {len(tokens)} tokens; this model accepts at most "
            f"{model.config.max_source_length} (ModelConfig.max_source_length)"
        )
    return tokens


def translate_batch(
    model: Seq2Seq,
    sentences: Sequence[str],
    beam_size: int = 1,
    batch_size: int | None = None,
    max_length: int | None = None,
    alpha: float = 0.6,
    search: Callable[..., list[Hypothesis]] | None = None,
) -> list[Translation]:
    """Translate raw sentences in length-sorted batches; results keep the input order.

    ``batch_size`` bounds the hypotheses decoded at once: greedy search takes
    ``batch_size`` sentences per batch, beam search ``batch_size // beam_size`` (each
    sentence carries ``beam_size`` hypotheses), so memory is bounded whatever the beam.
    By default greedy search takes 256 sentences and beam search 1,024 hypotheses (204
    sentences with a beam of 5). The two differ because their costs do: beam search
    drops finished sentences and spends much of each step on its own bookkeeping
    (choosing candidates, gathering states), which a larger batch shares among more
    sentences, while a greedy batch runs until its last sentence ends. On notebook 04's
    Luong model on a 2-core CPU, beam-5 decoding of the test set ran about 17% faster at
    1,024 hypotheses than at 256 (best of three runs each), and greedy decoding was a
    little slower at 1,024 sentences than at 256 (``docs/performance.md``). The batch
    size does not change which words come out, except in principle at a near-tie: scores
    and attention weights may differ in their last float digits (matrix products of
    another size sum in another order).

    ``search`` replaces :func:`beam_search` for ``beam_size > 1`` (the benchmark passes
    :func:`helpers.reference_beam_search.reference_beam_search` to time the old loop).
    """
    if isinstance(sentences, str) or not isinstance(sentences, Sequence):
        raise TypeError(
            "translate_batch expects a list of sentences, got "
            f"{type(sentences).__name__}; for one sentence use translate(model, sentence)"
        )
    _check_positive_int("beam_size", beam_size)
    if batch_size is None:
        batch_size = GREEDY_BATCH_SENTENCES if beam_size == 1 else BEAM_BATCH_HYPOTHESES
    _check_positive_int("batch_size", batch_size)
    _check_alpha(alpha)
    if max_length is not None:
        _check_positive_int("max_length", max_length)
    source_tokens = [_prepare_source(model, sentence) for sentence in sentences]
    target_tokenizer = get_tokenizer(model.config.target_tokenizer)
    order = sorted(range(len(sentences)), key=lambda index: len(source_tokens[index]))
    results: list[Translation | None] = [None] * len(sentences)
    sentences_per_batch = max(1, batch_size // beam_size)
    for start in range(0, len(order), sentences_per_batch):
        chunk = order[start : start + sentences_per_batch]
        examples = [
            (torch.tensor(model.source_vocab.encode(source_tokens[index])), torch.tensor([0]))
            for index in chunk
        ]
        batch = collate_batch(examples)
        hypotheses = decode(
            model, batch.source, batch.source_lengths, beam_size, max_length, alpha, search
        )
        for index, hypothesis in zip(chunk, hypotheses, strict=True):
            if not math.isfinite(hypothesis.score):  # a score is a float already: no sync
                # NaN weights decoded as '' (greedy: <pad> after <pad>; beam: <eos>).
                raise ValueError(
                    f"sentence {index}'s translation scores {hypothesis.score}: the model's "
                    "outputs are not finite (NaN or infinite weights: did training diverge?)"
                )
            output_tokens = model.target_vocab.decode(hypothesis.token_ids, strip_special=False)
            words = model.target_vocab.decode(hypothesis.token_ids)
            results[index] = Translation(
                source=sentences[index],
                text=target_tokenizer.detokenize(words),
                source_tokens=source_tokens[index],
                output_tokens=output_tokens,
                attention=hypothesis.attention,
                score=hypothesis.score,
            )
    return results  # type: ignore[return-value]


def translate(
    model: Seq2Seq,
    sentence: str,
    beam_size: int = 1,
    max_length: int | None = None,
    alpha: float = 0.6,
) -> Translation:
    """Translate one raw sentence.

    Unknown words map to ``<unk>`` and still translate. Raises ``TypeError`` for a
    non-string and ``ValueError`` for empty text or text longer than the model accepts.

    Example:
        >>> result = translate(model, "She kissed him.")
        >>> result.text, result.attention.shape   # ('Sie küsste ihn.', (5, 4))
    """
    return translate_batch(
        model, [sentence], beam_size=beam_size, max_length=max_length, alpha=alpha
    )[0]


# ------------------------------------------------------------------- unknown words


def unknown_source_tokens(model: Seq2Seq, source_tokens: Sequence[str]) -> list[str]:
    """The source tokens outside the model's vocabulary (read as ``<unk>``), in order:
    words never seen in training, and words seen too rarely to get an entry (fewer
    times than the vocabulary's ``min_freq``).

    A word counts once per occurrence, so ``len(...)`` is how many ``<unk>`` the encoder
    reads. Raises ``ValueError`` for a model without vocabularies.
    """
    if model.source_vocab is None:
        raise ValueError("the model has no source vocabulary")
    reject_text(source_tokens, "source_tokens")
    return [token for token in source_tokens if token not in model.source_vocab]


def replace_unknown_tokens(
    output_tokens: Sequence[str],
    source_tokens: Sequence[str],
    attention: Tensor | Sequence[Sequence[float]],
) -> list[str]:
    """Luong et al. (2015)'s *unk replacement* (OpenNMT's ``replace_unk``).

    Every ``<unk>`` the model emitted becomes the source token with the highest attention
    weight in that output row: a name or rare word the model could not spell is most often
    copied across unchanged, so this turns "Ich heiße <unk>." into "Ich heiße Zorblax.".

    Args:
        output_tokens: the ``T`` emitted tokens (``<eos>`` included or not).
        source_tokens: the ``S`` *raw* source tokens (the words as typed, not ``<unk>``).
        attention: ``(T, S)`` weights (tensor, array or nested lists); row ``t`` is the
            attention used to emit ``output_tokens[t]``.

    Returns:
        A new list of ``T`` tokens. A row with no attention at all (a model without
        attention gives all-zero rows) has nothing to point at: its ``<unk>`` stays.

    Example:
        >>> replace_unknown_tokens(["Ich", "<unk>"], ["I", "Zorblax"], [[0.9, 0.1], [0.2, 0.8]])
        ['Ich', 'Zorblax']
    """
    reject_text(output_tokens, "output_tokens")
    reject_text(source_tokens, "source_tokens")
    weights = torch.as_tensor(attention, dtype=torch.float32)
    if weights.dim() != 2 or tuple(weights.shape) != (len(output_tokens), len(source_tokens)):
        raise ValueError(
            f"attention has shape {tuple(weights.shape)} but there are {len(output_tokens)} "
            f"output and {len(source_tokens)} source tokens"
        )
    replaced = list(output_tokens)
    for row, token in enumerate(output_tokens):
        if token != UNK_TOKEN or not bool((weights[row] > 0).any()):
            continue
        replaced[row] = source_tokens[int(weights[row].argmax())]
    return replaced


def with_unknown_tokens_replaced(model: Seq2Seq, translation: Translation) -> Translation:
    """``translation`` with :func:`replace_unknown_tokens` applied to its tokens and text.

    ``output_tokens`` keep ``<eos>``; ``text`` is detokenised again from the new tokens.
    The attention matrix is unchanged (it is still the picture of what the model did).
    """
    output_tokens = replace_unknown_tokens(
        translation.output_tokens, translation.source_tokens, translation.attention
    )
    if output_tokens == translation.output_tokens:
        return translation
    words = []
    for token in output_tokens:
        if token == EOS_TOKEN:
            break
        if token not in (PAD_TOKEN, SOS_TOKEN):
            words.append(token)
    text = get_tokenizer(model.config.target_tokenizer).detokenize(words)
    return dataclasses.replace(translation, output_tokens=output_tokens, text=text)
