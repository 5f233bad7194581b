"""The Transformer (notebook 08): causal masking, agreement with torch's decoder layer,
incremental decoding equal to full decoding, padding invariance, checkpoints, the
warm-up schedule, and cache keys that adding it left unchanged."""

import json
import math
from pathlib import Path

import pytest
import torch

from helpers.batching import collate_batch
from helpers.checkpoints import load_checkpoint, save_checkpoint
from helpers.decoding import beam_search, greedy_decode
from helpers.keys import fingerprint
from helpers.models import ModelConfig, Seq2Seq
from helpers.recipes import CACHE_VERSION
from helpers.training import TrainSettings, train, warmup_inverse_sqrt
from helpers.transformer import TransformerDecoderLayer, causal_mask
from helpers.vocab import EOS_INDEX, PAD_INDEX, SOS_INDEX, Vocabulary

VOCAB = 23
RUNS = Path(__file__).resolve().parent.parent / "results" / "comparison" / "runs"


def transformer(**settings) -> Seq2Seq:
    torch.manual_seed(0)
    base = dict(
        source_vocab_size=VOCAB,
        target_vocab_size=VOCAB,
        hidden_size=16,
        dropout=0.0,
        decoder="transformer",
        encoder="self_attention",
        encoder_heads=2,
        decoder_heads=2,
        encoder_layers=2,
        decoder_layers=2,
    )
    return Seq2Seq(ModelConfig(**{**base, **settings})).eval()


def toy_batch(seed=0, lengths=(5, 3, 1), target_lengths=(4, 6, 2)):
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for source_length, target_length in zip(lengths, target_lengths, strict=True):
        source = torch.randint(4, VOCAB, (source_length,), generator=generator)
        target = torch.randint(4, VOCAB, (target_length,), generator=generator)
        full = torch.cat([torch.tensor([SOS_INDEX]), target, torch.tensor([EOS_INDEX])])
        examples.append((source, full))
    return collate_batch(examples)


def test_causal_mask_allows_only_the_past_and_the_present():
    assert causal_mask(3).tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]


@pytest.mark.parametrize("changed", [1, 3, 5])
def test_a_future_token_changes_nothing_at_an_earlier_position(changed):
    model = transformer()
    batch = toy_batch()
    with torch.no_grad():
        before = model(batch.source, batch.source_lengths, batch.decoder_input)
        altered = batch.decoder_input.clone()
        altered[:, changed] = (altered[:, changed] + 1 - 4) % (VOCAB - 4) + 4
        after = model(batch.source, batch.source_lengths, altered)
    torch.testing.assert_close(after.logits[:, :changed], before.logits[:, :changed])
    torch.testing.assert_close(after.attention[:, :changed], before.attention[:, :changed])
    # ...and the change is seen from its own position on: the test can fail.
    assert not torch.allclose(after.logits[:, changed], before.logits[:, changed])


@pytest.mark.parametrize("training", [False, True])
def test_the_decoder_layer_equals_torchs_with_the_same_weights(training):
    torch.manual_seed(0)
    reference = torch.nn.TransformerDecoderLayer(
        16, 4, 40, dropout=0.0, batch_first=True, norm_first=True
    )
    ours = TransformerDecoderLayer(16, 4, 40, dropout=0.0).load_from_torch(reference)
    reference.train(training), ours.train(training)
    states, memory = torch.randn(3, 6, 16), torch.randn(3, 5, 16)
    memory_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).bool()
    expected = reference(
        states,
        memory,
        tgt_mask=~causal_mask(6),  # torch's masks mark what is *not* allowed
        memory_key_padding_mask=~memory_mask,
    )
    actual, _ = ours(states, memory, memory_mask)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_dropout_acts_on_each_residual_branch_only():
    """Vaswani et al. (section 5.4) drop each sub-layer's output before it is added to the
    residual stream: three times per layer (self-attention, cross-attention, feed-forward).
    With that dropout replaced by one that drops everything, the layer must pass its input
    through unchanged, in the parallel pass and step by step: so each of the three
    branches goes through it, and nothing else does. (Dropout 0 above cannot see this.)"""

    class DropEverything(torch.nn.Module):
        def forward(self, branch):
            return torch.zeros_like(branch)

    torch.manual_seed(0)
    layer = TransformerDecoderLayer(16, 4, 40, dropout=0.0).eval()
    states, memory = torch.randn(3, 6, 16), torch.randn(3, 5, 16)
    memory_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).bool()
    before, _ = layer(states, memory, memory_mask)
    assert not torch.allclose(before, states)  # each branch adds something
    layer.dropout = DropEverything()
    parallel, _ = layer(states, memory, memory_mask)
    torch.testing.assert_close(parallel, states, rtol=0, atol=0)
    cache = layer.start_cache(memory, memory_mask)
    for position in range(states.size(1)):
        output, cache, _ = layer.step(states[:, position : position + 1], cache, memory_mask)
        torch.testing.assert_close(output, states[:, position : position + 1], rtol=0, atol=0)


