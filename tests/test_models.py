"""The seq2seq models: the papers' decoder steps, parallel = step loop, padding invariance,
and the self-attention encoder against the Transformer paper and torch's own layer."""

import math

import pytest
import torch

from helpers.batching import collate_batch
from helpers.models import ModelConfig, Seq2Seq, count_parameters
from helpers.vocab import PAD_INDEX, SOS_INDEX, Vocabulary

VOCAB = 30


def config(**settings):
    base = dict(
        source_vocab_size=VOCAB,
        target_vocab_size=VOCAB,
        embedding_size=12,
        hidden_size=16,
        dropout=0.0,
    )
    base.update(settings)
    return ModelConfig(**base)


def toy_batch(seed=0, lengths=(5, 3, 1), target_lengths=(4, 6, 2)):
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for source_length, target_length in zip(lengths, target_lengths, strict=True):
        source = torch.randint(4, VOCAB, (source_length,), generator=generator)
        target = torch.randint(4, VOCAB, (target_length,), generator=generator)
        examples.append((source, torch.cat([torch.tensor([SOS_INDEX]), target, torch.tensor([2])])))
    return collate_batch(examples)


ATTENTIONS = ["dot", "scaled_dot", "general", "concat", "additive", "local-m", "local-p"]


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_luong_parallel_path_equals_the_step_loop(attention, rnn_type):
    torch.manual_seed(0)
    model = Seq2Seq(
        config(decoder="luong", attention=attention, rnn_type=rnn_type, num_layers=2)
    ).eval()
    batch = toy_batch()
    memory = model.encode(batch.source, batch.source_lengths)
    parallel_features, parallel_attention = model.decoder.forward_parallel(
        batch.decoder_input, memory
    )
    step_features, step_attention = model.decoder.forward_stepwise(batch.decoder_input, memory)
    torch.testing.assert_close(parallel_features, step_features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parallel_attention, step_attention, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "settings",
    [
        dict(decoder="bahdanau", attention="additive"),
        dict(decoder="bahdanau", attention="additive", rnn_type="lstm", bidirectional=False),
        dict(decoder="luong", attention="general", input_feeding=True),
        dict(decoder="luong", attention="concat"),
        dict(decoder="luong", attention="local-p"),
        dict(decoder="plain"),
        dict(decoder="luong", attention="dot", encoder="self_attention", encoder_heads=2),
        dict(decoder="transformer", encoder="self_attention", encoder_heads=2, decoder_heads=2),
    ],
)
def test_output_shapes_and_padding_invariance(settings):
    torch.manual_seed(0)
    model = Seq2Seq(config(**settings)).eval()
    batch = toy_batch()
    output = model(batch.source, batch.source_lengths, batch.decoder_input)
    steps = batch.decoder_input.size(1)
    assert output.logits.shape == (3, steps, VOCAB)
    extra = torch.full((3, 4), PAD_INDEX)
    padded = model(torch.cat([batch.source, extra], 1), batch.source_lengths, batch.decoder_input)
    torch.testing.assert_close(padded.logits, output.logits, atol=1e-5, rtol=1e-5)
    if settings["decoder"] == "plain":
        assert output.attention is None
    else:
        assert output.attention.shape == (3, steps, batch.source.size(1))
        torch.testing.assert_close(output.attention.sum(-1), torch.ones(3, steps))
        assert bool((output.attention.masked_select(~batch.source_mask[:, None, :]) == 0).all())
        torch.testing.assert_close(
            padded.attention[..., : batch.source.size(1)], output.attention, atol=1e-6, rtol=1e-5
        )


