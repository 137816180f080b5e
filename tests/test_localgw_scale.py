"""A large gateway: 1,000 SNI credentials on one port with the real CLI and a real Envoy, and the
one-line error when Envoy runs into a kernel limit anyway.

Envoy gives every file-based SDS secret its own inotify instance, and Linux allows 128 per user:
the local gateway therefore serves secrets over one gRPC stream (kimpki.localgw.sds_server).
No timing is asserted here (scripts/bench gateway measures); waits have generous ceilings.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kimpki.pki import keys, profiles
from kimpki.pki.names import parse_host
from tests.conftest import ROOT, Result, assert_one_line_error
from tests.localgw_pki import gateway_yaml, https_server

CREDENTIALS = 1000


class Authority:
    """A CA made with kimpki's own profiles, in memory: 1,000 leaves in about a second."""

    def __init__(self) -> None:
        now = profiles.utcnow()
        self.now = now
        key = keys.generate_key()
        cert = profiles.make_root(key, "scale.example.com", "scale Inc.", now - timedelta(minutes=5),
                                  now + timedelta(days=3))
        self.issuer = profiles.Issuer(cert, key)
        self.pem = cert.public_bytes(serialization.Encoding.PEM)

    def leaf(self, host: str) -> tuple[bytes, bytes, int]:
        key = keys.generate_key()
        cert = profiles.issue_leaf(key.public_key(), [parse_host(host)], profiles.LeafKind.SERVER, self.issuer,
                                   self.now - timedelta(minutes=5), self.now + timedelta(days=2))
        return cert.public_bytes(serialization.Encoding.PEM), keys.key_to_pem(key), cert.serial_number


def host(i: int) -> str:
    return f"h{i:04d}.scale.example.com"


def secret_yaml(name: str, cert: bytes, key: bytes) -> str:
    """What ``kimpki apply`` writes for a SIMPLE credential (generic keys), minus annotations."""
    b64 = lambda b: base64.b64encode(b).decode()
    return (f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: istio-system\n"
            f"type: Opaque\ndata:\n  cert: {b64(cert)}\n  key: {b64(key)}\n")


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def served_serial(port: int, name: str, ctx: ssl.SSLContext) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def inotify_instances(pid: int) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fd_dir.iterdir() if os.readlink(fd) == "anon_inode:inotify")


def serve(folder: Path, *prefix: str) -> subprocess.Popen:
    """``kimpki gateway serve -f FOLDER --port 0``, the real CLI (optionally under ``prefix``)."""
    return subprocess.Popen([*prefix, sys.executable, "-m", "kimpki", "gateway", "serve", "-f", str(folder),
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """1,000 credential Secrets (one file each, as apply writes them) and one Gateway naming them."""
    folder = tmp_path_factory.mktemp("large")
    ca = Authority()
    serials = {}
    for i in range(CREDENTIALS):
        cert, key, serials[host(i)] = ca.leaf(host(i))
        (folder / f"c{i:04d}.yaml").write_text(secret_yaml(f"c{i:04d}", cert, key))
    (folder / "gateway.yaml").write_text(gateway_yaml("scale-gateway", [
        https_server(host(i), f"https-{i:04d}", "SIMPLE", f"c{i:04d}") for i in range(CREDENTIALS)]))
    return folder, ca, serials


@pytest.mark.slow
def test_a_thousand_credentials_are_served_and_one_rotates_without_a_failed_handshake(large):
    folder, ca, serials = large
    proc = serve(folder)
    try:
        lines = [proc.stdout.readline() for _ in range(CREDENTIALS)]
        assert all(ln.startswith("serving h") for ln in lines), lines[-1]
        port = int(lines[0].rsplit(":", 1)[1])
        while "ready in" not in (line := proc.stderr.readline()):
            assert line, "gateway serve ended before it was ready"
        envoy_pid = int(line.split("Envoy pid ")[1].split(",")[0])

        # Every host is served on the one port with its own certificate, chained to the CA.
        ctx = ssl.create_default_context(cadata=ca.pem.decode())
        with ThreadPoolExecutor(16) as pool:
            got = dict(zip(serials, pool.map(lambda h: served_serial(port, h, ctx), serials)))
        assert got == serials
        # The design's point: one inotify instance (the listener file), not one per secret.
        assert inotify_instances(envoy_pid) == 1

        # Rotate one credential while handshakes run against it and its neighbours.
        rotated = host(CREDENTIALS // 2)
        cert, key, new_serial = ca.leaf(rotated)
        done, failures, handshakes = threading.Event(), [], [0]

        def hammer() -> None:
            names = [rotated, host(0), host(CREDENTIALS - 1)]
            while not done.is_set():
                try:
                    served_serial(port, names[handshakes[0] % 3], ctx)
                except (OSError, ssl.SSLError) as e:
                    failures.append(repr(e))
                handshakes[0] += 1

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            write_atomically(folder / f"c{CREDENTIALS // 2:04d}.yaml", secret_yaml(f"c{CREDENTIALS // 2:04d}", cert, key))
            deadline = time.monotonic() + 60
            while served_serial(port, rotated, ctx) != new_serial:
                assert time.monotonic() < deadline, "the rotated certificate was never served"
                time.sleep(0.02)
            time.sleep(0.2)  # let the hammer run on the new certificate too
        finally:
            done.set()
            for t in threads:
                t.join(30)
        assert failures == [] and handshakes[0] > 0
        assert served_serial(port, host(1), ctx) == serials[host(1)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(envoy_pid, 0)


def _user_namespaces() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--user", "--map-root-user", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _user_namespaces(), reason="needs unshare and user namespaces")
def test_an_exhausted_inotify_limit_is_one_line_naming_the_sysctl(large, tmp_path):
    """The kernel's per-user inotify instance limit, lowered to 0 in a user namespace of its own
    (the machine's setting is untouched): Envoy cannot watch its listener file and aborts."""
    folder, _, _ = large
    small = tmp_path / "small"
    small.mkdir()
    shutil.copy(folder / "c0000.yaml", small)
    (small / "gateway.yaml").write_text(gateway_yaml("scale-gateway", [https_server(host(0), "https", "SIMPLE", "c0000")]))
    proc = serve(small, "unshare", "--user", "--map-root-user", "sh", "-c",
                 'echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"', "sh")
    out, err = proc.communicate(timeout=60)
    assert_one_line_error(Result(proc.returncode, out, err), 1,
                          "kimpki: error: Envoy stopped at a system limit: no inotify instance left for this user "
                          "(fs.inotify.max_user_instances", "sysctl -w fs.inotify.max_user_instances=")