def test_the_embeddings_are_scaled_by_the_square_root_of_the_model_size():
    """Vaswani et al. (section 3.4) multiply the embeddings by sqrt(d_model) before adding
    the positions, so that both are of a size; step t's input uses row t of the table."""
    model = transformer()
    decoder = model.decoder
    tokens = torch.tensor([[5, 6, 7], [8, 9, 10]])
    table = decoder.positions.table
    expected = decoder.embedding(tokens) * math.sqrt(16) + table[:3]
    torch.testing.assert_close(decoder._embed(tokens), expected)
    later = decoder.embedding(tokens[:, :1]) * 4.0 + table[4:5]
    torch.testing.assert_close(decoder._embed(tokens[:, :1], first_position=4), later)


def test_loading_from_a_post_norm_layer_is_refused():
    post_norm = torch.nn.TransformerDecoderLayer(16, 4, 40, batch_first=True)
    with pytest.raises(ValueError, match="norm_first=True"):
        TransformerDecoderLayer(16, 4, 40, 0.0).load_from_torch(post_norm)


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_incremental_decoding_equals_decoding_from_scratch(tie_embeddings):
    """The key/value cache gives, step by step, the logits and cross-attention of one
    parallel pass over the same tokens."""
    model = transformer(tie_embeddings=tie_embeddings)
    batch = toy_batch()
    with torch.no_grad():
        full = model(batch.source, batch.source_lengths, batch.decoder_input)
        memory = model.encode(batch.source, batch.source_lengths)
        state = model.decoder.init_state(memory)
        logits, weights = [], []
        for step in range(batch.decoder_input.size(1)):
            step_logits, state, step_weights = model.decoder.step(
                batch.decoder_input[:, step], state, memory, step
            )
            logits.append(step_logits)
            weights.append(step_weights)
        assert state.layers[0].self_keys.size(2) == batch.decoder_input.size(1)
    torch.testing.assert_close(torch.stack(logits, 1), full.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(weights, 1), full.attention, atol=1e-6, rtol=1e-5)