def test_each_sentence_is_decoded_independently_of_its_batch():
    """Every row alone gives its logits in the batch. The lengths are not sorted longest
    first, so the encoder must sort them for packing and put the rows back in order."""
    torch.manual_seed(0)
    model = Seq2Seq(config(decoder="bahdanau", attention="additive")).eval()
    source_lengths, target_lengths = (3, 5, 1), (4, 6, 2)
    batch = toy_batch(lengths=source_lengths, target_lengths=target_lengths)
    together = model(batch.source, batch.source_lengths, batch.decoder_input).logits
    pairs = zip(source_lengths, target_lengths, strict=True)
    for row, (source_length, target_length) in enumerate(pairs):
        steps = target_length + 1  # <sos> and the target; <eos> is only predicted
        alone = model(
            batch.source[row : row + 1, :source_length],
            batch.source_lengths[row : row + 1],
            batch.decoder_input[row : row + 1, :steps],
        ).logits
        torch.testing.assert_close(alone[0], together[row, :steps], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_bahdanau_attends_with_the_previous_state(rnn_type, num_layers):
    """Step i attends with s_{i-1}: step 0 with s_0 (the encoder bridge), before the RNN
    has run, and every later step with the state the previous step left; the top layer's
    state, and for an LSTM its h, not its c. The RNN is unrolled here by hand, so each
    step's query is known independently of the decoder's own loop."""
    torch.manual_seed(0)
    model = Seq2Seq(
        config(decoder="bahdanau", attention="additive", rnn_type=rnn_type, num_layers=num_layers)
    ).eval()
    decoder = model.decoder
    batch = toy_batch()
    memory = model.encode(batch.source, batch.source_lengths)
    _, attention = decoder(batch.decoder_input, memory)
    state = memory.initial_hidden
    for step in range(batch.decoder_input.size(1)):
        layers = state[0] if rnn_type == "lstm" else state  # (num_layers, B, H): an LSTM's h
        query = layers[num_layers - 1]  # s_{i-1}, the top layer
        context, expected = decoder.attention(query, memory.states, memory.states, memory.mask)
        torch.testing.assert_close(attention[:, step], expected)
        if num_layers == 2:  # the bottom layer's state would give other weights
            _, bottom = decoder.attention(layers[0], memory.states, memory.states, memory.mask)
            assert not torch.allclose(bottom, expected)
        if rnn_type == "lstm":  # and so would the LSTM's cell state c
            _, cell = decoder.attention(state[1][-1], memory.states, memory.states, memory.mask)
            assert not torch.allclose(cell, expected)
        embedded = decoder.embedding(batch.decoder_input[:, step])  # E y_{i-1}
        _, state = decoder.rnn(torch.cat([embedded, context], dim=-1).unsqueeze(1), state)


@pytest.mark.parametrize("decoder", ["bahdanau", "luong"])
def test_teacher_forcing_ratio_zero_feeds_back_predictions(decoder):
    """Free running reads the model's own previous prediction at every step: the same
    logits as teacher forcing on those predictions (and not on the gold tokens)."""
    torch.manual_seed(0)
    model = Seq2Seq(config(decoder=decoder)).eval()
    batch = toy_batch()
    forced = model(batch.source, batch.source_lengths, batch.decoder_input, 1.0).logits
    free = model(batch.source, batch.source_lengths, batch.decoder_input, 0.0).logits
    torch.testing.assert_close(free[:, 0], forced[:, 0])  # step 0 always reads <sos>
    predictions = torch.cat([batch.decoder_input[:, :1], free[:, :-1].argmax(-1)], 1)
    assert bool((predictions != batch.decoder_input).any())
    fed_back = model(batch.source, batch.source_lengths, predictions, 1.0).logits
    torch.testing.assert_close(free, fed_back, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder", ["bahdanau", "luong"])
def test_full_teacher_forcing_draws_no_random_numbers(decoder):
    """With ``teacher_forcing_ratio=1`` no coin is tossed: the random numbers that dropout
    and the data order draw next are those they would draw had the decoder not run, so
    a teacher-forced run's numbers do not depend on the scheduled-sampling code."""
    torch.manual_seed(0)
    model = Seq2Seq(config(decoder=decoder, input_feeding=decoder == "luong")).eval()
    batch = toy_batch()
    torch.manual_seed(1)
    untouched = torch.rand(3)
    for ratio, draws in ((1.0, False), (0.5, True)):
        torch.manual_seed(1)
        model(batch.source, batch.source_lengths, batch.decoder_input, ratio)
        assert torch.equal(torch.rand(3), untouched) is not draws, ratio


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_input_feeding_feeds_the_previous_attentional_vector(tie_embeddings):
    """Luong et al.'s input feeding (section 3.3): step t's RNN reads [E y_{t-1};
    h~_{t-1}], h~_0 = 0, and h~_t = tanh(W_c [c_t; h_t]) (eq. 5) gives the logits
    W_s h~_t (eq. 6). Unrolled here by hand and compared with the decoder's logits at
    every step; feeding zeros instead of h~_{t-1} changes every step after the first."""
    torch.manual_seed(0)
    model = Seq2Seq(
        config(
            decoder="luong", attention="general", input_feeding=True, tie_embeddings=tie_embeddings
        )
    ).eval()
    decoder = model.decoder
    batch = toy_batch()
    memory = model.encode(batch.source, batch.source_lengths)
    logits = model(batch.source, batch.source_lengths, batch.decoder_input).logits
    state = memory.initial_hidden
    attentional = torch.zeros(batch.source.size(0), decoder.W_c.out_features)  # h~_0
    without_feeding_state = memory.initial_hidden
    for step in range(batch.decoder_input.size(1)):
        embedded = decoder.embedding(batch.decoder_input[:, step])  # E y_{t-1}
        rnn_input = torch.cat([embedded, attentional], dim=-1).unsqueeze(1)
        output, state = decoder.rnn(rnn_input, state)  # h_t: (B, 1, H)
        context, _ = decoder.attention(output, memory.states, memory.states, memory.mask)
        attentional = torch.tanh(decoder.W_c(torch.cat([context, output], dim=-1))).squeeze(1)
        expected = decoder.W_s(decoder.projection(attentional))
        torch.testing.assert_close(logits[:, step], expected)
        # The same step fed zeros in place of h~_{t-1} (its own unrolled state).
        zeros = torch.zeros_like(attentional)
        starved, without_feeding_state = decoder.rnn(
            torch.cat([embedded, zeros], dim=-1).unsqueeze(1), without_feeding_state
        )
        if step > 0:
            assert not torch.allclose(starved, output), step


def test_gradients_reach_every_parameter_for_every_attention():
    for attention in ATTENTIONS:
        torch.manual_seed(0)
        model = Seq2Seq(config(decoder="luong", attention=attention, input_feeding=True))
        batch = toy_batch()
        model(batch.source, batch.source_lengths, batch.decoder_input).logits.sum().backward()
        missing = [
            name
            for name, p in model.named_parameters()
            if p.grad is None or p.grad.abs().sum() == 0
        ]
        assert not missing, f"{attention}: no gradient for {missing}"


def test_bad_shapes_and_settings_are_refused():
    model = Seq2Seq(config())
    batch = toy_batch()
    with pytest.raises(ValueError, match="source must be"):
        model(batch.source[0], batch.source_lengths, batch.decoder_input)
    with pytest.raises(ValueError, match="source_lengths"):
        model(batch.source, batch.source_lengths[:2], batch.decoder_input)
    with pytest.raises(ValueError, match="length 0"):
        model(batch.source, torch.tensor([5, 0, 1]), batch.decoder_input)
    with pytest.raises(ValueError, match="decoder_input"):
        model(batch.source, batch.source_lengths, batch.decoder_input[:2])
    with pytest.raises(ValueError, match="int64"):
        model(batch.source.float(), batch.source_lengths, batch.decoder_input)
    with pytest.raises(ValueError, match="rnn_type"):
        config(rnn_type="rnn")
    with pytest.raises(ValueError, match="even"):
        config(hidden_size=15)
    for ratio in (-0.1, 1.5):
        with pytest.raises(ValueError, match="teacher_forcing_ratio"):
            model(batch.source, batch.source_lengths, batch.decoder_input, ratio)
    for positions in (torch.tensor([[0, 1]]), torch.tensor([0.0, 1.0])):
        with pytest.raises(ValueError, match="output_positions must be a 1-D long tensor"):
            model(batch.source, batch.source_lengths, batch.decoder_input, 1.0, positions)
    with pytest.raises(ValueError, match="unknown model config fields: \\['hiden_size'\\]"):
        ModelConfig.from_dict({**config().to_dict(), "hiden_size": 8})
    assert count_parameters(model) > 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"hidden_size": "8"}, "hidden_size must be a whole number >= 1, got '8'"),
        ({"embedding_size": 0}, "embedding_size must be a whole number >= 1, got 0"),
        ({"source_vocab_size": 0}, r"source_vocab_size must be a whole number >= 5 \(the 4 special"),
        ({"target_vocab_size": 4}, "target_vocab_size must be a whole number >= 5"),
        ({"encoder_layers": 0}, "encoder_layers must be a whole number >= 1"),
        ({"decoder_layers": 0}, "decoder_layers must be a whole number >= 1"),
        ({"num_layers": 1.5}, "num_layers must be a whole number >= 1, got 1.5"),
        ({"attention_size": 0}, "attention_size must be a whole number >= 1, got 0"),
        ({"max_target_length": 0}, "max_target_length must be a whole number >= 1"),
        ({"local_window": -1}, "local_window must be a whole number >= 0"),
        ({"encoder_heads": True}, "encoder_heads must be a whole number"),
        ({"bidirectional": 1}, "bidirectional must be True or False, got 1"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\), got 1.0"),
        ({"dropout": "0.1"}, "dropout must lie in"),
    ],
)  # fmt: skip
def test_a_config_with_impossible_sizes_is_refused_when_it_is_made(settings, message):
    """These failed later inside torch (an IndexError, "not all arguments converted"),
    or quietly became something else (``attention_size=0`` the default H)."""
    with pytest.raises(ValueError, match=message):
        config(**settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"source_tokenizer": "EN"}, "source_tokenizer must be 'chars' or a language code that spaCy has, in lower case .*got 'EN' \\(spaCy: \\[E048\\]"),
        ({"source_tokenizer": "punctuation"}, "source_tokenizer must be 'chars' or a language code"),
        ({"target_tokenizer": "german"}, "target_tokenizer must be 'chars' or a language code .*got 'german'"),
        ({"target_tokenizer": ""}, "target_tokenizer must be 'chars' or a language code"),
        ({"source_tokenizer": None}, r"source_tokenizer must be a str .*got None \(NoneType\)"),
    ],
)  # fmt: skip
def test_a_config_with_an_unknown_tokenizer_is_refused_when_it_is_made(settings, message):
    """Such a model trained without complaint (training tokenises with the task's own
    tokenizers) and failed only when it first translated, with spaCy's ImportError."""
    with pytest.raises(ValueError, match=message):
        config(**settings)


