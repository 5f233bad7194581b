r"""The Transformer's decoder (Vaswani et al. 2017), built from the series' own parts.

The encoder is :class:`helpers.encoders.SelfAttentionEncoder` (notebook 06): embeddings,
sinusoidal positions and a stack of self-attention layers. This module adds the other
half:

* :class:`TransformerDecoderLayer` — causal self-attention, encoder–decoder
  cross-attention and a position-wise feed-forward block, each in a residual
  connection with layer norm;
* :class:`TransformerDecoder` — embeddings, positions, a stack of those layers and the
  output layer, behind the same one-step interface as the RNN decoders
  (:meth:`~helpers.decoders.Decoder.step`), so the series' greedy and beam search and
  ``translate()`` decode it unchanged;
* :func:`causal_mask` and :class:`TransformerState`, the key/value cache of
  incremental decoding.

Shapes: ``B`` batch, ``S`` source length, ``T`` target steps, ``d`` model size
(``ModelConfig.hidden_size``), ``h`` heads, ``d_h = d/h``, ``V`` target vocabulary.

Pre-norm, deliberately
----------------------
Each block computes :math:`x + \mathrm{Sublayer}(\mathrm{LN}(x))` ("pre-norm", Xiong et
al. 2020; Wang et al. 2019), not the paper's :math:`\mathrm{LN}(x + \mathrm{Sublayer}(x))`
("post-norm"). With post-norm the gradient reaching the lower layers depends on the
layer norms stacked above them, and training diverges early unless the learning rate
is warmed up slowly; with pre-norm the residual path is an identity from the loss to
the embeddings, so training is stable even without warm-up. We keep the paper's
warm-up all the same (:class:`helpers.training.TrainSettings` ``warmup_steps``): it
still helps Adam, whose early moment estimates are noisy. Pre-norm needs one extra
layer norm at the top of each stack (``final_norm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .attention import MultiHeadAttention, real_values
from .decoders import Decoder
from .encoders import EncoderOutput, PositionalEncoding
from .vocab import PAD_INDEX, SOS_INDEX

if TYPE_CHECKING:  # annotations only: models.py imports this module
    from .decoding import Translation
    from .models import ModelConfig, Seq2Seq


def causal_mask(steps: int, device: torch.device | str | None = None) -> Tensor:
    """``(T, T)`` bool, True where query position ``t`` may attend to key position ``u``:
    at itself and before it (``u ≤ t``), never at a later word it has not produced yet."""
    return torch.ones(steps, steps, dtype=torch.bool, device=device).tril()


@dataclass
class LayerCache:
    """One decoder layer's cache for incremental decoding.

    Attributes:
        self_keys, self_values: ``(B, h, t, d_h)`` the projected keys and values of the
            ``t`` target positions decoded so far; each step appends one position.
        cross_keys, cross_values: ``(B, h, S, d_h)`` the projected encoder states,
            computed once per sentence.
    """

    self_keys: Tensor | None
    self_values: Tensor | None
    cross_keys: Tensor
    cross_values: Tensor

    def select(self, indices: Tensor) -> LayerCache:
        def pick(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor.index_select(0, indices)

        return LayerCache(
            pick(self.self_keys),
            pick(self.self_values),
            pick(self.cross_keys),
            pick(self.cross_values),
        )


@dataclass
class TransformerState:
    """What the Transformer decoder carries from one step to the next: a
    :class:`LayerCache` per layer. ``select`` follows the beams, as
    :class:`helpers.decoders.DecoderState` does for an RNN's hidden state."""

    layers: list[LayerCache]

    def select(self, indices: Tensor) -> TransformerState:
        return TransformerState([layer.select(indices) for layer in self.layers])


