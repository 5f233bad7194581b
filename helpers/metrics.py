"""Scores: sacreBLEU's BLEU and chrF, and how well attention matches a gold alignment."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sacrebleu.metrics import BLEU, CHRF
from torch import Tensor

from .attention import attention_entropy
from .checks import require_tensor, whole_number


@dataclass
class CorpusScores:
    """Corpus-level BLEU and chrF with the signatures that make them reproducible."""

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_detail: str

    def __str__(self) -> str:
        return (
            f"BLEU = {self.bleu:.1f}  ({self.bleu_signature})\n"
            f"chrF = {self.chrf:.1f}  ({self.chrf_signature})"
        )


def references_as_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-sentence reference lists → sacreBLEU's reference streams.

    sacreBLEU wants one list per *reference slot*. Sentences with fewer references
    than the most-referenced one get ``None`` in the spare slots, which sacreBLEU
    skips (its signature then says ``nrefs:var``).
    """
    if not references:
        raise ValueError("no references: give one list of references per sentence")
    references = [refs if isinstance(refs, str | bytes) else _as_list(refs) for refs in references]
    for index, refs in enumerate(references):
        if not isinstance(refs, list):
            # A bare string would be read as one reference per character.
            raise TypeError(
                f"references[{index}] is a {type(refs).__name__}, not a list of reference "
                "strings: give one list per sentence (e.g. [[ref] for ref in refs])"
            )
        if len(refs) == 0:
            raise ValueError("every sentence needs at least one reference")
        if not all(isinstance(reference, str) for reference in refs):
            raise TypeError(f"references[{index}] holds something other than strings: {refs!r}")
    slots = max(len(refs) for refs in references)
    return [
        [refs[slot] if slot < len(refs) else None for refs in references] for slot in range(slots)
    ]


def _as_list(references: object) -> object:
    """A sentence's references as a list (a tuple, a numpy array or a pandas Series of
    strings will do); anything not iterable comes back as is, to be refused."""
    try:
        return list(references)  # type: ignore[call-overload]
    except TypeError:
        return references


def corpus_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> CorpusScores:
    """BLEU and chrF of detokenised, cased ``hypotheses`` against all ``references``.

    Args:
        hypotheses: one detokenised output per sentence.
        references: for each sentence, every reference translation (any number ≥ 1).
    """
    _check_hypotheses(hypotheses, "hypotheses")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("cannot score an empty corpus")
    streams = references_as_streams(references)
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), streams)
    chrf_score = chrf.corpus_score(list(hypotheses), streams)
    return CorpusScores(
        bleu=bleu_score.score,
        chrf=chrf_score.score,
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
        bleu_detail=str(bleu_score),
    )


def _check_hypotheses(hypotheses: object, name: str) -> None:
    """One detokenised str per sentence: a single str was scored letter by letter (BLEU
    0.0, no error), as sacreBLEU iterates over whatever it is given."""
    if isinstance(hypotheses, str):
        raise TypeError(
            f"{name} is a str ({hypotheses[:30]!r}): give a list, one detokenised output "
            "per sentence"
        )
    for index, hypothesis in enumerate(hypotheses):  # type: ignore[arg-type]
        if not isinstance(hypothesis, str):
            raise TypeError(
                f"{name}[{index}] is a {type(hypothesis).__name__}, not a str: score "
                "detokenised text (a Translation's .text)"
            )


def _check_is_attention(attention: Tensor, index: int) -> None:
    """Each ``(T, S)`` row must be a distribution over the source, or part of one
    (local-p's rows sum below 1). A map with an output position of no weight at all (the
    plain decoder's stand-in zeros) has no focus and no entropy: scored, it would read as
    perfectly sharp and aligned with the first source token. Scores or logits passed
    by mistake (negative, or rows summing above 1) gave a negative "entropy", and a NaN
    map a perfect alignment."""
    require_tensor(f"attentions[{index}]", attention)  # a NumPy map met an AttributeError
    if attention.dim() != 2:
        raise ValueError(
            f"attentions[{index}] has shape {tuple(attention.shape)}: give one (T, S) "
            "matrix per sentence (a batched (B, T, S) tensor: list(tensor))"
        )
    if not attention.shape[0]:
        return
    row_sums = attention.float().sum(-1)  # float: a bf16 map's sums round coarsely
    if not bool(torch.isfinite(row_sums).all()):  # NaN passed every comparison below
        raise ValueError(f"attentions[{index}] holds NaN or infinite weights")
    if attention.shape[-1] == 0 or bool((row_sums <= 0).any()):
        raise ValueError(
            f"attentions[{index}] has an output position with no attention weight (all "
            "zeros): a model without attention, such as the plain decoder?"
        )
    # 1% of slack: a bf16 map's rows sum to 1 only to within its rounding
    if bool((attention < 0).any()) or bool((row_sums > 1.01).any()):
        raise ValueError(
            f"attentions[{index}] is not attention weights: rows must be >= 0 and sum to "
            "at most 1 (scores before the softmax?)"
        )