def test_scheduled_sampling_runs_step_by_step_through_the_cache():
    model = transformer()
    batch = toy_batch()
    with torch.no_grad():
        forced = model(batch.source, batch.source_lengths, batch.decoder_input, 1.0).logits
        free = model(batch.source, batch.source_lengths, batch.decoder_input, 0.0).logits
    torch.testing.assert_close(free[:, 0], forced[:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(free[:, 1:], forced[:, 1:])


def test_padding_on_either_side_changes_nothing():
    model = transformer()
    batch = toy_batch()
    with torch.no_grad():
        output = model(batch.source, batch.source_lengths, batch.decoder_input)
        padded = model(
            torch.cat([batch.source, torch.full((3, 3), PAD_INDEX)], 1),
            batch.source_lengths,
            torch.cat([batch.decoder_input, torch.full((3, 2), PAD_INDEX)], 1),
        )
        steps = batch.decoder_input.size(1)
        torch.testing.assert_close(padded.logits[:, :steps], output.logits, atol=1e-5, rtol=1e-5)
        # A sentence decoded alone, unpadded, gets its batch row's numbers too.
        alone = model(
            batch.source[2:3, :1], batch.source_lengths[2:3], batch.decoder_input[2:3, :3]
        )
    torch.testing.assert_close(alone.logits[0], output.logits[2, :3], atol=1e-5, rtol=1e-5)
    assert bool((output.attention.masked_select(~batch.source_mask[:, None, :]) == 0).all())


def test_every_parameter_learns_and_no_rnn_bridge_is_left_unused():
    model = transformer(tie_embeddings=True).train()
    batch = toy_batch()
    model(batch.source, batch.source_lengths, batch.decoder_input).logits.sum().backward()
    missing = [
        name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0
    ]
    assert not missing, missing
    assert model.decoder.generator.weight is model.decoder.embedding.weight


def test_greedy_and_beam_search_decode_the_transformer():
    model = transformer(max_target_length=7)
    batch = toy_batch()
    greedy = greedy_decode(model, batch.source, batch.source_lengths)
    beam = beam_search(model, batch.source, batch.source_lengths, beam_size=1, alpha=0.0)
    for row, (left, right) in enumerate(zip(greedy, beam, strict=True)):
        assert left.token_ids == right.token_ids
        assert left.score == pytest.approx(right.score, abs=1e-4)
        assert left.attention.shape[1] == int(batch.source_lengths[row])


def test_a_transformer_checkpoint_round_trips(tmp_path):
    model = transformer(tie_embeddings=True, feedforward_size=24)
    source_vocab = Vocabulary.build([[f"w{i}" for i in range(VOCAB - 4)]])
    target_vocab = Vocabulary.build([[f"v{i}" for i in range(VOCAB - 4)]])
    model.attach_vocabularies(source_vocab, target_vocab)
    path = tmp_path / "transformer.pt"
    save_checkpoint(model, path)
    loaded, _ = load_checkpoint(path, "cpu")
    assert loaded.config == model.config
    assert loaded.decoder.generator.weight is loaded.decoder.embedding.weight  # still tied
    batch = toy_batch()
    with torch.no_grad():
        expected = model(batch.source, batch.source_lengths, batch.decoder_input).logits
        actual = loaded.eval()(batch.source, batch.source_lengths, batch.decoder_input).logits
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(encoder="rnn"), "needs encoder='self_attention'"),
        (dict(attention="general"), "must be 'scaled_dot'"),
        (dict(decoder_heads=3), "must divide"),
    ],
)
def test_impossible_transformer_configs_are_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        transformer(**settings)


def test_the_warmup_schedule_rises_linearly_then_falls_as_inverse_sqrt():
    assert warmup_inverse_sqrt(1, 4) == 0.25
    assert warmup_inverse_sqrt(4, 4) == 1.0  # the peak: the learning rate itself
    assert warmup_inverse_sqrt(16, 4) == pytest.approx(0.5)
    # Vaswani et al.'s eq. 3 is the same curve up to a constant factor.
    d, warmup = 512, 4000
    for step in (1, 100, 4000, 10_000, 100_000):
        paper = d**-0.5 * min(step**-0.5, step * warmup**-1.5)
        assert paper == pytest.approx(warmup_inverse_sqrt(step, warmup) * (d * warmup) ** -0.5)


def test_training_applies_the_warmup_and_the_betas(monkeypatch):
    model = transformer()
    batch = toy_batch()
    loader = [batch] * 3
    rates = []
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98))
    original_step = optimizer.step

    def recording_step(*args, **kwargs):
        rates.append(optimizer.param_groups[0]["lr"])
        return original_step(*args, **kwargs)

    optimizer.step = recording_step
    train(model, loader, epochs=2, learning_rate=0.01, warmup_steps=4, optimizer=optimizer,
          device="cpu", progress=False)  # fmt: skip
    expected = [0.01 * warmup_inverse_sqrt(step, 4) for step in range(1, 7)]
    assert rates == pytest.approx(expected)
    with pytest.raises(
        ValueError, match="are two schedules of the learning rate: give one or the other"
    ):
        train(model, loader, epochs=1, warmup_steps=4, lr_decay=0.5, progress=False)
    # train's own optimiser gets the Transformer's beta2 (Vaswani et al. 2017: 0.98).
    made = []

    class RecordedAdam(torch.optim.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "Adam", RecordedAdam)
    for beta2 in (0.98, None):  # None: Adam's default
        fresh = transformer()
        extra = {} if beta2 is None else {"adam_beta2": beta2}
        train(fresh, loader, epochs=1, progress=False, device="cpu", **extra)
    assert [optimizer.param_groups[0]["betas"] for optimizer in made] == [
        (0.9, 0.98),
        (0.9, 0.999),
    ]


