"""The model as a whole: :class:`ModelConfig` and the :class:`Seq2Seq` wrapper.

* :class:`ModelConfig` — every choice that shapes a model; stored in each checkpoint.
* :class:`Seq2Seq` — builds the encoder (:mod:`helpers.encoders`), the attention
  (:mod:`helpers.attention`) and the decoder (:mod:`helpers.decoders`) from a config,
  checks its inputs, and runs them with teacher forcing.

Shapes: ``B`` batch, ``S`` source length, ``T`` target steps, ``H`` hidden size
(the decoder's, which is also the size of each encoder state), ``E`` embedding size,
``V`` vocabulary size.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from .attention import ATTENTION_NAMES, LocalAttention, build_attention
from .checks import numpy_scalars_to_python, require_tensor, whole_number, whole_number_lengths
from .data import check_tokenizer_name
from .decoders import BahdanauDecoder, Decoder, LuongDecoder, PlainDecoder
from .encoders import Encoder, EncoderOutput, SelfAttentionEncoder
from .keys import KEY_ONLY_WHEN_SET, key_fields
from .vocab import PAD_INDEX, SOS_INDEX, Vocabulary

DECODER_NAMES = ("bahdanau", "luong", "plain", "transformer")


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
        decoder: ``"bahdanau"``, ``"luong"``, ``"plain"`` (no attention) or
            ``"transformer"`` (:mod:`helpers.transformer`, notebook 08; it needs the
            self-attention encoder, and ignores the RNN settings).
        attention: the score, one of :data:`helpers.attention.ATTENTION_NAMES`. By
            default the decoder's own: ``"additive"`` for Bahdanau, ``"general"`` for
            Luong, ``"scaled_dot"`` (multi-head) for the Transformer, the only score
            it takes (unused by ``"plain"``). Mixed combinations are allowed on purpose, to
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
        decoder_heads, decoder_layers: sizes of the Transformer decoder.
        feedforward_size: inner width of the self-attention layers' feed-forward
            blocks (default ``2H``).
        max_source_length: longest source (tokens) ``translate`` accepts.
        max_target_length: default cap on decoded length.
        source_tokenizer, target_tokenizer: ``"en"``/``"de"`` (any spaCy language code) or
            ``"chars"``; checked here (:func:`~helpers.data.check_tokenizer_name`).
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
    # Added with the Transformer (notebook 08): left out of cache keys at their
    # defaults, so that models and results trained before them keep their keys.
    decoder_heads: int = field(default=4, metadata=KEY_ONLY_WHEN_SET)
    decoder_layers: int = field(default=2, metadata=KEY_ONLY_WHEN_SET)
    feedforward_size: int | None = field(default=None, metadata=KEY_ONLY_WHEN_SET)
    max_source_length: int = 64
    max_target_length: int = 64
    source_tokenizer: str = "en"
    target_tokenizer: str = "de"

    def __post_init__(self) -> None:
        numpy_scalars_to_python(self)
        self._check_sizes()
        if self.rnn_type not in ("gru", "lstm"):
            raise ValueError(f"rnn_type must be 'gru' or 'lstm', got {self.rnn_type!r}")
        if self.decoder not in DECODER_NAMES:
            raise ValueError(f"decoder must be one of {DECODER_NAMES}, got {self.decoder!r}")
        if self.attention is None:
            self.attention = {"bahdanau": "additive", "transformer": "scaled_dot"}.get(
                self.decoder, "general"
            )
        if self.decoder == "transformer":
            if self.attention != "scaled_dot":
                raise ValueError(
                    "the Transformer decoder uses multi-head scaled dot-product attention: "
                    f"attention must be 'scaled_dot' (or left unset), got {self.attention!r}"
                )
            if self.encoder != "self_attention":
                raise ValueError(
                    f"the Transformer decoder needs encoder='self_attention' (got {self.encoder!r})"
                )
        if self.attention not in ATTENTION_NAMES:
            raise ValueError(
                f"attention must be one of {sorted(ATTENTION_NAMES)}, got {self.attention!r}"
            )
        if self.local_score not in ATTENTION_NAMES or self.local_score.startswith("local"):
            # None was accepted here, and building the model met a bare AttributeError
            raise ValueError(
                "local_score (the score inside a local window) must be one of "
                f"{sorted(set(ATTENTION_NAMES) - {'local-m', 'local-p'})}, got {self.local_score!r}"
            )
        if self.encoder not in ("rnn", "self_attention"):
            raise ValueError(f"encoder must be 'rnn' or 'self_attention', got {self.encoder!r}")
        if self.bidirectional and self.hidden_size % 2:
            raise ValueError("a bidirectional encoder needs an even hidden_size")
        for name in ("source_tokenizer", "target_tokenizer"):
            check_tokenizer_name(name, getattr(self, name))

    def _check_sizes(self) -> None:
        """Sizes are whole numbers in range, and flags are flags: a size of 0, or "8",
        failed later inside torch (an IndexError, a formatting error), or silently
        became the default (``attention_size=0``)."""
        at_least = {"source_vocab_size": 5, "target_vocab_size": 5, "local_window": 0}
        optional = ("attention_size", "feedforward_size")
        for name in (
            "source_vocab_size", "target_vocab_size", "embedding_size", "hidden_size",
            "num_layers", "local_window", "encoder_heads", "encoder_layers",
            "decoder_heads", "decoder_layers", "max_source_length", "max_target_length",
            *optional,
        ):  # fmt: skip
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            least = at_least.get(name, 1)
            why = "the 4 special tokens and at least one word" if least == 5 else ""
            # numpy integers become plain ints, which checkpoints store
            setattr(self, name, whole_number(name, value, least, why))
        for name in ("bidirectional", "input_feeding", "tie_embeddings"):
            if type(getattr(self, name)).__name__ not in ("bool", "bool_"):  # numpy's too
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
            setattr(self, name, bool(getattr(self, name)))
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, numbers.Real)
            or not (0 <= self.dropout < 1)
        ):
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """What a cache key hashes: :meth:`to_dict`, less the later-added fields that
        still hold their defaults (see :func:`key_fields`)."""
        return key_fields(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {field.name for field in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**values)


@dataclass
class Seq2SeqOutput:
    """logits ``(B, T, V)`` — or ``(N, V)`` for the ``N`` positions selected by
    ``output_positions`` — and attention ``(B, T, S)`` (None without attention)."""

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
        elif config.decoder == "transformer":
            from .transformer import TransformerDecoder  # it imports this module's neighbours

            self.decoder = TransformerDecoder(config)
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
        for name, vocab in (("source_vocab", source_vocab), ("target_vocab", target_vocab)):
            if not isinstance(vocab, Vocabulary):  # a list of tokens failed at the first encode
                raise TypeError(
                    f"{name} must be a Vocabulary, got a {type(vocab).__name__} "
                    "(Vocabulary(tokens) makes one from a list of tokens)"
                )
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
        """Encode and precompute the attention's key projection.

        ``source`` may still be on the CPU when the model is on a GPU (as decoding passes
        it): it is checked there, where reading its ids costs nothing, and then moved. A
        bad id found on the GPU would be an asynchronous device assert instead.
        """
        _check_source(source, source_lengths, self.config.source_vocab_size)
        return self._encode_checked(source, source_lengths)

    def _encode_checked(self, source: Tensor, source_lengths: Tensor) -> EncoderOutput:
        """:meth:`encode` for a source that :func:`_check_source` has passed already."""
        source = source.to(self.device)
        return self.decoder.prepare(self.encoder(source, source_lengths))

    def forward(
        self,
        source: Tensor,
        source_lengths: Tensor,
        decoder_input: Tensor,
        teacher_forcing_ratio: float = 1.0,
        output_positions: Tensor | None = None,
    ) -> Seq2SeqOutput:
        """Args:
        source: ``(B, S)`` source indices; source_lengths: ``(B,)``.
        decoder_input: ``(B, T)`` ``<sos> y_1 … y_{T-1}`` (``batch.decoder_input``).
        teacher_forcing_ratio: 1 feeds the gold tokens; below 1 feeds the model's
            own predictions at that rate.
        output_positions: optional ``(N,)`` indices into the ``B · T`` positions of
            ``decoder_input`` flattened row by row (``batch.target_positions``); logits
            are computed only there and come back as ``(N, V)``. The output layer is
            the most expensive part of a step (``H × V`` per token), so training
            skips the padded positions with it.
        """
        _check_source(source, source_lengths, self.config.source_vocab_size)
        require_tensor("decoder_input", decoder_input)
        if decoder_input.dim() != 2 or decoder_input.size(0) != source.size(0):
            raise ValueError(
                f"decoder_input must be (batch, steps) with batch {source.size(0)}, got {tuple(decoder_input.shape)}"
            )
        if decoder_input.size(1) == 0:  # the RNN's "sequence length larger than 0" named neither
            raise ValueError("decoder_input has no steps: each row starts with <sos>")
        if decoder_input.dtype != torch.long:
            raise ValueError(
                f"decoder_input must hold int64 token indices, got {decoder_input.dtype}"
            )
        if decoder_input.device.type == "cpu" and decoder_input.numel():
            _check_token_range("decoder_input", decoder_input, self.config.target_vocab_size)
            _check_starts_with_sos(decoder_input)
        if (
            isinstance(teacher_forcing_ratio, bool)
            or not isinstance(teacher_forcing_ratio, numbers.Real)
            or not 0.0 <= teacher_forcing_ratio <= 1.0
        ):
            raise ValueError(
                f"teacher_forcing_ratio must lie in [0, 1], got {teacher_forcing_ratio!r}"
            )
        memory = self._encode_checked(source, source_lengths)  # checked above, once
        features, attention = self.decoder(decoder_input, memory, teacher_forcing_ratio)
        if output_positions is not None:
            if output_positions.dim() != 1 or output_positions.dtype != torch.long:
                raise ValueError(
                    "output_positions must be a 1-D long tensor of flat (batch · steps) "
                    f"indices, got {output_positions.dtype} of shape {tuple(output_positions.shape)}"
                )
            positions = decoder_input.numel()
            if output_positions.device.type == "cpu" and output_positions.numel():
                low, high = int(output_positions.min()), int(output_positions.max())
                if low < 0 or high >= positions:
                    raise ValueError(
                        f"output_positions holds {low if low < 0 else high}, outside the "
                        f"{positions} positions of decoder_input (0 to {positions - 1})"
                    )
            # index_select, not a boolean mask: its size is known without asking the GPU.
            features = features.flatten(0, 1).index_select(0, output_positions)
        return Seq2SeqOutput(self.decoder.output_layer(features), attention)

    def start_tokens(self, batch_size: int) -> Tensor:
        """``(B,)`` of the *target* vocabulary's ``<sos>``."""
        return torch.full((batch_size,), SOS_INDEX, dtype=torch.long, device=self.device)


