"""A hostile CSR costs no more than an ordinary one: ``kimpki sign`` of a CSR with 20,000
subjectAltNames (refused: at most 100) against ``kimpki sign`` of a CSR with one, whole processes,
alternating. Before the cap and the linear duplicate check, the 20,000-name CSR took 15 s and
made a 527 KB certificate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench_common import compare  # scripts/ is on sys.path: this script's own folder

KIMPKI = [str(Path(sys.executable).with_name("kimpki"))]


def csr(n: int) -> bytes:
    names = [x509.DNSName(f"h{i}.example.com") for i in range(n)]
    req = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "h0.example.com")]))
           .add_extension(x509.SubjectAlternativeName(names), critical=False)
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    return req.public_bytes(serialization.Encoding.PEM)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--sans", type=int, default=20000)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="kimpki-bench-"))
    try:
        home = ["--home", str(d / "home")]
        subprocess.run(KIMPKI + home + ["ca", "init", "example.com"], check=True, stdout=subprocess.DEVNULL)
        (d / "many.csr").write_bytes(csr(args.sans))
        (d / "one.csr").write_bytes(csr(1))

        def sign(name: str, expect: int):
            def run() -> float:
                t0 = time.perf_counter()
                code = subprocess.run(KIMPKI + home + ["sign", str(d / name)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL).returncode
                assert code == expect, (name, code)
                return time.perf_counter() - t0
            return run

        print(f"# {args.runs} alternating runs after one warm-up; python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs\n")
        compare(f"{args.sans}-sans", sign("many.csr", 2), "1-san", sign("one.csr", 0), args.runs)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
