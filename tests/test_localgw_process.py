"""``kimpki gateway serve`` and its Envoy as processes, attacked: a killed kimpki, an alias bomb in
the watched folder, a crashing Envoy, secrets in environments, the admin API. Real Envoy, real
CLI processes; every wait is on a condition with a bound."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kimpki.errors import OperationError
from kimpki.localgw import envoy_process as ep
from kimpki.localgw.runner import LocalGateway
from tests.conftest import wait_until
from tests.test_localgw_envoy import pki, served_serial, write_manifests  # noqa: F401  (pki: a fixture)
from tests.test_safe_yaml import list_bomb

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"


def running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rpartition(")")[2].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Serve:
    """``kimpki gateway serve`` as a user runs it, with a CA passphrase in its environment."""

    def __init__(self, folder: Path, port: int, *extra: str, env: dict | None = None):
        self.port = port
        self.lines: list[str] = []  # stderr, as it comes
        self._new_line = threading.Condition()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("KIMPKI_")}
        child_env.update({"KIMPKI_CA_PASSPHRASE": PASSPHRASE, "MY_POLICY_PASSPHRASE": PASSPHRASE}, **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-m", "kimpki", "gateway", "serve", "-f", str(folder),
                                      "--port", str(port), *extra],
                                     cwd=ROOT, env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        threading.Thread(target=self._read, daemon=True).start()
        try:
            ready = self.wait_line(lambda ln: "ready in" in ln, "gateway serve ready")
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        self.envoy_pid = int(re.search(r"Envoy pid (\d+)", ready).group(1))
        self.admin = re.search(r"admin (\S+?)\)", ready).group(1)
        self.run_folder = Path("/proc", str(self.envoy_pid), "cmdline").read_bytes().split(b"\0")[2].decode()
        self.run_folder = Path(self.run_folder).parent  # -c RUN_FOLDER/bootstrap.json

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self.lines.append(None)  # end of output
            self._new_line.notify_all()

    def wait_line(self, match, what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                for line in self.lines:
                    if line is None:
                        raise AssertionError(f"{what}: gateway serve ended first: {self.lines}")
                    if match(line):
                        return line
                left = deadline - time.monotonic()
                assert left > 0, f"{what}: not within {timeout:g} s: {self.lines}"
                self._new_line.wait(left)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if running(self.envoy_pid):
                os.killpg(self.envoy_pid, signal.SIGKILL)


@pytest.fixture
def folder(pki, tmp_path):  # noqa: F811
    return write_manifests(tmp_path / "m", pki)


# -- issue 10 item 5: a killed `gateway serve` ---------------------------------------------------

def test_sigkill_of_gateway_serve_takes_envoy_and_its_keys_with_it(pki, folder):  # noqa: F811
    port = free_port()
    first = Serve(folder, port)
    try:
        # Keys are served from kimpki's memory over the SDS socket, not written; the folder holds that socket.
        assert (first.run_folder / "sds.sock").exists(), "the run folder holds the SDS socket"
        first.proc.kill()  # SIGKILL: no handler, no atexit, no finally
        first.proc.wait(10)
        wait_until(lambda: not running(first.envoy_pid), "Envoy gone after its parent was killed")
        wait_until(lambda: port_free(port), "the port free again")
        wait_until(lambda: not first.run_folder.exists(), "the killed run's key folder removed")
    finally:
        first.stop()
    second = Serve(folder, port)  # the same port: no "Address already in use"
    try:
        assert served_serial(port, "kim.example.com", pki["ca"].cert) == pki["kim"].serial
    finally:
        assert second.stop() == 0
    assert not second.run_folder.exists()


def test_sigkill_with_the_watchdog_gone_too_envoy_dies_and_next_start_removes_the_keys(pki, folder):  # noqa: F811
    """The parent-death signal alone ends Envoy; the next start removes what the killed one left."""
    port = free_port()
    first = Serve(folder, port)
    try:
        (watchdog,) = [p for p in children(first.proc.pid) if p != first.envoy_pid]
        os.kill(watchdog, signal.SIGKILL)
        first.proc.kill()
        first.proc.wait(10)
        wait_until(lambda: not running(first.envoy_pid), "Envoy gone by its parent-death signal")
        wait_until(lambda: port_free(port), "the port free again")
        assert (first.run_folder / "bootstrap.json").exists(), "the run folder left behind"
    finally:
        first.stop()
    second = Serve(folder, port)
    try:
        assert not first.run_folder.exists()
        assert served_serial(port, "kim.example.com", pki["ca"].cert) == pki["kim"].serial
    finally:
        assert second.stop() == 0


def test_next_start_kills_a_leftover_envoy_and_removes_its_folder(tmp_path):
    """A run folder whose kimpki is gone but whose Envoy still runs (both safeguards failed):
    the cleanup kills the recorded process (checked by pid and start time) and removes the keys."""
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    leftover = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        folder = tmp_path / f"{ep.RUN_PREFIX}stale"
        (folder / "sds" / "x").mkdir(parents=True, mode=0o700)
        (folder / "sds" / "x" / "sds.json").write_text("private key")
        (folder / ep.OWNER_FILE).write_text(f"{dead_owner.pid} 1\n{ep._identity(leftover.pid)}\n")
        alive = tmp_path / f"{ep.RUN_PREFIX}alive"
        alive.mkdir()
        (alive / ep.OWNER_FILE).write_text(ep._identity(os.getpid()) + "\n")
        unowned = tmp_path / f"{ep.RUN_PREFIX}being-made"
        unowned.mkdir()
        assert ep.remove_stale_run_folders(tmp_path) == [folder]
        assert leftover.wait(10) == -signal.SIGKILL
        assert not folder.exists() and alive.exists() and unowned.exists()
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


# -- issue 10 items 6 and 9: what Envoy can see, and who can reach its admin API --------------------

@pytest.fixture(scope="module")
def serving(pki, tmp_path_factory):  # noqa: F811
    s = Serve(write_manifests(tmp_path_factory.mktemp("m"), pki), free_port())
    yield s
    assert s.stop() == 0


def test_envoy_environ_holds_no_ca_passphrase(serving):
    environ = Path(f"/proc/{serving.envoy_pid}/environ").read_bytes()
    assert PASSPHRASE.encode() not in environ and b"KIMPKI_" not in environ
    names = {e.split(b"=", 1)[0].decode() for e in environ.split(b"\0") if e}
    assert names <= set(ep.CHILD_ENV_NAMES)
    (watchdog,) = [p for p in children(serving.proc.pid) if p != serving.envoy_pid]
    assert PASSPHRASE.encode() not in Path(f"/proc/{watchdog}/environ").read_bytes()


def _listening_tcp_ports(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN, and Envoy's
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_admin_api_is_no_tcp_port_but_a_private_socket(serving):
    assert _listening_tcp_ports(serving.envoy_pid) == {serving.port}
    sock = serving.run_folder / "admin.sock"
    assert serving.admin == f"unix:{sock}"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(serving.run_folder.stat().st_mode) == 0o700
    r = subprocess.run(["curl", "-sS", "--max-time", "5", "--unix-socket", str(sock), "http://localhost/ready"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "LIVE", r.stderr


def test_a_tcp_admin_port_only_when_asked_and_with_a_warning(folder):
    logged: list[str] = []
    with LocalGateway([folder], port_map={443: 0}, admin_port=0, log=logged.append) as gw:
        assert gw.admin_address.startswith("127.0.0.1:")
        assert int(gw.admin_address.rsplit(":", 1)[1]) in _listening_tcp_ports(gw.pid)
        assert f"warning: Envoy's admin interface listens on {gw.admin_address} without authentication: any " \
               "local user can read the served certificates (/certs) and stop Envoy (/quitquitquit)" in logged


# -- issue 10 item 4: an alias bomb in the watched folder -------------------------------------------

def test_alias_bomb_in_a_watched_folder_keeps_the_last_good_configuration(pki, folder):  # noqa: F811
    s = Serve(folder, free_port())
    try:
        (folder / "bomb.yaml").write_text(list_bomb())
        bomb_line = f"{folder / 'bomb.yaml'}:4: YAML aliases expand to over "
        s.wait_line(lambda ln: bomb_line in ln, "the bomb reported")
        assert served_serial(s.port, "kim.example.com", pki["ca"].cert) == pki["kim"].serial
        assert s.proc.poll() is None and running(s.envoy_pid)
    finally:
        code = s.stop(signal.SIGTERM, timeout=20)  # stoppable: was ignored while the flattener ran
    assert code == 0
    assert [ln for ln in s.lines if ln and "bomb.yaml" in ln] == [
        f"kimpki: warning: {folder / 'bomb.yaml'}:4: YAML aliases expand to over 4,194,304 nodes and characters "
        "(an alias bomb?); refused; keeping the current configuration"]
    assert not running(s.envoy_pid)


# -- issue 12 item 2: when Envoy dies --------------------------------------------------------------

def test_envoy_crash_shows_its_first_critical_line_and_keeps_its_log(folder):
    s = Serve(folder, free_port())
    try:
        os.kill(s.envoy_pid, signal.SIGABRT)  # Envoy's crash handler logs a backtrace, then dies
        code = s.proc.wait(20)
    finally:
        s.stop()
    errors = [ln for ln in s.lines if ln and ln.startswith("kimpki: error:")]
    assert code == 1 and len(errors) == 1, s.lines
    m = re.fullmatch(r"kimpki: error: Envoy exited \(killed by signal 6\): Caught Aborted, suspect faulting "
                     r"address \S+; Envoy's log: (\S+)", errors[0])
    assert m, errors[0]
    kept = Path(m.group(1))
    try:
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert "Backtrace" in kept.read_text() and "#0:" in kept.read_text()
    finally:
        kept.unlink()
    assert not s.run_folder.exists()


def test_envoy_refusing_to_start_names_its_error_and_keeps_its_log(folder):
    gw = LocalGateway([folder], port_map={443: 0}, log_level="bogus")
    with pytest.raises(OperationError) as e:
        gw.start()
    try:
        logged = gw.kept_log.read_text().strip()
        assert logged.lower() == "error: invalid log level specified 'bogus'"
        assert str(e.value) == f"Envoy exited (code 1): {logged}; Envoy's log: {gw.kept_log}"
    finally:
        gw.kept_log.unlink()
    assert gw.workdir is None