def test_local_score_and_window_are_checked_when_made():
    """``local_score=None`` passed the config and met a bare AttributeError when the model
    was built; a NaN window passed "window < 1" and gave all-NaN weights."""
    from helpers.attention import DotAttention, LocalAttention

    with pytest.raises(ValueError, match="local_score .* must be one of .*got None"):
        config(attention="local-p", local_score=None)
    with pytest.raises(ValueError, match="local_score .* must be one of .*got 'local-m'"):
        config(attention="local-p", local_score="local-m")
    from helpers.attention import build_attention

    with pytest.raises(ValueError, match="local_score must be one of .*got None"):
        build_attention("local-p", 8, 8, local_score=None)
    for window in (float("nan"), True, 0):
        with pytest.raises(ValueError, match="window must be a whole number >= 1 .*half-width D"):
            LocalAttention(DotAttention(4), window=window, predictive=False)


def test_vocabularies_must_be_vocabularies_and_lengths_are_reported_as_found():
    model = Seq2Seq(config())
    vocab = Vocabulary(["<pad>", "<sos>", "<eos>", "<unk>", *(f"w{i}" for i in range(VOCAB - 4))])
    with pytest.raises(TypeError, match="source_vocab must be a Vocabulary, got a list"):
        model.attach_vocabularies(vocab.itos, vocab)
    batch = toy_batch()
    lengths = batch.source_lengths.clone()
    lengths[0] = -1  # reported as "found length 0"
    with pytest.raises(ValueError, match=r"at least one token \(found length -1\)"):
        model(batch.source, lengths, batch.decoder_input)