class TransformerDecoderLayer(nn.Module):
    r"""One decoder layer, pre-norm:

    .. math::
        x &\leftarrow x + \mathrm{MHA}(\mathrm{LN}_1(x), \mathrm{LN}_1(x), \mathrm{LN}_1(x);
            \text{causal}) \\
        x &\leftarrow x + \mathrm{MHA}(\mathrm{LN}_2(x), m, m; \text{source mask}) \\
        x &\leftarrow x + W_2\,\max(0, W_1 \mathrm{LN}_3(x) + b_1) + b_2

    with :math:`x` ``(B, T, d)`` and the encoder states :math:`m` ``(B, S, d)``.
    Dropout is applied to each sub-layer's output before the residual sum, and inside
    the attention and feed-forward blocks, as in the paper.

    Its parameters map one to one onto ``torch.nn.TransformerDecoderLayer(...,
    norm_first=True, batch_first=True)``: :meth:`load_from_torch` copies them, and the
    tests check that both layers give the same output.
    """

    def __init__(self, size: int, heads: int, feedforward_size: int, dropout: float) -> None:
        super().__init__()
        self.self_attention = MultiHeadAttention(size, heads, dropout=dropout)
        self.cross_attention = MultiHeadAttention(size, heads, dropout=dropout)
        self.feedforward = nn.Sequential(
            nn.Linear(size, feedforward_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(feedforward_size, size),
        )
        self.norm_self = nn.LayerNorm(size)
        self.norm_cross = nn.LayerNorm(size)
        self.norm_feedforward = nn.LayerNorm(size)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        states: Tensor,
        memory: Tensor,
        memory_mask: Tensor,
        self_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """All ``T`` positions at once (training, teacher forcing).

        Args:
            states: ``(B, T, d)`` the target-side states entering the layer.
            memory: ``(B, S, d)`` encoder states; memory_mask: ``(B, S)`` True on real tokens.
            self_mask: ``(B, T, T)`` True where attending is allowed (default: causal).
            need_weights: also return the cross-attention weights ``(B, h, T, S)``.
        """
        if self_mask is None:
            steps = states.size(1)
            self_mask = causal_mask(steps, states.device).expand(states.size(0), -1, -1)
        normed = self.norm_self(states)
        attended, _ = self.self_attention(normed, normed, normed, self_mask, need_weights=False)
        states = states + self.dropout(attended)
        normed = self.norm_cross(states)
        attended, weights = self.cross_attention(
            normed, memory, memory, memory_mask, need_weights=need_weights, average_heads=False
        )
        states = states + self.dropout(attended)
        states = states + self.dropout(self.feedforward(self.norm_feedforward(states)))
        return states, weights

    def start_cache(self, memory: Tensor, memory_mask: Tensor | None = None) -> LayerCache:
        """Project the encoder states for cross-attention, once per sentence (padding set
        to 0 first, as ``MultiHeadAttention.forward`` does, so garbage there stays out)."""
        memory = real_values(memory, memory_mask)
        keys, values = self.cross_attention.project_keys_values(memory, memory)
        return LayerCache(None, None, keys, values)

    def step(
        self, state: Tensor, cache: LayerCache, memory_mask: Tensor
    ) -> tuple[Tensor, LayerCache, Tensor]:
        """One new target position, attending to the cached earlier ones.

        Args:
            state: ``(B, 1, d)`` the newest position's input to this layer.
            cache: this layer's :class:`LayerCache` (earlier positions, encoder states).
            memory_mask: ``(B, S)``.

        Returns the position's output ``(B, 1, d)``, the cache with it appended, and the
        cross-attention weights ``(B, h, 1, S)``. The same numbers as :meth:`forward`'s
        row for that position: causality means that row never looks at later ones.
        """
        normed = self.norm_self(state)
        new_keys, new_values = self.self_attention.project_keys_values(normed, normed)
        if cache.self_keys is not None:
            new_keys = torch.cat([cache.self_keys, new_keys], dim=2)
            new_values = torch.cat([cache.self_values, new_values], dim=2)
        attended, _ = self.self_attention.attend_projected(
            normed, new_keys, new_values, None, need_weights=False
        )
        state = state + self.dropout(attended)
        attended, weights = self.cross_attention.attend_projected(
            self.norm_cross(state),
            cache.cross_keys,
            cache.cross_values,
            memory_mask,
            need_weights=True,
            average_heads=False,
        )
        state = state + self.dropout(attended)
        state = state + self.dropout(self.feedforward(self.norm_feedforward(state)))
        return (
            state,
            LayerCache(new_keys, new_values, cache.cross_keys, cache.cross_values),
            weights,
        )

    @torch.no_grad()
    def load_from_torch(self, reference: nn.TransformerDecoderLayer) -> TransformerDecoderLayer:
        """Copy the weights of a pre-norm ``torch.nn.TransformerDecoderLayer`` of the same
        sizes (``norm_first=True``, ReLU) into this layer."""
        if not reference.norm_first:
            raise ValueError("the reference layer must be pre-norm (norm_first=True)")
        self.self_attention.load_from_torch(reference.self_attn)
        self.cross_attention.load_from_torch(reference.multihead_attn)
        for ours, theirs in (
            (self.feedforward[0], reference.linear1),
            (self.feedforward[3], reference.linear2),
            (self.norm_self, reference.norm1),
            (self.norm_cross, reference.norm2),
            (self.norm_feedforward, reference.norm3),
        ):
            ours.load_state_dict(theirs.state_dict())
        return self


class TransformerDecoder(Decoder):
    r"""Target embeddings, sinusoidal positions, ``decoder_layers`` of
    :class:`TransformerDecoderLayer` and the output layer:

    .. math::
        x^{(0)}_t = \sqrt{d}\, E y_{t-1} + PE_t, \qquad
        p(y_t \mid y_{<t}, x) = \operatorname{softmax}\big(W_s\, \mathrm{LN}(x^{(L)}_t) + b_s\big)

    With ``tie_embeddings`` :math:`W_s = E` (Press & Wolf 2017, as the paper does). The
    embeddings start at variance :math:`1/d` and are scaled by :math:`\sqrt d`, so the
    input matches the positions' scale and the tied output layer starts with logits of
    unit scale.

    Under teacher forcing :meth:`forward` runs all target positions at once, with the
    causal mask; :meth:`step` decodes one position at a time from a key/value cache
    (:class:`TransformerState`), which gives the same numbers without recomputing the
    earlier positions. The attention weights it reports per step, for heatmaps and the
    series' alignment scores, are the last layer's cross-attention averaged over heads;
    :meth:`cross_attention_maps` gives every layer and head.
    """

    attention = None  # no single score layer: attention lives inside each layer

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        size = config.hidden_size
        self.size = size
        self.embedding = nn.Embedding(config.target_vocab_size, size, padding_idx=PAD_INDEX)
        nn.init.normal_(self.embedding.weight, std=size**-0.5)
        with torch.no_grad():
            self.embedding.weight[PAD_INDEX].zero_()
        self.positions = PositionalEncoding(size, max_length=max(512, config.max_target_length))
        self.dropout = nn.Dropout(config.dropout)
        feedforward = config.feedforward_size or 2 * size
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(size, config.decoder_heads, feedforward, config.dropout)
            for _ in range(config.decoder_layers)
        )
        self.final_norm = nn.LayerNorm(size)
        self.generator = nn.Linear(size, config.target_vocab_size)
        if config.tie_embeddings:
            self.generator.weight = self.embedding.weight

    def _embed(self, tokens: Tensor, first_position: int = 0) -> Tensor:
        """``(B, T)`` tokens → ``(B, T, d)`` scaled embeddings plus positions."""
        embedded = self.embedding(tokens) * math.sqrt(self.size)
        table = self.positions.table[first_position : first_position + tokens.size(1)]
        return self.dropout(embedded + table)

    def init_state(self, memory: EncoderOutput) -> TransformerState:
        return TransformerState(
            [layer.start_cache(memory.states, memory.mask) for layer in self.layers]
        )

    def step_features(self, previous_tokens, state, memory, step):
        if step >= self.positions.table.size(0):
            raise ValueError(
                f"step {step} exceeds the {self.positions.table.size(0)} encoded positions"
            )
        hidden = self._embed(previous_tokens.unsqueeze(1), first_position=step)
        caches = []
        for layer, cache in zip(self.layers, state.layers, strict=True):
            hidden, cache, weights = layer.step(hidden, cache, memory.mask)
            caches.append(cache)
        features = self.final_norm(hidden).squeeze(1)  # (B, d)
        return features, TransformerState(caches), weights.mean(dim=1).squeeze(1)  # (B, S)

    def output_layer(self, features: Tensor) -> Tensor:
        return self.generator(self.dropout(features))

    def forward(self, decoder_input, memory, teacher_forcing_ratio=1.0):
        if teacher_forcing_ratio < 1.0:  # feeding back predictions needs one step at a time
            return self.forward_stepwise(decoder_input, memory, teacher_forcing_ratio)
        features, maps = self.forward_parallel(decoder_input, memory, need_weights="last")
        return features, maps[-1].mean(dim=1)

    def forward_parallel(
        self, decoder_input: Tensor, memory: EncoderOutput, need_weights: str = "none"
    ) -> tuple[Tensor, list[Tensor]]:
        """All positions at once under teacher forcing.

        Args:
            decoder_input: ``(B, T)`` ``<sos> y_1 … y_{T-1}``.
            need_weights: ``"none"``, ``"last"`` (the last layer's) or ``"all"``.

        Returns features ``(B, T, d)`` and the requested cross-attention maps, one
        ``(B, h, T, S)`` per layer.
        """
        if decoder_input.size(1) > self.positions.table.size(0):
            raise ValueError(
                f"{decoder_input.size(1)} target steps exceed the "
                f"{self.positions.table.size(0)} encoded positions"
            )
        hidden = self._embed(decoder_input)
        self_mask = causal_mask(decoder_input.size(1), hidden.device).expand(
            decoder_input.size(0), -1, -1
        )
        maps = []
        for index, layer in enumerate(self.layers):
            wanted = need_weights == "all" or (
                need_weights == "last" and index == len(self.layers) - 1
            )
            hidden, weights = layer(hidden, memory.states, memory.mask, self_mask, wanted)
            if weights is not None:
                maps.append(weights)
        return self.final_norm(hidden), maps

    @torch.no_grad()
    def cross_attention_maps(self, decoder_input: Tensor, memory: EncoderOutput) -> list[Tensor]:
        """Every layer's cross-attention, per head: a list of ``(B, h, T, S)``.

        Feed the model's own output (``<sos>`` and the decoded tokens) to see the
        weights it used while decoding: by causality, position ``t`` reads only the
        tokens before it, exactly as during decoding.
        """
        return self.forward_parallel(decoder_input, memory, need_weights="all")[1]


