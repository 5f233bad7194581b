"""Writing files so that an interruption never leaves half a file behind."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_destination(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file lives in the same folder, so the final ``os.replace`` is atomic: a
    reader sees the old file or the complete new one, never a partial one. If the block
    raises, the temporary file is removed and ``path`` is left as it was. The new file gets
    the permissions of any new file (``0o666`` less the umask, usually ``0o644``), not the
    private ``0o600`` of a temporary file. Temporary files of an earlier save to the same
    path that a hard kill left behind (untouched for :data:`STALE_SECONDS`) are removed.

    Example:
        >>> with atomic_destination("data/deu-eng.tsv") as temporary:
        ...     temporary.write_bytes(payload)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(temp_name)
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


#: A temporary file of ours untouched for this long belongs to a save that was killed
#: (a live save keeps writing to it); the next save to the same path removes it.
STALE_SECONDS = 600.0


def _remove_stale_temporaries(path: Path) -> None:
    cutoff = time.time() - STALE_SECONDS
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:  # gone already, or not ours to remove: leave it
            pass


def _umask() -> int:
    """The process's umask. Linux reports it in /proc; elsewhere it can only be read by
    setting it, briefly, which another thread creating a file at that moment would see."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file + rename), flushed to disk."""
    with atomic_destination(path) as temporary, open(temporary, "wb") as stream:
        stream.write(payload)
        stream.flush()
        os.fsync(stream.fileno())


def unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written, or ``None``: checked before hours of training."""
    if path.is_dir():
        return "is a directory; give a file name"
    folder = path.parent
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, so no folder can be made under it"
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass  # created and removed: the folder takes new files
    except OSError as error:
        return f"cannot write in {folder} ({error.strerror or error})"
    if path.exists() and not os.access(path, os.W_OK):
        return "exists and is read-only"
    return None


def checkpoint_path(name: str) -> Path:
    """Where the series keeps a trained model: ``$PAYING_ATTENTION_CHECKPOINTS/name``, or
    ``checkpoints/name`` at the top of the repository (ignored by git).

    One place for every notebook, wherever the notebook itself was opened from (the
    browser test runs a temporary copy of ``notebooks/``), so 05 finds 04's models.
    """
    folder = os.environ.get("PAYING_ATTENTION_CHECKPOINTS")
    root = Path(folder) if folder else Path(__file__).resolve().parent.parent / "checkpoints"
    return root / name
