"""Ready-made tasks: data → tokens → vocabularies → datasets, in one call.

The notebooks build each step by hand once (04 walks through the whole pipeline), then
use these so that later notebooks, the tests and the command line see identical data.

* :func:`tatoeba_task` — English→German, split by English sentence;
* :func:`dates_task` — the synthetic dates task, with gold alignments.

:func:`train_or_load` trains a model once and caches it under a key made of *every*
setting that shapes it (model config, training settings, data fingerprint), so a
rerun with the same settings reloads it and a changed setting retrains.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .batching import TranslationDataset, make_loader
from .checkpoints import CheckpointMismatchError, load_checkpoint, save_checkpoint
from .data import DEFAULT_MAX_PAIRS, get_tokenizer, load_pairs, split_by_source
from .models import ModelConfig, Seq2Seq
from .synthetic import DateExample, copy_sequences, dates_splits
from .training import TrainingHistory, select_device, set_seed, train
from .vocab import Vocabulary


@dataclass
class TranslationTask:
    """Everything a model needs from the data side.

    Attributes:
        name: ``"tatoeba"`` or ``"dates"``.
        source_tokenizer, target_tokenizer: tokenizer names (``"en"``, ``"de"``, ``"chars"``).
        source_vocab, target_vocab: built on the training split only.
        train, valid: datasets of index tensors.
        test_sources: held-out source sentences (raw text).
        test_references: for each, every reference translation.
        test_gold_spans: dates only — the gold alignment of each test target.
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


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        fingerprint=_fingerprint("tatoeba", content, valid_fraction, test_fraction, min_freq, seed),
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
        fingerprint=_fingerprint("dates", train_size, valid_size, test_size, seed),
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
        fingerprint=_fingerprint("copy", train_size, test_size, min_length, max_length, seed),
        test_gold_spans=[tuple((i, i + 1) for i in range(len(s))) for s in test_strings],
    )


@dataclass
class TrainSettings:
    """The training settings that, with the model config and data, determine a model.

    Training length is ``epochs`` (optionally cut short by early stopping on the
    validation loss), never wall-clock time. ``time_budget`` exists only for the
    command line's explicit ``--time-budget``; no notebook or recipe sets it.
    """

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    clip: float = 1.0
    teacher_forcing_ratio: float = 1.0
    time_budget: float | None = None
    seed: int = 0
    label_smoothing: float = 0.0
    lr_decay: float | None = None
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def loop_arguments(self) -> dict[str, Any]:
        """The keyword arguments of :func:`helpers.training.train` these settings fix
        (batch size and seed shape the data loader instead)."""
        return {
            key: value for key, value in self.to_dict().items() if key not in ("batch_size", "seed")
        }


# Bump when a change to the model or training code would make old checkpoints stale.
CACHE_VERSION = 2


def cache_key(config: ModelConfig, settings: TrainSettings, task: TranslationTask) -> str:
    """A hash of everything that shapes a trained model, and of the code version."""
    return _fingerprint(CACHE_VERSION, config.to_dict(), settings.to_dict(), task.fingerprint)


def train_model(
    task: TranslationTask,
    config: ModelConfig,
    settings: TrainSettings,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    description: str = "train",
) -> tuple[Seq2Seq, TrainingHistory]:
    """Seed, build, train; the model comes back with its vocabularies attached."""
    device = torch.device(device) if device is not None else select_device()
    set_seed(settings.seed)
    model = Seq2Seq(config).attach_vocabularies(task.source_vocab, task.target_vocab)
    train_loader, valid_loader = task.loaders(
        settings.batch_size, settings.seed, pin_memory=device.type == "cuda"
    )
    history = train(
        model,
        train_loader,
        valid_loader,
        **settings.loop_arguments(),
        device=device,
        progress=progress,
        description=description,
    )
    return model.eval(), history


def train_or_load(
    task: TranslationTask,
    config: ModelConfig,
    settings: TrainSettings,
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    description: str = "train",
) -> tuple[Seq2Seq, TrainingHistory, bool]:
    """Load the checkpoint at ``path`` if it was trained with exactly these settings,
    else train and save it there. Returns ``(model, history, loaded_from_cache)``.

    The checkpoint stores the cache key; a checkpoint with another key (another config,
    training setting or data) is never served — it is retrained and overwritten.
    """
    device = torch.device(device) if device is not None else select_device()
    key = cache_key(config, settings, task)
    path = Path(path)
    if path.is_file():
        try:
            model, extra = load_checkpoint(
                path, device, config, task.source_vocab, task.target_vocab
            )
            if extra.get("cache_key") == key:
                return model, TrainingHistory.from_dict(extra["history"]), True
        except CheckpointMismatchError:
            pass
    model, history = train_model(task, config, settings, device, progress, description)
    save_checkpoint(
        model,
        path,
        extra={"cache_key": key, "history": history.to_dict(), "settings": settings.to_dict()},
    )
    return model, history, False


def dates_recipe(
    decoder: str = "bahdanau", attention: str | None = None, **model_overrides: Any
) -> tuple[dict[str, Any], TrainSettings]:
    """The small model and settings the series uses on the dates task (seconds on a CPU).

    Returns ``(model settings for TranslationTask.model_config, TrainSettings)``;
    ``attention`` defaults to the decoder's own score (additive for Bahdanau, general
    for Luong) and ``model_overrides`` change any model setting (e.g. ``local_window``).
    """
    model = dict(
        embedding_size=32,
        hidden_size=64,
        dropout=0.0,
        max_target_length=12,
        decoder=decoder,
        attention=attention or ("additive" if decoder == "bahdanau" else "general"),
    )
    model.update(model_overrides)
    return model, TrainSettings(epochs=5, batch_size=64, learning_rate=3e-3, seed=0)


def tatoeba_recipe(
    decoder: str, device: torch.device | str | None = None
) -> tuple[dict[str, Any], TrainSettings]:
    """The series' default English→German model and training settings.

    Returns ``(model settings for TranslationTask.model_config, TrainSettings)``.
    Notebooks 04 and 05 (and ``python -m helpers.train``) use the same recipe, so 05
    finds 04's checkpoints in the cache.

    On a CPU the model is small and trains for a fixed number of epochs, three to six
    minutes per model on two cores: Luong 7 epochs, Bahdanau 3 (its step-by-step decoder
    costs more per epoch). The same epochs on a slower machine give the same model, only
    later. ``python -m helpers.experiments`` trains both to convergence (the committed
    ``results/``). With a GPU the recipe trains a bigger model for longer.
    """
    device = torch.device(device) if device is not None else select_device()
    attention = {"bahdanau": "additive", "luong": "general", "plain": "general"}[decoder]
    model = dict(
        embedding_size=128,
        hidden_size=256,
        dropout=0.2,
        tie_embeddings=True,
        decoder=decoder,
        attention=attention,
    )
    epochs = {"bahdanau": 3, "luong": 7, "plain": 7}[decoder]
    settings = TrainSettings(
        epochs=epochs, batch_size=128, learning_rate=3e-3, lr_decay=0.8, seed=0
    )
    if device.type == "cuda":
        model.update(embedding_size=256, hidden_size=512)
        settings = TrainSettings(
            epochs=15, batch_size=256, learning_rate=2e-3, lr_decay=0.85, seed=0
        )
    return model, settings