@torch.no_grad()
def translation_cross_attention(model: Seq2Seq, translation: Translation) -> Tensor:
    """Every layer's and every head's cross-attention behind one translation.

    Re-runs the decoder in parallel on the model's own output (``<sos>`` and the emitted
    tokens): by causality each position reads only the tokens before it, so these are
    the weights the search used.

    Args:
        model: a :class:`~helpers.models.Seq2Seq` with a :class:`TransformerDecoder`.
        translation: what :func:`helpers.decoding.translate` returned for it.

    Returns:
        ``(L, h, T, S)``: layers, heads, ``T = len(translation.output_tokens)`` and
        ``S = len(translation.source_tokens)``. Averaged over the heads, the last layer
        is ``translation.attention``.
    """
    if not isinstance(model.decoder, TransformerDecoder):
        raise TypeError(
            f"a Transformer decoder has per-layer, per-head maps; got {type(model.decoder).__name__}"
        )
    device = next(model.parameters()).device
    source_ids = model.source_vocab.encode(translation.source_tokens)
    output_ids = model.target_vocab.encode(translation.output_tokens)
    if not source_ids or not output_ids:
        raise ValueError("the translation has no source or no output tokens")
    was_training = model.training
    model.eval()
    try:
        memory = model.encode(
            torch.tensor([source_ids], device=device), torch.tensor([len(source_ids)])
        )
        decoder_input = torch.tensor([[SOS_INDEX, *output_ids[:-1]]], device=device)
        maps = model.decoder.cross_attention_maps(decoder_input, memory)
    finally:
        model.train(was_training)
    return torch.stack([layer_map[0] for layer_map in maps]).cpu()
