"""Greedy and beam search, and translate() on raw text."""

import itertools
import math

import pytest
import torch

from helpers.batching import collate_batch
from helpers.data import get_tokenizer
from helpers.decoding import (
    beam_search,
    best_continuations,
    decode,
    greedy_decode,
    length_penalty,
    mask_special_logits,
    translate,
    translate_batch,
)
from helpers.models import ModelConfig, Seq2Seq
from helpers.recipes import dates_recipe, train_model
from helpers.reference_beam_search import reference_beam_search
from helpers.tasks import dates_task
from helpers.training import TrainSettings
from helpers.vocab import EOS_INDEX, PAD_INDEX, SOS_INDEX, Vocabulary

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
TRANSFORMER = {"encoder": "self_attention", "encoder_heads": 2, "decoder_heads": 2}
#: Every decoder family with each of its ways of attending: (decoder, attention, settings).
EVERY_MODEL_FAMILY = [
    ("luong", "general", {}),
    ("luong", "general", {"input_feeding": True}),
    ("bahdanau", "additive", {}),
    ("luong", "local-m", {}),
    ("luong", "local-p", {}),
    ("plain", "general", {}),
    ("transformer", "scaled_dot", TRANSFORMER),
]


def tiny_model(decoder="luong", attention="general", **settings):
    torch.manual_seed(0)
    source_vocab = Vocabulary.build([WORDS])
    target_vocab = Vocabulary.build([["die", "Katze", "saß", "auf", "der", "Matte", "."]])
    config = ModelConfig(
        source_vocab_size=len(source_vocab),
        target_vocab_size=len(target_vocab),
        embedding_size=8,
        hidden_size=16,
        decoder=decoder,
        attention=attention,
        max_source_length=12,
        **{"dropout": 0.0, "max_target_length": 9, **settings},
    )
    return Seq2Seq(config).attach_vocabularies(source_vocab, target_vocab).eval()


def source_batch():
    examples = [
        (torch.tensor(ids), torch.tensor([SOS_INDEX]))
        for ids in ([4, 5, 6, 7], [8, 9], [4, 10, 11, 5, 6])
    ]
    return collate_batch(examples)


#: (decoder, attention, the <eos> logit's bias added): tiny models, sharpened, on which
#: greedy search over ``source_batch()`` ends some sentences and runs others to 9 tokens.
MIXED_ENDINGS = [
    ("luong", "general", 2.0),
    ("bahdanau", "additive", 0.0),
    ("luong", "local-m", 1.0),
    ("plain", "general", 0.0),
]


def mixed_endings_model(decoder, attention, eos_bias):
    """A sharpened tiny model (scale 4) with its ``<eos>`` made ``eos_bias`` likelier."""
    model = sharpened_model(decoder, attention, scale=4.0)
    generator = model.decoder.W_s if decoder == "luong" else model.decoder.generator
    with torch.no_grad():
        generator.bias[EOS_INDEX] += eos_bias
    return model


def assert_both_endings(hypotheses):
    """Some sentences end with ``<eos>`` and some run to the limit: both are compared."""
    finished = [hypothesis.finished for hypothesis in hypotheses]
    assert any(finished) and not all(finished), f"one way of ending only: {finished}"


@pytest.mark.parametrize("decoder,attention,eos_bias", MIXED_ENDINGS)
def test_beam_of_width_one_is_greedy(decoder, attention, eos_bias):
    model = mixed_endings_model(decoder, attention, eos_bias)
    batch = source_batch()
    greedy = greedy_decode(model, batch.source, batch.source_lengths, max_length=9)
    assert_both_endings(greedy)
    beam = beam_search(
        model, batch.source, batch.source_lengths, beam_size=1, max_length=9, alpha=0.0
    )
    for left, right in zip(greedy, beam, strict=True):
        assert left.token_ids == right.token_ids
        assert left.finished == right.finished
        torch.testing.assert_close(left.attention, right.attention)
        assert left.score == pytest.approx(right.score, abs=1e-4)


