"""Greedy and beam search, and translate() on raw text."""

import pytest
import torch

from helpers.batching import collate_batch
from helpers.decoding import beam_search, greedy_decode, length_penalty, translate, translate_batch
from helpers.models import ModelConfig, Seq2Seq
from helpers.vocab import EOS_INDEX, SOS_INDEX, Vocabulary

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]


def tiny_model(decoder="luong", attention="general", **settings):
    torch.manual_seed(0)
    source_vocab = Vocabulary.build([WORDS])
    target_vocab = Vocabulary.build([["die", "Katze", "saß", "auf", "der", "Matte", "."]])
    config = ModelConfig(
        source_vocab_size=len(source_vocab),
        target_vocab_size=len(target_vocab),
        embedding_size=8,
        hidden_size=16,
        dropout=0.0,
        decoder=decoder,
        attention=attention,
        max_source_length=12,
        max_target_length=9,
        **settings,
    )
    return Seq2Seq(config).attach_vocabularies(source_vocab, target_vocab).eval()


def source_batch():
    examples = [
        (torch.tensor(ids), torch.tensor([SOS_INDEX]))
        for ids in ([4, 5, 6, 7], [8, 9], [4, 10, 11, 5, 6])
    ]
    return collate_batch(examples)


@pytest.mark.parametrize(
    "decoder,attention",
    [("luong", "general"), ("bahdanau", "additive"), ("luong", "local-m"), ("plain", "general")],
)
def test_beam_of_width_one_is_greedy(decoder, attention):
    model = tiny_model(decoder, attention)
    batch = source_batch()
    greedy = greedy_decode(model, batch.source, batch.source_lengths, max_length=9)
    beam = beam_search(
        model, batch.source, batch.source_lengths, beam_size=1, max_length=9, alpha=0.0
    )
    for left, right in zip(greedy, beam, strict=True):
        assert left.token_ids == right.token_ids
        torch.testing.assert_close(left.attention, right.attention)
        assert left.score == pytest.approx(right.score, abs=1e-4)


def test_greedy_matches_an_unbatched_step_by_step_reference():
    model = tiny_model()
    batch = source_batch()
    hypotheses = greedy_decode(model, batch.source, batch.source_lengths, max_length=9)
    for row, hypothesis in enumerate(hypotheses):
        length = int(batch.source_lengths[row])
        source = batch.source[row : row + 1, :length]
        memory = model.encode(source, batch.source_lengths[row : row + 1])
        state, token, expected = model.decoder.init_state(memory), torch.tensor([SOS_INDEX]), []
        for step in range(9):
            logits, state, _ = model.decoder.step(token, state, memory, step)
            token = logits.argmax(-1)
            expected.append(int(token))
            if expected[-1] == EOS_INDEX:
                break
        assert hypothesis.token_ids == expected
        assert hypothesis.attention.shape == (len(expected), length)


def test_search_stops_at_max_length_when_eos_never_comes():
    model = tiny_model()
    with torch.no_grad():
        model.decoder.W_s.bias[EOS_INDEX] = -1e4  # the model can never end a sentence
    batch = source_batch()
    for hypothesis in greedy_decode(model, batch.source, batch.source_lengths, max_length=7):
        assert len(hypothesis.token_ids) == 7 and not hypothesis.finished
    for hypothesis in beam_search(
        model, batch.source, batch.source_lengths, beam_size=3, max_length=7
    ):
        assert len(hypothesis.token_ids) == 7 and not hypothesis.finished


def test_beam_search_finds_at_least_the_greedy_score_without_penalty():
    model = tiny_model()
    batch = source_batch()
    greedy = greedy_decode(model, batch.source, batch.source_lengths, max_length=9)
    beam = beam_search(
        model, batch.source, batch.source_lengths, beam_size=4, max_length=9, alpha=0.0
    )
    for left, right in zip(greedy, beam, strict=True):
        if left.finished:
            assert right.score >= left.score - 1e-4
        assert right.attention.shape[0] == len(right.token_ids)


def test_length_penalty_grows_with_length():
    assert length_penalty(1, 0.6) == pytest.approx(1.0)
    assert length_penalty(10, 0.6) > length_penalty(5, 0.6) > 1.0
    assert length_penalty(10, 0.0) == 1.0


def test_translate_returns_text_tokens_and_attention():
    model = tiny_model()
    result = translate(model, "the cat sat on a mat")
    assert isinstance(result.text, str)
    assert result.source_tokens == ["the", "cat", "sat", "on", "a", "mat"]
    assert result.attention.shape == (len(result.output_tokens), 6)
    beam = translate(model, "the cat sat on a mat", beam_size=3)
    assert beam.attention.shape == (len(beam.output_tokens), 6)


def test_unknown_words_map_to_unk_and_still_translate():
    model = tiny_model()
    result = translate(model, "the zebra sat")
    assert model.source_vocab.encode(result.source_tokens)[1] == model.source_vocab.unk_index
    assert result.attention.shape[1] == 3


def test_translate_batch_keeps_the_input_order():
    model = tiny_model()
    sentences = ["a dog ran", "the cat sat on a mat", "dog"]
    batched = translate_batch(model, sentences, batch_size=2)
    assert [result.source for result in batched] == sentences
    for sentence, result in zip(sentences, batched, strict=True):
        assert translate(model, sentence).output_tokens == result.output_tokens


@pytest.mark.parametrize(
    ("sentence", "error", "message"),
    [
        ("", ValueError, "empty"),
        ("   \t ", ValueError, "empty"),
        (None, TypeError, "str"),
        (42, TypeError, "str"),
        (" ".join(["cat"] * 13), ValueError, "at most 12"),
    ],
)
def test_translate_refuses_bad_input_clearly(sentence, error, message):
    with pytest.raises(error, match=message):
        translate(tiny_model(), sentence)


def test_translate_needs_vocabularies():
    model = tiny_model()
    model.source_vocab = None
    with pytest.raises(ValueError, match="vocabularies"):
        translate(model, "the cat")
