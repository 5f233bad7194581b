"""Encoder–decoder models with attention: Bahdanau et al. 2015 and Luong et al. 2015.

* :class:`Encoder` — embedding + (bi)GRU/LSTM over packed sequences.
* :class:`BahdanauDecoder` — attends with the *previous* state :math:`s_{t-1}` and
  feeds the context into the RNN.
* :class:`LuongDecoder` — runs the RNN first, attends with the *current* state
  :math:`h_t`, and predicts from :math:`\\tilde h_t = \\tanh(W_c[c_t; h_t])`.
* :class:`PlainDecoder` — no attention at all (Cho et al. 2014): the baseline.
* :class:`Seq2Seq` — ties encoder and decoder, with teacher forcing.

Shapes: ``B`` batch, ``S`` source length, ``T`` target steps, ``H`` hidden size
(the decoder's, which is also the size of each encoder state), ``E`` embedding size,
``V`` vocabulary size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .attention import (
    ATTENTION_NAMES,
    Attention,
    LocalAttention,
    MultiHeadAttention,
    build_attention,
)
from .vocab import PAD_INDEX, SOS_INDEX, Vocabulary

RNNState = Tensor | tuple[Tensor, Tensor]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint.

    Attributes:
        source_vocab_size, target_vocab_size: vocabulary sizes.
        embedding_size: ``E``.
        hidden_size: ``H``, the decoder state size. A bidirectional encoder uses
            ``H/2`` per direction so its states are also ``H`` wide and the
            parameter-free *dot* score works.
        num_layers: RNN layers in encoder and decoder.
        rnn_type: ``"gru"`` or ``"lstm"``.
        bidirectional: bidirectional encoder (as in Bahdanau et al.).
        dropout: on embeddings, between RNN layers and before the output layer.
        decoder: ``"bahdanau"``, ``"luong"`` or ``"plain"`` (no attention).
        attention: the score, one of :data:`helpers.attention.ATTENTION_NAMES`. By
            default the decoder's own: ``"additive"`` for Bahdanau, ``"general"`` for
            Luong (unused by ``"plain"``). Mixed combinations are allowed on purpose, to
            separate the two design choices: a Bahdanau decoder (query :math:`s_{t-1}`)
            with a multiplicative score, or a Luong decoder (query :math:`h_t`) with the
            additive one. Luong's ``"concat"`` score is additive in form.
        attention_size: inner width of additive/concat scores (default ``H``).
        local_window: ``D`` for local attention; local_score: the score inside it.
        input_feeding: Luong's input feeding (feed :math:`\\tilde h_{t-1}` to the RNN).
        tie_embeddings: share the target embedding matrix with the output layer
            (Press & Wolf 2017): the output layer reads an ``E``-sized vector, which
            halves its cost and its parameters and usually generalises better on
            small corpora. Off, the output layers are exactly the papers'.
        encoder: ``"rnn"`` or ``"self_attention"`` (notebook 06).
        encoder_heads, encoder_layers: sizes of the self-attention encoder.
        max_source_length: longest source (tokens) ``translate`` accepts.
        max_target_length: default cap on decoded length.
        source_tokenizer, target_tokenizer: ``"en"``/``"de"`` (spaCy) or ``"chars"``.
    """

    source_vocab_size: int
    target_vocab_size: int
    embedding_size: int = 128
    hidden_size: int = 256
    num_layers: int = 1
    rnn_type: str = "gru"
    bidirectional: bool = True
    dropout: float = 0.1
    decoder: str = "luong"
    attention: str | None = None
    attention_size: int | None = None
    local_window: int = 2
    local_score: str = "general"
    input_feeding: bool = False
    tie_embeddings: bool = False
    encoder: str = "rnn"
    encoder_heads: int = 4
    encoder_layers: int = 2
    max_source_length: int = 64
    max_target_length: int = 64
    source_tokenizer: str = "en"
    target_tokenizer: str = "de"

    def __post_init__(self) -> None:
        if self.rnn_type not in ("gru", "lstm"):
            raise ValueError(f"rnn_type must be 'gru' or 'lstm', got {self.rnn_type!r}")
        if self.decoder not in ("bahdanau", "luong", "plain"):
            raise ValueError(
                f"decoder must be 'bahdanau', 'luong' or 'plain', got {self.decoder!r}"
            )
        if self.attention is None:
            self.attention = "additive" if self.decoder == "bahdanau" else "general"
        if self.attention not in ATTENTION_NAMES:
            raise ValueError(
                f"attention must be one of {sorted(ATTENTION_NAMES)}, got {self.attention!r}"
            )
        if self.encoder not in ("rnn", "self_attention"):
            raise ValueError(f"encoder must be 'rnn' or 'self_attention', got {self.encoder!r}")
        if self.bidirectional and self.hidden_size % 2:
            raise ValueError("a bidirectional encoder needs an even hidden_size")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {field.name for field in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**values)


