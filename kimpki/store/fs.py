"""Safe file writes: private directories, atomic replace, and never-clobber for keys."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kimpki.errors import OperationError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PUBLIC_FILE = 0o644


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700 directories; tighten an existing one we own."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # created concurrently by another kimpki process
            pass
        os.chmod(d, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    if path.stat().st_mode & 0o077:
        os.chmod(path, PRIVATE_DIR)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, data: bytes, mode: int) -> Path:
    # mkstemp creates the file 0600 before any byte is written: a key is never briefly world-readable.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_atomic(path: Path, data: bytes, mode: int = PUBLIC_FILE) -> None:
    """Write ``data`` to ``path`` via temp file, fsync and rename: readers see old or new, never half."""
    tmp = _write_temp(path.parent, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_new(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Like write_atomic, but refuse to replace an existing file (keys are never overwritten)."""
    tmp = _write_temp(path.parent, data, mode)
    try:
        os.link(tmp, path)  # link() fails if ``path`` exists: an atomic no-clobber create
    except FileExistsError:
        raise OperationError(f"refusing to overwrite {path}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def point_symlink(link: Path, target: str) -> None:
    """Atomically make ``link`` point at ``target`` (a relative path), replacing any old link."""
    tmp = link.parent / f".tmp-link-{os.getpid()}-{link.name}"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)
