"""Encoders: what the decoder attends over.

* :class:`Encoder` — embedding + (bi)GRU/LSTM over packed sequences (Bahdanau et al.
  2015, Luong et al. 2015).
* :class:`SelfAttentionEncoder` — embedding + sinusoidal positions + self-attention
  layers (notebook 06), a drop-in replacement that returns the same
  :class:`EncoderOutput`.
* The small RNN utilities the decoders share: :func:`make_rnn`, :func:`top_layer`,
  :func:`select_rows`.

Shapes: ``B`` batch, ``S`` source length, ``H`` hidden size (the decoder's, which is also
the size of each encoder state), ``E`` embedding size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .attention import MultiHeadAttention
from .vocab import PAD_INDEX

if TYPE_CHECKING:  # annotations only: models.py imports this module
    from .models import ModelConfig

RNNState = Tensor | tuple[Tensor, Tensor]


def make_rnn(
    rnn_type: str,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    dropout: float,
    bidirectional: bool = False,
) -> nn.RNNBase:
    """A batch-first GRU or LSTM; dropout between layers only when there are several."""
    rnn_class = nn.GRU if rnn_type == "gru" else nn.LSTM
    return rnn_class(
        input_size,
        hidden_size,
        num_layers=num_layers,
        batch_first=True,
        dropout=dropout if num_layers > 1 else 0.0,
        bidirectional=bidirectional,
    )


def top_layer(hidden: RNNState) -> Tensor:
    """The last layer's hidden state ``(B, H)`` (for an LSTM, ``h`` and not ``c``)."""
    return (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]


def select_rows(hidden: RNNState, indices: Tensor) -> RNNState:
    """Pick (and repeat) batch rows of an RNN state ``(layers, B, H)`` (each part of a pair)."""
    if isinstance(hidden, tuple):
        return tuple(part.index_select(1, indices) for part in hidden)
    return hidden.index_select(1, indices)


def real_token_mask(source: Tensor) -> Tensor:
    """``(B, S)`` token indices → ``(B, S)`` bool, True on real tokens.

    Read from the tokens themselves (``<pad>`` never occurs inside a sentence;
    :meth:`helpers.models.Seq2Seq.encode` checks that on the CPU), so the mask is
    built where ``source`` lives, with no copy of the lengths to the device: a
    host→device copy from ordinary memory would stall the GPU once per batch.
    """
    return source != PAD_INDEX


@dataclass
class EncoderOutput:
    """What the decoder reads from the encoder.

    Attributes:
        states: ``(B, S, H)`` one state per source token (zeros on padding).
        mask: ``(B, S)`` bool, True on real tokens.
        initial_hidden: the decoder's initial RNN state, ``(layers, B, H)`` (a pair for an
            LSTM); None for the Transformer decoder, which starts from no state.
        projected_keys: the attention's key-only part, computed once per sentence.
    """

    states: Tensor
    mask: Tensor
    initial_hidden: RNNState | None
    projected_keys: Tensor | None = None

    def select(self, indices: Tensor) -> EncoderOutput:
        """Pick (and repeat) batch rows, e.g. to give each beam its own copy."""
        return EncoderOutput(
            self.states.index_select(0, indices),
            self.mask.index_select(0, indices),
            None if self.initial_hidden is None else select_rows(self.initial_hidden, indices),
            None if self.projected_keys is None else self.projected_keys.index_select(0, indices),
        )


