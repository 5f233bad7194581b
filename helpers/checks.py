"""Argument checks shared by the modules: one wording for one kind of mistake."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def whole_number(name: str, value: object, least: int = 1, why: str = "") -> int:
    """``value`` as an ``int`` if it is a whole number ``>= least``, else a ``ValueError``
    naming ``name`` (and ``why``, when the bound needs a reason).

    NumPy integers count (a sweep over ``np.arange`` gives them); ``True`` does not, and
    neither do ``1.5`` or ``"8"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name} must be a whole number >= {least}{reason}, got {value!r}")
    return int(value)


def whole_number_or_none(name: str, value: object, least: int = 1) -> int | None:
    """:func:`whole_number`, with ``None`` (the caller's default) let through.

    Sizes whose default is written ``size or other_size`` need it most: a 0 would
    otherwise quietly become the default."""
    return None if value is None else whole_number(name, value, least)


def is_finite_number(value: object) -> bool:
    """Whether ``value`` is a finite real number: an ``int``, a ``float`` or a NumPy number
    (``np.float32`` included, which is no ``float``), but not a bool, NaN or ±inf."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def numpy_scalars_to_python(settings: object) -> None:
    """Replace every NumPy scalar attribute of ``settings`` (a dataclass) by its plain
    Python value: a sweep over ``np.logspace`` or a pandas row hands in NumPy numbers,
    which checkpoints store and a safe (``weights_only``) load cannot read back, and an
    ``np.str_`` passes every name check."""
    for name, value in vars(settings).items():
        if isinstance(value, np.generic):
            setattr(settings, name, value.item())


def require_tensor(name: str, value: object) -> None:
    """``TypeError`` unless ``value`` is a tensor: a list or a NumPy array met a bare
    "'list' object has no attribute 'dim'" deep inside the model or a search."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got a {type(value).__name__} "
            "(torch.tensor(...) or torch.from_numpy(...) makes one)"
        )


def whole_number_lengths(source_lengths: torch.Tensor) -> None:
    """``ValueError`` unless the ``(B,)`` lengths hold whole numbers (not floats or bools)."""
    if source_lengths.is_floating_point() or source_lengths.dtype == torch.bool:
        raise ValueError(f"source_lengths must hold whole numbers, got {source_lengths.dtype}")
