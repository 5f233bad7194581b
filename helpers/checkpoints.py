"""Saving and loading trained models safely.

A checkpoint is a plain dictionary of tensors, strings, numbers and lists — the model
weights, its :class:`~helpers.models.ModelConfig` and both vocabularies — so it loads
with ``torch.load(..., weights_only=True)``, which refuses to run code hidden in a file.
It is written to a temporary file and renamed into place, so an interrupted save never
leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .files import atomic_destination
from .models import ModelConfig, Seq2Seq
from .vocab import Vocabulary

CHECKPOINT_FORMAT = 1
_REQUIRED_KEYS = ("config", "source_vocab", "target_vocab", "state_dict")


class CheckpointMismatchError(ValueError):
    """The checkpoint was trained with another config or vocabulary."""


def save_checkpoint(
    model: Seq2Seq, path: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (weights, config, vocabularies) and ``extra`` to ``path`` atomically.

    ``extra`` is a dict of plain data (``None``, bools, ints, floats, strings, tensors,
    and lists, tuples, dicts and ``OrderedDict`` objects of them, an optimizer's or a model's
    ``state_dict()`` included), e.g. the training history: exactly what
    ``torch.load(..., weights_only=True)`` reads back. Anything else (a NumPy number, say)
    is refused *before* writing, so a good checkpoint at ``path`` is never replaced by one
    that cannot be loaded; so are weights that hold NaN or infinite values. The file is
    flushed to disk (``fsync``) before the rename.
    """
    if model.source_vocab is None or model.target_vocab is None:
        raise ValueError("attach the vocabularies (model.attach_vocabularies) before saving")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict of plain data, got a {type(extra).__name__}")
    _check_plain(extra or {}, "extra")
    _check_plain(model.config.to_dict(), "model.config")  # ModelConfig converts; a guard
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter).all()):  # never replace a good file with these
            raise ValueError(
                f"model parameter {name} holds NaN or infinite values (did training "
                f"diverge?): not saved, so {path} keeps what it held"
            )
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "source_vocab": model.source_vocab.to_list(),
        "target_vocab": model.target_vocab.to_list(),
        "state_dict": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        "extra": extra or {},
    }
    with atomic_destination(path) as temporary, open(temporary, "wb") as stream:
        torch.save(payload, stream)
        stream.flush()
        os.fsync(stream.fileno())  # on disk before the rename makes it the checkpoint
    return path


# Exact types: a subclass (np.float64 is a float) pickles as its own class, which a
# weights_only load refuses.
_PLAIN_SCALARS = (type(None), bool, int, float, str)


def _check_plain(value: Any, where: str) -> None:
    """Refuse what a ``weights_only`` load would refuse, naming where it sits."""
    if type(value) in _PLAIN_SCALARS or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    if type(value) in (dict, OrderedDict):  # a state_dict() is an OrderedDict
        for key, item in value.items():
            _check_plain(key, f"{where} key {key!r}")  # (an optimizer's state has int keys)
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a safe "
        "(weights_only) load cannot read back: convert it to plain Python first "
        "(e.g. float(x) for a NumPy number, x.tolist() for an array)"
    )


def _differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    return [
        f"{key}: expected {expected.get(key)!r}, checkpoint has {found.get(key)!r}"
        for key in sorted(set(expected) | set(found))
        if expected.get(key) != found.get(key)
    ]


def load_checkpoint(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    expected_config: ModelConfig | None = None,
    source_vocab: Vocabulary | None = None,
    target_vocab: Vocabulary | None = None,
) -> tuple[Seq2Seq, dict[str, Any]]:
    """Load a checkpoint with ``weights_only=True`` and rebuild the model.

    Args:
        expected_config: if given, the checkpoint must have been trained with exactly
            this config; otherwise :class:`CheckpointMismatchError` lists the differences.
        source_vocab, target_vocab: if given, must equal the checkpoint's vocabularies
            (the same sizes but other tokens would silently scramble every word).

    Returns:
        the model (in eval mode, on ``device``, vocabularies attached) and ``extra``.
    """
    path = Path(path)
    for name, value, kind in (
        ("expected_config", expected_config, ModelConfig),
        ("source_vocab", source_vocab, Vocabulary),
        ("target_vocab", target_vocab, Vocabulary),
    ):
        if value is not None and not isinstance(value, kind):
            # A list of tokens, or a config's dict, led to a misleading "trained with
            # another vocabulary" or a bare AttributeError.
            raise TypeError(
                f"{name} must be a {kind.__name__} (or None), got {type(value).__name__}"
            )
    from .training import select_device  # (training imports much more than a load needs)

    # Before reading a file of hundreds of MB, not after: "gpu" is unknown, and "cuda"
    # without a GPU gave torch's bare AssertionError once the whole file was read.
    device = select_device(device)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message advises loading with weights_only=False, i.e. running whatever
        # code the file holds. Never pass that advice on: say what was found instead.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found is None:
            raise CheckpointMismatchError(
                f"{path} is not a readable checkpoint (truncated, or not a torch file)"
            ) from None
        raise CheckpointMismatchError(
            f"{path} holds {found.group(1)} (not a tensor or a plain value), which a safe "
            "(weights_only) load refuses: it was not written by save_checkpoint"
        ) from None
    except Exception as error:  # a truncated or foreign file: say which
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointMismatchError(
            f"{path} is not a readable checkpoint (truncated, or not a torch file): {reason}"
        ) from None
    stored_format = payload.get("format") if isinstance(payload, dict) else None
    if isinstance(stored_format, int) and stored_format > CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"{path} was written by a newer version of Paying Attention (checkpoint format "
            f"{stored_format}; this version reads format {CHECKPOINT_FORMAT}): update helpers/"
        )
    if stored_format != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"{path} is not a Paying Attention checkpoint (format {CHECKPOINT_FORMAT})"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointMismatchError(f"{path} is incomplete: it has no {', '.join(missing)}")
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointMismatchError(
            f"{path}: its config cannot be read by this version: {error}"
        ) from error
    if expected_config is not None and config != expected_config:
        differences = "; ".join(_differences(expected_config.to_dict(), config.to_dict()))
        raise CheckpointMismatchError(f"{path} was trained with another config — {differences}")
    try:
        stored_source, stored_target = (
            Vocabulary(payload["source_vocab"]),
            Vocabulary(payload["target_vocab"]),
        )
    except (TypeError, ValueError) as error:
        raise CheckpointMismatchError(f"{path}: its vocabularies cannot be read: {error}") from None
    for name, given, stored in (
        ("source", source_vocab, stored_source),
        ("target", target_vocab, stored_target),
    ):
        if given is not None and given != stored:
            raise CheckpointMismatchError(
                f"{path} was trained with another {name} vocabulary "
                f"({len(stored)} tokens in the checkpoint, {len(given)} given)"
            )
    model = Seq2Seq(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise CheckpointMismatchError(f"{path}: weights do not fit the config: {error}") from error
    extra = payload.get("extra", {})
    if not isinstance(extra, dict):
        raise CheckpointMismatchError(
            f"{path}: its extra data is a {type(extra).__name__}, not a dict"
        )
    try:
        model.attach_vocabularies(stored_source, stored_target)
    except ValueError as error:  # named no file, and --resume did not catch it
        raise CheckpointMismatchError(f"{path}: {error}") from None
    return model.to(device).eval(), extra