def test_every_tokenizer_the_series_uses_and_any_spacy_language_is_accepted():
    for source, target in [("en", "de"), ("chars", "chars"), ("fr", "xx")]:
        made = config(source_tokenizer=source, target_tokenizer=target)
        assert (made.source_tokenizer, made.target_tokenizer) == (source, target)


def test_numpy_sizes_become_plain_ints_and_optional_sizes_stay_optional():
    import numpy as np

    made = config(
        hidden_size=np.int64(16), attention_size=None, feedforward_size=None, bidirectional=np.True_
    )
    assert type(made.hidden_size) is int and type(made.bidirectional) is bool
    assert made == config(hidden_size=16)


def test_decoder_input_and_output_positions_are_checked_like_the_source():
    model = Seq2Seq(config())
    batch = toy_batch()
    with pytest.raises(
        ValueError, match="decoder_input must hold int64 token indices, got torch.float32"
    ):
        model(batch.source, batch.source_lengths, batch.decoder_input.float())
    positions = batch.decoder_input.numel()
    for wrong, shown in ((positions, positions), (-1, -1)):
        with pytest.raises(
            ValueError, match=f"output_positions holds {shown}, outside the {positions}"
        ):
            model(
                batch.source,
                batch.source_lengths,
                batch.decoder_input,
                1.0,
                torch.tensor([0, wrong]),
            )
    with pytest.raises(ValueError, match="source_lengths must hold whole numbers"):
        model(batch.source, batch.source_lengths.float(), batch.decoder_input)
    with pytest.raises(ValueError, match="the batch holds no sentences"):
        model(batch.source[:0], batch.source_lengths[:0], batch.decoder_input[:0])
    # an RNN's "expected sequence length to be larger than 0", which named neither
    for decoder in ("luong", "bahdanau", "transformer"):
        with pytest.raises(ValueError, match="decoder_input has no steps"):
            Seq2Seq(
                config(
                    decoder=decoder, encoder="self_attention" if decoder == "transformer" else "rnn"
                )
            )(batch.source, batch.source_lengths, batch.decoder_input[:, :0])
    every = torch.arange(positions)
    assert model(
        batch.source, batch.source_lengths, batch.decoder_input, 1.0, every
    ).logits.shape == (
        positions,
        VOCAB,
    )