@pytest.mark.parametrize("decoder,attention,eos_bias", MIXED_ENDINGS)
def test_greedy_matches_an_unbatched_step_by_step_reference(decoder, attention, eos_bias):
    """Each sentence alone, one ``step`` at a time, feeding back the argmax (over the
    tokens a translation may hold) and stopping at the first ``<eos>`` or after 9 tokens:
    the batched search gives the same tokens."""
    model = mixed_endings_model(decoder, attention, eos_bias)
    batch = source_batch()
    hypotheses = greedy_decode(model, batch.source, batch.source_lengths, max_length=9)
    assert_both_endings(hypotheses)
    for row, hypothesis in enumerate(hypotheses):
        length = int(batch.source_lengths[row])
        source = batch.source[row : row + 1, :length]
        memory = model.decoder.prepare(model.encode(source, batch.source_lengths[row : row + 1]))
        state, token, expected = model.decoder.init_state(memory), torch.tensor([SOS_INDEX]), []
        for step in range(9):
            logits, state, _ = model.decoder.step(token, state, memory, step)
            token = mask_special_logits(logits).argmax(-1)  # never <pad> or <sos>
            expected.append(int(token))
            if expected[-1] == EOS_INDEX:
                break
        assert hypothesis.token_ids == expected
        assert hypothesis.finished == (expected[-1] == EOS_INDEX)
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


def test_beam_search_finds_at_least_the_greedy_score_without_penalty(trained_dates_model):
    """On a trained model, where every greedy translation ends, a beam of 2, 3 or 5 (no
    length penalty) scores each sentence at least as high as greedy search (here it
    scores 2 of the 60 higher). This is not a theorem (a beam can drop the greedy prefix
    for k better ones whose endings all turn out worse, as on some untrained models), so
    it is checked in the regime the notebooks decode in, where it holds; a search that
    lost or mis-scored its best hypothesis would fail here. That a beam finds what greedy
    misses is shown on a model made for it, whatever the CPU's rounding:
    ``test_without_an_end_beam_search_returns_the_most_probable_full_length_output``."""
    task, model = trained_dates_model
    batch = _dates_test_batch(task, model)
    greedy = greedy_decode(model, batch.source, batch.source_lengths)
    assert all(hypothesis.finished for hypothesis in greedy)  # so every score is compared
    for beam_size in (2, 3, 5):
        beam = beam_search(model, batch.source, batch.source_lengths, beam_size, alpha=0.0)
        gains = [found.score - first.score for first, found in zip(greedy, beam, strict=True)]
        assert min(gains) >= -1e-5, beam_size


def test_length_penalty_grows_with_length():
    """GNMT's lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016) at known values:
    the reference and exhaustive searches import this function too, so they cannot catch
    a wrong formula."""
    assert length_penalty(1, 0.6) == pytest.approx(1.0)
    assert length_penalty(7, 0.6) == pytest.approx(2**0.6)  # (5 + 7) / 6 = 2
    assert length_penalty(13, 0.5) == pytest.approx(3**0.5)
    assert length_penalty(10, 0.6) > length_penalty(5, 0.6) > 1.0
    assert length_penalty(10, 0.0) == 1.0


def test_translate_returns_text_tokens_and_attention():
    """The text is the greedy output's words detokenised, without ``<eos>``; the output
    tokens keep ``<eos>``, with one attention row each."""
    model = sharpened_model()
    result = translate(model, "the cat sat on a mat")
    assert result.source_tokens == ["the", "cat", "sat", "on", "a", "mat"]
    source = torch.tensor([model.source_vocab.encode(result.source_tokens)])
    [hypothesis] = greedy_decode(model, source, torch.tensor([6]))
    words = model.target_vocab.decode(hypothesis.token_ids)
    assert result.text == get_tokenizer(model.config.target_tokenizer).detokenize(words)
    assert result.text.startswith("die Katze saß Matte")  # this model's words, in order
    assert result.output_tokens == model.target_vocab.decode(
        hypothesis.token_ids, strip_special=False
    )
    assert result.attention.shape == (len(result.output_tokens), 6)
    ended = translate(model, "dog")  # this one ends: <eos> is a token, not text
    assert ended.output_tokens == ["<unk>", "die", "<eos>"] and ended.text == "<unk> die"
    beam = translate(model, "the cat sat on a mat", beam_size=3)
    assert beam.attention.shape == (len(beam.output_tokens), 6)


