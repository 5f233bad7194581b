"""Attention layers: every classic scoring function behind one call.

All layers share one call::

    context, weights = attention(query, keys, values, mask=None)

Shapes (``B`` batch, ``T`` decoder steps, ``S`` source length):

* ``query``: ``(B, d_q)`` for one decoder step, or ``(B, T, d_q)`` for many at once;
* ``keys``: ``(B, S, d_k)`` and ``values``: ``(B, S, d_v)`` (the encoder states);
* ``mask``: ``(B, S)`` bool, True where a real token is (``(B, T, S)`` also works);
* ``weights``: ``(B, S)`` or ``(B, T, S)``, ≥ 0, summing to 1 over the real positions,
  exactly 0 on padding; ``context``: ``(B, d_v)`` or ``(B, T, d_v)``.

The score functions (``q`` the query, ``k`` a key; Luong et al. 2015 §3.1, Bahdanau
et al. 2015 appendix A.1.2):

=======================  ===========================================  ==================
class                    score(q, k)                                  from
=======================  ===========================================  ==================
``DotAttention``         qᵀk                                          Luong "dot"
``ScaledDotAttention``   qᵀk / √d                                     Vaswani et al.
``GeneralAttention``     qᵀ W k                                       Luong "general"
``ConcatAttention``      vᵀ tanh(W [q; k])                            Luong "concat"
``AdditiveAttention``    vᵀ tanh(W_q q + W_k k)                       Bahdanau
=======================  ===========================================  ==================

``LocalAttention`` wraps any of them with Luong's local-m / local-p window, and
``MultiHeadAttention`` runs several scaled dot-product heads in parallel.

Bad input raises a ``ValueError`` that names the problem. Decoders that call a layer
once per step validate once up front and then call :meth:`Attention.attend`, which
skips the checks (each check of a mask on a GPU would wait for the device).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers.checks import is_finite_number, whole_number, whole_number_or_none

__all__ = [
    "Attention",
    "DotAttention",
    "ScaledDotAttention",
    "GeneralAttention",
    "ConcatAttention",
    "AdditiveAttention",
    "LocalAttention",
    "MultiHeadAttention",
    "masked_softmax",
    "attention_entropy",
    "build_attention",
    "ATTENTION_NAMES",
]


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last dimension that gives padded positions exactly 0.

    Args:
        scores: ``(..., S)`` raw alignment scores.
        mask: broadcastable to ``scores``, bool, True where a real token is.

    Masked scores are set to −∞ *before* the softmax, so ``exp(−∞) = 0`` and the
    remaining weights are renormalised over the real positions only. (Zeroing weights
    *after* a plain softmax would leave rows that no longer sum to 1.)
    """
    if mask is not None:
        if mask.dtype != torch.bool:  # say so, rather than torch's error about ~ on floats
            raise TypeError(f"mask must be bool, True where a real token is; got {mask.dtype}")
        if 2 <= mask.dim() < scores.dim():  # broadcasting would match B with another axis
            raise ValueError(
                f"mask {tuple(mask.shape)} has fewer axes than scores {tuple(scores.shape)}: "
                "add the missing ones (a (B, S) mask over (B, T, S) scores: mask[:, None, :])"
            )
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def attention_entropy(weights: Tensor, mask: Tensor | None = None) -> Tensor:
    """Entropy ``−Σ a log a`` (in nats) of each attention distribution.

    Args:
        weights: ``(..., S)`` attention weights.
        mask: optional bool mask broadcastable to ``weights``; padding has weight 0 and
            contributes nothing either way.

    Returns:
        ``(...)``: 0 for a one-hot map, ``log n`` for a uniform map over ``n`` positions.
    """
    if mask is not None:
        if mask.dtype != torch.bool:  # as in masked_softmax: not torch's error about ~
            raise TypeError(f"mask must be bool, True where a real token is; got {mask.dtype}")
        if 2 <= mask.dim() < weights.dim():  # as in masked_softmax: B would meet T when B == T
            raise ValueError(
                f"mask {tuple(mask.shape)} has fewer axes than weights {tuple(weights.shape)}: "
                "add the missing ones (a (B, S) mask over (B, T, S) weights: mask[:, None, :])"
            )
        weights = weights.masked_fill(~mask, 0.0)
    return -(weights * torch.log(weights.clamp_min(1e-12))).sum(dim=-1)


