"""Cache keys: what makes two trained models the same model.

:func:`fingerprint` hashes everything that shapes a model (data, model config, training
settings, code version); :mod:`helpers.recipes` uses it to find a trained model in the
cache, and :mod:`helpers.experiments` to know which runs are already done.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from typing import Any


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts (data, settings, code version)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: Field metadata for settings added after results were committed: such a field enters
#: a cache key only when it differs from its default, so adding an option does not
#: invalidate every model and result trained before it existed.
KEY_ONLY_WHEN_SET = {"key_only_when_set": True}


def key_fields(settings: Any) -> dict[str, Any]:
    """A dataclass's fields for a cache key (see :data:`KEY_ONLY_WHEN_SET`)."""
    return {
        item.name: getattr(settings, item.name)
        for item in fields(settings)
        if not (
            item.metadata.get("key_only_when_set") and getattr(settings, item.name) == item.default
        )
    }
