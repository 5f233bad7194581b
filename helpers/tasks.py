"""Ready-made tasks: data → tokens → vocabularies → datasets, in one call.

The notebooks build each step by hand once (04 walks through the whole pipeline), then
use these so that later notebooks, the tests and the command line see identical data.

* :func:`tatoeba_task` — English→German, split by English sentence;
* :func:`dates_task` — the synthetic dates task, with gold alignments;
* :func:`copy_task` — copy a digit string (notebook 01).

Each task carries a fingerprint of its data; :mod:`helpers.recipes` puts it into the
cache key of every model trained on it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DataLoader

from .batching import TranslationDataset, make_loader
from .data import DEFAULT_MAX_PAIRS, get_tokenizer, load_pairs, split_by_source
from .keys import fingerprint
from .models import ModelConfig
from .synthetic import DateExample, copy_sequences, dates_splits
from .vocab import Vocabulary


@dataclass
class TranslationTask:
    """Everything a model needs from the data side.

    Attributes:
        name: ``"tatoeba"``, ``"dates"`` or ``"copy"``.
        source_tokenizer, target_tokenizer: tokenizer names (``"en"``, ``"de"``, ``"chars"``).
        source_vocab, target_vocab: built on the training split only.
        train, valid: datasets of index tensors.
        test_sources: held-out source sentences (raw text).
        test_references: for each, every reference translation.
        test_gold_spans: dates and copy only — the gold alignment of each test target.
        test_examples: dates only — the test examples (:class:`~helpers.synthetic.DateExample`).
        fingerprint: a hash of the data and split settings (part of cache keys).
    """

    name: str
    source_tokenizer: str
    target_tokenizer: str
    source_vocab: Vocabulary
    target_vocab: Vocabulary
    train: TranslationDataset
    valid: TranslationDataset
    test_sources: list[str]
    test_references: list[list[str]]
    fingerprint: str
    test_gold_spans: list[tuple] | None = None
    test_examples: list[DateExample] = field(default_factory=list)

    def loaders(
        self, batch_size: int = 64, seed: int = 0, pin_memory: bool = False
    ) -> tuple[DataLoader, DataLoader]:
        """Bucketed training loader (reshuffled each epoch) and a fixed validation loader."""
        return (
            make_loader(self.train, batch_size, shuffle=True, seed=seed, pin_memory=pin_memory),
            make_loader(self.valid, 4 * batch_size, shuffle=False, pin_memory=pin_memory),
        )

    def model_config(self, **settings: Any) -> ModelConfig:
        """A :class:`ModelConfig` with this task's vocabulary sizes and tokenizers."""
        return ModelConfig(
            source_vocab_size=len(self.source_vocab),
            target_vocab_size=len(self.target_vocab),
            source_tokenizer=self.source_tokenizer,
            target_tokenizer=self.target_tokenizer,
            **settings,
        )

    def summary(self) -> dict[str, int]:
        return {
            "train pairs": len(self.train),
            "valid pairs": len(self.valid),
            "test sentences": len(self.test_sources),
            "source vocabulary": len(self.source_vocab),
            "target vocabulary": len(self.target_vocab),
        }


def tatoeba_task(
    path: str | os.PathLike | None = None,
    max_pairs: int | None = DEFAULT_MAX_PAIRS,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    min_freq: int = 2,
    seed: int = 0,
) -> TranslationTask:
    """English→German from Tatoeba: load, tokenise with spaCy, split by English sentence,
    build vocabularies on the training split (tokens seen < ``min_freq`` times → ``<unk>``)."""
    pairs = load_pairs(path, max_pairs=max_pairs)
    split = split_by_source(pairs, valid_fraction, test_fraction, seed)
    english, german = get_tokenizer("en"), get_tokenizer("de")
    train_source = english.tokenize_many(source for source, _ in split.train)
    train_target = german.tokenize_many(target for _, target in split.train)
    valid_source = english.tokenize_many(source for source, _ in split.valid)
    valid_target = german.tokenize_many(target for _, target in split.valid)
    source_vocab = Vocabulary.build(train_source, min_freq=min_freq)
    target_vocab = Vocabulary.build(train_target, min_freq=min_freq)
    content = hashlib.sha256("\n".join(f"{a}\t{b}" for a, b in pairs).encode()).hexdigest()
    return TranslationTask(
        name="tatoeba",
        source_tokenizer="en",
        target_tokenizer="de",
        source_vocab=source_vocab,
        target_vocab=target_vocab,
        train=TranslationDataset(train_source, train_target, source_vocab, target_vocab),
        valid=TranslationDataset(valid_source, valid_target, source_vocab, target_vocab),
        test_sources=[example.source for example in split.test],
        test_references=[list(example.references) for example in split.test],
        fingerprint=fingerprint("tatoeba", content, valid_fraction, test_fraction, min_freq, seed),
    )


def dates_task(
    train_size: int = 8000, valid_size: int = 500, test_size: int = 500, seed: int = 0
) -> TranslationTask:
    """The synthetic dates task, character level, with gold alignments for the test set."""
    train_examples, valid_examples, test_examples = dates_splits(
        train_size, valid_size, test_size, seed
    )
    characters = get_tokenizer("chars")
    train_source = [characters(example.source) for example in train_examples]
    train_target = [characters(example.target) for example in train_examples]
    source_vocab = Vocabulary.build(train_source)
    target_vocab = Vocabulary.build(train_target)
    return TranslationTask(
        name="dates",
        source_tokenizer="chars",
        target_tokenizer="chars",
        source_vocab=source_vocab,
        target_vocab=target_vocab,
        train=TranslationDataset(train_source, train_target, source_vocab, target_vocab),
        valid=TranslationDataset(
            [characters(example.source) for example in valid_examples],
            [characters(example.target) for example in valid_examples],
            source_vocab,
            target_vocab,
        ),
        test_sources=[example.source for example in test_examples],
        test_references=[[example.target] for example in test_examples],
        fingerprint=fingerprint("dates", train_size, valid_size, test_size, seed),
        test_gold_spans=[example.gold_spans for example in test_examples],
        test_examples=test_examples,
    )


def copy_task(
    train_size: int = 6000,
    test_size: int = 400,
    min_length: int = 3,
    max_length: int = 30,
    seed: int = 0,
) -> TranslationTask:
    """Copy a random digit string: the gold alignment of output ``i`` is input ``i``."""
    sequences = copy_sequences(train_size + 2 * test_size, min_length, max_length, seed)
    train_strings = sequences[:train_size]
    valid_strings = sequences[train_size : train_size + test_size]
    test_strings = sequences[train_size + test_size :]
    vocab = Vocabulary.build([list("0123456789")])

    def dataset(strings: list[str]) -> TranslationDataset:
        return TranslationDataset(
            [list(s) for s in strings], [list(s) for s in strings], vocab, vocab
        )

    return TranslationTask(
        name="copy",
        source_tokenizer="chars",
        target_tokenizer="chars",
        source_vocab=vocab,
        target_vocab=vocab,
        train=dataset(train_strings),
        valid=dataset(valid_strings),
        test_sources=test_strings,
        test_references=[[s] for s in test_strings],
        fingerprint=fingerprint("copy", train_size, test_size, min_length, max_length, seed),
        test_gold_spans=[tuple((i, i + 1) for i in range(len(s))) for s in test_strings],
    )
