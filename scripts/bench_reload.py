"""Time how soon a live local gateway serves a rotated certificate, and one SIMPLE verify check.

The tests only wait for these to happen (with generous ceilings); the figures are measured here.

Set-up (not timed), in a temporary directory: a kimpki home with a CA and a server certificate
for kim.example.com (`kimpki ca init`, `kimpki issue`), its credential Secret manifest
(`kimpki secret create … --dry-run -o yaml`) and a Gateway (`kimpki gateway render`), served by
`kimpki gateway serve -f DIR --port 0` (a real Envoy with file-based SDS).

Timed, RUNS times each:
  rotate   `kimpki rotate kim-credential --manifests DIR`, the whole process
  served   from rotate's return until a new TLS handshake gets the new serial (polled every 5 ms)
  check    one in-process SIMPLE `kimpki verify` check (kimpki.verify.check_endpoint), which
           waits 0.05 s for a TLS 1.3 refusal that a SIMPLE server never sends

  scripts/bench reload [--runs 11]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KIMPKI = str(Path(sys.executable).with_name("kimpki"))
HOST = "kim.example.com"


def kimpki(env: dict, *args: str) -> str:
    return subprocess.run([KIMPKI, *args], env=env, check=True, capture_output=True, text=True).stdout


def served_serial(port: int, cafile: Path) -> int:
    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f}s  (min {min(xs):.3f}, max {max(xs):.3f}, {len(xs)} runs)"


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench reload", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=11, help="timed runs of each (default 11)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be positive")

    from kimpki.verify import check_endpoint, make_target

    work = Path(tempfile.mkdtemp(prefix="kimpki-bench-reload-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMPKI_")}
    env["KIMPKI_HOME"] = str(work / "home")
    gateway = None
    try:
        kimpki(env, "ca", "init", "example.com")
        kimpki(env, "issue", HOST)
        folder = work / "deploy"
        folder.mkdir()
        (folder / "kim.yaml").write_text(
            kimpki(env, "secret", "create", "kim-credential", "--cert", HOST, "--dry-run", "-o", "yaml"))
        (folder / "gateway.yaml").write_text(
            kimpki(env, "gateway", "render", "--host", HOST, "--credential", "kim-credential", "-o", "yaml"))
        cafile = work / "home" / "cas" / "example.com" / "ca.crt"
        gateway = subprocess.Popen([KIMPKI, "gateway", "serve", "-f", str(folder), "--port", "0"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        port = int(gateway.stdout.readline().rsplit(":", 1)[1])
        while "ready in" not in (line := gateway.stderr.readline()):
            if not line:
                sys.exit("kimpki gateway serve ended before it was ready")
        print(f"# kimpki gateway serve at 127.0.0.1:{port}; python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs; {args.runs} runs after one warm-up\n", flush=True)

        rotate, served = [], []
        for i in range(args.runs + 1):
            t0 = time.perf_counter()
            out = kimpki(env, "rotate", "kim-credential", "--manifests", str(folder), "--json")
            t1 = time.perf_counter()
            new = int(json.loads(out)["new_serial"], 16)
            while served_serial(port, cafile) != new:
                if time.perf_counter() - t1 > 60:
                    sys.exit("the gateway did not serve the new certificate within 60 s")
                time.sleep(0.005)
            if i:  # the first run warms the page cache and .pyc files
                rotate.append(t1 - t0)
                served.append(time.perf_counter() - t1)

        target = make_target(HOST, connect=f"127.0.0.1:{port}", ca_file=str(cafile))
        check_endpoint(target)
        checks = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            report = check_endpoint(target)
            checks.append(time.perf_counter() - t0)
            if not report.ok:
                sys.exit(f"verify failed: {report.message}")

        print(f"{'rotate':<8} {fmt(rotate)}")
        print(f"{'served':<8} {fmt(served)}  after rotate returned")
        print(f"{'check':<8} {fmt(checks)}  one SIMPLE verify check, in process")
    finally:
        if gateway is not None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(15)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