def alignment_accuracy(
    attentions: Sequence[Tensor], gold_spans: Sequence[Sequence[tuple[int, int] | None]]
) -> float:
    """Share of output positions whose most-attended source position lies in the gold span.

    Args:
        attentions: per sentence, ``(T, S)`` attention (row ``t`` produced output ``t``).
        gold_spans: per sentence, for each output position a ``(start, end)`` source span
            or ``None`` (no gold alignment: skipped).

    Only positions present in both (``min(T, len(gold))``) are scored.
    """
    hits = total = 0
    for index, (attention, spans) in enumerate(zip(attentions, gold_spans, strict=True)):
        _check_is_attention(attention, index)
        focus = attention.argmax(dim=-1).tolist()
        for position, span in zip(focus, spans, strict=False):
            if span is None:
                continue
            if not (isinstance(span, (tuple, list)) and len(span) == 2):
                raise ValueError(
                    f"gold_spans[{index}] must hold one (start, end) span or None per output "
                    f"position, got {span!r} at position {position}"
                )
            total += 1
            hits += span[0] <= position < span[1]
    if total == 0:
        raise ValueError("no output position has a gold alignment")
    return hits / total


def attention_row_entropies(attentions: Sequence[Tensor], normalise: bool = False) -> Tensor:
    """Entropy of every row of every ``(T, S)`` attention matrix, concatenated.

    With ``normalise=True`` each row's entropy is divided by ``log S`` — 0 for a one-hot
    row, 1 for a uniform one — so sentences of different lengths compare; matrices
    over a single source token (where ``log S = 0``) are skipped then.
    """
    attentions = list(attentions)  # looked at twice below
    for index, attention in enumerate(attentions):
        _check_is_attention(attention, index)
    rows = [
        attention_entropy(attention) / (math.log(attention.shape[1]) if normalise else 1.0)
        for attention in attentions
        if attention.numel() and (attention.shape[1] > 1 or not normalise)
    ]
    if not rows:
        raise ValueError("no attention to measure")
    return torch.cat(rows)


def mean_attention_entropy(attentions: Sequence[Tensor], normalise: bool = False) -> float:
    """Mean of :func:`attention_row_entropies`: nats, or a 0–1 share with ``normalise``."""
    return float(attention_row_entropies(attentions, normalise).mean())


def paired_bootstrap(
    baseline: tuple[str, Sequence[str]],
    systems: Sequence[tuple[str, Sequence[str]]],
    references: Sequence[Sequence[str]],
    samples: int = 1000,
    seed: int = 12345,
) -> list[dict[str, float | str]]:
    """sacreBLEU's paired bootstrap resampling (Koehn 2004) of BLEU, ``systems`` against
    ``baseline`` on the same test sentences.

    A thin wrapper around :class:`sacrebleu.significance.PairedTest` (never hand-rolled):
    it resamples the test set ``samples`` times with replacement, computes the absolute
    BLEU difference on each resample, shifts those to average zero, and counts how many
    exceed the observed absolute difference, as the Moses significance script does, with
    the +1 that sacreBLEU takes from MultEval: ``p = (count + 1) / (samples + 1)``, so
    never below ``1 / (samples + 1)``.
    Returns one row per system: ``system``, ``bleu``, ``baseline_bleu``, ``difference``
    and ``p_value`` (the probability of a difference at least this large by chance; below
    0.05 is the usual bar for "significant").

    A system whose output is the baseline's, sentence for sentence, gets ``p_value``
    1.0, whatever the resampling gave: there is no difference to test. (sacreBLEU counts only
    resampled differences strictly above the real one, so for identical outputs, where
    every difference is 0, it would report its smallest p-value, 1 / (samples + 1),
    which reads as "significant".)

    Args:
        baseline, systems: ``(name, detokenised hypotheses)``; all as long as ``references``.
        references: for each sentence, every reference translation.
        seed: the resampling seed (sacreBLEU reads it from ``SACREBLEU_SEED``), so the
            p-values repeat exactly.
    """
    import os

    from sacrebleu.significance import PairedTest

    if not systems:
        raise ValueError("nothing to compare the baseline with")
    samples = whole_number("samples", samples)  # sacreBLEU would quietly take 1,000 for 0
    # sacreBLEU reads the str "None" as no seed at all: p-values that never repeat
    seed = whole_number("seed", seed, least=0)
    for name, hypotheses in [baseline, *systems]:
        _check_hypotheses(hypotheses, f"{name!r}'s hypotheses")
        if len(hypotheses) != len(references):
            raise ValueError(
                f"{name!r} has {len(hypotheses)} hypotheses for {len(references)} sentences"
            )
    previous_seed = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        test = PairedTest(
            [(baseline[0], list(baseline[1])), *[(n, list(h)) for n, h in systems]],
            {"BLEU": BLEU()},
            references_as_streams(references),
            test_type="bs",
            n_samples=samples,
        )
        _, scores = test()
    finally:
        if previous_seed is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = previous_seed
    results = scores["BLEU"]
    baseline_bleu = results[0].score
    return [
        {
            "system": name,
            "bleu": result.score,
            "baseline_bleu": baseline_bleu,
            "difference": result.score - baseline_bleu,
            "p_value": 1.0 if list(hypotheses) == list(baseline[1]) else result.p_value,
        }
        for (name, hypotheses), result in zip(systems, results[1:], strict=True)
    ]