def test_vocabularies_of_another_size_are_refused():
    from helpers.vocab import Vocabulary

    model = Seq2Seq(config())
    right = Vocabulary(["<pad>", "<sos>", "<eos>", "<unk>", *[f"w{i}" for i in range(VOCAB - 4)]])
    short = Vocabulary(right.itos[:-1])
    for source_vocab, target_vocab in ((short, right), (right, short)):
        with pytest.raises(ValueError, match="vocabulary sizes"):
            model.attach_vocabularies(source_vocab, target_vocab)
    assert model.attach_vocabularies(right, right).source_vocab is right


def test_output_positions_pick_those_rows_of_the_flattened_logits():
    """Training scores only the real target positions: the logits it gets for them are
    the full ``(B, T, V)`` logits' rows at those flat ``b · T + t`` indices."""
    torch.manual_seed(0)
    model = Seq2Seq(config()).eval()
    batch = toy_batch()
    full = model(batch.source, batch.source_lengths, batch.decoder_input).logits
    positions = batch.target_positions
    picked = model(batch.source, batch.source_lengths, batch.decoder_input, 1.0, positions).logits
    assert (
        picked.shape == (len(positions), VOCAB) and len(positions) < full.shape[0] * full.shape[1]
    )
    torch.testing.assert_close(picked, full.flatten(0, 1)[positions])