def test_adding_the_transformer_left_every_committed_runs_cache_key_unchanged():
    """The Transformer's settings enter a cache key only when set, so the committed
    full-budget runs (trained before they existed) still count as done."""
    runs = sorted(RUNS.glob("*.json"))
    assert runs, "no committed runs"
    for path in runs:
        run = json.loads(path.read_text())
        config = ModelConfig.from_dict(run["config"])
        settings = TrainSettings(**run["settings"])
        assert config.key_dict() == run["config"]
        assert settings.key_dict() == run["settings"]
    # ...and a setting that is used does change the key.
    settings = TrainSettings(**{**run["settings"], "lr_decay": None})  # (warmup replaces it)
    changed = TrainSettings(**{**run["settings"], "lr_decay": None, "warmup_steps": 100})
    assert fingerprint(CACHE_VERSION, changed.key_dict()) != fingerprint(
        CACHE_VERSION, settings.key_dict()
    )
    assert "warmup_steps" not in settings.key_dict() and "warmup_steps" in changed.key_dict()
    assert math.isfinite(run["valid loss"])


def test_the_maps_behind_a_translation_are_the_ones_the_search_used():
    from helpers.decoding import translate
    from helpers.transformer import translation_cross_attention

    model = transformer(
        source_tokenizer="chars", target_tokenizer="chars", max_target_length=9, dropout=0.5
    )
    letters = "abcdefghijklmnopqrs"
    model.attach_vocabularies(Vocabulary.build([list(letters)]), Vocabulary.build([list(letters)]))
    # The function must decode in eval mode and restore this: with dropout on, maps
    # computed in training mode would not be the ones the (eval-mode) search used.
    model.train()
    for beam_size in (1, 3):
        translation = translate(model, "abcab", beam_size=beam_size)
        maps = translation_cross_attention(model, translation)
        layers, heads = model.config.decoder_layers, model.config.decoder_heads
        steps, source = len(translation.output_tokens), len(translation.source_tokens)
        assert maps.shape == (layers, heads, steps, source)
        torch.testing.assert_close(maps.sum(-1), torch.ones(layers, heads, steps))
        # Averaged over heads, the last layer is what the incremental search reported.
        torch.testing.assert_close(maps[-1].mean(0), translation.attention, atol=1e-5, rtol=0)
    assert model.training
    rnn = Seq2Seq(ModelConfig(source_vocab_size=VOCAB, target_vocab_size=VOCAB, hidden_size=8))
    with pytest.raises(TypeError, match="per-layer, per-head"):
        translation_cross_attention(rnn, translation)


def test_garbage_in_padded_memory_stays_out_of_the_decoder_layer_and_its_cache():
    """NaN or inf in the padded encoder states must change neither the parallel pass
    (training) nor the incremental one (decoding through the cache), and a clean
    memory must give the same numbers as before the padding was selected away."""
    torch.manual_seed(0)
    layer = TransformerDecoderLayer(16, 4, 40, dropout=0.0).eval()
    states, memory = torch.randn(3, 6, 16), torch.randn(3, 5, 16)
    memory_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).bool()
    clean, clean_weights = layer(states, memory, memory_mask, need_weights=True)
    for garbage in (float("nan"), float("inf")):
        dirty = memory.masked_fill(~memory_mask.unsqueeze(-1), garbage)
        parallel, weights = layer(states, dirty, memory_mask, need_weights=True)
        torch.testing.assert_close(parallel, clean)
        torch.testing.assert_close(weights, clean_weights)
        cache = layer.start_cache(dirty, memory_mask)
        for position in range(states.size(1)):
            output, cache, step_weights = layer.step(
                states[:, position : position + 1], cache, memory_mask
            )
            assert bool(torch.isfinite(output).all()), f"{garbage} leaked at {position}"
            torch.testing.assert_close(output, clean[:, position : position + 1])
            torch.testing.assert_close(step_weights, clean_weights[:, :, position : position + 1])


