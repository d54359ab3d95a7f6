"""Files that are complete or absent: atomic writes through a temporary sibling, and checksums."""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_path(final: Path) -> Path:
    """A temporary sibling of ``final`` (same filesystem, so ``os.replace`` is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the product gets the usual permissions
    return Path(tmp)


@contextmanager
def atomic_write(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` (:func:`atomic_path`) to write; when the block ends
    normally it replaces ``final`` atomically, when it raises it is removed: a file under the final
    name is never partial."""
    final = Path(final)
    tmp = atomic_path(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
