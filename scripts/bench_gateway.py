"""`kimpki gateway serve` with many SNI credentials on one port: start-up, memory, rotation.

For each count of credentials (default 100 and 1,000), in a temporary directory:
  * set-up (not timed): a CA and COUNT server certificates made with kimpki's own profiles in
    this process, one credential Secret manifest per host (as `kimpki apply` writes them) and one
    Gateway with COUNT SIMPLE servers on port 443;
  * timed: `kimpki gateway serve -f DIR --port 0`, the real CLI, from its start until it prints
    "ready in" (every listener bound, every secret delivered), and until every host answers a
    TLS handshake with its own certificate;
  * measured: Envoy's resident memory (VmRSS) once ready, and the inotify instances it holds;
  * timed, ROTATIONS times: one Secret file replaced atomically (a new certificate for one host)
    until that host's handshake presents the new serial, while two threads keep handshaking with
    it and its neighbours (failures counted).

With --against GIT_REF, kimpki as it was at that commit serves the same folder right after, run
for run (the anchor: file-based SDS, one inotify instance per secret, so it stops at the
kernel's limit of 128 per user).

  scripts/bench gateway [--counts 100,1000] [--rotations 5] [--against 1b44aa0]
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from bench_common import kimpki_command  # scripts/ is sys.path[0] when run as a script

from cryptography import x509
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parent.parent


class Authority:
    def __init__(self) -> None:
        from kimpki.pki import keys, profiles

        self.now = profiles.utcnow()
        key = keys.generate_key()
        cert = profiles.make_root(key, "bench.example.com", "bench Inc.", self.now - timedelta(minutes=5),
                                  self.now + timedelta(days=3))
        self.issuer = profiles.Issuer(cert, key)
        self.pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    def leaf(self, host: str) -> tuple[bytes, bytes, int]:
        from kimpki.pki import keys, profiles
        from kimpki.pki.names import parse_host

        key = keys.generate_key()
        cert = profiles.issue_leaf(key.public_key(), [parse_host(host)], profiles.LeafKind.SERVER, self.issuer,
                                   self.now - timedelta(minutes=5), self.now + timedelta(days=2))
        return cert.public_bytes(serialization.Encoding.PEM), keys.key_to_pem(key), cert.serial_number


def secret_yaml(name: str, cert: bytes, key: bytes) -> str:
    b64 = lambda b: base64.b64encode(b).decode()
    return (f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: istio-system\n"
            f"type: Opaque\ndata:\n  cert: {b64(cert)}\n  key: {b64(key)}\n")


def host(i: int) -> str:
    return f"h{i:04d}.bench.example.com"


def set_up(folder: Path, n: int, ca: Authority) -> dict[str, int]:
    folder.mkdir()
    serials = {}
    servers = []
    for i in range(n):
        cert, key, serials[host(i)] = ca.leaf(host(i))
        (folder / f"c{i:04d}.yaml").write_text(secret_yaml(f"c{i:04d}", cert, key))
        servers.append(f"  - port: {{number: 443, name: https-{i:04d}, protocol: HTTPS}}\n"
                       f"    hosts: [{host(i)}]\n    tls: {{mode: SIMPLE, credentialName: c{i:04d}}}\n")
    (folder / "gateway.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: bench, namespace: istio-system}\n"
        "spec:\n  selector: {istio: ingressgateway}\n  servers:\n" + "".join(servers))
    return serials


def served_serial(port: int, name: str, ctx: ssl.SSLContext) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def measure(label: str, cmd: list[str], folder: Path, serials: dict[str, int], ca: Authority,
            rotations: int) -> None:
    n = len(serials)
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "gateway", "serve", "-f", str(folder), "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = []  # stdout: one "serving ..." line per server (read on, or a full pipe stops the gateway)

        def drain_stdout() -> None:
            for line in proc.stdout:
                if not first:
                    first.append(line)

        threading.Thread(target=drain_stdout, daemon=True).start()
        port, envoy_pid, errors = None, None, []
        while True:
            line = proc.stderr.readline()
            if not line:
                print(f"{label:<26} {n:>5} credentials: did not start: {''.join(errors[-1:]).strip()}", flush=True)
                return
            if "ready in" in line:
                envoy_pid = int(line.split("Envoy pid ")[1].split(",")[0])
                break
            errors.append(line)
        ready = time.perf_counter() - t0
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        while not first:
            time.sleep(0.01)
        port = int(first[0].rsplit(":", 1)[1])
        ctx = ssl.create_default_context(cadata=ca.pem)
        with ThreadPoolExecutor(16) as pool:
            got = dict(zip(serials, pool.map(lambda h: served_serial(port, h, ctx), serials)))
        all_served = time.perf_counter() - t0
        wrong = sum(got[h] != serials[h] for h in serials)
        status = Path(f"/proc/{envoy_pid}/status").read_text()
        rss = int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1]) / 1024
        fds = Path(f"/proc/{envoy_pid}/fd")
        inotify = sum(1 for fd in fds.iterdir() if os.readlink(fd) == "anon_inode:inotify")

        latencies, failures, handshakes = [], [0], [0]
        for r in range(rotations):
            i = (r * 97 + n // 2) % n
            name = host(i)
            cert, key, new_serial = ca.leaf(name)
            done = threading.Event()

            def hammer() -> None:
                names = [name, host((i + 1) % n), host((i - 1) % n)]
                k = 0
                while not done.is_set():
                    try:
                        served_serial(port, names[k % 3], ctx)
                    except (OSError, ssl.SSLError):
                        failures[0] += 1
                    handshakes[0] += 1
                    k += 1

            threads = [threading.Thread(target=hammer) for _ in range(2)]
            for t in threads:
                t.start()
            path = folder / f"c{i:04d}.yaml"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(secret_yaml(f"c{i:04d}", cert, key))
            t1 = time.perf_counter()
            os.replace(tmp, path)
            while served_serial(port, name, ctx) != new_serial:
                if time.perf_counter() - t1 > 60:
                    break
                time.sleep(0.005)
            latencies.append(time.perf_counter() - t1)
            done.set()
            for t in threads:
                t.join()
        print(f"{label:<26} {n:>5} credentials: ready {ready:.2f} s, every host served {all_served:.2f} s "
              f"({wrong} wrong); Envoy RSS {rss:.0f} MiB, {inotify} inotify instances; rotation to new serial "
              f"median {statistics.median(latencies):.3f} s (min {min(latencies):.3f}, max {max(latencies):.3f}, "
              f"{rotations} rotations); {handshakes[0]} handshakes during them, {failures[0]} failed", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="100,1000")
    ap.add_argument("--rotations", type=int, default=5)
    ap.add_argument("--against", metavar="GIT_REF")
    args = ap.parse_args()
    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          f"fs.inotify.max_user_instances = {Path('/proc/sys/fs/inotify/max_user_instances').read_text().strip()}",
          flush=True)
    ca = Authority()
    with tempfile.TemporaryDirectory(prefix="kimpki-bench-gateway-") as d:
        work = Path(d)
        for n in (int(x) for x in args.counts.split(",")):
            folder = work / f"m{n}"
            serials = set_up(folder, n, ca)
            measure("kimpki gateway serve", kimpki_command(None, work), folder, serials, ca, args.rotations)
            if args.against:
                serials = set_up(work / f"m{n}-anchor", n, ca)
                measure(f"kimpki@{args.against}", kimpki_command(args.against, work), work / f"m{n}-anchor",
                        serials, ca, args.rotations)


if __name__ == "__main__":
    main()