def _describe(tensor: Tensor) -> str:
    return f"{tuple(tensor.shape)}"


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (never for devices without one: meta)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def validate_attention_inputs(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    mask: Tensor | None,
    query_size: int | None = None,
    key_size: int | None = None,
) -> None:
    """Raise a ``ValueError`` naming the problem if the inputs do not fit together."""
    for name, tensor in (("query", query), ("keys", keys), ("values", values)):
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must hold floating-point numbers, got {tensor.dtype}")
    dtypes = {query.dtype, keys.dtype, values.dtype}
    # Under autocast the products cast their inputs themselves, so mixed dtypes are fine.
    if len(dtypes) > 1 and not _autocast_on(query.device.type):
        raise ValueError(
            f"query, keys and values must share one dtype, got {query.dtype}, {keys.dtype} "
            f"and {values.dtype} (torch.from_numpy gives float64: .float() converts)"
        )
    if query.dim() not in (2, 3):
        raise ValueError(
            f"query must be (batch, d_q) or (batch, steps, d_q), got shape {_describe(query)}"
        )
    if keys.dim() != 3 or values.dim() != 3:
        raise ValueError(
            f"keys and values must be (batch, src_len, d), got keys {_describe(keys)} "
            f"and values {_describe(values)}"
        )
    batch = query.size(0)
    if keys.size(0) != batch or values.size(0) != batch:
        raise ValueError(
            f"batch sizes differ: query {batch}, keys {keys.size(0)}, values {values.size(0)}"
        )
    if keys.size(1) != values.size(1):
        raise ValueError(
            f"keys and values must have the same src_len, got {keys.size(1)} and {values.size(1)}"
        )
    if keys.size(1) == 0:
        raise ValueError("src_len is 0: there is nothing to attend to")
    if query_size is not None and query.size(-1) != query_size:
        raise ValueError(
            f"query feature size is {query.size(-1)} but this layer expects d_q = {query_size}"
        )
    if key_size is not None and keys.size(-1) != key_size:
        raise ValueError(
            f"keys feature size is {keys.size(-1)} but this layer expects d_k = {key_size}"
        )
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError("mask must be a bool tensor, True where a real (non-padding) token is")
    source_length = keys.size(1)
    steps = query.size(1) if query.dim() == 3 else None
    allowed = [(batch, source_length)]
    if steps is not None:
        allowed.append((batch, steps, source_length))
    if tuple(mask.shape) not in allowed:
        wanted = " or ".join(str(shape) for shape in allowed)
        raise ValueError(f"mask has shape {_describe(mask)}, expected {wanted}")
    # Checked on the CPU only: on a GPU, reading the answer back would stall the device
    # on every call (every layer of every decoding step).
    if mask.device.type == "cpu" and not bool(mask.any(dim=-1).all()):
        raise ValueError(
            "a mask row has no real position: every query must see at least one key "
            "(is a sentence empty, or the mask inverted? True marks real tokens)"
        )


class Attention(nn.Module):
    """Base class: ``score`` → masked softmax → weighted sum of the values.

    Subclasses implement :meth:`score` and may override :meth:`project_keys` to
    compute the part of the score that depends on the keys alone once per sentence
    instead of once per decoder step.
    """

    query_size: int | None = None
    key_size: int | None = None

    def project_keys(self, keys: Tensor) -> Tensor:
        """The key-only part of the score, ``(B, S, ·)``; identity by default."""
        return keys

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """Alignment scores ``(B, T, S)`` for queries ``(B, T, d_q)``."""
        raise NotImplementedError

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor,
        mask: Tensor | None = None,
        positions: Tensor | int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Validate, attend, and return ``(context, weights)`` (see the module doc).

        ``positions`` (the decoder step of each query) matters only to local-m.
        """
        validate_attention_inputs(query, keys, values, mask, self.query_size, self.key_size)
        weight = next(self.parameters(), None)
        if (
            weight is not None
            and weight.dtype != query.dtype
            and not _autocast_on(query.device.type)
        ):
            raise ValueError(
                f"the inputs are {query.dtype} but this layer's weights are {weight.dtype}: "
                "convert one to the other (torch.from_numpy gives float64: .float())"
            )
        single_step = query.dim() == 2
        context, weights = self.attend(
            query.unsqueeze(1) if single_step else query, keys, values, mask, positions=positions
        )
        if single_step:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights

    def attend(
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor,
        mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
        positions: Tensor | int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attention without input checks.

        Args:
            query: ``(B, T, d_q)``.
            keys: ``(B, S, d_k)``; values: ``(B, S, d_v)``.
            mask: ``(B, S)`` or ``(B, T, S)`` bool, or None.
            projected_keys: ``project_keys(keys)``, if the caller cached it.
            positions: ignored here; used by :class:`LocalAttention`.

        Returns:
            context ``(B, T, d_v)`` and weights ``(B, T, S)``.
        """
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        scores = self.score(query, projected_keys)
        weights = masked_softmax(scores, _steps_mask(mask))
        return torch.bmm(weights, real_values(values, mask)), weights


