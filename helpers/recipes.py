"""Recipes: the model sizes and training settings the series uses, and the training
cache behind them.

* :func:`dates_recipe`, :func:`tatoeba_recipe` — the settings notebooks 02–07 and the
  command line share, so that every place trains the same model;
* :func:`train_model` — seed, build and train a model on a task;
* :func:`train_or_load` — the same, cached: a model is trained once and saved under a
  key made of *every* setting that shapes it (model config, training settings, data
  fingerprint, code version), so a rerun with the same settings reloads it and a
  changed setting retrains; with ``snapshot_epochs`` it also keeps the weights after
  chosen epochs (:func:`load_epoch_snapshot`), to study a run's early epochs without
  training them again; with ``same_run`` it serves a run that another notebook keeps
  under another name.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoints import CheckpointMismatchError, load_checkpoint, save_checkpoint
from .keys import fingerprint
from .models import ModelConfig, Seq2Seq
from .tasks import TranslationTask
from .training import (
    EpochRecord,
    TrainingHistory,
    TrainSettings,
    select_device,
    set_seed,
    train,
)

# Bump when a change to the model or training code would make old checkpoints stale.
CACHE_VERSION = 2


def cache_key(config: ModelConfig, settings: TrainSettings, task: TranslationTask) -> str:
    """A hash of everything that shapes a trained model, and of the code version."""
    return fingerprint(CACHE_VERSION, config.key_dict(), settings.key_dict(), task.fingerprint)


def train_model(
    task: TranslationTask,
    config: ModelConfig,
    settings: TrainSettings,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    description: str = "train",
    on_epoch_end: Callable[[Seq2Seq, EpochRecord], None] | None = None,
) -> tuple[Seq2Seq, TrainingHistory]:
    """Seed, build, train; the model comes back with its vocabularies attached.

    ``on_epoch_end(model, record)`` is called after each epoch's validation, with the
    model as trained so far (notebook 05 measures its attention there). Whatever it does
    must leave the model's weights and the random state alone, or training changes.
    """
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
        on_epoch_end=None if on_epoch_end is None else lambda record: on_epoch_end(model, record),
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
    snapshot_epochs: Sequence[int] = (),
    same_run: str | os.PathLike | None = None,
) -> tuple[Seq2Seq, TrainingHistory, bool]:
    """Load the checkpoint at ``path`` if it was trained with exactly these settings,
    else train and save it there. Returns ``(model, history, loaded_from_cache)``.

    The checkpoint stores the cache key; a checkpoint with another key (another config,
    training setting or data) is never served — it is retrained and overwritten. A file
    at ``path`` that is not a run saved here (a ``python -m helpers.train`` checkpoint,
    say, or anything else, or a run of a format this version cannot read) is never
    overwritten: it is renamed to ``<name>.kept`` (``.kept2``, … if taken), with a
    warning that says why and where it went. The same holds for the epoch snapshots
    below, which have names of their own.

    ``snapshot_epochs``: when it trains, also save the weights after each of these
    epochs beside ``path`` (:func:`epoch_snapshot_path`), for
    :func:`load_epoch_snapshot`. Saving reads the weights only, so the run, and the
    model it returns, are the same with or without snapshots.

    ``same_run``: the path where another notebook keeps this very run (the same config,
    settings and data: notebook 05 reads 02's dates model so). Where the checkpoint there
    carries this run's key, it is served, and saved at ``path``, instead of training; else
    this run trains as usual.
    """
    device = torch.device(device) if device is not None else select_device()
    key = cache_key(config, settings, task)
    path = Path(path)
    for epoch in snapshot_epochs:
        if (
            not isinstance(epoch, int)
            or isinstance(epoch, bool)
            or not 1 <= epoch <= settings.epochs
        ):
            raise ValueError(
                f"snapshot_epochs must be epochs of this run (1 to {settings.epochs}), got {epoch!r}"
            )
    # This run where it lives, else where another notebook keeps it (then saved here too).
    for source in [path] if same_run is None else [path, Path(same_run)]:
        read = _read_run(task, config, key, source, device)
        if read is not None and "history" in read[1]:
            model, extra = read
            if source != path:
                _move_aside_unless_a_cached_run(path)
                save_checkpoint(model, path, extra=extra)
            return model, TrainingHistory.from_dict(extra["history"]), True
    # Before training, so that a crash then loses nothing.
    for kept_path in [path, *(epoch_snapshot_path(path, epoch) for epoch in snapshot_epochs)]:
        _move_aside_unless_a_cached_run(kept_path)

    records_so_far: list[EpochRecord] = []

    def save_snapshot(model: Seq2Seq, record: EpochRecord) -> None:
        records_so_far.append(record)
        if record.epoch in snapshot_epochs:
            save_checkpoint(
                model,
                epoch_snapshot_path(path, record.epoch),
                extra={
                    "cache_key": key,
                    "epoch": record.epoch,
                    "valid_loss": record.valid_loss,
                    "history": TrainingHistory(list(records_so_far)).to_dict(),
                },
            )

    model, history = train_model(
        task,
        config,
        settings,
        device,
        progress,
        description,
        on_epoch_end=save_snapshot if snapshot_epochs else None,
    )
    save_checkpoint(
        model,
        path,
        extra={"cache_key": key, "history": history.to_dict(), "settings": settings.to_dict()},
    )
    return model, history, False


def _move_aside_unless_a_cached_run(path: Path) -> None:
    """Rename the file at ``path`` unless it is a run :func:`train_or_load` saved (one
    with a cache key: retraining replaces those, as documented)."""
    if not path.is_file():
        return  # nothing there (a directory is refused by save_checkpoint, with its name)
    try:
        if "cache_key" in load_checkpoint(path)[1]:
            return
        reason = "it has no cache key (a python -m helpers.train checkpoint?)"
    except CheckpointMismatchError as error:  # not a checkpoint of this series, or unreadable
        reason = str(error).removeprefix(f"{path} ").removeprefix(f"{path}: ")
    kept = next(
        candidate
        for number in itertools.count(1)
        if not (
            candidate := path.with_name(f"{path.name}.kept{number if number > 1 else ''}")
        ).exists()
    )
    os.replace(path, kept)
    warnings.warn(
        f"{path} could not be read as a run saved by train_or_load ({reason}), so it was "
        f"moved to {kept} instead of being overwritten",
        stacklevel=3,
    )


def epoch_snapshot_path(path: str | os.PathLike, epoch: int) -> Path:
    """Where :func:`train_or_load` keeps the weights after ``epoch`` of the run it saves
    at ``path``: ``04_luong.pt`` → ``04_luong.epoch2.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.epoch{epoch}{path.suffix}")


def load_epoch_snapshot(
    task: TranslationTask,
    config: ModelConfig,
    settings: TrainSettings,
    path: str | os.PathLike,
    epoch: int,
    device: torch.device | str | None = None,
) -> tuple[Seq2Seq, float] | None:
    """The model after ``epoch`` of the run ``train_or_load(task, config, settings, path,
    snapshot_epochs=...)`` trained, and that epoch's validation loss; ``None`` when
    there is no such snapshot, or it belongs to another run (another config, setting
    or data), so that the caller trains instead.

    Returns ``(model in eval mode, valid loss after that epoch)``.
    """
    read = _read_snapshot(task, config, settings, path, epoch, device)
    if read is None:
        return None
    model, extra = read
    return model, extra["valid_loss"]


def _read_run(
    task: TranslationTask,
    config: ModelConfig,
    key: str,
    path: str | os.PathLike,
    device: torch.device | str | None,
) -> tuple[Seq2Seq, dict[str, Any]] | None:
    """The model saved at ``path`` (in eval mode, as ``load_checkpoint`` gives it) and
    what was saved with it; ``None`` when there is none, or it belongs to another run
    (another key or config)."""
    if not Path(path).is_file():
        return None
    device = torch.device(device) if device is not None else select_device()
    try:
        model, extra = load_checkpoint(path, device, config, task.source_vocab, task.target_vocab)
    except CheckpointMismatchError:
        return None
    return (model, extra) if extra.get("cache_key") == key else None


def _read_snapshot(
    task: TranslationTask,
    config: ModelConfig,
    settings: TrainSettings,
    path: str | os.PathLike,
    epoch: int,
    device: torch.device | str | None,
) -> tuple[Seq2Seq, dict[str, Any]] | None:
    """The snapshot of :func:`load_epoch_snapshot` (the model in eval mode) and what was
    saved with it; ``None`` when absent or from another run."""
    snapshot = epoch_snapshot_path(path, epoch)
    read = _read_run(task, config, cache_key(config, settings, task), snapshot, device)
    if read is None or read[1].get("epoch") != epoch:
        return None
    return read


def dates_recipe(
    decoder: str = "bahdanau", attention: str | None = None, **model_overrides: Any
) -> tuple[dict[str, Any], TrainSettings]:
    """The small model and settings the series uses on the dates task (seconds on a CPU).

    Returns ``(model settings for TranslationTask.model_config, TrainSettings)``;
    ``attention`` defaults to the decoder's own score (additive for Bahdanau, general
    for Luong, scaled dot-product for the Transformer) and ``model_overrides`` change any
    model setting (e.g. ``local_window``).
    """
    model = dict(
        embedding_size=32,
        hidden_size=64,
        dropout=0.0,
        max_target_length=12,
        decoder=decoder,
        attention=attention
        or {"bahdanau": "additive", "transformer": "scaled_dot"}.get(decoder, "general"),
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

    On a CPU the model is small and trains for a fixed number of epochs, two to six
    minutes per model on two cores (Bahdanau's 3 epochs took 1.9 minutes and Luong's 10
    took 4.9, validation included, on the 2-core AMD EPYC of notebook 04's committed
    run; 5.2 to 5.4 in other runs there). The same epochs on a slower machine give the
    same model, only later. With a GPU the recipe trains a bigger model for longer.

    * **Luong** (and the plain decoder): 10 epochs of Adam at 5e-3, the rate multiplied by
      0.7 after each. Chosen for the best translator in about five minutes of two CPU
      cores: against 3e-3 decaying by 0.8 for 7 epochs (the recipe before), it lowers the
      validation loss from 1.441 to 1.308, validation BLEU (beam 5, seed 0) from 39.4 to
      42.0 and test BLEU from 42.1 to 45.3 (``docs/performance.md`` has the trials).
    * **Bahdanau**: 3 epochs at 3e-3 decaying by 0.8 (its step-by-step decoder costs more
      per epoch). These are the first epochs of the full-budget runs
      (``python -m helpers.experiments``, the committed ``results/``), which train every
      variant with this schedule until the validation loss levels off.
    """
    attentions = {"bahdanau": "additive", "luong": "general", "plain": "general"}
    if decoder not in attentions:
        raise ValueError(f"decoder must be one of {sorted(attentions)}, got {decoder!r}")
    device = torch.device(device) if device is not None else select_device()
    attention = attentions[decoder]
    model = dict(
        embedding_size=128,
        hidden_size=256,
        dropout=0.2,
        tie_embeddings=True,
        decoder=decoder,
        attention=attention,
    )
    # (epochs, learning rate, decay per epoch): Bahdanau's is the full budget's schedule.
    epochs, learning_rate, lr_decay = (3, 3e-3, 0.8) if decoder == "bahdanau" else (10, 5e-3, 0.7)
    settings = TrainSettings(
        epochs=epochs, batch_size=128, learning_rate=learning_rate, lr_decay=lr_decay, seed=0
    )
    if device.type == "cuda":
        model.update(embedding_size=256, hidden_size=512)
        settings = TrainSettings(
            epochs=15, batch_size=256, learning_rate=2e-3, lr_decay=0.85, seed=0
        )
    return model, settings
