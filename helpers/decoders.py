"""Decoders: one step of the target side, with or without attention.

* :class:`Decoder` — the shared teacher-forced unrolling (optionally sampling its own
  predictions) and the one-step interface that greedy and beam search call.
* :class:`BahdanauDecoder` — attends with the *previous* state :math:`s_{t-1}` and
  feeds the context into the RNN.
* :class:`LuongDecoder` — runs the RNN first, attends with the *current* state
  :math:`h_t`, and predicts from :math:`\\tilde h_t = \\tanh(W_c[c_t; h_t])`.
* :class:`PlainDecoder` — no attention at all (Cho et al. 2014): the baseline.

Shapes: ``B`` batch, ``S`` source length, ``T`` target steps, ``H`` hidden size,
``E`` embedding size, ``V`` vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .attention import Attention
from .encoders import EncoderOutput, RNNState, make_rnn, select_rows, top_layer
from .vocab import PAD_INDEX

if TYPE_CHECKING:  # annotations only: models.py imports this module
    from .models import ModelConfig


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
            select_rows(self.hidden, indices),
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
        self.rnn = make_rnn(
            config.rnn_type, embedding + hidden, hidden, config.num_layers, config.dropout
        )
        readout = embedding if config.tie_embeddings else hidden
        self.readout = nn.Linear(hidden + embedding + hidden, 2 * readout)  # maxout pairs → readout
        self.generator = nn.Linear(readout, config.target_vocab_size)
        if config.tie_embeddings:
            self.generator.weight = self.embedding.weight

    def step_features(self, previous_tokens, state, memory, step):
        embedded = self.dropout(self.embedding(previous_tokens))  # (B, E)
        query = top_layer(state.hidden).unsqueeze(1)  # s_{i-1}: (B, 1, H)
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
        # The features [s_i; E y_{i-1}; c_i]: (B, 2H + E)
        features = torch.cat([output.squeeze(1), embedded, context], dim=-1)
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
        self.rnn = make_rnn(config.rnn_type, rnn_input, hidden, config.num_layers, config.dropout)
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
        self.rnn = make_rnn(
            config.rnn_type, embedding + hidden, hidden, config.num_layers, config.dropout
        )
        readout = embedding if config.tie_embeddings else hidden
        self.readout = nn.Linear(hidden + embedding + hidden, readout)
        self.generator = nn.Linear(readout, config.target_vocab_size)
        if config.tie_embeddings:
            self.generator.weight = self.embedding.weight

    def step_features(self, previous_tokens, state, memory, step):
        embedded = self.dropout(self.embedding(previous_tokens))
        summary = top_layer(memory.initial_hidden)  # c: (B, H), the same at every step
        output, hidden = self.rnn(torch.cat([embedded, summary], dim=-1).unsqueeze(1), state.hidden)
        return torch.cat([output.squeeze(1), embedded, summary], dim=-1), DecoderState(hidden), None

    def output_layer(self, features: Tensor) -> Tensor:
        return self.generator(self.dropout(torch.tanh(self.readout(features))))
