"""Which manifest files changed since the last look, at the cost of one ``stat`` per file.

A gateway of 1,000 credentials is watching 1,000 files. Reading and hashing them all four times a
second costs more than the reload it guards; a file's ``stat`` (inode, size, modification and
change times) tells almost always whether it changed. Almost: a file rewritten in place, to the
same size, within the file system's timestamp granularity of the look before, keeps its
``stat``. So a file whose modification time is too close to the last look to rule that out
("racy", as git calls the same case) is read and compared by content until it is not.

    files = ManifestFiles([folder])
    files.changed()          # True the first time, then only when a file changed, came or went
    files.texts()            # [(path, text)]: reads only the files whose stat changed

On Linux the folders are also watched with inotify (one instance, whatever the number of files):
:meth:`ManifestFiles.wait` returns as soon as one of them reports a change, so a rotated Secret
is picked up without waiting for the next poll, and an idle gateway does not stat its 1,000
files four times a second. Without inotify (another system, or no instance left: Linux allows
128 per user), waiting is polling, as before.

Errors (a path that vanished, a file that cannot be read) are :class:`UsageError` from
:meth:`texts`, as :func:`kimpki.localgw.manifests.load_manifests` raises them; :meth:`changed`
reports them as a change (their message is part of the state it compares).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import select
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from kimpki import safe_yaml
from kimpki.errors import UsageError
from kimpki.localgw.manifests import manifest_files

# Timestamps come from the kernel's coarse clock (a tick, 1-10 ms); a margin far above it.
RACY_SECONDS = 1.0

# inotify(7): what a change of a manifest looks like in its folder (a write ends with a close; an
# atomic replace is a move into it), and what ends a watch (the folder itself went away).
IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x4, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED = 0x100, 0x200, 0x400, 0x800, 0x8000
WATCHED = (IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF)
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


@dataclass(frozen=True)
class _Stat:
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> "_Stat | None":
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class _Seen:
    stat: _Stat | None
    looked_ns: int  # wall clock when that stat was taken
    digest: bytes | None = None  # content hash, taken only while the file is racy
    text: str | None = None  # the text last read (by texts())


class ManifestFiles:
    """The manifest files under ``paths`` (as :func:`manifest_files` finds them) and their state."""

    def __init__(self, paths: Iterable[str | os.PathLike]):
        self.paths = [Path(p) for p in paths]
        self._seen: dict[str, _Seen] = {}
        self._listing: tuple[str, ...] | None = None  # None: never looked
        self._error: str | None = None
        self._inotify: int | None = None  # the inotify descriptor while the folders are watched

    @property
    def watching(self) -> bool:
        """Whether :meth:`wait` hears of changes (inotify), rather than only sleeping."""
        return self._inotify is not None

    def watch(self) -> bool:
        """Watch the folders (for files given one by one, their folders) with one inotify
        instance; False when that is not possible here (then :meth:`wait` only sleeps)."""
        self.close()
        libc = _libc()
        if libc is None:
            return False
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return False  # e.g. fs.inotify.max_user_instances reached: poll instead
        folders = {str(p) if p.is_dir() else str(p.parent) for p in self.paths}
        if not any([libc.inotify_add_watch(fd, os.fsencode(f), WATCHED) >= 0 for f in sorted(folders)]):
            os.close(fd)
            return False
        self._inotify = fd
        return True

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True as soon as a watched folder reports a change.
        (A watched folder that is removed or moved ends the watching: a later :meth:`watch`
        may start it again.)"""
        fd = self._inotify
        if fd is None:
            time.sleep(timeout)
            return False
        poller = select.poll()  # not select(): no limit on the descriptor's number
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            return False
        ended = False
        while True:  # drain: one wake-up for a burst of events
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                ended = True
                break
            offset = 0
            while offset + 16 <= len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                offset += 16 + length
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    ended = True
        if ended:
            self.close()
        return True

    def close(self) -> None:
        fd, self._inotify = self._inotify, None
        if fd is not None:
            os.close(fd)

    def changed(self) -> bool:
        """Whether any file changed, appeared or disappeared (or an error came or went) since the
        last call. The first call says True."""
        try:
            files = tuple(str(f) for f in manifest_files(self.paths))
            error = None
        except UsageError as e:
            files, error = (), str(e)
        changed = files != self._listing or error != self._error
        self._listing, self._error = files, error
        now = time.time_ns()
        seen = {}
        for f in files:
            old = self._seen.get(f)
            st = _Stat.of(Path(f))
            entry = _Seen(st, now)
            digest = None
            if old is None or st is None or old.stat != st:
                changed = True
            elif old.digest is not None:
                # Racy at the last look: a change since then may have kept the stat; compare content.
                digest = _digest(Path(f))
                if digest != old.digest:
                    changed = True
                else:
                    entry.text = old.text
            else:
                entry.text = old.text
            if st is not None and _racy(st, now):
                entry.digest = digest if digest is not None else _digest(Path(f))
            seen[f] = entry
        self._seen = seen
        return changed

    def texts(self) -> list[tuple[str, str]]:
        """``(path, text)`` of every file, read through :func:`kimpki.safe_yaml.read_text`; a file
        whose stat did not change since it was last read is not read again."""
        if self._listing is None:
            self.changed()
        if self._error is not None:
            raise UsageError(self._error)
        out = []
        for f in self._listing:
            entry = self._seen.get(f)
            if entry is None or entry.text is None:
                text = safe_yaml.read_text(f)
                if entry is not None:
                    entry.text = text
            else:
                text = entry.text
            out.append((f, text))
        return out


def _racy(st: _Stat, looked_ns: int) -> bool:
    """A change after ``looked_ns`` could have left this stat as it is."""
    return max(st.mtime_ns, st.ctime_ns) >= looked_ns - int(RACY_SECONDS * 1e9)


def _digest(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018 - present on Linux only
    except (OSError, AttributeError):
        return None
    return libc
