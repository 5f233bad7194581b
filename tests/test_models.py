"""The seq2seq models: the papers' decoder steps, parallel = step loop, padding invariance."""

import pytest
import torch

from helpers.batching import collate_batch
from helpers.models import ModelConfig, Seq2Seq, count_parameters
from helpers.vocab import PAD_INDEX, SOS_INDEX

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
    torch.manual_seed(0)
    model = Seq2Seq(config(decoder="bahdanau", attention="additive")).eval()
    batch = toy_batch()
    together = model(batch.source, batch.source_lengths, batch.decoder_input).logits
    alone = model(batch.source[1:2, :3], batch.source_lengths[1:2], batch.decoder_input[1:2]).logits
    torch.testing.assert_close(alone[0], together[1], atol=1e-5, rtol=1e-5)


def test_bahdanau_attends_with_the_previous_state():
    """Step 0's attention must use s_0 (the encoder bridge), before the RNN has run."""
    torch.manual_seed(0)
    model = Seq2Seq(config(decoder="bahdanau", attention="additive")).eval()
    batch = toy_batch()
    memory = model.encode(batch.source, batch.source_lengths)
    s0 = memory.initial_hidden[-1]
    _, expected = model.decoder.attention(s0, memory.states, memory.states, memory.mask)
    _, attention = model.decoder(batch.decoder_input, memory)
    torch.testing.assert_close(attention[:, 0], expected)


def test_teacher_forcing_ratio_zero_feeds_back_predictions():
    torch.manual_seed(0)
    model = Seq2Seq(config(decoder="luong", attention="general")).eval()
    batch = toy_batch()
    forced = model(batch.source, batch.source_lengths, batch.decoder_input, 1.0).logits
    free = model(batch.source, batch.source_lengths, batch.decoder_input, 0.0).logits
    torch.testing.assert_close(free[:, 0], forced[:, 0])  # step 0 always reads <sos>
    assert not torch.allclose(free[:, 1:], forced[:, 1:])


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
    assert count_parameters(model) > 0


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