def real_values(values: Tensor, mask: Tensor | None) -> Tensor:
    """``values`` with the padded positions set to 0, ``(B, S, d_v)``.

    A padded position gets weight 0, but :math:`0 \\times \\mathrm{NaN} = \\mathrm{NaN}`:
    garbage (NaN, inf) in the padding of the values would leak into every context vector.
    Selecting with the mask instead makes padding truly invisible, and changes nothing
    (bit for bit) when the padding is finite.
    """
    if mask is None:
        return values
    key_mask = mask if mask.dim() == 2 else mask.any(dim=1)  # a key real for any step
    return values.masked_fill(~key_mask.unsqueeze(-1), 0.0)


def _steps_mask(mask: Tensor | None) -> Tensor | None:
    """``(B, S)`` → ``(B, 1, S)`` so it broadcasts over decoder steps."""
    if mask is None or mask.dim() == 3:
        return mask
    return mask.unsqueeze(1)


class DotAttention(Attention):
    r"""Luong's *dot* score: :math:`\mathrm{score}(q, k) = q^\top k`.

    It has no parameters, so query and keys must have the same size ``d``.
    """

    def __init__(self, size: int | None = None) -> None:
        super().__init__()
        self.query_size = self.key_size = whole_number_or_none("size", size)

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        return torch.bmm(query, projected_keys.transpose(1, 2))

    def forward(self, query, keys, values, mask=None, positions=None):
        if (
            isinstance(query, Tensor)
            and isinstance(keys, Tensor)
            and query.size(-1) != keys.size(-1)
        ):
            raise ValueError(
                f"dot attention needs d_q == d_k, got query size {query.size(-1)} and key "
                f"size {keys.size(-1)}; use GeneralAttention to learn a map between them"
            )
        return super().forward(query, keys, values, mask, positions)


class ScaledDotAttention(DotAttention):
    r"""Scaled dot product: :math:`q^\top k / \sqrt{d}` (Vaswani et al. 2017).

    Dividing by :math:`\sqrt d` keeps the variance of the scores near 1 whatever ``d``
    is, so the softmax does not saturate into a one-hot map with vanishing gradients.
    """

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        return torch.bmm(query, projected_keys.transpose(1, 2)) / math.sqrt(query.size(-1))