def test_the_default_score_is_the_decoders_own():
    assert config(decoder="bahdanau").attention == "additive"
    assert config(decoder="luong").attention == "general"
    assert config(decoder="plain").attention == "general"
    # Mixed combinations stay possible when asked for explicitly.
    assert config(decoder="bahdanau", attention="general").attention == "general"
    with pytest.raises(ValueError, match="attention must be one of"):
        config(attention="bilinear")


def test_out_of_range_token_ids_are_a_clear_error():
    model = Seq2Seq(config())
    batch = toy_batch()
    too_large = batch.source.clone()
    too_large[0, 0] = VOCAB
    with pytest.raises(ValueError, match=f"token id {VOCAB}, outside the vocabulary of {VOCAB}"):
        model(too_large, batch.source_lengths, batch.decoder_input)
    negative = batch.decoder_input.clone()
    negative[1, 0] = -1
    with pytest.raises(ValueError, match="decoder_input holds token id -1"):
        model(batch.source, batch.source_lengths, negative)


@pytest.mark.parametrize("decoder", ["luong", "bahdanau", "transformer"])
def test_the_target_itself_as_decoder_input_is_a_clear_error(decoder):
    """Passing the target (``y_1 … <eos>``) instead of the target shifted right
    (``<sos> y_1 …``) trains without complaint, to copy one step late: refuse it."""
    model = Seq2Seq(
        config(decoder=decoder, encoder="self_attention" if decoder == "transformer" else "rnn")
    )
    batch = toy_batch()
    assert bool((batch.decoder_input[:, 0] == SOS_INDEX).all())
    model(batch.source, batch.source_lengths, batch.decoder_input)  # the right input is fine
    unshifted = batch.decoder_input[:, 1:].clone()
    first = int(unshifted[0, 0])
    assert first != SOS_INDEX
    with pytest.raises(
        ValueError,
        match=rf"decoder_input row 0 starts with token id {first}, not <sos> \(id {SOS_INDEX}\)",
    ):
        model(batch.source, batch.source_lengths, unshifted)
    one_row_wrong = batch.decoder_input.clone()
    one_row_wrong[2, 0] = PAD_INDEX
    with pytest.raises(ValueError, match=f"row 2 starts with token id {PAD_INDEX}, not <sos>"):
        model(batch.source, batch.source_lengths, one_row_wrong)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_decoding_checks_the_source_before_it_moves_to_the_models_device(beam_size):
    """On a GPU the ids cannot be read without a wait, so the check is skipped there; the
    searches must therefore check the source while it is still on the CPU. A model on
    PyTorch's ``meta`` device stands in for the GPU: its tensors have no values."""
    from helpers.decoding import decode

    model = Seq2Seq(config()).to("meta")
    batch = toy_batch()
    too_large = batch.source.clone()
    too_large[0, 0] = VOCAB
    with pytest.raises(ValueError, match=f"token id {VOCAB}, outside the vocabulary"):
        decode(model, too_large, batch.source_lengths, beam_size=beam_size)


@pytest.mark.parametrize("encoder", ["rnn", "self_attention"])
def test_lengths_that_disagree_with_the_padding_are_a_clear_error(encoder):
    # The encoders read the mask from the tokens (no lengths copied to the device), so
    # a length that contradicts the padding must be refused, not silently used.
    model = Seq2Seq(config(encoder=encoder, encoder_heads=2, encoder_layers=1)).eval()
    batch = toy_batch()
    with torch.no_grad():
        memory = model.encode(batch.source, batch.source_lengths)
    assert torch.equal(memory.mask, batch.source_mask)
    too_short = batch.source_lengths.clone()
    too_short[0] -= 1
    with pytest.raises(ValueError, match="row 0 disagrees with its length 4"):
        model.encode(batch.source, too_short)
    pad_inside = batch.source.clone()
    pad_inside[0, 1] = PAD_INDEX
    with pytest.raises(ValueError, match="row 0 disagrees"):
        model.encode(pad_inside, batch.source_lengths)