class Encoder(nn.Module):
    """Embedding + bidirectional RNN over packed sequences.

    Packing makes the RNN stop at each sentence's real end, so the backward direction
    starts at the last real word rather than at a run of padding. The decoder's initial
    state is :math:`s_0 = \\tanh(W_s [\\overrightarrow{h}_S; \\overleftarrow{h}_1])`.
    Bahdanau et al. (appendix A.2.2) initialise it from the backward state
    :math:`\\overleftarrow{h}_1` alone; the last forward state is added here, so that the
    summary has read the whole sentence in both directions.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        directions = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(
            config.source_vocab_size, config.embedding_size, padding_idx=PAD_INDEX
        )
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = make_rnn(
            config.rnn_type,
            config.embedding_size,
            config.hidden_size // directions,
            config.num_layers,
            config.dropout,
            config.bidirectional,
        )
        self.bridge = nn.Linear(config.hidden_size, config.hidden_size)
        if config.rnn_type == "lstm":
            self.bridge_cell = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, source: Tensor, source_lengths: Tensor) -> EncoderOutput:
        """Args: source ``(B, S)`` indices; source_lengths ``(B,)`` real lengths."""
        embedded = self.dropout(self.embedding(source))
        # Packing wants the sentences longest first. pack_padded_sequence(enforce_sorted=
        # False) would sort them itself, but it copies the order to the GPU from ordinary
        # memory and, unpacking, copies it back: two waits for the device per batch. The
        # same sort of the CPU lengths, with both orders sent ahead without waiting, does
        # the same arithmetic (bit for bit on a CPU) and never waits.
        lengths, order = torch.sort(source_lengths.cpu(), descending=True)
        restore = order.argsort()  # the inverse permutation: back to the batch's order
        order = order.to(source.device, non_blocking=True)
        restore = restore.to(source.device, non_blocking=True)
        packed = pack_padded_sequence(embedded.index_select(0, order), lengths, batch_first=True)
        packed_states, final = self.rnn(packed)
        # total_length keeps the padded width, so extra padding changes no shape.
        states, _ = pad_packed_sequence(
            packed_states, batch_first=True, total_length=source.size(1)
        )
        states, final = states.index_select(0, restore), select_rows(final, restore)
        mask = real_token_mask(source)
        if isinstance(final, tuple):
            initial = (
                torch.tanh(self.bridge(self._merge_directions(final[0]))),
                self.bridge_cell(self._merge_directions(final[1])),
            )
        else:
            initial = torch.tanh(self.bridge(self._merge_directions(final)))
        return EncoderOutput(states, mask, initial)

    def _merge_directions(self, final: Tensor) -> Tensor:
        """``(layers·dirs, B, H/dirs)`` → ``(layers, B, H)``: forward and backward side by side."""
        directions = 2 if self.config.bidirectional else 1
        layers, batch = self.config.num_layers, final.size(1)
        final = final.view(layers, directions, batch, -1)
        return torch.cat([final[:, index] for index in range(directions)], dim=-1)


class PositionalEncoding(nn.Module):
    """Sinusoidal position encodings (Vaswani et al. 2017), added to the embeddings.

    :math:`PE_{(p, 2i)} = \\sin(p / 10000^{2i/d})`, :math:`PE_{(p, 2i+1)} = \\cos(p / 10000^{2i/d})`.
    """

    def __init__(self, size: int, max_length: int = 512) -> None:
        super().__init__()
        position = torch.arange(max_length).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, size, 2) * (-math.log(10000.0) / size))
        table = torch.zeros(max_length, size)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency[: size // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, embedded: Tensor) -> Tensor:
        """``(B, L, d)`` → ``(B, L, d)`` with the encoding of each position added."""
        if embedded.size(1) > self.table.size(0):
            raise ValueError(
                f"sequence of {embedded.size(1)} exceeds the {self.table.size(0)} encoded positions"
            )
        return embedded + self.table[: embedded.size(1)]


class SelfAttentionLayer(nn.Module):
    """One Transformer encoder layer: self-attention and a feed-forward block, each
    wrapped in a residual connection with layer norm.

    We normalise *before* each block ("pre-norm", Xiong et al. 2020) rather than after it
    as the original Transformer does: pre-norm trains stably at the learning rates the
    rest of the series uses, without a warm-up schedule.
    """

    def __init__(self, size: int, heads: int, feedforward_size: int, dropout: float) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(size, heads, dropout=dropout)
        self.feedforward = nn.Sequential(
            nn.Linear(size, feedforward_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(feedforward_size, size),
        )
        self.norm_attention = nn.LayerNorm(size)
        self.norm_feedforward = nn.LayerNorm(size)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, states: Tensor, mask: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """states ``(B, S, d)``, mask ``(B, S)`` → states ``(B, S, d)``, weights ``(B, h, S, S)`` or None."""
        normed = self.norm_attention(states)
        attended, weights = self.attention(
            normed, normed, normed, mask, need_weights=need_weights, average_heads=False
        )
        states = states + self.dropout(attended)
        states = states + self.dropout(self.feedforward(self.norm_feedforward(states)))
        return states, weights


class SelfAttentionEncoder(nn.Module):
    """Embedding + sinusoidal positions + a stack of :class:`SelfAttentionLayer`.

    A drop-in replacement for :class:`Encoder`: it returns the same
    :class:`EncoderOutput`. The decoder's initial state is a tanh of the mean of the
    real states (there is no "last state" in self-attention).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        size = config.hidden_size
        self.embedding = nn.Embedding(config.source_vocab_size, size, padding_idx=PAD_INDEX)
        self.positions = PositionalEncoding(size, max_length=max(512, config.max_source_length))
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            SelfAttentionLayer(
                size, config.encoder_heads, config.feedforward_size or 2 * size, config.dropout
            )
            for _ in range(config.encoder_layers)
        )
        self.final_norm = nn.LayerNorm(size)
        # An RNN decoder starts from a summary of the sentence; the Transformer's needs none.
        self.bridge = nn.Linear(size, size) if config.decoder != "transformer" else None
        if config.rnn_type == "lstm" and self.bridge is not None:
            self.bridge_cell = nn.Linear(size, size)
        self.last_attention: list[Tensor] = []

    def forward(
        self, source: Tensor, source_lengths: Tensor, need_weights: bool = False
    ) -> EncoderOutput:
        mask = real_token_mask(source)
        # nn.Embedding starts at unit variance, the scale of the position encodings, so
        # no sqrt(d) factor. (The paper multiplies by sqrt(d), §3.4, without saying how it
        # initialises; embeddings that start at variance 1/d, as our Transformer decoder's
        # do, need that factor to reach unit scale.)
        states = self.dropout(self.positions(self.embedding(source)))
        self.last_attention = []
        for layer in self.layers:
            states, weights = layer(states, mask, need_weights=need_weights)
            if weights is not None:
                self.last_attention.append(weights)
        states = self.final_norm(states).masked_fill(~mask.unsqueeze(-1), 0.0)
        if self.bridge is None:
            return EncoderOutput(states, mask, None)
        pooled = self.summarise(states, mask)
        layers = self.config.num_layers
        hidden = torch.tanh(self.bridge(pooled)).unsqueeze(0).expand(layers, -1, -1).contiguous()
        if self.config.rnn_type == "lstm":
            cell = self.bridge_cell(pooled).unsqueeze(0).expand(layers, -1, -1).contiguous()
            return EncoderOutput(states, mask, (hidden, cell))
        return EncoderOutput(states, mask, hidden)

    def summarise(self, states: Tensor, mask: Tensor) -> Tensor:
        """The sentence summary the RNN decoder starts from: the mean of the real states,
        ``(B, S, d), (B, S) → (B, d)``. Padded states are zero here, so the sum skips them.

        Mean pooling, the simplest choice; notebook 06's exercise 6 replaces it with
        attention pooling, a weighted average with learned weights.
        """
        return states.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(states.dtype)
