"""The beam search of the series before it was tensorised: a test oracle and a baseline.

It loops over every sentence and candidate in Python and copies the whole history at
every step: slow, but easy to check by eye. For a sentence decoded on its own,
``helpers.decoding.beam_search`` must return the same tokens, and the same attention and
(normalised) score to within 1e-4 (``tests/test_decoding.py``); ``python -m
helpers.benchmark`` times both on the same sentences. One change from the original:
``<pad>``/``<sos>`` logits are masked, as the library now does. Like the original, it
reports the normalised score it ranks by (the library reports the log-probability), and
it decodes every sentence of a batch until all are done, up to a limit shared by the
batch.
"""

import math

import torch
from torch import Tensor

from .decoding import Hypothesis, length_penalty, mask_special_logits
from .models import Seq2Seq
from .vocab import EOS_INDEX


def _resolve_max_length(model: Seq2Seq, source_lengths: Tensor, max_length: int | None) -> int:
    # The old, batch-wide limit: the same as the library's per-sentence one for a batch of one.
    if max_length is not None:
        return max_length
    return min(model.config.max_target_length, int(source_lengths.max()) * 2 + 10)


def _empty_attention(batch: int, source_length: int, device: torch.device) -> Tensor:
    return torch.zeros(batch, source_length, device=device)


@torch.no_grad()
def reference_beam_search(
    model: Seq2Seq,
    source: Tensor,
    source_lengths: Tensor,
    beam_size: int = 5,
    max_length: int | None = None,
    alpha: float = 0.6,
) -> list[Hypothesis]:
    """Batched beam search with a length penalty.

    Every sentence keeps ``beam_size`` partial hypotheses; at each step each of them is
    extended by every token, and the ``2 · beam_size`` best continuations are read best
    first: one that emits ``<eos>`` is set aside with score ``log P / lp(|Y|)``, and the
    first ``beam_size`` that do not end survive. A sentence is done once it has
    ``beam_size`` finished hypotheses. With
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
    memory = model.encode(source, source_lengths).select(expand)
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
        log_probabilities = torch.log_softmax(mask_special_logits(logits), dim=-1)
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