def _check_source(source: Tensor, source_lengths: Tensor, vocab_size: int) -> None:
    require_tensor("source", source)
    require_tensor("source_lengths", source_lengths)
    if source.dim() != 2:
        raise ValueError(
            f"source must be (batch, src_len) token indices, got shape {tuple(source.shape)}"
        )
    if source.dtype != torch.long:
        raise ValueError(f"source must hold int64 token indices, got {source.dtype}")
    if source.size(0) == 0:
        raise ValueError("the batch holds no sentences")
    whole_number_lengths(source_lengths)
    if source_lengths.dim() != 1 or source_lengths.size(0) != source.size(0):
        raise ValueError(
            f"source_lengths must be (batch,) = ({source.size(0)},), got {tuple(source_lengths.shape)}"
        )
    if source.device.type == "cpu" and source.numel():  # free on the CPU; a sync on a GPU
        _check_token_range("source", source, vocab_size)
    lengths = source_lengths.cpu()
    if bool((lengths < 1).any()):  # (the length found: -1 was reported as 0)
        raise ValueError(
            f"every source sentence needs at least one token (found length {int(lengths.min())})"
        )
    if bool((lengths > source.size(1)).any()):
        raise ValueError(f"a source length exceeds the padded width {source.size(1)}")
    if source.device.type == "cpu":  # free on the CPU; a sync on a GPU
        # The encoders read the mask from the tokens: lengths and padding must agree.
        real = source != PAD_INDEX
        expected = torch.arange(source.size(1))[None, :] < lengths[:, None]
        if not torch.equal(real, expected):
            row = int((real != expected).any(dim=1).nonzero()[0])
            raise ValueError(
                f"source row {row} disagrees with its length {int(lengths[row])}: every real "
                f"token must come first and be non-<pad> (id {PAD_INDEX}), then only <pad>"
            )


def _check_starts_with_sos(decoder_input: Tensor) -> None:
    """A clear error for the classic slip of passing the target itself (``y_1 … <eos>``)
    as the decoder's input: it trains without complaint, to copy its input one step late,
    and translates nothing. Each row must be the target shifted right, ``<sos> y_1 …``."""
    first = decoder_input[:, 0]
    wrong = (first != SOS_INDEX).nonzero()
    if len(wrong):
        row = int(wrong[0])
        raise ValueError(
            f"decoder_input row {row} starts with token id {int(first[row])}, not <sos> "
            f"(id {SOS_INDEX}): each row is the target shifted right by one, "
            "<sos> y_1 … y_{T-1} (batch.decoder_input), not the target itself"
        )


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