def test_each_module_holds_its_own_part_of_the_model():
    # joeynmt's layout: encoders, decoders, and the wrapper that joins them, each in
    # the file a reader would open; the training settings live with the training loop.
    import helpers
    from helpers import decoders, encoders, models, recipes, tasks, training

    assert helpers.Encoder is encoders.Encoder
    assert helpers.SelfAttentionEncoder.__module__ == "helpers.encoders"
    for name in ("BahdanauDecoder", "LuongDecoder", "PlainDecoder"):
        assert getattr(helpers, name).__module__ == "helpers.decoders"
    assert helpers.Seq2Seq.__module__ == helpers.ModelConfig.__module__ == "helpers.models"
    assert training.TrainSettings.__module__ == "helpers.training"
    assert (
        recipes.tatoeba_recipe.__module__ == recipes.train_or_load.__module__ == "helpers.recipes"
    )
    assert not hasattr(models, "LuongDecoder") or models.LuongDecoder is decoders.LuongDecoder
    assert not hasattr(tasks, "train_or_load") and not hasattr(tasks, "TrainSettings")


# ------------------------------------------------ the self-attention encoder (notebook 06)


def test_positional_encoding_is_the_papers_sines_and_cosines():
    """PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(p / 10000^(2i/d)), added."""
    from helpers.encoders import PositionalEncoding

    size, length = 6, 9
    encoding = PositionalEncoding(size, max_length=length)
    expected = torch.zeros(length, size)
    for position in range(length):
        for i in range(size // 2):
            angle = position / 10000 ** (2 * i / size)
            expected[position, 2 * i] = math.sin(angle)
            expected[position, 2 * i + 1] = math.cos(angle)
    embedded = torch.randn(2, 5, size)
    torch.testing.assert_close(encoding(embedded), embedded + expected[:5])
    assert encoding(torch.zeros(1, length, size)).shape == (1, length, size)  # all 9 fit
    with pytest.raises(ValueError, match="exceeds the 9 encoded positions"):
        encoding(torch.zeros(1, length + 1, size))


@pytest.mark.parametrize("training", [False, True])
def test_the_self_attention_layer_equals_torchs_pre_norm_encoder_layer(training):
    from helpers.encoders import SelfAttentionLayer

    torch.manual_seed(0)
    reference = torch.nn.TransformerEncoderLayer(
        16, 4, 40, dropout=0.0, batch_first=True, norm_first=True
    )
    ours = SelfAttentionLayer(16, 4, 40, dropout=0.0)
    ours.attention.load_from_torch(reference.self_attn)
    with torch.no_grad():
        for mine, theirs in (
            (ours.feedforward[0], reference.linear1),
            (ours.feedforward[3], reference.linear2),
            (ours.norm_attention, reference.norm1),
            (ours.norm_feedforward, reference.norm2),
        ):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
    reference.train(training), ours.train(training)
    states = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).bool()
    # In eval mode without gradients torch takes its fused "fast path" kernel; in
    # training mode its ordinary layer-by-layer path: ours must equal both.
    with torch.set_grad_enabled(training):
        expected = reference(states, src_key_padding_mask=~mask)
        actual, weights = ours(states, mask, need_weights=True)
    # Real positions only: the fast path may leave padded rows as it likes.
    torch.testing.assert_close(actual[mask], expected[mask], atol=1e-5, rtol=1e-5)
    assert weights.shape == (3, 4, 5, 5) and not bool(
        weights[~mask[:, None, None, :].expand_as(weights)].any()
    )


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
def test_an_rnn_decoder_starts_from_the_mean_of_the_real_self_attention_states(rnn_type):
    """No "last state" in self-attention: the RNN decoder's first state is
    tanh(W · mean of the real states + b), and an LSTM's cell W' · mean + b'."""
    torch.manual_seed(0)
    model = Seq2Seq(
        config(
            decoder="luong",
            attention="dot",
            encoder="self_attention",
            encoder_heads=2,
            rnn_type=rnn_type,
        )
    ).eval()
    batch = toy_batch()
    with torch.no_grad():
        memory = model.encoder(batch.source, batch.source_lengths)
    mask = batch.source_mask.unsqueeze(-1)
    mean = (memory.states * mask).sum(1) / mask.sum(1)
    encoder = model.encoder
    expected_hidden = torch.tanh(encoder.bridge(mean)).unsqueeze(0)
    hidden = memory.initial_hidden[0] if rnn_type == "lstm" else memory.initial_hidden
    torch.testing.assert_close(hidden, expected_hidden)
    if rnn_type == "lstm":
        torch.testing.assert_close(memory.initial_hidden[1], encoder.bridge_cell(mean).unsqueeze(0))
    else:
        assert not hasattr(encoder, "bridge_cell")
    torch.testing.assert_close(encoder.summarise(memory.states, batch.source_mask), mean)