def test_teacher_forcing_runs_every_target_position_in_one_pass(monkeypatch):
    """At ratio 1 each layer runs once over all T positions (the Transformer's point);
    only a ratio below 1 goes step by step. ``need_weights`` picks which maps come back."""
    model = transformer()
    batch = toy_batch()
    steps = batch.decoder_input.size(1)
    calls = {"stepwise": 0, "positions": []}
    stepwise = type(model.decoder).forward_stepwise

    def counting_stepwise(self, *args, **kwargs):
        calls["stepwise"] += 1
        return stepwise(self, *args, **kwargs)

    monkeypatch.setattr(type(model.decoder), "forward_stepwise", counting_stepwise)
    hooks = [
        layer.register_forward_hook(
            lambda _, inputs, __: calls["positions"].append(inputs[0].size(1))
        )
        for layer in model.decoder.layers
    ]
    with torch.no_grad():
        model(batch.source, batch.source_lengths, batch.decoder_input, 1.0)
        assert calls == {"stepwise": 0, "positions": [steps] * model.config.decoder_layers}
        model(batch.source, batch.source_lengths, batch.decoder_input, 0.5)
        assert calls["stepwise"] == 1
    for hook in hooks:
        hook.remove()

    with torch.no_grad():
        memory = model.encode(batch.source, batch.source_lengths)
        maps = {
            wanted: model.decoder.forward_parallel(batch.decoder_input, memory, wanted)[1]
            for wanted in ("none", "last", "all")
        }
    assert maps["none"] == []
    assert len(maps["all"]) == model.config.decoder_layers == 2
    assert len(maps["last"]) == 1
    torch.testing.assert_close(maps["last"][0], maps["all"][-1])
    assert not torch.allclose(maps["all"][0], maps["all"][-1])


def test_the_position_table_bounds_the_target_length():
    """The sinusoid table has max(512, max_target_length) rows: the last one can be used,
    one past it is a clear error in both the parallel and the incremental pass."""
    model = transformer()
    rows = model.decoder.positions.table.size(0)
    assert rows == 512
    source = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        memory = model.encode(source, torch.tensor([3]))
        full = model.decoder.forward_parallel(torch.full((1, rows), 5), memory)[0]
        assert full.shape == (1, rows, 16)
        with pytest.raises(ValueError, match=f"{rows + 1} target steps exceed the {rows}"):
            model.decoder.forward_parallel(torch.full((1, rows + 1), 5), memory)
        state = model.decoder.init_state(memory)
        logits, _, _ = model.decoder.step(torch.tensor([5]), state, memory, rows - 1)
        assert logits.shape == (1, VOCAB)
        with pytest.raises(ValueError, match=f"step {rows} exceeds the {rows} encoded"):
            model.decoder.step(torch.tensor([5]), state, memory, rows)
    longer = transformer(max_target_length=600)  # longer outputs get a longer table
    assert longer.decoder.positions.table.size(0) == 600
    with torch.no_grad():
        memory = longer.encode(source, torch.tensor([3]))
        state = longer.decoder.init_state(memory)
        logits, _, _ = longer.decoder.step(torch.tensor([5]), state, memory, 599)
        assert logits.shape == (1, VOCAB)


def test_the_maps_of_an_empty_translation_are_a_clear_error():
    import dataclasses

    from helpers.decoding import translate
    from helpers.transformer import translation_cross_attention

    model = transformer(source_tokenizer="chars", target_tokenizer="chars", max_target_length=9)
    letters = "abcdefghijklmnopqrs"
    model.attach_vocabularies(Vocabulary.build([list(letters)]), Vocabulary.build([list(letters)]))
    translation = translate(model, "abc")
    for empty in ({"output_tokens": []}, {"source_tokens": []}):
        with pytest.raises(ValueError, match="no source or no output tokens"):
            translation_cross_attention(model, dataclasses.replace(translation, **empty))
