"""The user's input files (certificates, CSRs, CRLs, keys, passphrase files; YAML through
:mod:`kimpki.safe_yaml`), read with a bound: /dev/zero or a huge file is refused at
:data:`MAX_FILE_BYTES` instead of being read until memory runs out, and a FIFO nobody writes to
reads as empty instead of hanging. Errors are one line (exit 2)."""

from __future__ import annotations

import os
from pathlib import Path

from kimpki.errors import UsageError

MAX_FILE_BYTES = 32 * 1024 * 1024  # 1,000 credential Secrets take ~5 MB

_MIB = 1024 * 1024


def read_at_most(path: str | Path, shown: str, limit: int) -> bytes:
    """At most ``limit`` + 1 bytes of ``path`` (one more tells the caller it is too large).
    Opened without waiting for a writer, then read blocking: a FIFO with a writer is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise UsageError(f"cannot read {shown}: {e.strerror or e}") from None
    try:
        with open(fd, "rb") as f:
            os.set_blocking(fd, True)
            return f.read(limit + 1)
    except OSError as e:  # a folder, an I/O error
        raise UsageError(f"cannot read {shown}: {e.strerror or e}") from None


def too_large(shown: str, limit: int) -> UsageError:
    return UsageError(f"{shown}: larger than {limit // _MIB} MiB; refused")


def read_bytes(path: str | Path, shown: str | None = None, limit: int = MAX_FILE_BYTES) -> bytes:
    """A whole input file of at most ``limit`` bytes."""
    shown = str(path) if shown is None else shown
    data = read_at_most(path, shown, limit)
    if len(data) > limit:
        raise too_large(shown, limit)
    return data