def _make_rnn(
    rnn_type: str,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    dropout: float,
    bidirectional: bool = False,
) -> nn.RNNBase:
    rnn_class = nn.GRU if rnn_type == "gru" else nn.LSTM
    return rnn_class(
        input_size,
        hidden_size,
        num_layers=num_layers,
        batch_first=True,
        dropout=dropout if num_layers > 1 else 0.0,
        bidirectional=bidirectional,
    )


def _top_layer(hidden: RNNState) -> Tensor:
    """The last layer's hidden state ``(B, H)`` (for an LSTM, ``h`` and not ``c``)."""
    return (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]


def _select(hidden: RNNState, indices: Tensor) -> RNNState:
    if isinstance(hidden, tuple):
        return tuple(part.index_select(1, indices) for part in hidden)
    return hidden.index_select(1, indices)


@dataclass
class EncoderOutput:
    """What the decoder reads from the encoder.

    Attributes:
        states: ``(B, S, H)`` one state per source token (zeros on padding).
        mask: ``(B, S)`` bool, True on real tokens.
        initial_hidden: the decoder's initial RNN state, ``(layers, B, H)`` (a pair for an LSTM).
        projected_keys: the attention's key-only part, computed once per sentence.
    """

    states: Tensor
    mask: Tensor
    initial_hidden: RNNState
    projected_keys: Tensor | None = None

    def select(self, indices: Tensor) -> EncoderOutput:
        """Pick (and repeat) batch rows, e.g. to give each beam its own copy."""
        return EncoderOutput(
            self.states.index_select(0, indices),
            self.mask.index_select(0, indices),
            _select(self.initial_hidden, indices),
            None if self.projected_keys is None else self.projected_keys.index_select(0, indices),
        )


