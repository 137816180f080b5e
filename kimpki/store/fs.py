"""Safe file writes: private directories, atomic replace, never-clobber for keys, and the
ownership checks (as ssh's StrictModes) that keep another user's links and folders out of the store.

Every write is durable when it returns (file and directory fsynced), unless ``sync=False``: the
caller then makes a whole batch durable at once with :func:`sync_filesystem` before it records
the files anywhere (the store does so before its commit: one sync for many files instead of two
fsyncs each).

Two writes skip the temporary file, for a folder that nothing records yet (a store batch's new
version folder, named by no inventory row before the commit): :func:`write_in_new_folder`
creates the file in place (``O_EXCL``: never over an existing file, never through a link), and
:func:`make_new_symlink` creates a link that did not exist. A kill mid-write leaves a partial
file only in a folder no row names, which the next run removes; no reader looks there before."""

from __future__ import annotations

import fnmatch
import ctypes
import errno
import os
import signal
import stat
import sys
import tempfile
from pathlib import Path

from kimpki.errors import OperationError, UsageError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PUBLIC_FILE = 0o644

# Test hook (see kill_point): the step at which a process kills itself, which match of it, and the
# file it names it in.
KILL_AT_ENV = "KIMPKI_TEST_KILL_AT"
KILL_NTH_ENV = "KIMPKI_TEST_KILL_NTH"
KILL_MARKER_ENV = "KIMPKI_TEST_KILL_MARKER"
_kill_matches = 0  # steps that matched $KIMPKI_TEST_KILL_AT so far in this process


def kill_point(step: str, path: Path | str) -> None:
    """A test hook, inert unless ``$KIMPKI_TEST_KILL_AT`` is set: the tests' way to SIGKILL a
    kimpki process exactly at one step of a write, to prove that a crash there loses nothing.

    Each step of a write calls it: ``mkdir`` (a directory made), ``temp`` (the new content is
    complete in a temporary file beside ``path``, not yet in place), ``opened`` (a file created
    empty in place by :func:`write_in_new_folder`, its content next) and ``placed`` (renamed,
    linked or written into place). When ``"STEP PARENT/NAME"`` (e.g. ``placed 4f3a…/cert.key``)
    matches the variable's shell pattern for the ``$KIMPKI_TEST_KILL_NTH``-th time (default: the
    first; a batch repeats each step once per certificate), the step is appended to
    ``$KIMPKI_TEST_KILL_MARKER`` (when set), so that the test can assert where the kill landed,
    and the process kills itself."""
    global _kill_matches
    pattern = os.environ.get(KILL_AT_ENV)
    if not pattern:
        return
    parent, name = os.path.split(os.fspath(path))
    where = f"{step} {os.path.basename(parent)}/{name}"
    if not fnmatch.fnmatchcase(where, pattern):
        return
    _kill_matches += 1
    if _kill_matches < int(os.environ.get(KILL_NTH_ENV) or 1):
        return
    marker = os.environ.get(KILL_MARKER_ENV)
    if marker:
        with open(marker, "a", encoding="utf-8") as f:
            f.write(where + "\n")
    os.kill(os.getpid(), signal.SIGKILL)


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
        kill_point("mkdir", d)
    if path.stat().st_mode & 0o077:
        os.chmod(path, PRIVATE_DIR)
    return path


def _read_umask() -> int:
    """The process's umask. Linux shows it in /proc (since 4.7), read without changing it;
    elsewhere it is set and put back at once: to 077, so that a file another thread creates in
    between is only ever stricter (kimpki's writes set their modes themselves)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_umask: int | None = None


def umask() -> int:
    """The umask, read once per process (kimpki never changes it)."""
    global _umask
    if _umask is None:
        _umask = _read_umask()
    return _umask


def make_private_dir(path: Path | str) -> None:
    """``mkdir path`` as a 0700 directory; FileExistsError when something is already there.

    The chmod that corrects mkdir's mode for the umask is skipped when the umask takes no owner
    bit (022, 077, ...): the mode is then exactly 0700. A folder made here is the caller's own
    (owner, mode) and needs no ownership check, as long as its parent was checked: nobody else
    can put anything in it or swap it."""
    os.mkdir(path, PRIVATE_DIR)
    if umask() & PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Make everything written on ``path``'s file system durable: Linux ``syncfs``, else ``sync``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs is None or _syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _load_syncfs():
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write, not a buffered file object: a batch writes thousands of these
        view = view[os.write(fd, view):]


def _write_temp(directory: Path, data: bytes, mode: int, sync: bool = True) -> Path:
    # mkstemp creates the file 0600 before any byte is written: a key is never briefly world-readable.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        try:
            _write_all(fd, data)
            if sync:
                os.fsync(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_atomic(path: Path, data: bytes, mode: int = PUBLIC_FILE, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` via temp file, fsync and rename: readers see old or new, never half."""
    tmp = _write_temp(path.parent, data, mode, sync)
    kill_point("temp", path)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        _fsync_dir(path.parent)
    kill_point("placed", path)