def test_unknown_words_map_to_unk_and_still_translate():
    model = tiny_model()
    result = translate(model, "the zebra sat")
    assert model.source_vocab.encode(result.source_tokens)[1] == model.source_vocab.unk_index
    assert result.attention.shape[1] == 3


@pytest.mark.parametrize("beam_size", [1, 2, 3])
def test_translate_runs_greedy_search_for_one_beam_and_beam_search_for_more(beam_size):
    """``translate_batch`` answers with the search its ``beam_size`` names: greedy for 1,
    beam search with the given length penalty ``alpha`` otherwise. On the sharpened
    model greedy and beam search disagree, and so do beam searches with another alpha."""
    model = sharpened_model()
    sentences = ["the cat sat on a mat", "a dog ran", "dog", "the mat sat on the cat", "a"]
    batch = collate_batch(
        [
            (torch.tensor(model.source_vocab.encode(sentence.split())), torch.tensor([0]))
            for sentence in sentences
        ]
    )

    def tokens(hypotheses):
        return [h.token_ids for h in hypotheses]

    alpha = 2.0
    if beam_size == 1:
        expected = greedy_decode(model, batch.source, batch.source_lengths)
        assert tokens(expected) != tokens(beam_search(model, batch.source, batch.source_lengths, 2))
    else:
        expected = beam_search(model, batch.source, batch.source_lengths, beam_size, alpha=alpha)
        greedy = greedy_decode(model, batch.source, batch.source_lengths)
        default_alpha = beam_search(model, batch.source, batch.source_lengths, beam_size)
        assert tokens(expected) != tokens(greedy) and tokens(expected) != tokens(default_alpha)
    translations = translate_batch(model, sentences, beam_size=beam_size, alpha=alpha)
    for translation, hypothesis in zip(translations, expected, strict=True):
        assert translation.output_tokens == model.target_vocab.decode(
            hypothesis.token_ids, strip_special=False
        )
        assert translation.score == pytest.approx(hypothesis.score, abs=1e-4)


def test_translate_batch_keeps_the_input_order():
    """``translate_batch`` sorts sentences by length to batch them, and hands each
    translation back in the input's place (this model writes a different one for each)."""
    model = sharpened_model()
    sentences = ["a dog ran", "the cat sat on a mat", "dog"]
    batched = translate_batch(model, sentences, batch_size=2)
    assert [result.source for result in batched] == sentences
    assert len({tuple(result.output_tokens) for result in batched}) == 3
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


# ------------------------------------------------ the tensorised beam search, checked


def _alone(model, batch, row):
    """Sentence ``row`` of ``batch`` as a batch of its own (no padding)."""
    length = int(batch.source_lengths[row])
    return batch.source[row : row + 1, :length], batch.source_lengths[row : row + 1]


def assert_same_as_reference(model, batch, beam_size, max_length=None, alpha=0.6):
    """The batched search must return, for every sentence, what the old per-candidate
    Python loop (helpers/reference_beam_search.py) returns for that sentence alone."""
    batched = beam_search(model, batch.source, batch.source_lengths, beam_size, max_length, alpha)
    for row, hypothesis in enumerate(batched):
        [expected] = reference_beam_search(
            model, *_alone(model, batch, row), beam_size, max_length, alpha
        )
        assert hypothesis.token_ids == expected.token_ids, row
        torch.testing.assert_close(hypothesis.attention, expected.attention, atol=1e-5, rtol=1e-4)
        # the reference reports the ranking score, the library the log-probability
        ranked = hypothesis.score / length_penalty(len(hypothesis.token_ids), alpha)
        assert ranked == pytest.approx(expected.score, abs=1e-4)