def test_the_self_attention_summary_is_one_method_a_subclass_can_replace():
    """Notebook 06's exercise 6 swaps mean pooling for attention pooling by overriding
    ``summarise``: the decoder's first state must come from it, not from a copy inline."""
    from helpers.encoders import SelfAttentionEncoder

    class FirstTokenEncoder(SelfAttentionEncoder):
        def summarise(self, states, mask):
            return states[:, 0]

    torch.manual_seed(0)
    settings = config(decoder="luong", attention="dot", encoder="self_attention", encoder_heads=2)
    model = Seq2Seq(settings).eval()
    replaced = FirstTokenEncoder(settings).eval()
    replaced.load_state_dict(model.encoder.state_dict())
    batch = toy_batch()
    with torch.no_grad():
        memory = replaced(batch.source, batch.source_lengths)
        expected = torch.tanh(replaced.bridge(memory.states[:, 0])).unsqueeze(0)
    torch.testing.assert_close(memory.initial_hidden, expected)
    assert not torch.allclose(
        memory.initial_hidden, model.encoder(batch.source, batch.source_lengths).initial_hidden
    )


def test_lists_and_arrays_where_tensors_belong_get_a_type_error_naming_the_argument():
    """A student's list or NumPy array met "'list' object has no attribute 'dim'" deep in
    the model or a search; ``teacher_forcing_ratio=None`` a bare comparison error."""
    from helpers.decoding import beam_search, greedy_decode

    model = Seq2Seq(config()).eval()
    batch = toy_batch()
    source, lengths, decoder_input = batch.source, batch.source_lengths, batch.decoder_input
    takers_of_a_source = (
        lambda wrong: model(wrong, lengths, decoder_input),
        lambda wrong: model.encode(wrong, lengths),
        lambda wrong: greedy_decode(model, wrong, lengths),
        lambda wrong: beam_search(model, wrong, lengths, beam_size=2),
    )
    for wrong_source in (source.tolist(), source.numpy()):
        for run in takers_of_a_source:
            with pytest.raises(TypeError, match="source must be a torch.Tensor, got a"):
                run(wrong_source)
    for run in (
        lambda: model(source, lengths.tolist(), decoder_input),
        lambda: greedy_decode(model, source, lengths.numpy()),
        lambda: beam_search(model, source, lengths.tolist()),
    ):
        with pytest.raises(TypeError, match="source_lengths must be a torch.Tensor"):
            run()
    with pytest.raises(TypeError, match="decoder_input must be a torch.Tensor"):
        model(source, lengths, decoder_input.tolist())
    with pytest.raises(ValueError, match=r"teacher_forcing_ratio must lie in \[0, 1\], got None"):
        model(source, lengths, decoder_input, None)


def test_the_forward_pass_checks_its_source_once(monkeypatch):
    """``forward`` checked the source, then ``encode`` checked it again: every training
    batch compared its padding with its lengths twice."""
    import helpers.models as models

    calls = []
    check = models._check_source
    monkeypatch.setattr(models, "_check_source", lambda *args: calls.append(1) or check(*args))
    model = Seq2Seq(config())
    batch = toy_batch()
    model(batch.source, batch.source_lengths, batch.decoder_input)
    assert len(calls) == 1
    model.encode(batch.source, batch.source_lengths)  # encode on its own still checks
    assert len(calls) == 2
