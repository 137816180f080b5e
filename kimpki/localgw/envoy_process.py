"""Envoy as a child process that cannot outlive kimpki and sees nothing secret.

* **Run folders.** Each gateway gets a private folder ``$TMPDIR/kimpki-gw-XXXXXXXX`` (0700; it
  holds private keys) with an ``owner`` file: kimpki's pid and start time, then Envoy's. Before a
  new one is made, :func:`remove_stale_run_folders` removes those whose owner is gone (a
  ``kimpki gateway serve`` killed with SIGKILL), killing a leftover Envoy first.
* **Dying with the parent.** Envoy is started with ``PR_SET_PDEATHSIG`` = SIGKILL (``prctl`` via
  ctypes, between fork and exec): the kernel kills it when the thread that started it ends, so
  start a gateway from a thread that lives as long as the gateway (the main thread, normally).
  As belt and braces a watchdog (``sh``, in its own session) blocks reading a pipe whose only
  writer is kimpki; when kimpki dies the read ends and the watchdog kills Envoy's process group
  and removes the run folder. A normal stop ends the watchdog first, then Envoy.
* **Environment.** Children get :func:`child_environment` (an allow-list: PATH, locale, TZ), never
  kimpki's own (``KIMPKI_CA_PASSPHRASE`` or whatever variable a policy names for a passphrase).
* **Admin API.** :class:`AdminClient` speaks HTTP to Envoy's admin interface on a Unix socket (or
  a TCP address).
* **Logs.** When Envoy dies, :func:`death_reason` is its first critical line (``assert failure:
  ...``, ``error initializing configuration ...``), not the last backtrace frame, and
  :func:`keep_log` copies its log out of the run folder for the user.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

RUN_PREFIX = "kimpki-gw-"
LOG_PREFIX = "kimpki-envoy-"
OWNER_FILE = "owner"
ADMIN_SOCKET = "admin.sock"
CHILD_ENV_NAMES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR")
SUN_PATH_MAX = 107  # sockaddr_un.sun_path (108) minus the terminating NUL

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before any fork
except (OSError, AttributeError):  # not Linux: the watchdog alone
    _prctl = None

# Runs in the watchdog: $1 is Envoy's pid (= its process group), $2 the run folder. ``read``
# returns when the pipe's only writer (kimpki) has closed it, that is when kimpki is gone.
WATCHDOG_SCRIPT = 'read _ignored; kill -KILL "-$1" 2>/dev/null; rm -rf "$2"'  # dash: no "--"


def child_environment(environ: dict | None = None) -> dict[str, str]:
    """What a child such as Envoy may see of kimpki's environment: an allow-list, so that no
    secret (``KIMPKI_CA_PASSPHRASE``, a policy's passphrase variable, cloud credentials) leaks."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in CHILD_ENV_NAMES if k in env}


# ---------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------

def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), to tell it from a later one with the
    same pid; ``None`` when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = line.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5)


def _identity(pid: int) -> str:
    return f"{pid} {_start_time(pid) or '?'}"


def _alive(identity: str) -> bool:
    pid, _, started = identity.partition(" ")
    try:
        return _start_time(int(pid)) == started
    except ValueError:
        return False


def new_run_folder() -> Path:
    """A fresh private folder (0700) recording its owner; stale ones are removed first."""
    remove_stale_run_folders()
    folder = Path(tempfile.mkdtemp(prefix=RUN_PREFIX))
    _write_owner(folder, [_identity(os.getpid())])
    return folder


def record_child(folder: Path, pid: int) -> None:
    """Add Envoy (``pid``) to the folder's owner file, so that a later cleanup can kill it."""
    _write_owner(folder, [_identity(os.getpid()), _identity(pid)])


def _write_owner(folder: Path, identities: list[str]) -> None:
    tmp = folder / f".{OWNER_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(identities) + "\n")
    os.replace(tmp, folder / OWNER_FILE)


def remove_stale_run_folders(parent: str | os.PathLike | None = None) -> list[Path]:
    """Remove the run folders (ours: same user, not symlinks) whose kimpki process is gone,
    killing the Envoy recorded there if it still runs. Folders without an owner file are left
    alone (one being created right now has none yet). Returns what was removed."""
    base = Path(parent or tempfile.gettempdir())
    removed = []
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(RUN_PREFIX)]
    except OSError:
        return removed
    for folder in candidates:
        try:
            st = folder.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            identities = (folder / OWNER_FILE).read_text().split("\n")
        except OSError:
            continue
        identities = [i for i in identities if i.strip()]
        if not identities or _alive(identities[0]):
            continue
        for child in identities[1:]:
            if _alive(child):
                try:
                    os.killpg(int(child.split()[0]), signal.SIGKILL)
                except (ProcessLookupError, PermissionError, ValueError):
                    pass
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


