"""Writing files so that an interruption never leaves half a file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_destination(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file lives in the same folder, so the final ``os.replace`` is atomic: a
    reader sees the old file or the complete new one, never a partial one. If the block
    raises, the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_destination("data/deu-eng.tsv") as temporary:
        ...     temporary.write_bytes(payload)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(temp_name)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file + rename), flushed to disk."""
    with atomic_destination(path) as temporary, open(temporary, "wb") as stream:
        stream.write(payload)
        stream.flush()
        os.fsync(stream.fileno())


def checkpoint_path(name: str) -> Path:
    """Where the series keeps a trained model: ``$PAYING_ATTENTION_CHECKPOINTS/name``, or
    ``checkpoints/name`` at the top of the repository (ignored by git).

    One place for every notebook, wherever the notebook itself was opened from (the
    browser test runs a temporary copy of ``notebooks/``), so 05 finds 04's models.
    """
    folder = os.environ.get("PAYING_ATTENTION_CHECKPOINTS")
    root = Path(folder) if folder else Path(__file__).resolve().parent.parent / "checkpoints"
    return root / name