def random_batch(vocab_size, sentences=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(sentences):
        length = int(torch.randint(1, 12, (1,), generator=generator))
        ids = torch.randint(4, vocab_size, (length,), generator=generator)
        examples.append((ids, torch.tensor([SOS_INDEX])))
    return collate_batch(examples)


@pytest.mark.parametrize("decoder,attention,settings", EVERY_MODEL_FAMILY)
@pytest.mark.parametrize("beam_size", [2, 5])
def test_beam_search_returns_what_the_reference_returns(decoder, attention, settings, beam_size):
    model = tiny_model(decoder, attention, **settings)
    batch = random_batch(model.config.source_vocab_size)
    assert_same_as_reference(model, batch, beam_size)
    assert_same_as_reference(model, batch, beam_size, max_length=4, alpha=0.0)


@pytest.mark.parametrize("vocab_size", [3, 11, 16, 1021, 6126])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_best_continuations_are_a_topk_over_all_continuations(vocab_size, k):
    """The block search must pick what one topk over all k·V totals picks, in order —
    with a dead beam (−inf), masked tokens, a prime and a square vocabulary."""
    generator = torch.Generator().manual_seed(vocab_size * 10 + k)
    n = 7
    log_probabilities = torch.log_softmax(
        torch.randn(n, k, vocab_size, generator=generator) * 4, -1
    )
    log_probabilities[..., 0] = -math.inf  # <pad>, as the search masks it
    beam_scores = torch.randn(n, k, generator=generator) * 3 - 4
    beam_scores[0, 1:] = -math.inf  # the first step: one live beam
    count = 2 * k
    scores, parents, tokens = best_continuations(log_probabilities, beam_scores, count)
    totals = (beam_scores.unsqueeze(-1) + log_probabilities).view(n, -1)
    expected, index = totals.topk(min(count, k * vocab_size), -1)
    assert torch.equal(scores, expected)
    alive = expected > -math.inf
    assert torch.equal(parents[alive], (index // vocab_size)[alive])
    assert torch.equal(tokens[alive], (index % vocab_size)[alive])


def test_beam_search_returns_what_the_reference_returns_at_tatoeba_size():
    """A vocabulary the size of 04's (6,126 German tokens): many blocks per beam."""
    torch.manual_seed(1)
    config = ModelConfig(
        source_vocab_size=4303,
        target_vocab_size=6126,
        embedding_size=32,
        hidden_size=48,
        decoder="luong",
        attention="general",
        tie_embeddings=True,
        dropout=0.0,
        max_target_length=14,
    )
    model = Seq2Seq(config).eval()
    with torch.no_grad():  # <eos> made likelier, so that some sentences end and some do not
        model.decoder.W_s.bias[EOS_INDEX] = 1.0
    batch = random_batch(config.source_vocab_size, sentences=10, seed=3)
    ended = sum(h.finished for h in beam_search(model, batch.source, batch.source_lengths, 5))
    assert 0 < ended < 10
    assert_same_as_reference(model, batch, beam_size=5)
    assert_same_as_reference(model, batch, beam_size=4, alpha=0.0)


@pytest.fixture(scope="module")
def trained_dates_model():
    """A real model trained briefly on the dates task: peaked, confident distributions,
    sentences that end — the regime the notebooks decode in."""
    task = dates_task(train_size=3000, valid_size=100, test_size=60, seed=0)
    model_settings, settings = dates_recipe("luong")
    settings = TrainSettings(**{**settings.to_dict(), "epochs": 3})
    model, _ = train_model(
        task, task.model_config(**model_settings), settings, device="cpu", progress=False
    )
    return task, model.eval()


def _dates_test_batch(task, model):
    """The dates task's test sentences, encoded and padded into one batch."""
    tokenizer = get_tokenizer(task.source_tokenizer)
    sources = [torch.tensor(model.source_vocab.encode(tokenizer(s))) for s in task.test_sources]
    return collate_batch([(ids, torch.tensor([SOS_INDEX])) for ids in sources])


def test_beam_search_matches_the_reference_on_a_trained_model(trained_dates_model):
    task, model = trained_dates_model
    batch = _dates_test_batch(task, model)
    hypotheses = beam_search(model, batch.source, batch.source_lengths, beam_size=5)
    assert sum(h.finished for h in hypotheses) == len(hypotheses)  # it really learned to stop
    assert_same_as_reference(model, batch, beam_size=5)
    assert_same_as_reference(model, batch, beam_size=3, alpha=0.0)


def sharpened_model(decoder="luong", attention="general", settings=None, scale=8.0):
    """A tiny model with its weight matrices scaled by ``scale``: peaked distributions
    whose ``<eos>`` comes at different steps for different sentences (an untrained
    model's flat ones end all sentences at once, or never)."""
    model = tiny_model(decoder, attention, max_target_length=20, **(settings or {}))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(scale)
    return model


@pytest.mark.parametrize(
    "decoder,attention,settings",
    [
        ("luong", "general", {}),
        ("luong", "general", {"input_feeding": True}),
        ("bahdanau", "additive", {}),
        ("transformer", "scaled_dot", TRANSFORMER),
    ],
)
def test_every_hypothesis_is_what_the_model_gives_its_tokens(decoder, attention, settings):
    """In one shared batch where sentences end at different steps (greedy, beams of 3
    and 5): each hypothesis ends at its first ``<eos>`` or at its own length limit (both
    happen), its score is the log-probability the model gives its tokens when fed them
    (teacher forcing, the sentence alone, ``<pad>`` and ``<sos>`` masked as in the
    search), its attention rows are the ones that forced pass used, and it is what the
    sentence gets when decoded alone."""
    model = sharpened_model(decoder, attention, settings)
    batch = random_batch(len(model.source_vocab), sentences=24)
    endings = set()  # how hypotheses ended: finished, or at the limit
    for beam_size in (1, 3, 5):
        hypotheses = decode(model, batch.source, batch.source_lengths, beam_size)
        assert len({len(h.token_ids) for h in hypotheses}) > 2, "the test needs varied lengths"
        for row, hypothesis in enumerate(hypotheses):
            ids = hypothesis.token_ids
            limit = min(2 * int(batch.source_lengths[row]) + 10, model.config.max_target_length)
            assert EOS_INDEX not in ids[:-1] and (hypothesis.finished or len(ids) == limit), ids
            endings.add(hypothesis.finished)
            source, source_lengths = _alone(model, batch, row)
            decoder_input = torch.tensor([[SOS_INDEX, *ids[:-1]]])
            with torch.no_grad():
                forced = model(source, source_lengths, decoder_input)
            log_p = torch.log_softmax(mask_special_logits(forced.logits[0]), -1)
            expected_score = float(log_p[range(len(ids)), ids].sum())
            # Relative tolerances: weights eight times larger make the rounding of a batch
            # of another height (the sentence alone) eight times larger too.
            assert hypothesis.score == pytest.approx(expected_score, rel=1e-4, abs=1e-4)
            torch.testing.assert_close(
                hypothesis.attention, forced.attention[0], atol=1e-4, rtol=1e-3
            )
            [alone] = decode(model, source, source_lengths, beam_size)
            assert alone.token_ids == ids
            assert alone.score == pytest.approx(hypothesis.score, rel=1e-4, abs=1e-4)
    assert endings == {True, False}, "no hypothesis ended one of the two ways"


def score_outputs(model, source, source_lengths, outputs):
    """Teacher-forced scores of many outputs ``(N, T)`` of one sentence ``(1, S)``: the
    log-probabilities ``(N, T, V)`` (``<pad>`` and ``<sos>`` masked, as in the search)
    and each output's total log-probability ``(N,)``."""
    count = len(outputs)
    decoder_input = torch.cat([torch.full((count, 1), SOS_INDEX), outputs[:, :-1]], 1)
    with torch.no_grad():
        logits = model(source.expand(count, -1), source_lengths.expand(count), decoder_input).logits
    log_p = torch.log_softmax(mask_special_logits(logits), -1)
    return log_p, log_p.gather(2, outputs.unsqueeze(-1)).squeeze(-1).sum(-1)


def test_beam_search_finds_the_exhaustive_optimum_when_nothing_is_pruned():
    """With a beam wider than every candidate there is, beam search is exhaustive search,
    for every length penalty: on this model the penalty changes which length wins (the
    test checks that it does), so dividing by it, not anything else, is what is tested."""
    model = sharpened_model(scale=4.0)
    with torch.no_grad():  # and <eos> a little less likely
        model.decoder.W_s.bias[EOS_INDEX] -= 2.0
    batch = source_batch()
    max_length = 4
    emittable = [i for i in range(model.config.target_vocab_size) if i not in (0, SOS_INDEX)]
    words = [i for i in emittable if i != EOS_INDEX]

    # Every output of up to three words, then <eos>, with its log-probability.
    candidates = []  # per sentence: [(ids, log P)]
    for row in range(batch.source.size(0)):
        source, lengths = _alone(model, batch, row)
        scored = []
        for length in range(max_length):  # all outputs of `length` words, then <eos>
            outputs = torch.tensor(
                [[*prefix, EOS_INDEX] for prefix in itertools.product(words, repeat=length)]
            )
            _, totals = score_outputs(model, source, lengths, outputs)
            scored += zip(outputs.tolist(), totals.tolist(), strict=True)
        candidates.append(scored)
    # Wide enough to keep every partial output of three words and all its continuations.
    beam_size = len(words) ** (max_length - 1) * len(emittable) // 2 + 1
    winners = [set() for _ in candidates]  # per sentence, the winners' lengths
    for alpha in (0.0, 0.6, 2.0):
        beam = beam_search(model, batch.source, batch.source_lengths, beam_size, max_length, alpha)
        for found, scored, lengths in zip(beam, candidates, winners, strict=True):
            ids, total = max(scored, key=lambda c: c[1] / length_penalty(len(c[0]), alpha))
            assert found.token_ids == ids, alpha
            assert found.score == pytest.approx(total, abs=1e-4)
            lengths.add(len(ids))
    assert any(len(lengths) > 1 for lengths in winners), "the penalty never changed a winner"


def test_without_an_end_beam_search_returns_the_most_probable_full_length_output():
    """When ``<eos>`` can never win, every hypothesis runs to the limit and the search
    returns a live beam: with a beam wide enough to prune nothing, the most probable of
    all full-length outputs, traced back through its own beams. The model is chosen so
    that for some sentences that output does not start with the likeliest first word
    (greedy search would miss it), so the trace-back really has to follow the beams."""
    model = sharpened_model(scale=3.0)
    with torch.no_grad():
        # -inf, not just unlikely: a finished hypothesis, however unlikely, beats a live one
        model.decoder.W_s.bias[EOS_INDEX] = -math.inf
    batch = source_batch()
    max_length = 3
    words = [i for i in range(model.config.target_vocab_size) if i not in (0, SOS_INDEX, EOS_INDEX)]
    outputs = torch.tensor(list(itertools.product(words, repeat=max_length)))
    beam_size = len(words) ** (max_length - 1) * (len(words) + 1) // 2 + 1
    found = beam_search(model, batch.source, batch.source_lengths, beam_size, max_length)
    garden_paths = 0
    for row, hypothesis in enumerate(found):
        log_p, totals = score_outputs(model, *_alone(model, batch, row), outputs)
        best = int(totals.argmax())
        assert not hypothesis.finished
        assert hypothesis.token_ids == outputs[best].tolist()
        assert hypothesis.score == pytest.approx(float(totals[best]), rel=1e-4, abs=1e-4)
        garden_paths += int(outputs[best, 0]) != int(log_p[0, 0].argmax())
    assert garden_paths > 0, "every winner starts with the likeliest word: a weak test"


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_sentence_alone_decodes_as_it_does_in_any_batch(beam_size):
    """The length limit is each sentence's own: a model that never stops writes
    2 * |source| + 10 tokens for a sentence, whatever else shares its batch."""
    model = tiny_model(max_target_length=40)
    with torch.no_grad():
        model.decoder.W_s.bias[EOS_INDEX] = -1e4  # never ends a sentence
    sentences = ["dog", "the cat sat on a mat the cat sat on a mat", "a dog ran"]
    together = translate_batch(model, sentences, beam_size=beam_size)
    for sentence, result in zip(sentences, together, strict=True):
        alone = translate(model, sentence, beam_size=beam_size)
        assert alone.output_tokens == result.output_tokens
        assert len(alone.output_tokens) == 2 * len(alone.source_tokens) + 10
    for batch_size in (1, 2, 3):
        assert [
            r.output_tokens for r in translate_batch(model, sentences, beam_size, batch_size)
        ] == [r.output_tokens for r in together]


@pytest.mark.parametrize(("beam_size", "sentences_per_batch"), [(1, 256), (5, 204), (4, 256)])
def test_default_batches_hold_256_greedy_sentences_or_1024_beam_hypotheses(
    beam_size, sentences_per_batch, monkeypatch
):
    """Greedy search decodes 256 sentences at a time by default, beam search 1,024
    hypotheses (``1024 // beam_size`` sentences); an explicit ``batch_size`` still counts
    hypotheses, and the translations are the same either way."""
    import helpers.decoding as decoding

    model = tiny_model()
    sentences = [f"the cat sat {'on a mat ' * (index % 4)}" for index in range(300)]
    seen = []
    real_decode = decoding.decode

    def recording_decode(model, source, *arguments):
        seen.append(source.size(0))
        return real_decode(model, source, *arguments)

    monkeypatch.setattr(decoding, "decode", recording_decode)
    by_default = translate_batch(model, sentences, beam_size=beam_size)
    assert seen == [sentences_per_batch, 300 - sentences_per_batch]
    seen.clear()
    explicit = translate_batch(model, sentences, beam_size=beam_size, batch_size=100)
    assert set(seen[:-1]) == {100 // beam_size} and sum(seen) == 300
    assert [r.output_tokens for r in explicit] == [r.output_tokens for r in by_default]


@pytest.mark.parametrize("beam_size", [1, 4])
def test_pad_and_sos_are_never_emitted(beam_size):
    model = tiny_model()
    with torch.no_grad():
        model.decoder.W_s.bias[0] = 50.0  # <pad> would win every step
        model.decoder.W_s.bias[SOS_INDEX] = 49.0
    for result in translate_batch(model, ["the cat sat", "a dog"], beam_size=beam_size):
        assert "<pad>" not in result.output_tokens and "<sos>" not in result.output_tokens
        assert math.isfinite(result.score)


def test_masking_the_special_logits_copies_unless_asked_to_write_in_place():
    logits = torch.zeros(2, 5)
    masked = mask_special_logits(logits)
    assert masked is not logits and bool((logits == 0).all()), "the caller's logits changed"
    assert bool(masked[:, [PAD_INDEX, SOS_INDEX]].eq(-math.inf).all())
    assert int(masked.isfinite().sum()) == 2 * 3  # two rows of three tokens left finite
    in_place = mask_special_logits(logits, in_place=True)
    assert in_place is logits and bool(logits[:, SOS_INDEX].eq(-math.inf).all())
    half = torch.zeros(2, 5, dtype=torch.bfloat16)  # another dtype: a float32 copy, even in place
    copied = mask_special_logits(half, in_place=True)
    assert copied.dtype == torch.float32 and bool((half == 0).all())


@pytest.mark.parametrize("search", ["greedy", "beam"])
@pytest.mark.parametrize("mode", [True, False])
def test_decoding_restores_the_train_or_eval_mode(search, mode):
    model = tiny_model(dropout=0.3).train(mode)
    batch = source_batch()
    if search == "greedy":
        greedy_decode(model, batch.source, batch.source_lengths)
    else:
        beam_search(model, batch.source, batch.source_lengths, beam_size=3)
    assert model.training is mode
    assert all(module.training is mode for module in model.modules())


def test_greedy_and_beam_scores_are_both_log_probabilities():
    model = tiny_model()
    batch = source_batch()
    greedy = greedy_decode(model, batch.source, batch.source_lengths)
    beam = beam_search(model, batch.source, batch.source_lengths, beam_size=1, alpha=0.6)
    for left, right in zip(greedy, beam, strict=True):
        assert left.token_ids == right.token_ids
        assert left.score == pytest.approx(right.score, abs=1e-4)  # no length penalty in either


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: translate_batch(m, "the cat sat"), TypeError, "list of sentences"),
        (lambda m: translate_batch(m, ["the cat"], batch_size=0), ValueError, "batch_size"),
        (lambda m: translate_batch(m, ["the cat"], batch_size=-1), ValueError, "batch_size"),
        (lambda m: translate_batch(m, ["the cat"], beam_size=2.5), TypeError, "beam_size"),
        (lambda m: translate_batch(m, ["the cat"], beam_size="3"), TypeError, "beam_size"),
        (lambda m: translate_batch(m, ["the cat"], beam_size=0), ValueError, "beam_size"),
        (lambda m: translate_batch(m, ["the cat"], alpha=float("nan")), ValueError, "alpha"),
        (lambda m: translate_batch(m, ["the cat"], alpha=float("inf")), ValueError, "alpha"),
        (lambda m: translate_batch(m, ["the cat"], alpha=-0.1), ValueError, "alpha"),
        (lambda m: translate_batch(m, ["the cat"], alpha=True), TypeError, "alpha"),
        (lambda m: translate_batch(m, ["the cat"], alpha="0.6"), TypeError, "alpha"),
        (lambda m: translate_batch(m, ["the cat"], max_length=0), ValueError, "max_length"),
        (lambda m: translate(m, "the cat", beam_size=True), TypeError, "beam_size"),
    ],
)
def test_bad_decoding_arguments_are_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(tiny_model())


def test_a_numpy_integer_is_an_integer():
    import numpy as np

    model = tiny_model()
    [expected] = translate_batch(model, ["the cat"], beam_size=3, batch_size=6)
    [given] = translate_batch(model, ["the cat"], beam_size=np.int64(3), batch_size=np.int32(6))
    assert given.output_tokens == expected.output_tokens and given.score == expected.score


def test_a_numpy_float_is_a_length_penalty_too():
    """np.float32 is no float: it was refused with "alpha must be a number"."""
    import numpy as np

    model = tiny_model()
    [expected] = translate_batch(model, ["the cat"], beam_size=3, alpha=0.5)
    [given] = translate_batch(model, ["the cat"], beam_size=3, alpha=np.float32(0.5))
    assert given.output_tokens == expected.output_tokens and given.score == expected.score
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        translate_batch(model, ["the cat"], beam_size=3, alpha=np.float32("nan"))


@pytest.mark.parametrize("decoder,attention,settings", EVERY_MODEL_FAMILY)
@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_decoding_copies_nothing_from_the_host_per_step(
    decoder, attention, settings, search, host_copies
):
    """On a GPU a host-to-device copy in the step loop would cost every step a transfer
    (``torch.tensor([step], device=...)`` once did). On the CPU the recorder counts the
    calls that would be copies there (conftest's ``HostCopies``): running 9 steps instead
    of 3 must not add one. ``<eos>`` is ruled out so that every sentence runs every step."""
    model = tiny_model(decoder, attention, **settings)
    step = model.decoder.step

    def never_ending_step(*args, **kwargs):
        logits, state, weights = step(*args, **kwargs)
        logits = logits.clone()
        logits[:, EOS_INDEX] = -1e9  # an int index: no tensor made from host data
        return logits, state, weights

    model.decoder.step = never_ending_step
    batch = source_batch()
    copies_per_run = {}
    for max_length in (3, 9):
        with host_copies("cpu") as copies:
            if search == "greedy":
                hypotheses = greedy_decode(model, batch.source, batch.source_lengths, max_length)
            else:
                hypotheses = beam_search(
                    model, batch.source, batch.source_lengths, beam_size=3, max_length=max_length
                )
        assert [len(h.token_ids) for h in hypotheses] == [max_length] * 3  # every step ran
        copies_per_run[max_length] = len(copies.shapes)
    assert copies_per_run[3] == copies_per_run[9] <= 4, copies_per_run


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_an_empty_batch_or_fractional_lengths_are_named_before_decoding(search):
    """Both met a bare error deep inside the search ("max(): Expected reduction dim",
    "slice indices must be integers")."""
    model = tiny_model()
    batch = source_batch()

    def decode(source, lengths):
        if search == "greedy":
            return greedy_decode(model, source, lengths, max_length=4)
        return beam_search(model, source, lengths, beam_size=2, max_length=4)

    with pytest.raises(ValueError, match=r"at least one sentence, got shape \(0,\)"):
        decode(batch.source[:0], batch.source_lengths[:0])
    with pytest.raises(
        ValueError, match="source_lengths must hold whole numbers, got torch.float32"
    ):
        decode(batch.source, batch.source_lengths.float())
    assert len(decode(batch.source, batch.source_lengths.int())) == 3  # int32 is fine


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_model_with_nan_weights_is_an_error_not_an_empty_translation(beam_size):
    """Greedy search emitted <pad> after <pad> and beam search <eos>: the text was '' with
    a NaN or -inf score, and nothing said the model was broken."""
    model = tiny_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(ValueError, match="translation scores .*the model's outputs are not finite"):
        translate_batch(model, ["the cat"], beam_size=beam_size)