def admin_socket_path(folder: Path) -> str:
    path = str(folder / ADMIN_SOCKET)
    if len(path.encode()) > SUN_PATH_MAX:
        from kimpki.errors import OperationError

        raise OperationError(f"the gateway's run folder {folder} is too long a path for a Unix socket: "
                             "set TMPDIR to a shorter folder")
    return path


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

def _die_with_parent(parent: int):
    def preexec() -> None:  # in the child, between fork and exec: no allocation-heavy work
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


@dataclass
class EnvoyProcess:
    """Envoy (leader of its own process group) and its watchdog."""

    proc: subprocess.Popen
    watchdog: subprocess.Popen | None
    watchdog_pipe: int | None  # our write end; closing it (or dying) fires the watchdog

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self, grace: float = 5.0) -> None:
        """End the watchdog (a normal stop needs none), then Envoy's whole group. Idempotent."""
        if self.watchdog is not None:
            if self.watchdog.poll() is None:
                self.watchdog.kill()
            self.watchdog.wait()
            self.watchdog = None
        if self.watchdog_pipe is not None:
            os.close(self.watchdog_pipe)
            self.watchdog_pipe = None
        _end_group(self.proc, grace)


def spawn(cmd: list[str], folder: Path, log_path: Path) -> EnvoyProcess:
    """Start Envoy (``cmd``) with its output in ``log_path``, bound to this process's life."""
    log = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600), "ab")
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=child_environment(),
                                preexec_fn=_die_with_parent(os.getpid()))
    finally:
        log.close()
    record_child(folder, proc.pid)
    read_end, write_end = os.pipe()  # both close-on-exec: no child inherits the write end
    try:
        watchdog = subprocess.Popen(["/bin/sh", "-c", WATCHDOG_SCRIPT, "kimpki-gw-watchdog", str(proc.pid),
                                     str(folder)],
                                    stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True, env=child_environment())
    except OSError:  # no /bin/sh: PR_SET_PDEATHSIG still holds, and the next start cleans up
        os.close(write_end)
        watchdog, write_end = None, None
    finally:
        os.close(read_end)
    return EnvoyProcess(proc, watchdog, write_end)


def _end_group(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


# ---------------------------------------------------------------------------------------------
# Admin API
# ---------------------------------------------------------------------------------------------

class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class AdminClient:
    """GET requests to Envoy's admin interface: ``unix:/path`` or ``HOST:PORT``."""

    def __init__(self, address: str):
        self.address = address

    @property
    def url(self) -> str:
        """What a user types: ``curl --unix-socket PATH http://localhost/`` or an http:// URL."""
        return self.address if self.address.startswith("unix:") else f"http://{self.address}"

    def get(self, path: str, timeout: float = 1.0) -> str:
        """The body of a 2xx answer; :class:`OSError` for anything else."""
        if self.address.startswith("unix:"):
            conn: http.client.HTTPConnection = _UnixHTTPConnection(self.address[5:], timeout)
        else:
            host, _, port = self.address.rpartition(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read().decode("utf-8", "replace")
        except http.client.HTTPException as e:
            raise OSError(f"bad answer from Envoy's admin interface: {e!r}") from None
        finally:
            conn.close()
        if not 200 <= r.status < 300:
            raise OSError(f"Envoy's admin interface answered {r.status} to {path}")
        return body


# ---------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------

def envoy_message(line: str) -> str:
    # "[2026-01-01 00:00:00.000][123][warning][config] [source/...cc:81] message" → "message"
    rest = line
    if rest.startswith("["):
        parts = rest.split("] ", 2)
        rest = parts[-1]
    return " ".join(rest.split())[:300]


def death_reason(log_path: Path) -> str:
    """Why Envoy ended, as logged: its first critical line (the assertion or the configuration
    error; the backtrace frames follow it), else its last error, else its last warning, else
    its last line (a command-line error is printed untagged: ``Error: invalid log level``)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    critical = [ln for ln in lines if "[critical]" in ln]
    if critical:
        return envoy_message(critical[0])
    for level in ("[error]", "[warning]"):
        hits = [ln for ln in lines if level in ln]
        if hits:
            return envoy_message(hits[-1])
    untagged = [ln for ln in lines if ln.strip()]
    return envoy_message(untagged[-1]) if untagged else ""


def keep_log(log_path: Path) -> Path | None:
    """Copy Envoy's log out of the run folder (which is removed) into a private file of its own."""
    try:
        data = log_path.read_bytes()
    except OSError:
        return None
    fd, kept = tempfile.mkstemp(prefix=LOG_PREFIX, suffix=".log")  # 0600, never through a symlink
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(kept)
