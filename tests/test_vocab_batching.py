"""Vocabularies, padding, masks and length bucketing."""

import random

import pytest
import torch

from helpers.batching import (
    BucketBatchSampler,
    TranslationDataset,
    collate_batch,
    make_loader,
    padding_fraction,
)
from helpers.vocab import EOS_INDEX, PAD_INDEX, SOS_INDEX, UNK_INDEX, Vocabulary

SENTENCES = [["the", "cat", "sat"], ["the", "dog"], ["a", "cat", "ran", "far"], ["the"]]


def test_specials_come_first_and_min_freq_cuts_rare_tokens():
    vocab = Vocabulary.build(SENTENCES, min_freq=2)
    assert vocab.itos[:4] == ["<pad>", "<sos>", "<eos>", "<unk>"]
    assert (PAD_INDEX, SOS_INDEX, EOS_INDEX, UNK_INDEX) == (0, 1, 2, 3)
    assert vocab.itos[4:] == ["the", "cat"]  # by frequency, then alphabetically
    assert vocab.encode(["the", "zebra"]) == [4, UNK_INDEX]


def test_encode_decode_round_trip():
    vocab = Vocabulary.build(SENTENCES)
    for sentence in SENTENCES:
        encoded = vocab.encode(sentence, add_sos=True, add_eos=True)
        assert encoded[0] == SOS_INDEX and encoded[-1] == EOS_INDEX
        assert vocab.decode(encoded) == sentence
        assert vocab.decode(encoded + [PAD_INDEX, PAD_INDEX]) == sentence
    assert Vocabulary(vocab.to_list()) == vocab
    assert vocab.decode([4, EOS_INDEX, 5]) == ["the"]  # stops at <eos>


def test_bad_vocabularies_are_refused():
    with pytest.raises(ValueError, match="special tokens"):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError, match="twice"):
        Vocabulary(["<pad>", "<sos>", "<eos>", "<unk>", "a", "a"])
    with pytest.raises(ValueError, match="min_freq"):
        Vocabulary.build(SENTENCES, min_freq=0)


def test_collate_pads_and_returns_lengths_and_a_mask():
    vocab = Vocabulary.build(SENTENCES)
    dataset = TranslationDataset(SENTENCES, SENTENCES, vocab, vocab)
    batch = collate_batch([dataset[0], dataset[3], dataset[2]])
    assert batch.source.shape == (3, 4)
    assert batch.source_lengths.tolist() == [3, 1, 4]
    assert batch.source_mask.tolist() == [
        [True, True, True, False],
        [True, False, False, False],
        [True] * 4,
    ]
    assert bool((batch.source[~batch.source_mask] == PAD_INDEX).all())
    assert batch.target.shape == (3, 6)  # <sos> + 4 tokens + <eos>
    assert batch.decoder_input[:, 0].tolist() == [SOS_INDEX] * 3
    assert batch.decoder_target[1].tolist() == [
        vocab.stoi["the"],
        EOS_INDEX,
        PAD_INDEX,
        PAD_INDEX,
        PAD_INDEX,
    ]
    assert batch.target_token_count == 4 + 2 + 5


def test_empty_sentences_are_refused():
    vocab = Vocabulary.build(SENTENCES)
    with pytest.raises(ValueError, match="pair 1 has an empty sentence"):
        TranslationDataset([["a"], []], [["b"], ["c"]], vocab, vocab)
    with pytest.raises(ValueError, match="empty list"):
        collate_batch([])


def random_corpus(size=2000, seed=0):
    generator = random.Random(seed)
    sentences = [
        [f"w{generator.randrange(50)}" for _ in range(generator.randint(1, 20))]
        for _ in range(size)
    ]
    return sentences


def test_bucketing_covers_every_example_once_and_repeats_from_the_seed():
    lengths = [len(sentence) for sentence in random_corpus()]
    sampler = BucketBatchSampler(lengths, batch_size=32, seed=3)
    first_epoch = list(sampler)
    assert sorted(index for batch in first_epoch for index in batch) == list(range(len(lengths)))
    again = BucketBatchSampler(lengths, batch_size=32, seed=3)
    assert list(again) == first_epoch
    assert list(sampler) != first_epoch  # the next epoch is reshuffled


def test_bucketing_keeps_padding_small():
    sentences = random_corpus()
    vocab = Vocabulary.build(sentences)
    dataset = TranslationDataset(sentences, sentences, vocab, vocab)
    bucketed = padding_fraction(make_loader(dataset, batch_size=32, seed=0))
    shuffled = padding_fraction(
        torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, collate_fn=collate_batch)
    )
    print(f"padding: bucketed {bucketed:.1%}, random batches {shuffled:.1%}")
    assert bucketed < 0.05 < 0.3 < shuffled
