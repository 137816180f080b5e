"""Time whole processes, alternating A and B so machine drift hits both; print medians and ratios.

Sequences compared (each run in a fresh temporary directory):
  openssl-rsa  the three manual openssl commands (root, CSR, x509 -req), RSA-2048
  kimpki-rsa   `kimpki ca init` + `kimpki issue` with --key-type rsa-2048
  kimpki-ec    `kimpki ca init` + `kimpki issue` with the default EC P-256
  help         `kimpki --help`
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import compare  # scripts/ is on sys.path: this script's own folder

KIMPKI = [str(Path(sys.executable).with_name("kimpki"))]


def openssl_rsa(d: Path) -> list[list[str]]:
    return [
        ["openssl", "req", "-x509", "-sha256", "-nodes", "-days", "365", "-newkey", "rsa:2048",
         "-subj", "/O=example Inc./CN=example.com", "-keyout", "example.com.key", "-out", "example.com.crt"],
        ["openssl", "req", "-out", "kim.example.com.csr", "-newkey", "rsa:2048", "-nodes",
         "-keyout", "kim.example.com.key", "-subj", "/CN=kim.example.com/O=kim organization"],
        ["openssl", "x509", "-req", "-days", "365", "-CA", "example.com.crt", "-CAkey", "example.com.key",
         "-set_serial", "0", "-in", "kim.example.com.csr", "-out", "kim.example.com.crt"],
    ]


def kimpki_seq(key_type: str):
    def seq(d: Path) -> list[list[str]]:
        home = ["--home", str(d / "home")]
        return [KIMPKI + home + ["ca", "init", "example.com", "--org", "example Inc.", "--key-type", key_type],
                KIMPKI + home + ["issue", "kim.example.com", "--org", "kim organization", "--key-type", key_type]]
    return seq


def help_seq(d: Path) -> list[list[str]]:
    return [KIMPKI + ["--help"]]


def run_once(seq) -> float:
    d = Path(tempfile.mkdtemp(prefix="kimpki-bench-"))
    try:
        t0 = time.perf_counter()
        for cmd in seq(d):
            subprocess.run(cmd, cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=11)
    args = ap.parse_args()
    print(f"# {args.runs} alternating runs after one warm-up; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs; {subprocess.run(['openssl', 'version'], capture_output=True, text=True).stdout.strip()}\n")
    rsa, ec = kimpki_seq("rsa-2048"), kimpki_seq("ec-p256")
    compare("kimpki-rsa", lambda: run_once(rsa), "openssl-rsa", lambda: run_once(openssl_rsa), args.runs, width=11)
    compare("kimpki-ec", lambda: run_once(ec), "openssl-rsa", lambda: run_once(openssl_rsa), args.runs, width=11)
    run_once(help_seq)
    t = [run_once(help_seq) for _ in range(args.runs)]
    print(f"{'help':<11} median {statistics.median(t):.3f}s  (min {min(t):.3f}, max {max(t):.3f})")


if __name__ == "__main__":
    main()
