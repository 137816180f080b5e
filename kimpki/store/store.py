"""The local store (an embedded default: no server needed).

Layout under the home directory (every directory 0700, every key 0600)::

    inventory.db                      SQLite inventory: CAs, every issuance, settings
    .lock                             held by every mutation (file lock)
    cas/<name>/ca.crt                 the CA certificate
    cas/<name>/ca.key                 its key (PKCS#8 PEM, encrypted when a passphrase was given)
    cas/<name>/chain.crt              intermediate CAs only: the CAs above it, below the root
    cas/<name>/cross.crt              a root that succeeds another: its key certified by the predecessor
    cas/<name>/crl.pem                the CA's current CRL (kimpki crl, kimpki revoke)
    certs/<name>/versions/<serial>/   one directory per issuance, never rewritten:
        cert.crt                      leaf + intermediates (what a server presents)
        cert.key                      the leaf's private key (absent for signed CSRs)
        ca.crt                        the issuing root (what clients trust)
    certs/<name>/current -> versions/<serial>   switched atomically on (re)issue

Re-issuing a name adds a version and moves ``current``; older versions stay for rollback.
A version can be ``pending`` (issued, not yet deployed: rotation resumes from it).

Ownership (as ssh's StrictModes): the home and every folder of the store must be real
directories owned by the user running kimpki and writable by nobody else, or kimpki refuses to
use them; it follows no symbolic link inside the store but the ``current`` links it makes
itself, and those must point at ``versions/<serial>``.

Crash safety: every mutation holds the ``.lock`` file and one SQLite transaction. The inventory
is the truth and the files follow it: a version's files are written before its row commits (a
kill in between leaves a folder no row names), and ``current`` moves only after the commit (a
kill in between leaves it on the previous version). The first mutation of every run repairs
both (:meth:`Store.collect_garbage`): version folders and ``.tmp-*`` files no row names are
removed and each ``current`` link is pointed again at the version the inventory calls current.
``kimpki gc`` does the same on demand, and also removes CA folders no row names (a CA key goes
only when asked) and drops pending versions nobody will finish (expired ones: a valid one may be
what a Secret serves).

Durability: a mutation in :meth:`Store.locked` fsyncs each file it writes; :meth:`Store.batch`
(many issuances: ``apply``, ``renew``) writes them without, and syncs the file system once before
its commit, so that its rows are never committed before their files are durable either. As no
row names a batch's new version folder before that commit, a batch writes the folder's files in
place (no temporary file and rename: a kill leaves a partial file only in a folder the next run
removes), still created 0600 for keys, never over an existing file and never through a link.

CA rotation needs no schema change: the settings table records ``ca-successor:<old>`` = new,
``ca-predecessor:<new>`` = old and ``ca-retired:<old>`` = the time it was retired, so homes made
before rotation existed open unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from kimpki.errors import NotFoundError, OperationError
from kimpki.store.lock import file_lock
from kimpki.store.fs import (PRIVATE_DIR, PRIVATE_FILE, PUBLIC_FILE, check_owned_dir, ensure_private_dir, kill_point,
                             make_new_symlink, make_private_dir, point_symlink, private_subdir, sync_filesystem,
                             write_atomic, write_in_new_folder, write_new)

LOCK_TIMEOUT = 60.0
T = TypeVar("T")

# CA lineage, kept in the settings table (see the module doc).
SUCCESSOR_KEY = "ca-successor:"
PREDECESSOR_KEY = "ca-predecessor:"
RETIRED_KEY = "ca-retired:"

SCHEMA = """
CREATE TABLE IF NOT EXISTS cas (
    name TEXT PRIMARY KEY,
    parent TEXT,
    serial TEXT NOT NULL,
    subject TEXT NOT NULL,
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    key_type TEXT,
    encrypted INTEGER NOT NULL DEFAULT 0,
    imported INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    ca TEXT NOT NULL,
    serial TEXT NOT NULL,
    subject TEXT NOT NULL,
    dns_names TEXT NOT NULL,
    ip_addresses TEXT NOT NULL,
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    key_type TEXT,
    key_fingerprint TEXT,
    has_key INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    deployed_to TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS certificates_name ON certificates(name);
-- Every serial a CA has signed (leaves and intermediates): the uniqueness guarantee.
CREATE TABLE IF NOT EXISTS serials (
    ca TEXT NOT NULL,
    serial TEXT NOT NULL,
    PRIMARY KEY (ca, serial)
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Revoked certificates (kimpki revoke) and each CA's last CRL (kimpki/store/revocations.py).
CREATE TABLE IF NOT EXISTS revocations (
    ca TEXT NOT NULL,
    serial TEXT NOT NULL,
    name TEXT,
    kind TEXT NOT NULL,
    not_after TEXT NOT NULL,
    revoked_at TEXT NOT NULL,
    reason TEXT NOT NULL,
    command TEXT NOT NULL,
    PRIMARY KEY (ca, serial)
);
CREATE TABLE IF NOT EXISTS crls (
    ca TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    this_update TEXT NOT NULL,
    next_update TEXT NOT NULL
);
"""


class StoreDamaged(OperationError):
    """A file of the home is missing or unreadable: a damaged store, not a bug (exit 1)."""


def damaged(home: Path, path: Path, problem: str, fix: str) -> StoreDamaged:
    """One line: which store, which file, what is wrong with it, and what to do."""
    return StoreDamaged(f"the kimpki store {home} is damaged: {path} {problem}; {fix}")


def restore_home_fix(home: Path) -> str:
    """What to do when the inventory itself is lost."""
    return (f"restore it from a backup, or start a new home and re-import each CA from this one "
            f"(mv {home} {home}.damaged; kimpki ca import NAME --cert {home}.damaged/cas/NAME/ca.crt "
            f"--key {home}.damaged/cas/NAME/ca.key)")


class _Connection(sqlite3.Connection):
    """An inventory connection whose corruption errors say so (``StoreDamaged``). Only plain
    ``DatabaseError`` ("file is not a database", "database disk image is malformed") is
    corruption; its subclasses (IntegrityError, a locked database, ...) pass unchanged."""

    def _damaged(self, e: sqlite3.DatabaseError) -> StoreDamaged:
        path = Path(self.db_path)
        return damaged(path.parent, path, f"is not a readable SQLite inventory ({e})", restore_home_fix(path.parent))

    def execute(self, *args, **kwargs):
        try:
            return super().execute(*args, **kwargs)
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:
                raise
            raise self._damaged(e) from None

    def executescript(self, *args, **kwargs):
        try:
            return super().executescript(*args, **kwargs)
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:
                raise
            raise self._damaged(e) from None


def read_ca_file(ca: "CaRecord", path: Path) -> bytes:
    """A file of CA ``ca`` (its certificate, key, chain or cross certificate); a missing or
    unreadable one is a damaged store, with what to do about it."""
    try:
        return path.read_bytes()
    except OSError as e:
        problem = "is missing" if isinstance(e, FileNotFoundError) else f"cannot be read ({e.strerror})"
        raise damaged(ca.dir.parent.parent, path, f"{problem} (CA {ca.name!r})", ca_repair_fix(ca)) from None


def ca_repair_fix(ca: "CaRecord") -> str:
    if ca.parent is not None:  # an intermediate cannot be imported: only a backup has its files
        return f"restore {ca.dir} from a backup"
    return (f"restore {ca.dir} from a backup, or re-import the CA from its files: "
            f"kimpki ca import {ca.name} --cert FILE --key FILE")


def default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "kimpki"


def _ts(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _dt(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


@dataclass
class CaRecord:
    name: str
    parent: str | None
    serial: str
    subject: str
    not_before: datetime
    not_after: datetime
    key_type: str | None
    encrypted: bool
    imported: bool
    is_default: bool
    dir: Path
    successor: str | None = None  # the CA that replaces this one (``kimpki ca rotate``)
    predecessor: str | None = None  # the CA this one replaces
    retired_at: datetime | None = None  # set by ``kimpki ca retire``: may no longer issue

    @property
    def state(self) -> str:
        """``active``; ``superseded`` while a successor exists and this one is not retired; ``retired``."""
        if self.retired_at is not None:
            return "retired"
        return "superseded" if self.successor else "active"

    @property
    def cert_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def cross_path(self) -> Path:
        """A successor root's certificate signed by its predecessor (RFC 4210's newWithOld)."""
        return self.dir / "cross.crt"

    @property
    def key_path(self) -> Path:
        return self.dir / "ca.key"

    @property
    def chain_path(self) -> Path:
        return self.dir / "chain.crt"


@dataclass
class CertRecord:
    id: int
    name: str
    kind: str
    ca: str
    serial: str
    subject: str
    dns_names: list[str]
    ip_addresses: list[str]
    not_before: datetime
    not_after: datetime
    key_type: str | None
    key_fingerprint: str | None
    has_key: bool
    state: str
    created_at: datetime
    deployed_to: list[dict] = field(default_factory=list)
    dir: Path = Path()

    @property
    def cert_path(self) -> Path:
        return self.dir / "cert.crt"

    @property
    def key_path(self) -> Path:
        return self.dir / "cert.key"

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def hosts(self) -> list[str]:
        return self.dns_names + self.ip_addresses


# A pending version older than this is one nobody will finish (rotate resumes its own within
# seconds or, after a failure, on the next run: renew's is daily).
PENDING_BOUND = timedelta(days=7)
# A ``.tmp-*`` file in the home itself (renew's holder note, written under renew's own lock
# rather than the store's) is collected only once it is older than any write takes.
TMP_BOUND = timedelta(minutes=10)


@dataclass
class Garbage:
    """What :meth:`Store.collect_garbage` removed (or, for a dry run, would remove)."""

    orphans: list[str] = field(default_factory=list)  # version or CA folders no inventory row names
    temporary_files: list[str] = field(default_factory=list)  # ``.tmp-*`` left by a killed write
    stale_pending: list[dict] = field(default_factory=list)  # {name, serial, created_at}
    repaired_links: list[str] = field(default_factory=list)  # ``current`` links pointed again

    @property
    def empty(self) -> bool:
        return not (self.orphans or self.temporary_files or self.stale_pending or self.repaired_links)

    def to_dict(self) -> dict:
        return {"orphans": self.orphans, "temporary_files": self.temporary_files,
                "stale_pending": self.stale_pending, "repaired_links": self.repaired_links}


def _entries(path: Path | str) -> list[os.DirEntry]:
    """A folder's entries, sorted by name (none when it is missing or not a folder: scandir
    follows no link below the folder itself, and the store's own folders are checked links-free)."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


class Store:
    def __init__(self, home: Path):
        self.home = home
        self._db: sqlite3.Connection | None = None
        self._checked: set[tuple[str, ...]] = set()  # store folders already checked (ownership)
        self._after_commit: list = []
        self._collected = False  # the first mutation of a run collects what a killed run left
        self._batch = False  # inside batch(): files are synced once, before the commit
        self._memo: dict = {}  # see memo(): what a batch computes once
        # Store folders a batch checked (False) or made (True), by their parts under the home:
        # not undone with a savepoint (folders stay), forgotten when the batch ends.
        self._batch_folders: dict[tuple[str, ...], bool] = {}

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, home: str | os.PathLike | None = None) -> "Store":
        path = Path(home).expanduser() if home else default_home()
        if path.exists() and not path.is_dir():
            raise OperationError(f"the kimpki home {path} is not a directory")
        try:
            if not path.exists():
                ensure_private_dir(path)
        except OSError as e:
            raise OperationError(f"cannot create the kimpki home {path}: {e.strerror}") from None
        path = path.resolve()  # the home itself may be a link; what it points to is checked
        st = check_owned_dir(path, "the kimpki home")
        if st.st_mode & 0o077:
            os.chmod(path, PRIVATE_DIR)  # ours and written by nobody else: only readable, tighten
        return cls(path)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            db_path = self.home / "inventory.db"
            new = not db_path.exists()
            if new:
                # Create it 0600 before SQLite opens it.
                os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE))
            self._db = sqlite3.connect(db_path, timeout=LOCK_TIMEOUT, isolation_level=None, factory=_Connection)
            self._db.db_path = str(db_path)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def locked(self) -> Iterator["Store"]:
        """Hold the home's lock and one SQLite transaction: all or nothing, one writer at a time.

        Inside :meth:`batch` it is a savepoint of the batch's transaction: a failure undoes this
        part only, and the batch goes on."""
        if self._batch:
            self.db.execute("SAVEPOINT part")
            pending_actions = len(self._after_commit)
            try:
                yield self
            except BaseException:
                self.db.execute("ROLLBACK TO part")
                self.db.execute("RELEASE part")
                self._memo.clear()  # it may hold what the undone part made
                del self._after_commit[pending_actions:]  # what the undone part would have done
                raise
            self.db.execute("RELEASE part")
            return
        with file_lock(self.home / ".lock", LOCK_TIMEOUT):
            if not self._collected:
                self._collected = True
                # What a killed run left behind; not CA folders: a CA key is only removed when asked.
                self._collect(datetime.now(timezone.utc), None, False, ca_folders=False)
            self.db.execute("BEGIN IMMEDIATE")
            self._after_commit = []
            try:
                yield self
            except BaseException:
                self.db.execute("ROLLBACK")
                self._after_commit = []
                raise
            self.db.execute("COMMIT")
            actions, self._after_commit = self._after_commit, []
            for action in actions:  # files that follow the inventory (``current`` links)
                action()

    @contextmanager
    def batch(self) -> Iterator["Store"]:
        """Many mutations under one lock and one transaction (each ``locked()`` inside is a
        savepoint). Files are written without their own fsyncs and made durable together by one
        file-system sync just before the commit: the rows that name them are never committed
        first. A kill before the commit leaves unrecorded version directories, ignored."""
        if self._batch:
            yield self
            return
        with self.locked():
            self._batch = True
            self._memo.clear()
            self._batch_folders.clear()
            try:
                yield self
                sync_filesystem(self.home)
            finally:
                self._batch = False
                self._memo.clear()
                self._batch_folders.clear()

    def memo(self, key: tuple, make: Callable[[], T]) -> T:
        """``make()``, computed once per :meth:`batch` for ``key`` (outside a batch, every time).

        For what only a CA change can alter (a CA's record, its loaded key and chain, a trust
        bundle), which a batch of 1,000 issuances would otherwise read, parse and decrypt 1,000
        times: the batch holds the lock, and every CA change clears the memo."""
        if not self._batch:
            return make()
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = make()
            return value

    # -- settings ----------------------------------------------------------------------------
    def get_setting(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def set_setting(self, key: str, value: str) -> None:
        self._memo.clear()  # settings shape CA records (default, successor, retired)
        self.db.execute("INSERT INTO settings(key, value) VALUES(?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # -- CAs ---------------------------------------------------------------------------------
    def ca_dir(self, name: str) -> Path:
        return self.home / "cas" / name

    def _check_folders(self, *parts: str) -> None:
        """Ownership checks of the store folders ``parts`` leads through (those that exist)."""
        if parts not in self._checked:
            private_subdir(self.home, *parts, create=False)
            self._checked.add(parts)

    def _ca_from_row(self, row: sqlite3.Row, default: str | None) -> CaRecord:
        name = row["name"]
        self._check_folders("cas", name)
        retired = self.get_setting(RETIRED_KEY + name)
        return CaRecord(name=name, parent=row["parent"], serial=row["serial"], subject=row["subject"],
                        not_before=_dt(row["not_before"]), not_after=_dt(row["not_after"]),
                        key_type=row["key_type"], encrypted=bool(row["encrypted"]),
                        imported=bool(row["imported"]), is_default=name == default,
                        dir=self.ca_dir(name), successor=self.get_setting(SUCCESSOR_KEY + name),
                        predecessor=self.get_setting(PREDECESSOR_KEY + name),
                        retired_at=_dt(retired) if retired else None)

    def list_cas(self) -> list[CaRecord]:
        default = self.get_setting("default_ca")
        rows = self.db.execute("SELECT * FROM cas ORDER BY created_at, name").fetchall()
        return [self._ca_from_row(r, default) for r in rows]

    def find_ca(self, name: str) -> CaRecord | None:
        def find() -> CaRecord | None:
            row = self.db.execute("SELECT * FROM cas WHERE name=?", (name,)).fetchone()
            return self._ca_from_row(row, self.get_setting("default_ca")) if row else None

        return self.memo(("ca", name), find)

    def get_ca(self, name: str | None = None) -> CaRecord:
        """The CA called ``name``, or the default CA when ``name`` is None."""
        if name is None:
            name = self.get_setting("default_ca")
            if name is None:
                raise NotFoundError("no CA exists yet: run 'kimpki ca init NAME' first")
        ca = self.find_ca(name)
        if ca is None:
            known = ", ".join(c.name for c in self.list_cas()) or "none"
            raise NotFoundError(f"no CA named {name!r} (known: {known})")
        return ca

    def add_ca(self, name: str, *, parent: str | None, cert_pem: bytes, key_pem: bytes,
               chain_pem: bytes | None, serial: str, subject: str, not_before: datetime,
               not_after: datetime, key_type: str | None, encrypted: bool, imported: bool,
               now: datetime) -> CaRecord:
        """Record a new CA and write its files. Call inside ``locked()``."""
        self._memo.clear()
        if self.find_ca(name) is not None:
            raise OperationError(f"a CA named {name!r} already exists (see 'kimpki ca list')")
        d = private_subdir(self.home, "cas", name)
        if any(d.iterdir()):
            raise OperationError(f"{d} exists but is not in the inventory (left by a killed run?): "
                                 "'kimpki gc' removes it, or move it away")
        write_new(d / "ca.key", key_pem, PRIVATE_FILE)
        write_atomic(d / "ca.crt", cert_pem, PUBLIC_FILE)
        if chain_pem:
            write_atomic(d / "chain.crt", chain_pem, PUBLIC_FILE)
        self.db.execute(
            "INSERT INTO cas(name, parent, serial, subject, not_before, not_after, key_type, encrypted,"
            " imported, created_at) VALUES(?,?,?,?,?,?,?,?,?,?)",
            (name, parent, serial, subject, _ts(not_before), _ts(not_after), key_type, int(encrypted),
             int(imported), _ts(now)))
        if parent is not None:
            self.record_serial(parent, serial)
        if self.get_setting("default_ca") is None:
            self.set_setting("default_ca", name)
        return self.get_ca(name)

    def restore_ca_files(self, ca: CaRecord, *, cert_pem: bytes | None, key_pem: bytes | None,
                         encrypted: bool) -> None:
        """Write back the files of CA ``ca`` a damaged home lost (``kimpki ca import`` of the same
        CA): the certificate (replacing a garbled one) and, when given, the key, which is only
        ever created, never overwritten. Call inside ``locked()``."""
        self._memo.clear()
        private_subdir(self.home, "cas", ca.name)
        if cert_pem is not None:
            write_atomic(ca.cert_path, cert_pem, PUBLIC_FILE)
        if key_pem is not None:
            write_new(ca.key_path, key_pem, PRIVATE_FILE)
            self.db.execute("UPDATE cas SET encrypted=? WHERE name=?", (int(encrypted), ca.name))

    def set_successor(self, old: str, new: str) -> None:
        """Record that CA ``new`` replaces CA ``old``. Call inside ``locked()``."""
        self.set_setting(SUCCESSOR_KEY + old, new)
        self.set_setting(PREDECESSOR_KEY + new, old)

    def retire_ca(self, name: str, now: datetime) -> None:
        """Mark CA ``name`` retired (it may no longer issue). Call inside ``locked()``."""
        self.set_setting(RETIRED_KEY + name, _ts(now.replace(microsecond=0)))

    def write_cross_certificate(self, name: str, cert_pem: bytes) -> None:
        self._memo.clear()
        write_atomic(self.ca_dir(name) / "cross.crt", cert_pem, PUBLIC_FILE)

    def record_serial(self, ca: str, serial: str) -> None:
        try:
            self.db.execute("INSERT INTO serials(ca, serial) VALUES(?, ?)", (ca, serial))
        except sqlite3.IntegrityError:
            raise OperationError(f"serial {serial} was already issued by CA {ca!r}") from None

    def serial_used(self, ca: str, serial: str) -> bool:
        return self.db.execute("SELECT 1 FROM serials WHERE ca=? AND serial=?", (ca, serial)).fetchone() is not None

    # -- certificates ------------------------------------------------------------------------
    def cert_dir(self, name: str) -> Path:
        return self.home / "certs" / name

    def _cert_from_row(self, row: sqlite3.Row) -> CertRecord:
        self._check_folders("certs", row["name"], "versions", row["serial"])
        return CertRecord(
            id=row["id"], name=row["name"], kind=row["kind"], ca=row["ca"], serial=row["serial"],
            subject=row["subject"], dns_names=json.loads(row["dns_names"]),
            ip_addresses=json.loads(row["ip_addresses"]), not_before=_dt(row["not_before"]),
            not_after=_dt(row["not_after"]), key_type=row["key_type"],
            key_fingerprint=row["key_fingerprint"], has_key=bool(row["has_key"]), state=row["state"],
            created_at=_dt(row["created_at"]), deployed_to=json.loads(row["deployed_to"]),
            dir=self.home.joinpath("certs", row["name"], "versions", row["serial"]))

    def add_cert(self, name: str, *, kind: str, ca: str, serial: str, subject: str,
                 dns_names: list[str], ip_addresses: list[str], not_before: datetime,
                 not_after: datetime, key_type: str | None, key_fingerprint: str | None,
                 chain_pem: bytes, key_pem: bytes | None, ca_pem: bytes, now: datetime,
                 state: str = "current") -> tuple[CertRecord, CertRecord | None]:
        """Record an issuance and write its version directory. Call inside ``locked()``.

        With ``state="current"`` the name's ``current`` link moves to it and the previous
        current version (returned second) becomes ``previous``; ``"pending"`` leaves it alone.
        """
        self.record_serial(ca, serial)
        if self._batch:
            vdir = self._write_version_in_batch(name, serial, chain_pem, key_pem, ca_pem)
        else:
            vdir = private_subdir(self.home, "certs", name, "versions") / serial
            try:
                os.mkdir(vdir, PRIVATE_DIR)
            except FileExistsError:
                raise OperationError(f"{vdir} already exists; refusing to overwrite it") from None
            os.chmod(vdir, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
            self._checked.add(("certs", name, "versions", serial))  # made just now, 0700: no second check
            kill_point("mkdir", vdir)
            if key_pem is not None:
                write_new(vdir / "cert.key", key_pem, PRIVATE_FILE)
            write_atomic(vdir / "cert.crt", chain_pem, PUBLIC_FILE)
            write_atomic(vdir / "ca.crt", ca_pem, PUBLIC_FILE)
        cur = self.db.execute(
            "INSERT INTO certificates(name, kind, ca, serial, subject, dns_names, ip_addresses, not_before,"
            " not_after, key_type, key_fingerprint, has_key, state, created_at) VALUES"
            " (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (name, kind, ca, serial, subject, json.dumps(dns_names), json.dumps(ip_addresses),
             _ts(not_before), _ts(not_after), key_type, key_fingerprint, int(key_pem is not None),
             "pending", _ts(now)))
        # The record as the row just inserted reads back (times as stored: whole microseconds,
        # UTC), built here rather than selected again: a batch adds thousands.
        rec = CertRecord(id=cur.lastrowid, name=name, kind=kind, ca=ca, serial=serial, subject=subject,
                         dns_names=list(dns_names), ip_addresses=list(ip_addresses),
                         not_before=_dt(_ts(not_before)), not_after=_dt(_ts(not_after)), key_type=key_type,
                         key_fingerprint=key_fingerprint, has_key=key_pem is not None, state="pending",
                         created_at=_dt(_ts(now)), deployed_to=[], dir=vdir)
        previous = None
        if state == "current":
            previous = self.make_current(rec.id, record=rec)
            rec.state = "current"
        return rec, previous

    def _write_version_in_batch(self, name: str, serial: str, chain_pem: bytes, key_pem: bytes | None,
                                ca_pem: bytes) -> Path:
        """A new version's folder and files, in a batch: the cheap way a batch allows.

        No row names the folder before the batch commits, after one file-system sync (see
        :meth:`batch`), so its files need no temporary file and rename: each is created in place
        (:func:`write_in_new_folder`: ``O_EXCL``, never through a link, 0600 for the key); a kill
        leaves a folder no row names, which the next run removes. Folders are checked once per
        batch and the ones made here not at all (:func:`private_subdir`). The versions issued
        under one root share one ``ca.crt``: the first is written, the others are hard links to
        it (a new file costs this file system ten times what a link does; versions are never
        rewritten, so sharing the file is invisible to readers; when no link can be made, the
        link count, it is written). Paths are strings here, not ``Path``: a batch joins thousands
        of them, and a pathlib join costs several times an f-string."""
        versions = os.fspath(private_subdir(self.home, "certs", name, "versions", known=self._batch_folders))
        vdir = f"{versions}/{serial}"
        try:
            make_private_dir(vdir)
        except FileExistsError:
            raise OperationError(f"{vdir} already exists; refusing to overwrite it") from None
        self._checked.add(("certs", name, "versions", serial))  # made just now, 0700: no second check
        kill_point("mkdir", vdir)
        if key_pem is not None:
            write_in_new_folder(f"{vdir}/cert.key", key_pem, PRIVATE_FILE)
        write_in_new_folder(f"{vdir}/cert.crt", chain_pem, PUBLIC_FILE)
        path = f"{vdir}/ca.crt"
        first = self._memo.get(("ca.crt", ca_pem))
        if first is not None:
            try:
                os.link(first, path)
            except FileExistsError:
                raise OperationError(f"refusing to overwrite {path}") from None
            except OSError:
                first = None
            else:
                kill_point("placed", path)
        if first is None:
            write_in_new_folder(path, ca_pem, PUBLIC_FILE)
            self._memo[("ca.crt", ca_pem)] = path
        return Path(vdir)

    def make_current(self, record_id: int, *, record: CertRecord | None = None) -> CertRecord | None:
        """Promote a version to current (after its deployment); returns the version it replaced.
        Call inside ``locked()``: the ``current`` link moves once the inventory has committed
        (a kill in between is repaired by the next run, see the module doc). ``record``: the
        version's record when the caller holds it (its name and serial never change), which
        saves reading it again."""
        rec = record if record is not None and record.id == record_id else self.get_cert_by_id(record_id)
        link = self.cert_dir(rec.name) / "current"
        # A name whose folder this batch made has no link yet (nobody else writes in that folder).
        made_here = self._batch and self._batch_folders.get(("certs", rec.name)) is True
        linked = False if made_here else self._check_current_link(link)
        previous = self.find_cert(rec.name)
        if previous is not None and previous.id != rec.id:
            self.db.execute("UPDATE certificates SET state='previous' WHERE id=?", (previous.id,))
        if self.db.execute("UPDATE certificates SET state='current' WHERE id=?", (rec.id,)).rowcount != 1:
            raise NotFoundError(f"no inventory row {rec.id} ({rec.name}, serial {rec.serial})")
        # In a batch the links move unsynced: the inventory is the truth, and the next run's
        # collection points any link a crash left behind at the version it calls current.
        sync = not self._batch
        target = f"versions/{rec.serial}"
        if self._batch and not linked:  # one symlink(), not a temporary link and a rename
            self._after_commit.append(lambda: make_new_symlink(os.fspath(link), target))
        else:
            self._after_commit.append(lambda: point_symlink(link, target, sync=sync))
        return previous if previous is not None and previous.id != rec.id else None

    def get_cert_by_id(self, record_id: int) -> CertRecord:
        row = self.db.execute("SELECT * FROM certificates WHERE id=?", (record_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no inventory row {record_id}")
        return self._cert_from_row(row)

    def find_cert(self, name: str, state: str = "current") -> CertRecord | None:
        row = self.db.execute("SELECT * FROM certificates WHERE name=? AND state=? ORDER BY id DESC LIMIT 1",
                              (name, state)).fetchone()
        return self._cert_from_row(row) if row else None

    def find_version(self, name: str, serial: str) -> CertRecord | None:
        """The version of certificate ``name`` with this serial, whatever its state."""
        row = self.db.execute("SELECT * FROM certificates WHERE name=? AND serial=? ORDER BY id DESC LIMIT 1",
                              (name, serial)).fetchone()
        return self._cert_from_row(row) if row else None

    def get_cert(self, name: str) -> CertRecord:
        rec = self.find_cert(name)
        if rec is None:
            raise NotFoundError(f"no certificate named {name!r} in the store (see 'kimpki list')")
        return rec

    def list_certs(self, include_history: bool = False) -> list[CertRecord]:
        q = "SELECT * FROM certificates"
        if not include_history:
            q += " WHERE state='current'"
        return [self._cert_from_row(r) for r in self.db.execute(q + " ORDER BY name, id").fetchall()]

    def current_for_host(self, host: str) -> CertRecord | None:
        """The newest current server certificate whose SANs name ``host`` exactly."""
        for rec in reversed(self.list_certs()):
            if rec.kind == "server" and host in rec.hosts:
                return rec
        return None

    def record_deployment(self, record_id: int, where: dict) -> None:
        row = self.db.execute("SELECT deployed_to FROM certificates WHERE id=?", (record_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no inventory row {record_id}")
        places = [p for p in json.loads(row["deployed_to"]) if p != where] + [where]
        self.db.execute("UPDATE certificates SET deployed_to=? WHERE id=?", (json.dumps(places), record_id))

    def _check_current_link(self, link: Path) -> bool:
        """Whether ``current`` exists. A ``current`` that is a real folder (not the link kimpki
        makes) is damage kimpki will not repair by itself: the folder may hold someone's files.
        Said in one line, naming it."""
        try:
            st = os.lstat(link)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            raise damaged(self.home, link, "is a folder, not the symbolic link to versions/<serial> kimpki makes",
                          f"move it away (mv {link} {link}.damaged) and run the command again")
        return True

    # -- leftovers of killed runs --------------------------------------------------------------
    def collect_garbage(self, *, now: datetime, pending_bound: timedelta | None = PENDING_BOUND,
                        dry_run: bool = False) -> Garbage:
        """Remove what killed runs left (see the module doc), under the store's lock: version
        and CA folders and ``.tmp-*`` files no inventory row names, and ``current`` links that do
        not point at the inventory's current version. With ``pending_bound``, also pending
        versions created longer ago than that *and* expired: a running rotate finishes its pending
        version within seconds of creating it, so a bound of days never takes one a command still
        holds; and a pending version still valid may be served by a Secret whose run was killed
        before promoting it (the next ``renew`` or ``rotate`` promotes it), which the store cannot see.
        (The first ``locked()`` of every run does the same without the pending versions and
        the CA folders: a CA key is removed only when asked.)
        Do not call it inside ``locked()``."""
        with file_lock(self.home / ".lock", LOCK_TIMEOUT):
            self._collected = True
            return self._collect(now, pending_bound, dry_run)

    def _collect(self, now: datetime, pending_bound: timedelta | None, dry_run: bool, *,
                 ca_folders: bool = True) -> Garbage:
        found = Garbage()
        if not (self.home / "inventory.db").exists():
            return found  # a new home: nothing can be left over
        rows = self.db.execute("SELECT id, name, serial, state, created_at, not_after FROM certificates").fetchall()
        known = {(r["name"], r["serial"]) for r in rows}
        cas = {r["name"] for r in self.db.execute("SELECT name FROM cas").fetchall()}
        current = {r["name"]: r["serial"] for r in rows if r["state"] == "current"}
        removals: list[Path] = []
        # Where a killed write can leave something: ``cas/<name>/`` (CA files, CRLs), ``certs/<name>/``
        # (the ``current`` link's temporary) and ``versions/``. A version folder is written once,
        # in the transaction that adds its row, so one with a row holds no leftovers.
        tmp, orphans = found.temporary_files, found.orphans
        for top in ("cas", "certs"):  # no link, no foreign folder, before anything is removed from them
            private_subdir(self.home, top, create=False)
        for ca in _entries(self.home / "cas"):
            if ca.name.startswith(".tmp-"):
                tmp.append(ca.path)
            elif ca.is_dir(follow_symlinks=False):
                if ca.name not in cas:
                    if ca_folders:
                        orphans.append(ca.path)
                else:
                    tmp += [e.path for e in _entries(ca.path) if e.name.startswith(".tmp-")]
        for cert in _entries(self.home / "certs"):
            if cert.name.startswith(".tmp-"):
                tmp.append(cert.path)
                continue
            if not cert.is_dir(follow_symlinks=False):
                continue
            name = cert.name
            tmp += [e.path for e in _entries(cert.path) if e.name.startswith(".tmp-")]
            versions = Path(cert.path) / "versions"
            for v in _entries(versions) if not versions.is_symlink() else []:
                if v.name.startswith(".tmp-"):
                    tmp.append(v.path)
                elif (name, v.name) not in known and v.is_dir(follow_symlinks=False):
                    orphans.append(v.path)
            link = Path(cert.path) / "current"
            if link.is_dir() and not link.is_symlink():
                continue  # not a link kimpki made: make_current refuses it, naming it (_check_current_link)
            want = f"versions/{current[name]}" if name in current else None
            have = os.readlink(link) if link.is_symlink() else None
            if have != want and (want is not None or os.path.lexists(link)):
                found.repaired_links.append(str(link))
        for f in self.home.glob(".tmp-*"):
            try:
                age = now - datetime.fromtimestamp(f.lstat().st_mtime, timezone.utc)
            except OSError:
                continue
            if age > TMP_BOUND:
                tmp.append(str(f))
        if pending_bound is not None:
            for r in rows:
                # A pending version may already be what a gateway serves (its Secret was written,
                # the run killed before promoting it), and the store cannot see Secrets: only one
                # whose certificate has expired too is surely of no use to anyone.
                if (r["state"] == "pending" and now - _dt(r["created_at"]) > pending_bound
                        and now >= _dt(r["not_after"])):
                    found.stale_pending.append({"id": r["id"], "name": r["name"], "serial": r["serial"],
                                                "created_at": r["created_at"]})
        if dry_run or found.empty:
            return found
        if found.stale_pending:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for p in found.stale_pending:
                    # The row goes; the serial stays in ``serials`` (never issued twice).
                    self.db.execute("DELETE FROM certificates WHERE id=?", (p["id"],))
                    removals.append(self.cert_dir(p["name"]) / "versions" / p["serial"])
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")  # the rows first: a kill now leaves folders the next run collects
        for f in found.temporary_files:
            Path(f).unlink(missing_ok=True)
        for v in [Path(v) for v in found.orphans] + removals:
            if os.path.lexists(v):
                check_owned_dir(v, "the store folder")  # never remove what another user put there
                shutil.rmtree(v, ignore_errors=True)
        for link in found.repaired_links:
            name = Path(link).parent.name
            if name in current:
                point_symlink(Path(link), f"versions/{current[name]}")
            elif os.path.lexists(link):
                os.unlink(link)
        for p in found.stale_pending:
            del p["id"]
        return found