class Encoder(nn.Module):
    """Embedding + bidirectional RNN over packed sequences.

    Packing makes the RNN stop at each sentence's real end, so the backward direction
    starts at the last real word rather than at a run of padding. The decoder's initial
    state is :math:`s_0 = \\tanh(W_s [\\overrightarrow{h}_S; \\overleftarrow{h}_1])`, as
    Bahdanau et al. (appendix A.2.2) initialise it from the backward state.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        directions = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(
            config.source_vocab_size, config.embedding_size, padding_idx=PAD_INDEX
        )
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = _make_rnn(
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
        packed = pack_padded_sequence(
            embedded, source_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        packed_states, final = self.rnn(packed)
        # total_length keeps the padded width, so extra padding changes no shape.
        states, _ = pad_packed_sequence(
            packed_states, batch_first=True, total_length=source.size(1)
        )
        mask = (
            torch.arange(source.size(1), device=source.device)[None, :]
            < source_lengths.to(source.device)[:, None]
        )
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
            SelfAttentionLayer(size, config.encoder_heads, 2 * size, config.dropout)
            for _ in range(config.encoder_layers)
        )
        self.final_norm = nn.LayerNorm(size)
        self.bridge = nn.Linear(size, size)
        if config.rnn_type == "lstm":
            self.bridge_cell = nn.Linear(size, size)
        self.last_attention: list[Tensor] = []

    def forward(
        self, source: Tensor, source_lengths: Tensor, need_weights: bool = False
    ) -> EncoderOutput:
        mask = (
            torch.arange(source.size(1), device=source.device)[None, :]
            < source_lengths.to(source.device)[:, None]
        )
        # nn.Embedding starts at unit variance, the scale of the position encodings, so
        # no sqrt(d) factor (the paper's embeddings start at variance 1/d and need it).
        states = self.dropout(self.positions(self.embedding(source)))
        self.last_attention = []
        for layer in self.layers:
            states, weights = layer(states, mask, need_weights=need_weights)
            if weights is not None:
                self.last_attention.append(weights)
        states = self.final_norm(states).masked_fill(~mask.unsqueeze(-1), 0.0)
        pooled = states.sum(dim=1) / source_lengths.to(states.device, states.dtype).unsqueeze(1)
        layers = self.config.num_layers
        hidden = torch.tanh(self.bridge(pooled)).unsqueeze(0).expand(layers, -1, -1).contiguous()
        if self.config.rnn_type == "lstm":
            cell = self.bridge_cell(pooled).unsqueeze(0).expand(layers, -1, -1).contiguous()
            return EncoderOutput(states, mask, (hidden, cell))
        return EncoderOutput(states, mask, hidden)


@dataclass
class DecoderState:
    """The recurrent state carried from one decoder step to the next.

    Attributes:
        hidden: the RNN state, ``(layers, B, H)`` (a pair for an LSTM).
        attentional: Luong's :math:`\\tilde h_{t-1}` ``(B, H)`` when input feeding is on.
    """

    hidden: RNNState
    attentional: Tensor | None = None

    def select(self, indices: Tensor) -> DecoderState:
        return DecoderState(
            _select(self.hidden, indices),
            None if self.attentional is None else self.attentional.index_select(0, indices),
        )


class Decoder(nn.Module):
    """Shared machinery: teacher-forced unrolling with an optional sampling ratio.

    Subclasses implement :meth:`step_features` (one step up to the features the output
    layer reads) and :meth:`output_layer` (features → logits). Computing logits for all
    steps in one matrix product after the loop is much faster than once per step.
    """

    attention: Attention | None

    def prepare(self, memory: EncoderOutput) -> EncoderOutput:
        """Precompute the attention's key projection once per batch of sentences."""
        if self.attention is not None and memory.projected_keys is None:
            memory.projected_keys = self.attention.project_keys(memory.states)
        return memory

    def init_state(self, memory: EncoderOutput) -> DecoderState:
        return DecoderState(memory.initial_hidden)

    def step_features(
        self, previous_tokens: Tensor, state: DecoderState, memory: EncoderOutput, step: int
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        raise NotImplementedError

    def output_layer(self, features: Tensor) -> Tensor:
        raise NotImplementedError

    def step(
        self, previous_tokens: Tensor, state: DecoderState, memory: EncoderOutput, step: int
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One decoding step.

        Args:
            previous_tokens: ``(B,)`` the tokens emitted at the previous step (``<sos>`` first).
            state: the state after the previous step.
            memory: the encoder output (prepared).
            step: the 0-based index of this step (local-m centres its window on it).

        Returns:
            logits ``(B, V)``, the new state, attention weights ``(B, S)`` (None for
            the plain decoder).
        """
        features, state, weights = self.step_features(previous_tokens, state, memory, step)
        return self.output_layer(features), state, weights

    def forward(
        self,
        decoder_input: Tensor,
        memory: EncoderOutput,
        teacher_forcing_ratio: float = 1.0,
    ) -> tuple[Tensor, Tensor | None]:
        """Decode a teacher-forced batch: :meth:`forward_stepwise` (subclasses may take a
        faster path that gives the same result, as Luong's decoder does)."""
        return self.forward_stepwise(decoder_input, memory, teacher_forcing_ratio)

    def forward_stepwise(
        self,
        decoder_input: Tensor,
        memory: EncoderOutput,
        teacher_forcing_ratio: float = 1.0,
    ) -> tuple[Tensor, Tensor | None]:
        """Unroll over ``decoder_input`` ``(B, T)`` (``<sos> y_1 … y_{T-1}``), one
        :meth:`step_features` call per target position.

        With probability ``1 − teacher_forcing_ratio`` per sentence and step, the
        model's own previous prediction replaces the gold token.

        Returns:
            the output-layer features ``(B, T, F)`` (``output_layer`` turns them into
            logits) and attention ``(B, T, S)`` (None for the plain decoder).
        """
        memory = self.prepare(memory)
        state = self.init_state(memory)
        sample = teacher_forcing_ratio < 1.0
        tokens = decoder_input[:, 0]
        all_features, all_weights = [], []
        for step in range(decoder_input.size(1)):
            if step > 0:
                tokens = decoder_input[:, step]
                if sample:
                    with torch.no_grad():  # the choice of token needs no gradient
                        predicted = self.output_layer(all_features[-1]).argmax(-1)
                    use_model = (
                        torch.rand(tokens.shape, device=tokens.device) >= teacher_forcing_ratio
                    )
                    tokens = torch.where(use_model, predicted, tokens)
            features, state, weights = self.step_features(tokens, state, memory, step)
            all_features.append(features)
            all_weights.append(weights)
        attention = None if all_weights[0] is None else torch.stack(all_weights, 1)
        return torch.stack(all_features, 1), attention


class BahdanauDecoder(Decoder):
    r"""The decoder of Bahdanau, Cho & Bengio (2015), "RNNsearch".

    At step :math:`i`, with the *previous* state :math:`s_{i-1}`:

    .. math::
        e_{ij} &= v_a^\top \tanh(W_a s_{i-1} + U_a h_j) \\
        \alpha_{ij} &= \operatorname{softmax}_j(e_{ij}), \qquad c_i = \textstyle\sum_j \alpha_{ij} h_j \\
        s_i &= \mathrm{GRU}\big(s_{i-1}, [E y_{i-1}; c_i]\big) \\
        t_i &= \max\text{-out}\big(U_o s_i + V_o E y_{i-1} + C_o c_i\big), \qquad
        p(y_i) = \operatorname{softmax}(W_o t_i)

    The paper's appendix feeds :math:`s_{i-1}` to the output layer while its main text
    writes :math:`s_i`; we follow the main text, as most implementations do.
    Any score layer can replace the additive one; Bahdanau's is ``"additive"``.
    """

    def __init__(self, config: ModelConfig, attention: Attention) -> None:
        super().__init__()
        hidden, embedding = config.hidden_size, config.embedding_size
        self.attention = attention
        self.embedding = nn.Embedding(config.target_vocab_size, embedding, padding_idx=PAD_INDEX)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = _make_rnn(
            config.rnn_type, embedding + hidden, hidden, config.num_layers, config.dropout
        )
        readout = embedding if config.tie_embeddings else hidden
        self.readout = nn.Linear(hidden + embedding + hidden, 2 * readout)  # maxout pairs → readout
        self.generator = nn.Linear(readout, config.target_vocab_size)
        if config.tie_embeddings:
            self.generator.weight = self.embedding.weight

    def step_features(self, previous_tokens, state, memory, step):
        embedded = self.dropout(self.embedding(previous_tokens))  # (B, E)
        query = _top_layer(state.hidden).unsqueeze(1)  # s_{i-1}: (B, 1, H)
        context, weights = self.attention.attend(
            query,
            memory.states,
            memory.states,
            memory.mask,
            memory.projected_keys,
            positions=step,  # an int: only local-m reads it, and builds its tensor there
        )
        context = context.squeeze(1)  # c_i: (B, H)
        output, hidden = self.rnn(torch.cat([embedded, context], dim=-1).unsqueeze(1), state.hidden)
        features = torch.cat(
            [output.squeeze(1), embedded, context], dim=-1
        )  # [s_i; E y_{i-1}; c_i]
        return features, DecoderState(hidden), weights.squeeze(1)

    def output_layer(self, features: Tensor) -> Tensor:
        pieces = self.readout(features)
        maxout = pieces.view(*pieces.shape[:-1], -1, 2).amax(dim=-1)
        return self.generator(self.dropout(maxout))


class LuongDecoder(Decoder):
    r"""The global/local attention decoder of Luong, Pham & Manning (2015).

    .. math::
        h_t &= \mathrm{RNN}\big(h_{t-1}, [E y_{t-1}; \tilde h_{t-1}]\big)
            \quad(\tilde h_{t-1} \text{ only with input feeding}) \\
        a_t(s) &= \operatorname{softmax}_s \operatorname{score}(h_t, \bar h_s), \qquad
        c_t = \textstyle\sum_s a_t(s)\, \bar h_s \\
        \tilde h_t &= \tanh(W_c [c_t; h_t]) \quad\text{(eq. 5)}, \qquad
        p(y_t) = \operatorname{softmax}(W_s \tilde h_t) \quad\text{(eq. 6)}

    Without input feeding nothing in step :math:`t` depends on step :math:`t-1`'s
    attention, so under teacher forcing :meth:`forward` runs the RNN over the whole
    target at once and attends for all steps in one batched product.
    """

    def __init__(self, config: ModelConfig, attention: Attention) -> None:
        super().__init__()
        hidden, embedding = config.hidden_size, config.embedding_size
        self.attention = attention
        self.input_feeding = config.input_feeding
        self.embedding = nn.Embedding(config.target_vocab_size, embedding, padding_idx=PAD_INDEX)
        self.dropout = nn.Dropout(config.dropout)
        rnn_input = embedding + (hidden if config.input_feeding else 0)
        self.rnn = _make_rnn(config.rnn_type, rnn_input, hidden, config.num_layers, config.dropout)
        self.W_c = nn.Linear(2 * hidden, hidden, bias=False)
        # Tied: W_s = E·P, a projection P (H → E) then the embedding matrix E.
        self.projection = (
            nn.Linear(hidden, embedding, bias=False) if config.tie_embeddings else nn.Identity()
        )
        self.W_s = nn.Linear(
            embedding if config.tie_embeddings else hidden, config.target_vocab_size
        )
        if config.tie_embeddings:
            self.W_s.weight = self.embedding.weight

    def init_state(self, memory: EncoderOutput) -> DecoderState:
        attentional = None
        if self.input_feeding:
            batch = memory.states.size(0)
            attentional = memory.states.new_zeros(batch, self.W_c.out_features)
        return DecoderState(memory.initial_hidden, attentional)

    def _attentional(
        self, rnn_output: Tensor, memory: EncoderOutput, positions: Tensor | int
    ) -> tuple[Tensor, Tensor]:
        """``(B, T, H)`` RNN outputs → :math:`\\tilde h` ``(B, T, H)`` and weights ``(B, T, S)``."""
        context, weights = self.attention.attend(
            rnn_output,
            memory.states,
            memory.states,
            memory.mask,
            memory.projected_keys,
            positions=positions,
        )
        return torch.tanh(self.W_c(torch.cat([context, rnn_output], dim=-1))), weights

    def step_features(self, previous_tokens, state, memory, step):
        embedded = self.dropout(self.embedding(previous_tokens))
        rnn_input = (
            embedded if not self.input_feeding else torch.cat([embedded, state.attentional], dim=-1)
        )
        output, hidden = self.rnn(rnn_input.unsqueeze(1), state.hidden)  # h_t: (B, 1, H)
        attentional, weights = self._attentional(output, memory, step)
        attentional = attentional.squeeze(1)
        return (
            attentional,
            DecoderState(hidden, attentional if self.input_feeding else None),
            weights.squeeze(1),
        )

    def output_layer(self, features: Tensor) -> Tensor:
        return self.W_s(self.projection(self.dropout(features)))

    def forward(self, decoder_input, memory, teacher_forcing_ratio=1.0):
        if self.input_feeding or teacher_forcing_ratio < 1.0:
            return self.forward_stepwise(decoder_input, memory, teacher_forcing_ratio)
        return self.forward_parallel(decoder_input, memory)

    def forward_parallel(
        self, decoder_input: Tensor, memory: EncoderOutput
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoding of all ``T`` steps at once (no input feeding).

        One cuDNN/fused RNN call over ``(B, T, E)``, then one batched attention over
        ``(B, T, H) × (B, S, H)``. Gives the same result as the step loop.

        Returns the features :math:`\\tilde h` ``(B, T, H)`` and weights ``(B, T, S)``.
        """
        memory = self.prepare(memory)
        embedded = self.dropout(self.embedding(decoder_input))
        outputs, _ = self.rnn(embedded, memory.initial_hidden)  # (B, T, H)
        positions = torch.arange(decoder_input.size(1), device=decoder_input.device)
        return self._attentional(outputs, memory, positions)


class PlainDecoder(Decoder):
    """An encoder–decoder *without* attention (Cho et al. 2014): the baseline.

    The fixed context :math:`c` is the encoder's summary (the initial state); it is fed
    to the RNN and the output layer at every step, and it is all the decoder ever sees
    of the source — the bottleneck attention removes.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, embedding = config.hidden_size, config.embedding_size
        self.attention = None
        self.embedding = nn.Embedding(config.target_vocab_size, embedding, padding_idx=PAD_INDEX)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = _make_rnn(
            config.rnn_type, embedding + hidden, hidden, config.num_layers, config.dropout
        )
        readout = embedding if config.tie_embeddings else hidden
        self.readout = nn.Linear(hidden + embedding + hidden, readout)
        self.generator = nn.Linear(readout, config.target_vocab_size)
        if config.tie_embeddings:
            self.generator.weight = self.embedding.weight

    def step_features(self, previous_tokens, state, memory, step):
        embedded = self.dropout(self.embedding(previous_tokens))
        summary = _top_layer(memory.initial_hidden)  # c: (B, H), the same at every step
        output, hidden = self.rnn(torch.cat([embedded, summary], dim=-1).unsqueeze(1), state.hidden)
        return torch.cat([output.squeeze(1), embedded, summary], dim=-1), DecoderState(hidden), None

    def output_layer(self, features: Tensor) -> Tensor:
        return self.generator(self.dropout(torch.tanh(self.readout(features))))


@dataclass
class Seq2SeqOutput:
    """logits ``(B, T, V)`` — or ``(N, V)`` for the ``N`` positions selected by
    ``output_mask`` — and attention ``(B, T, S)`` (None without attention)."""

    logits: Tensor
    attention: Tensor | None


class Seq2Seq(nn.Module):
    """Encoder + decoder, built from a :class:`ModelConfig`.

    ``model.source_vocab`` / ``model.target_vocab`` (set by :meth:`attach_vocabularies`
    or a checkpoint) let :func:`helpers.decoding.translate` work on raw text.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = (
            SelfAttentionEncoder(config) if config.encoder == "self_attention" else Encoder(config)
        )
        if config.decoder == "plain":
            self.decoder: Decoder = PlainDecoder(config)
        else:
            attention = build_attention(
                config.attention,
                config.hidden_size,
                config.hidden_size,
                config.attention_size,
                window=config.local_window,
                local_score=config.local_score,
            )
            decoder_class = BahdanauDecoder if config.decoder == "bahdanau" else LuongDecoder
            self.decoder = decoder_class(config, attention)
        self.source_vocab: Vocabulary | None = None
        self.target_vocab: Vocabulary | None = None

    def attach_vocabularies(self, source_vocab: Vocabulary, target_vocab: Vocabulary) -> Seq2Seq:
        if (
            len(source_vocab) != self.config.source_vocab_size
            or len(target_vocab) != self.config.target_vocab_size
        ):
            raise ValueError(
                f"vocabulary sizes {len(source_vocab)}/{len(target_vocab)} do not match the config's "
                f"{self.config.source_vocab_size}/{self.config.target_vocab_size}"
            )
        self.source_vocab, self.target_vocab = source_vocab, target_vocab
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def uses_local_attention(self) -> bool:
        return isinstance(self.decoder.attention, LocalAttention)

    def encode(self, source: Tensor, source_lengths: Tensor) -> EncoderOutput:
        """Encode and precompute the attention's key projection."""
        _check_source(source, source_lengths, self.config.source_vocab_size)
        return self.decoder.prepare(self.encoder(source, source_lengths))

    def forward(
        self,
        source: Tensor,
        source_lengths: Tensor,
        decoder_input: Tensor,
        teacher_forcing_ratio: float = 1.0,
        output_mask: Tensor | None = None,
    ) -> Seq2SeqOutput:
        """Args:
        source: ``(B, S)`` source indices; source_lengths: ``(B,)``.
        decoder_input: ``(B, T)`` ``<sos> y_1 … y_{T-1}`` (``batch.decoder_input``).
        teacher_forcing_ratio: 1 feeds the gold tokens; below 1 feeds the model's
            own predictions at that rate.
        output_mask: optional ``(B, T)`` bool; logits are computed only where it
            is True and come back flattened to ``(N, V)``. The output layer is
            the most expensive part of a step (``H × V`` per token), so training
            skips the padded positions with it.
        """
        _check_source(source, source_lengths, self.config.source_vocab_size)
        if decoder_input.dim() != 2 or decoder_input.size(0) != source.size(0):
            raise ValueError(
                f"decoder_input must be (batch, steps) with batch {source.size(0)}, got {tuple(decoder_input.shape)}"
            )
        if decoder_input.device.type == "cpu" and decoder_input.numel():
            _check_token_range("decoder_input", decoder_input, self.config.target_vocab_size)
        if not 0.0 <= teacher_forcing_ratio <= 1.0:
            raise ValueError("teacher_forcing_ratio must lie in [0, 1]")
        memory = self.encode(source, source_lengths)
        features, attention = self.decoder(decoder_input, memory, teacher_forcing_ratio)
        if output_mask is not None:
            if output_mask.shape != decoder_input.shape:
                raise ValueError(
                    f"output_mask must be {tuple(decoder_input.shape)}, got {tuple(output_mask.shape)}"
                )
            features = features[output_mask]
        return Seq2SeqOutput(self.decoder.output_layer(features), attention)

    def start_tokens(self, batch_size: int) -> Tensor:
        """``(B,)`` of the *target* vocabulary's ``<sos>``."""
        return torch.full((batch_size,), SOS_INDEX, dtype=torch.long, device=self.device)


def _check_source(source: Tensor, source_lengths: Tensor, vocab_size: int) -> None:
    if source.dim() != 2:
        raise ValueError(
            f"source must be (batch, src_len) token indices, got shape {tuple(source.shape)}"
        )
    if source.dtype != torch.long:
        raise ValueError(f"source must hold int64 token indices, got {source.dtype}")
    if source_lengths.dim() != 1 or source_lengths.size(0) != source.size(0):
        raise ValueError(
            f"source_lengths must be (batch,) = ({source.size(0)},), got {tuple(source_lengths.shape)}"
        )
    if source.device.type == "cpu" and source.numel():  # free on the CPU; a sync on a GPU
        _check_token_range("source", source, vocab_size)
    lengths = source_lengths.cpu()
    if bool((lengths < 1).any()):
        raise ValueError("every source sentence needs at least one token (found length 0)")
    if bool((lengths > source.size(1)).any()):
        raise ValueError(f"a source length exceeds the padded width {source.size(1)}")


def _check_token_range(name: str, tokens: Tensor, vocab_size: int) -> None:
    """A clear error for token ids outside the vocabulary (instead of an IndexError deep
    inside ``nn.Embedding``, or an asynchronous device assert on a GPU)."""
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name} holds token id {bad}, outside the vocabulary of {vocab_size} "
            f"(valid ids: 0 to {vocab_size - 1}); was it encoded with another vocabulary?"
        )


def build_model(config: ModelConfig) -> Seq2Seq:
    """A fresh :class:`Seq2Seq` for ``config``."""
    return Seq2Seq(config)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