def write_new(path: Path, data: bytes, mode: int = PRIVATE_FILE, *, sync: bool = True) -> None:
    """Like write_atomic, but refuse to replace an existing file (keys are never overwritten)."""
    tmp = _write_temp(path.parent, data, mode, sync)
    kill_point("temp", path)
    try:
        os.link(tmp, path)  # link() fails if ``path`` exists: an atomic no-clobber create
    except FileExistsError:
        raise OperationError(f"refusing to overwrite {path}") from None
    finally:
        tmp.unlink(missing_ok=True)
    if sync:
        _fsync_dir(path.parent)
    kill_point("placed", path)


def write_in_new_folder(path: str, data: bytes, mode: int) -> None:
    """Create ``path`` holding ``data``, in place: no temporary file, no rename, no fsync.

    Only for a folder this process made and nothing records yet (a store batch's new version
    folder): a kill mid-write leaves a partial file in a folder no inventory row names, which the
    next run removes, and the batch syncs the file system before any row names it. ``O_EXCL``
    refuses whatever is already there (a key is never overwritten), a symbolic link included,
    which is never followed (``O_NOFOLLOW`` says so too). The file is created with ``mode`` (a
    key is never readable by others, not even empty); fchmod only when the umask took some of
    its bits."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise OperationError(f"refusing to overwrite {path}") from None
    try:
        kill_point("opened", path)
        if mode & umask():
            os.fchmod(fd, mode)
        _write_all(fd, data)
    finally:
        os.close(fd)
    kill_point("placed", path)


def make_new_symlink(link: str, target: str) -> None:
    """Make ``link`` point at ``target`` where no link was (a ``current`` a batch makes for a
    name that had none): one symlink(), atomic, no temporary link and rename. Anything found
    there after all is replaced as :func:`point_symlink` does, never followed. Not synced (a
    batch's links follow the inventory, see the store)."""
    try:
        os.symlink(target, link)
    except FileExistsError:
        point_symlink(Path(link), target, sync=False)
        return
    kill_point("placed", link)


def point_symlink(link: Path, target: str, *, sync: bool = True) -> None:
    """Atomically make ``link`` point at ``target`` (a relative path), replacing any old link."""
    tmp = link.parent / f".tmp-link-{os.getpid()}-{link.name}"
    try:
        os.symlink(target, tmp)
    except FileExistsError:  # left by a killed write of this pid (collected otherwise)
        tmp.unlink()
        os.symlink(target, tmp)
    kill_point("temp", link)
    os.replace(tmp, link)
    if sync:
        _fsync_dir(link.parent)
    kill_point("placed", link)


# ------------------------------------------------------------------------------------ ownership
def check_owned_dir(path: Path, what: str) -> os.stat_result:
    """Refuse ``path`` unless it is a real directory (not a symbolic link), owned by the user
    running kimpki and writable by nobody else: otherwise another user could plant links or
    files in it (ssh's StrictModes rule)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise OperationError(f"cannot use {what} {path}: {e.strerror}") from None
    return _check_owned_stat(path, st, what)


def _check_owned_stat(path: Path | str, st: os.stat_result, what: str) -> os.stat_result:
    """:func:`check_owned_dir` on what lstat said of ``path``."""
    if stat.S_ISLNK(st.st_mode):
        raise OperationError(f"{what} {path} is a symbolic link; kimpki does not follow links inside its store: "
                             "move it away")
    if not stat.S_ISDIR(st.st_mode):
        raise OperationError(f"{what} {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise OperationError(f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); "
                             "refusing to use a folder another user controls")
    if st.st_mode & 0o022:
        raise OperationError(f"{what} {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                             f"refusing to use it: chmod 700 {path} once you trust its content")
    return st


def private_subdir(base: Path, *parts: str, create: bool = True,
                   known: dict[tuple[str, ...], bool] | None = None) -> Path:
    """``base/parts...``, each level checked with :func:`check_owned_dir` (``base`` itself is
    the caller's to check) and created 0700 when missing (with ``create``); a level we own but
    others may read is tightened to 0700. Returns the path (with ``create=False``, possibly missing).

    A level made here by mkdir is not checked again (see :func:`make_private_dir`), and neither
    is anything below it looked at before its mkdir: it cannot exist yet. ``known`` (a store
    batch's): the levels ``parts[:i]`` already checked or made, mapped to True for those made,
    skipped here and filled in, so that a batch of 1,000 issuances checks ``certs/`` once."""
    path = os.fspath(base)
    made = False  # whether the level at hand (at first: the one above) was made just now
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        if known is not None and parts[:i + 1] in known:
            made = known[parts[:i + 1]]
            continue
        st = None
        if not made:  # below a folder made just now there is nothing to look at
            try:
                st = os.lstat(path)  # a look first: mkdir of an existing folder locks its parent
            except FileNotFoundError:
                pass
            except OSError as e:
                raise OperationError(f"cannot use the store folder {path}: {e.strerror}") from None
        made = False
        if st is None:
            if not create:
                return base.joinpath(*parts)
            try:
                make_private_dir(path)
                made = True
            except FileExistsError:  # created concurrently by another kimpki process
                st = check_owned_dir(path, "the store folder")
        else:
            _check_owned_stat(path, st, "the store folder")
        if st is not None and stat.S_IMODE(st.st_mode) != PRIVATE_DIR:
            os.chmod(path, PRIVATE_DIR)  # ours, but readable by others (made under another umask)
        if known is not None:
            known[parts[:i + 1]] = made
    return Path(path)


# ------------------------------------------------------------------------ files at a user's path
def tighten_to_private(path: Path) -> bool:
    """Make an existing file 0600 if it is readable by others; True when it was tightened."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    if mode & 0o077:
        os.chmod(path, PRIVATE_FILE)
        return True
    return False


def write_output(path: Path | str, data: bytes, mode: int = PUBLIC_FILE) -> None:
    """Write a file at a path the user chose (``sign --out``, ``issue --out``, a manifests folder).

    The one helper for those: atomic (readers see old or new), and the last component is
    replaced, never followed: a symbolic link planted there (say by another user in /tmp) is
    replaced by the new file; its target is left alone. The path is not resolved."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise UsageError(f"{path} is a directory")
    try:
        write_atomic(path, data, mode)
    except OSError as e:
        raise OperationError(f"cannot write {path}: {e.strerror}") from None


def append_log_nofollow(path: Path | str) -> int:
    """Open a log file at a path the user chose for appending: created 0600, never through a
    symbolic link (a link planted at ``/tmp/renew.log`` would otherwise aim kimpki's appends at any
    file its user can write, as a shell's ``>> FILE`` does). Returns the descriptor."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, PRIVATE_FILE)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OperationError(f"{path} is a symbolic link: kimpki does not append its log through one; "
                                 f"remove it or choose another file") from None
        if e.errno == errno.ENXIO:  # a FIFO nobody reads (O_NONBLOCK: refused instead of hanging)
            raise OperationError(f"{path} is not a regular file: the log must be one") from None
        raise OperationError(f"cannot open the log {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device would block or reach elsewhere
        os.close(fd)
        raise OperationError(f"{path} is not a regular file: the log must be one")
    os.set_blocking(fd, True)
    return fd


def tighten_stdout(what: str) -> str | None:
    """When standard output is a regular file (``... -o yaml > deploy/x.yaml``) about to receive
    private keys, make it 0600 whoever created it; returns its path when it was tightened."""
    try:
        fd = sys.stdout.fileno()
        st = os.fstat(fd)
    except (OSError, ValueError, AttributeError):
        return None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o077:
        return None
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except OSError as e:
        raise OperationError(f"standard output is a file other users can read and it cannot be made 0600 "
                             f"({e.strerror}); {what}: write to a file you own") from None
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "standard output"
