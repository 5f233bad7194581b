"""Turning a trained model into translations: batched greedy and beam search.

Both searches run a bounded ``for`` loop of at most ``max_length`` steps (the article's
``while True`` could spin forever on a model that never emits ``<eos>``) and return,
for every sentence, the output tokens and the attention matrix that produced them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .batching import collate_batch
from .data import get_tokenizer
from .models import Seq2Seq
from .vocab import EOS_INDEX, EOS_TOKEN, PAD_TOKEN, SOS_TOKEN, UNK_TOKEN


@dataclass
class Hypothesis:
    """One decoded output.

    Attributes:
        token_ids: target indices, ending with ``<eos>`` when the search emitted it.
        attention: ``(len(token_ids), source_length)`` — row ``t`` is the attention
            used to emit ``token_ids[t]``; empty columns for a model without attention.
        score: total log-probability (beam search: divided by the length penalty).
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
    ends with ``"<eos>"`` when the model ended the sentence itself.
    """

    source: str
    text: str
    source_tokens: list[str]
    output_tokens: list[str]
    attention: Tensor
    score: float


def _resolve_max_length(model: Seq2Seq, source_lengths: Tensor, max_length: int | None) -> int:
    if max_length is not None:
        if max_length < 1:
            raise ValueError("max_length must be at least 1")
        return max_length
    # Translations are rarely more than twice as long as their source.
    return min(model.config.max_target_length, int(source_lengths.max()) * 2 + 10)


def _empty_attention(batch: int, source_length: int, device: torch.device) -> Tensor:
    """Stand-in weights for a model without attention (the plain decoder)."""
    return torch.zeros(batch, source_length, device=device)


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq, source: Tensor, source_lengths: Tensor, max_length: int | None = None
) -> list[Hypothesis]:
    """Pick the most likely token at every step, for a whole batch at once.

    Args:
        source: ``(B, S)`` source indices; source_lengths: ``(B,)``.
        max_length: the most tokens to emit (``<eos>`` included).
    """
    model.eval()
    limit = _resolve_max_length(model, source_lengths, max_length)
    memory = model.encode(source.to(model.device), source_lengths)
    state = model.decoder.init_state(memory)
    batch, source_length = source.shape
    tokens = model.start_tokens(batch)
    finished = torch.zeros(batch, dtype=torch.bool, device=model.device)
    emitted, attentions, scores = [], [], torch.zeros(batch, device=model.device)
    for step in range(limit):
        logits, state, weights = model.decoder.step(tokens, state, memory, step)
        log_probabilities = torch.log_softmax(logits.float(), dim=-1)
        best_scores, tokens = log_probabilities.max(dim=-1)
        scores += torch.where(finished, torch.zeros_like(best_scores), best_scores)
        emitted.append(tokens)
        attentions.append(
            weights if weights is not None else _empty_attention(batch, source_length, model.device)
        )
        finished |= tokens == EOS_INDEX
        if bool(finished.all()):
            break
    emitted_matrix = torch.stack(emitted, 1).cpu()
    attention_matrix = torch.stack(attentions, 1).float().cpu()
    hypotheses = []
    for row in range(batch):
        ids = emitted_matrix[row].tolist()
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


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    source: Tensor,
    source_lengths: Tensor,
    beam_size: int = 5,
    max_length: int | None = None,
    alpha: float = 0.6,
) -> list[Hypothesis]:
    """Batched beam search with a length penalty.

    Every sentence keeps ``beam_size`` partial hypotheses; at each step each of them is
    extended by every token, and the ``beam_size`` best continuations survive. A
    hypothesis that emits ``<eos>`` is set aside with score ``log P / lp(|Y|)``; a
    sentence is done once it has ``beam_size`` finished hypotheses. With
    ``beam_size=1`` this is exactly greedy search.

    Returns the best hypothesis of each sentence.
    """
    if beam_size < 1:
        raise ValueError("beam_size must be at least 1")
    model.eval()
    limit = _resolve_max_length(model, source_lengths, max_length)
    device = model.device
    batch, source_length = source.shape
    expand = torch.arange(batch, device=device).repeat_interleave(beam_size)
    memory = model.encode(source.to(device), source_lengths).select(expand)
    state = model.decoder.init_state(memory)
    tokens = model.start_tokens(batch * beam_size)
    beam_scores = torch.full((batch, beam_size), -math.inf, device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: keep one alive so they do not repeat
    history = torch.empty(batch * beam_size, 0, dtype=torch.long, device=device)
    attention_history = torch.empty(batch * beam_size, 0, source_length, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(limit):
        logits, state, weights = model.decoder.step(tokens, state, memory, step)
        if weights is None:
            weights = _empty_attention(batch * beam_size, source_length, device)
        log_probabilities = torch.log_softmax(logits.float(), dim=-1)
        vocab_size = log_probabilities.size(-1)
        totals = (beam_scores.view(-1, 1) + log_probabilities).view(batch, -1)
        candidate_scores, candidate_indices = totals.topk(2 * beam_size, dim=-1)
        candidate_scores, candidate_indices = candidate_scores.cpu(), candidate_indices.cpu()
        next_rows, next_tokens, next_scores = [], [], []
        for sentence in range(batch):
            kept = 0
            for score, index in zip(
                candidate_scores[sentence].tolist(),
                candidate_indices[sentence].tolist(),
                strict=True,
            ):
                beam, token = divmod(index, vocab_size)
                row = sentence * beam_size + beam
                if done[sentence] or score == -math.inf:
                    break
                if token == EOS_INDEX:
                    ids = [*history[row].tolist(), token]
                    attention = torch.cat([attention_history[row], weights[row : row + 1]], 0)
                    real = int(source_lengths[sentence])
                    finished[sentence].append(
                        Hypothesis(
                            ids,
                            attention[:, :real].float().cpu().clone(),
                            score / length_penalty(len(ids), alpha),
                        )
                    )
                    if len(finished[sentence]) >= beam_size:
                        done[sentence] = True
                        break
                    continue
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score)
                kept += 1
                if kept == beam_size:
                    break
            # Done (or short of candidates): fill with dead beams so shapes stay fixed.
            while kept < beam_size:
                next_rows.append(sentence * beam_size)
                next_tokens.append(EOS_INDEX)
                next_scores.append(-math.inf)
                kept += 1
        if all(done):
            break
        rows = torch.tensor(next_rows, device=device)
        tokens = torch.tensor(next_tokens, device=device)
        beam_scores = torch.tensor(next_scores, device=device).view(batch, beam_size)
        state = state.select(rows)
        history = torch.cat([history.index_select(0, rows), tokens.unsqueeze(1)], dim=1)
        attention_history = torch.cat(
            [attention_history.index_select(0, rows), weights.index_select(0, rows).unsqueeze(1)],
            dim=1,
        )
    results = []
    for sentence in range(batch):
        candidates = list(finished[sentence])
        if not candidates:  # nothing ended within max_length: return the best unfinished beams
            for beam in range(beam_size):
                row = sentence * beam_size + beam
                score = float(beam_scores[sentence, beam])
                if score > -math.inf:
                    ids = history[row].tolist()
                    real = int(source_lengths[sentence])
                    candidates.append(
                        Hypothesis(
                            ids,
                            # clone(): a view would keep this step's whole history alive
                            attention_history[row, :, :real].float().cpu().clone(),
                            score / length_penalty(len(ids), alpha),
                        )
                    )
        results.append(max(candidates, key=lambda hypothesis: hypothesis.score))
    return results


def decode(
    model: Seq2Seq,
    source: Tensor,
    source_lengths: Tensor,
    beam_size: int = 1,
    max_length: int | None = None,
    alpha: float = 0.6,
) -> list[Hypothesis]:
    """Greedy for ``beam_size == 1``, beam search otherwise."""
    if beam_size == 1:
        return greedy_decode(model, source, source_lengths, max_length)
    return beam_search(model, source, source_lengths, beam_size, max_length, alpha)


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
    batch_size: int = 256,
    max_length: int | None = None,
    alpha: float = 0.6,
) -> list[Translation]:
    """Translate raw sentences in length-sorted batches; results keep the input order.

    ``batch_size`` bounds the hypotheses decoded at once: greedy search takes
    ``batch_size`` sentences per batch, beam search ``batch_size // beam_size`` (each
    sentence carries ``beam_size`` hypotheses), so memory stays about the same — a beam
    of 5 over 256 sentences at once would need five times the memory (over 1 GB for
    notebook 04's models), more than a Binder machine has to spare.
    """
    source_tokens = [_prepare_source(model, sentence) for sentence in sentences]
    target_tokenizer = get_tokenizer(model.config.target_tokenizer)
    order = sorted(range(len(sentences)), key=lambda index: len(source_tokens[index]))
    results: list[Translation | None] = [None] * len(sentences)
    sentences_per_batch = max(1, batch_size // max(beam_size, 1))
    for start in range(0, len(order), sentences_per_batch):
        chunk = order[start : start + sentences_per_batch]
        examples = [
            (torch.tensor(model.source_vocab.encode(source_tokens[index])), torch.tensor([0]))
            for index in chunk
        ]
        batch = collate_batch(examples)
        hypotheses = decode(model, batch.source, batch.source_lengths, beam_size, max_length, alpha)
        for index, hypothesis in zip(chunk, hypotheses, strict=True):
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
    """The source tokens the model never saw in training (read as ``<unk>``), in order.

    A word counts once per occurrence, so ``len(...)`` is how many ``<unk>`` the encoder
    reads. Raises ``ValueError`` for a model without vocabularies.
    """
    if model.source_vocab is None:
        raise ValueError("the model has no source vocabulary")
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