class GeneralAttention(Attention):
    r"""Luong's *general* score: :math:`q^\top W_a k`, with :math:`W_a \in \mathbb{R}^{d_q \times d_k}`.

    ``W_a k`` depends on the keys alone, so it is computed once per sentence.
    """

    def __init__(self, query_size: int, key_size: int | None = None) -> None:
        super().__init__()
        self.query_size = whole_number("query_size", query_size)
        key_size = whole_number_or_none("key_size", key_size)
        self.key_size = key_size if key_size is not None else query_size
        # nn.Linear(key_size → query_size) stores W_a (d_q × d_k) and is initialised
        # properly; the article built its weights from an uninitialised FloatTensor.
        self.W_a = nn.Linear(self.key_size, self.query_size, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        return self.W_a(keys)

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        return torch.bmm(query, projected_keys.transpose(1, 2))


class AdditiveAttention(Attention):
    r"""Bahdanau's additive score: :math:`v_a^\top \tanh(W_a q + U_a k)`.

    Bahdanau et al. (2015) call the query :math:`s_{i-1}` (the *previous* decoder state)
    and the keys :math:`h_j` (the encoder annotations). ``U_a k`` is computed once per
    sentence, as the paper's appendix suggests.

    Args:
        query_size: :math:`d_q`. key_size: :math:`d_k`.
        attention_size: the width :math:`n'` of the hidden layer inside the score.
    """

    def __init__(self, query_size: int, key_size: int, attention_size: int | None = None) -> None:
        super().__init__()
        self.query_size = whole_number("query_size", query_size)
        self.key_size = whole_number("key_size", key_size)
        # Checked before the `or`: a 0 would otherwise quietly become the query size.
        attention_size = whole_number_or_none("attention_size", attention_size) or query_size
        self.W_a = nn.Linear(self.query_size, attention_size, bias=False)
        self.U_a = nn.Linear(self.key_size, attention_size, bias=False)
        self.v_a = nn.Linear(attention_size, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        return self.U_a(keys)

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        return _tanh_score(self.W_a(query), projected_keys, self.v_a)


def _tanh_score(projected_query: Tensor, projected_keys: Tensor, v: nn.Linear) -> Tensor:
    """``v(tanh(q' + k'))`` for every (step, position) pair: ``(B, T, A), (B, S, A) → (B, T, S)``."""
    hidden = torch.tanh(projected_query.unsqueeze(2) + projected_keys.unsqueeze(1))
    return v(hidden).squeeze(-1)


class ConcatAttention(Attention):
    r"""Luong's *concat* score: :math:`v_a^\top \tanh(W_a [q; k])`.

    :math:`W_a` is one matrix applied to the concatenation :math:`[q; k]` of size
    :math:`d_q + d_k`, exactly as in the paper. Because
    :math:`W_a [q; k] = W_a^{(q)} q + W_a^{(k)} k` (split :math:`W_a` into its first
    :math:`d_q` and last :math:`d_k` columns), the key half is precomputed once per
    sentence and the concatenation never has to be materialised for every pair.

    The FloydHub article instead computed :math:`W_a (q + k)`: one shared matrix for
    query and key, which only works when :math:`d_q = d_k` and ties two maps the paper
    keeps separate.
    """

    def __init__(
        self, query_size: int, key_size: int | None = None, attention_size: int | None = None
    ) -> None:
        super().__init__()
        self.query_size = whole_number("query_size", query_size)
        key_size = whole_number_or_none("key_size", key_size)
        self.key_size = key_size if key_size is not None else query_size
        attention_size = whole_number_or_none("attention_size", attention_size) or query_size
        self.W_a = nn.Linear(self.query_size + self.key_size, attention_size, bias=False)
        self.v_a = nn.Linear(attention_size, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        return F.linear(keys, self.W_a.weight[:, self.query_size :])

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        projected_query = F.linear(query, self.W_a.weight[:, : self.query_size])
        return _tanh_score(projected_query, projected_keys, self.v_a)

    def score_by_concatenation(self, query: Tensor, keys: Tensor) -> Tensor:
        """The literal :math:`v^\\top\\tanh(W[q;k])`, for checking :meth:`score`: ``(B,T,S)``."""
        steps, length = query.size(1), keys.size(1)
        pairs = torch.cat(
            [
                query.unsqueeze(2).expand(-1, -1, length, -1),
                keys.unsqueeze(1).expand(-1, steps, -1, -1),
            ],
            dim=-1,
        )
        return self.v_a(torch.tanh(self.W_a(pairs))).squeeze(-1)


class LocalAttention(Attention):
    r"""Luong's local attention: look only at a window of half-width ``D``.

    *local-m* (``predictive=False``) centres the window on the decoder step,
    :math:`p_t = t`. *local-p* (``predictive=True``) predicts the centre,

    .. math:: p_t = (S - 1)\,\sigma\!\left(v_p^\top \tanh(W_p h_t)\right),

    and multiplies the weights by a Gaussian :math:`\exp(-(s-p_t)^2 / 2\sigma^2)` with
    :math:`\sigma = D/2`, favouring positions near :math:`p_t`.

    Two deliberate, documented deviations from the paper:

    * positions are 0-based and :math:`S` is each sentence's *real* length, so
      :math:`p_t \in [0, S-1]` always lies on a real token and padding changes nothing
      (the paper writes :math:`S \cdot \sigma(\cdot) \in [0, S]`);
    * with ``renormalize=True`` (the default) the Gaussian-weighted weights are divided
      by their sum, so they stay a distribution like every other layer's. The paper
      does not renormalise; pass ``renormalize=False`` for its exact formula.

    Args:
        score: any score layer (dot, general, concat, …) used inside the window.
        window: ``D``; the window is :math:`[p_t - D, p_t + D]`.
        predictive: local-p if True, local-m if False.
        query_size: :math:`d_q`, needed for local-p's :math:`W_p`.
    """

    def __init__(
        self,
        score: Attention,
        window: int = 2,
        predictive: bool = True,
        query_size: int | None = None,
        renormalize: bool = True,
    ) -> None:
        super().__init__()
        # NaN passed "window < 1" and gave all-NaN weights; True passed as 1
        self.window = whole_number("window", window, why="the half-width D of the window")
        self.score_layer = score
        self.predictive = predictive
        self.renormalize = renormalize
        self.query_size = query_size if query_size is not None else score.query_size
        self.key_size = score.key_size
        if predictive:
            if self.query_size is None:
                raise ValueError("local-p needs query_size to build W_p")
            self.W_p = nn.Linear(self.query_size, self.query_size, bias=False)
            self.v_p = nn.Linear(self.query_size, 1, bias=False)

    def forward(self, query, keys, values, mask=None, positions=None):
        if (
            not self.predictive
            and positions is None
            and isinstance(query, Tensor)
            and query.dim() == 2
        ):
            raise ValueError("local-m needs the decoder step of a single query: pass positions=t")
        return super().forward(query, keys, values, mask, positions)

    def project_keys(self, keys: Tensor) -> Tensor:
        return self.score_layer.project_keys(keys)

    def score(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        return self.score_layer.score(query, projected_keys)

    def aligned_positions(
        self, query: Tensor, source_lengths: Tensor, positions: Tensor | int | None = None
    ) -> Tensor:
        """The window centres :math:`p_t`, ``(B, T)`` floats.

        Args:
            query: ``(B, T, d_q)``.
            source_lengths: ``(B,)`` real source lengths, or ``(B, T)`` — one per query
                step, when the mask is per step.
            positions: local-m only: the decoder step — an int for a single query (a
                decoder step passes its index; no tensor is copied to the device), or
                ``(B, T)`` / ``(T,)`` step indices; defaults to ``0 … T−1``. Must be
                ≥ 0; clamped to the last real token.
        """
        last = (source_lengths - 1).to(query.dtype)
        last = last.unsqueeze(1) if last.dim() == 1 else last
        if self.predictive:
            gate = torch.sigmoid(self.v_p(torch.tanh(self.W_p(query)))).squeeze(-1)
            return last * gate
        if positions is None:
            positions = torch.arange(query.size(1), device=query.device)
        elif isinstance(positions, numbers.Integral) and not isinstance(positions, bool):
            if positions < 0:
                raise ValueError(f"local-m needs a decoder step >= 0, got {positions}")
            positions = torch.full((1,), int(positions), device=query.device)
        elif not isinstance(positions, Tensor):
            raise TypeError(
                "positions must be the decoder step (an int) or a tensor of steps, got "
                f"{positions!r} ({type(positions).__name__})"
            )
        elif positions.device.type == "cpu" and bool((positions < 0).any()):
            raise ValueError("local-m needs decoder steps >= 0, got a negative position")
        try:
            positions = positions.to(query.dtype).expand(query.size(0), query.size(1))
        except RuntimeError:
            raise ValueError(
                f"positions must be (B, T) = {tuple(query.shape[:2])} or (T,) decoder steps, "
                f"got shape {tuple(positions.shape)}"
            ) from None
        return torch.minimum(positions, last)

    def attend(self, query, keys, values, mask=None, projected_keys=None, positions=None):
        """As :meth:`Attention.attend`; ``positions`` are the decoder steps for local-m.

        A ``(B, T, S)`` mask gives each query step its own sentence length (the window
        and local-p's :math:`S` follow it); a ``(B, S)`` mask one per sentence.
        """
        batch, source_length = keys.size(0), keys.size(1)
        if mask is None:
            mask = torch.ones(batch, source_length, dtype=torch.bool, device=keys.device)
        source_lengths = mask.sum(dim=-1)  # (B,) or, for a per-step mask, (B, T)
        centres = self.aligned_positions(query, source_lengths, positions)  # (B, T)
        source_positions = torch.arange(source_length, device=keys.device, dtype=query.dtype)
        distance = source_positions.view(1, 1, -1) - centres.unsqueeze(-1)  # (B, T, S)
        window_mask = distance.abs() <= self.window
        full_mask = window_mask & _steps_mask(mask)
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        weights = masked_softmax(self.score(query, projected_keys), full_mask)
        if self.predictive:
            sigma = self.window / 2
            weights = weights * torch.exp(-(distance**2) / (2 * sigma**2))
            if self.renormalize:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        return torch.bmm(weights, real_values(values, mask)), weights


class MultiHeadAttention(nn.Module):
    r"""Multi-head scaled dot-product attention (Vaswani et al. 2017).

    .. math::
        \mathrm{head}_i = \mathrm{softmax}\!\left(\frac{Q W_i^Q (K W_i^K)^\top}{\sqrt{d_h}}\right) V W_i^V,
        \qquad \mathrm{MHA} = [\mathrm{head}_1; \dots; \mathrm{head}_h]\, W^O

    with :math:`d_h = d_{model} / h`.

    Args:
        embed_dim: :math:`d_{model}`, the query size and the output size.
        num_heads: :math:`h`; must divide ``embed_dim``.
        key_size, value_size: sizes of keys and values (default ``embed_dim``).
        dropout: dropout on the attention weights while training.
        bias: biases in the four projections (as ``torch.nn.MultiheadAttention``).

    ``forward(query, keys, values, mask)`` takes a ``(B, S)`` padding mask or a
    ``(B, T, S)`` mask (for example a causal one), True where attending is allowed —
    note that ``torch.nn.MultiheadAttention``'s ``key_padding_mask`` uses the
    opposite convention. With ``need_weights=False`` it calls torch's fused
    ``scaled_dot_product_attention`` kernel and returns ``None`` for the weights.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        key_size: int | None = None,
        value_size: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
        if num_heads < 1 or embed_dim < 1:
            raise ValueError(
                f"embed_dim and num_heads must be at least 1, got {embed_dim} and {num_heads}"
            )
        key_size = whole_number_or_none("key_size", key_size)  # `or embed_dim` below
        value_size = whole_number_or_none("value_size", value_size)
        # 1.5 failed only once training started, "0.1" on a bare comparison
        if not (is_finite_number(dropout) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must divide embed_dim ({embed_dim})")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_size = embed_dim // num_heads
        self.query_size = embed_dim
        self.key_size = key_size or embed_dim
        self.value_size = value_size or embed_dim
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.key_size, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.value_size, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def _split_heads(self, tensor: Tensor) -> Tensor:
        """``(B, L, d_model)`` → ``(B, h, L, d_h)``."""
        batch, length, _ = tensor.shape
        return tensor.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor,
        mask: Tensor | None = None,
        need_weights: bool = True,
        average_heads: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Returns context ``(B, T, d_model)`` and weights ``(B, T, S)`` averaged over
        heads, or ``(B, h, T, S)`` per head with ``average_heads=False``.
        A 2-D query ``(B, d_model)`` gives 2-D/… outputs without the ``T`` axis."""
        validate_attention_inputs(query, keys, values, mask, self.query_size, self.key_size)
        if values.size(-1) != self.value_size:
            raise ValueError(
                f"values feature size is {values.size(-1)} but this layer expects {self.value_size}"
            )
        single_step = query.dim() == 2
        if single_step:
            query = query.unsqueeze(1)
        if mask is not None:
            # Padding selected away before projecting (0 × NaN is NaN, and the fused
            # kernel adds its −inf mask to the scores, where a NaN key would survive).
            # Before the projection, not after: the products keep their shapes and
            # layouts, so clean inputs give the same numbers bit for bit.
            keys, values = real_values(keys, mask), real_values(values, mask)
        k, v = self.project_keys_values(keys, values)
        context, weights = self.attend_projected(query, k, v, mask, need_weights, average_heads)
        if single_step:
            context = context.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(-2)
        return context, weights

    def project_keys_values(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, S, d_k)``, ``(B, S, d_v)`` → the per-head keys and values ``(B, h, S, d_h)``.

        Incremental decoding (:mod:`helpers.transformer`) computes these once per
        source sentence, and once per new target token, and keeps them in a cache.
        """
        return self._split_heads(self.k_proj(keys)), self._split_heads(self.v_proj(values))

    def attend_projected(
        self,
        query: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None = None,
        need_weights: bool = True,
        average_heads: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend with keys and values already projected by :meth:`project_keys_values`.

        Args:
            query: ``(B, T, d_model)``, not yet projected.
            k, v: ``(B, h, S, d_h)``. Their padded positions must hold finite numbers,
                since a weight of 0 times NaN is NaN: :meth:`forward` and the
                Transformer's cache project the inputs after setting padding to 0
                (:func:`real_values`).
            mask: ``(B, S)`` or ``(B, T, S)``, True where attending is allowed.

        Returns context ``(B, T, d_model)`` and weights as :meth:`forward` does.
        """
        q = self._split_heads(self.q_proj(query))
        head_mask = None
        if mask is not None:
            head_mask = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None, :, :]
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)
            weights = masked_softmax(scores, head_mask)  # (B, h, T, S)
            heads = F.dropout(weights, p=dropout, training=self.training) @ v
        else:
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=head_mask, dropout_p=dropout)
        batch, _, steps, _ = heads.shape
        context = self.out_proj(heads.transpose(1, 2).reshape(batch, steps, self.embed_dim))
        if weights is not None and average_heads:
            weights = weights.mean(dim=1)
        return context, weights

    @torch.no_grad()
    def load_from_torch(self, reference: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of a ``torch.nn.MultiheadAttention`` (same sizes) into this layer."""
        if reference.embed_dim != self.embed_dim or reference.num_heads != self.num_heads:
            raise ValueError("embed_dim and num_heads must match the reference layer")
        if reference.in_proj_weight is not None:
            q_weight, k_weight, v_weight = reference.in_proj_weight.chunk(3)
        else:
            q_weight, k_weight, v_weight = (
                reference.q_proj_weight,
                reference.k_proj_weight,
                reference.v_proj_weight,
            )
        for layer, weight in (
            (self.q_proj, q_weight),
            (self.k_proj, k_weight),
            (self.v_proj, v_weight),
        ):
            layer.weight.copy_(weight)
        self.out_proj.weight.copy_(reference.out_proj.weight)
        if reference.in_proj_bias is not None:
            for layer, bias in zip(
                (self.q_proj, self.k_proj, self.v_proj),
                reference.in_proj_bias.chunk(3),
                strict=True,
            ):
                layer.bias.copy_(bias)
            self.out_proj.bias.copy_(reference.out_proj.bias)
        return self


ATTENTION_NAMES = ("dot", "scaled_dot", "general", "concat", "additive", "local-m", "local-p")


def build_attention(
    name: str,
    query_size: int,
    key_size: int,
    attention_size: int | None = None,
    window: int = 2,
    local_score: str = "general",
) -> Attention:
    """Build a scoring layer by name (one of :data:`ATTENTION_NAMES`).

    ``local-m`` and ``local-p`` wrap the ``local_score`` layer (Luong's paper uses
    ``general`` for its best local models).
    """
    if name in ("dot", "scaled_dot"):
        if query_size != key_size:
            raise ValueError(
                f"{name} attention needs query_size == key_size, got {query_size} and {key_size}"
            )
        return DotAttention(query_size) if name == "dot" else ScaledDotAttention(query_size)
    if name == "general":
        return GeneralAttention(query_size, key_size)
    if name == "concat":
        return ConcatAttention(query_size, key_size, attention_size)
    if name == "additive":
        return AdditiveAttention(query_size, key_size, attention_size)
    if name in ("local-m", "local-p"):
        if local_score not in ATTENTION_NAMES:  # None met a bare AttributeError
            raise ValueError(
                f"local_score must be one of {ATTENTION_NAMES[:5]}, got {local_score!r}"
            )
        if local_score.startswith("local"):
            raise ValueError("local attention cannot wrap another local attention")
        inner = build_attention(local_score, query_size, key_size, attention_size)
        return LocalAttention(
            inner, window=window, predictive=name == "local-p", query_size=query_size
        )
    raise ValueError(f"unknown attention {name!r}; choose one of {ATTENTION_NAMES}")
