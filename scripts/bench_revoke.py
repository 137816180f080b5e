"""Time how soon a live local gateway refuses a revoked client certificate, and what a CRL of
10,000 entries costs.

The tests only wait for a refusal (with generous ceilings); the figures are measured here.

Set-up (not timed), in a temporary directory: a kimpki home with a CA, a server certificate and
RUNS + 3 client certificates; one client revoked (so the CA has a CRL); a folder with two MUTUAL
servers of that certificate: ``sds.kim.example.com`` (SDS credential, CRL in key ``crl``) and
``files.kim.example.com`` (file-mounted, ``caCrl``), served by `kimpki gateway serve -f DIR --port 0`.

Timed, RUNS times (after one warm-up):
  revoke   `kimpki revoke CLIENT --manifests DIR`, the whole process
  refused  from revoke's return until a new handshake with that client is refused as revoked
           (certificate_revoked alert), for each server (polled every 5 ms, both in turn)

Then the CRL of 10,000 entries (9,999 recorded directly in the store, one by `kimpki revoke`):
  sign     `kimpki crl CA --refresh`, the whole process (median of 5), and the CRL signing alone
           (kimpki.pki.revocation.build_crl, in process)
  size     PEM and DER bytes, and the SDS credential Secret carrying it (YAML bytes)
  Envoy    `kimpki gateway serve` of that Secret: ready time, one accepted and one refused client

  scripts/bench revoke [--runs 7] [--entries 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

KIMPKI = str(Path(sys.executable).with_name("kimpki"))
SERVER = ("kim.example.com", "*.kim.example.com")
HOSTS = {"sds": "sds.kim.example.com", "files": "files.kim.example.com"}


def kimpki(env: dict, *args: str) -> str:
    return subprocess.run([KIMPKI, *args], env=env, check=True, capture_output=True, text=True).stdout


def handshake(port: int, host: str, cafile: Path, client: Path, tls12: bool = False) -> str:
    """``accepted``, ``revoked`` or another failure's name: one connection with ``client``'s
    certificate, then GET /health. Over TLS 1.3 a refusal arrives after the handshake, and a
    client whose request crosses the server's close sees a reset instead of the alert; over
    TLS 1.2 (``tls12``) the alert ends the handshake itself, so a refusal is always seen as such."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(client / "cert.crt"), str(client / "cert.key"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                answer = b""
                while not answer.endswith(b'{"status":"UP"}') and (chunk := tls.recv(4096)):
                    answer += chunk
        return "accepted" if answer.startswith(b"HTTP/1.1 200") else "bad answer"
    except ssl.SSLError as e:
        return "revoked" if "REVOKED" in str(e).upper() else type(e).__name__ + ": " + str(e)
    except OSError as e:
        return type(e).__name__


class Gateway:
    def __init__(self, env: dict, folder: Path):
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([KIMPKI, "gateway", "serve", "-f", str(folder), "--port", "0"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline().rsplit(":", 1)[1])
        while "ready in" not in (line := self.proc.stderr.readline()):
            if not line:
                sys.exit("kimpki gateway serve ended before it was ready")
        self.ready = time.perf_counter() - t0
        self.ready_line = line.strip()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f}s  (min {min(xs):.3f}, max {max(xs):.3f}, {len(xs)} runs)"


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench revoke", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7, help="timed revocations (default 7)")
    ap.add_argument("--entries", type=int, default=10_000, help="entries of the large CRL (default 10,000)")
    args = ap.parse_args()
    if args.runs < 1 or args.entries < 2:
        ap.error("--runs must be positive, --entries at least 2")

    work = Path(tempfile.mkdtemp(prefix="kimpki-bench-revoke-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMPKI_")}
    home = work / "home"
    env["KIMPKI_HOME"] = str(home)
    gateway = None
    try:
        kimpki(env, "ca", "init", "clients.example")
        kimpki(env, "issue", *SERVER, "--ca", "clients.example")
        clients = [f"c{i}.example" for i in range(args.runs + 3)]  # + a warm-up, a CRL starter, a keeper
        for c in clients:
            kimpki(env, "issue", "--client", c, "--ca", "clients.example")
        kimpki(env, "revoke", clients.pop())  # the CA has a CRL from here on: caCrl has a file to name
        keeper = clients.pop()  # never revoked: accepted throughout
        folder = work / "deploy"
        folder.mkdir()
        (folder / "sds.yaml").write_text(kimpki(env, "secret", "create", "sds-credential", "--cert", SERVER[0],
                                                "--mutual", "--dry-run", "-o", "yaml"))
        (folder / "files.yaml").write_text(kimpki(env, "secret", "create", "--file-mounted", "--cert", SERVER[0],
                                                  "--mutual", "--dry-run", "-o", "yaml"))
        (folder / "gateway-sds.yaml").write_text(kimpki(
            env, "gateway", "render", "--name", "sds", "--host", HOSTS["sds"], "--credential", "sds-credential",
            "--mode", "MUTUAL", "-o", "yaml"))
        (folder / "gateway-files.yaml").write_text(kimpki(
            env, "gateway", "render", "--name", "files", "--host", HOSTS["files"], "--file-mounted", "--mode",
            "MUTUAL", "--ca-file-name", "clients.example.crt", "--crl", "-o", "yaml"))
        cafile = home / "cas" / "clients.example" / "ca.crt"
        gateway = Gateway(env, folder)
        port = gateway.port
        print(f"# kimpki gateway serve at 127.0.0.1:{port}; python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
              f"{args.runs} revocations after one warm-up\n", flush=True)

        revoke, refused = [], {form: [] for form in HOSTS}
        others: dict[str, int] = {}  # the revoked client's other outcomes meanwhile
        keeper_failed: dict[str, int] = {}  # the never-revoked client's failures meanwhile
        keeper_cert = home / "certs" / keeper / "current"
        for i, client in enumerate(clients):
            cert = home / "certs" / client / "current"
            for host in HOSTS.values():
                if handshake(port, host, cafile, cert) != "accepted":
                    sys.exit(f"{client} is not accepted by {host} before its revocation")
            t0 = time.perf_counter()
            kimpki(env, "revoke", client, "--manifests", str(folder))
            t1 = time.perf_counter()
            pending = dict(HOSTS)
            while pending:
                for form, host in list(pending.items()):
                    outcome = handshake(port, host, cafile, cert, tls12=True)
                    if outcome == "revoked":
                        if i:  # the first run warms the page cache and .pyc files
                            refused[form].append(time.perf_counter() - t1)
                        del pending[form]
                    elif outcome != "accepted":
                        others[f"{form}: {outcome}"] = others.get(f"{form}: {outcome}", 0) + 1
                    kept = handshake(port, host, cafile, keeper_cert)  # meanwhile, a client never revoked
                    if kept != "accepted":
                        keeper_failed[f"{form}: {kept}"] = keeper_failed.get(f"{form}: {kept}", 0) + 1
                if time.perf_counter() - t1 > 60:
                    sys.exit(f"not refused within 60 s by {', '.join(pending.values())}")
                time.sleep(0.005)
            if i:
                revoke.append(t1 - t0)
            for host in HOSTS.values():
                if handshake(port, host, cafile, home / "certs" / keeper / "current") != "accepted":
                    sys.exit(f"{keeper} (never revoked) refused by {host}")
        gateway.stop()
        gateway = None
        print(f"{'revoke':<16} {fmt(revoke)}")
        for form, xs in refused.items():
            print(f"{'refused (' + form + ')':<16} {fmt(xs)}  after revoke returned")
        print(f"{'':<16} the revoked client's other outcomes meanwhile: {others or 'none'}")
        print(f"{'':<16} a client never revoked, between those polls: {keeper_failed or 'no'} failures\n",
              flush=True)

        big_crl(env, home, work, args.entries, keeper, cafile)
    finally:
        if gateway is not None:
            gateway.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def big_crl(env: dict, home: Path, work: Path, entries: int, keeper: str, cafile: Path, pairs: int = 41) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from kimpki.ops.authority import load_issuer, no_passphrase
    from kimpki.pki import revocation as rv
    from kimpki.store import Store
    from kimpki.store import revocations as db

    kimpki(env, "ca", "init", "big.example")
    kimpki(env, "issue", "big.example.com", "--ca", "big.example")
    kimpki(env, "issue", "--client", "ok.example", "--ca", "big.example")
    kimpki(env, "issue", "--client", "gone.example", "--ca", "big.example")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    store = Store.open(home)
    try:
        with store.locked():  # synthetic entries: serials kimpki never issued, as a CA with a long history has
            for _ in range(entries - 1):
                db.record(store, db.Revocation("big.example", format(secrets.randbits(159), "x"), None, "client",
                                               now + timedelta(days=90), now, "keyCompromise", "bench"))
    finally:
        store.close()
    t0 = time.perf_counter()
    kimpki(env, "revoke", "gone.example", "--reason", "keyCompromise")
    revoke_s = time.perf_counter() - t0
    crl_runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        kimpki(env, "crl", "big.example", "--refresh", "--out", str(work / "big.crl"))
        crl_runs.append(time.perf_counter() - t0)
    pem = (work / "big.crl").read_bytes()
    crl = x509.load_pem_x509_crl(pem)
    der = crl.public_bytes(Encoding.DER)
    store = Store.open(home)
    try:
        ca = store.get_ca("big.example")
        issuer = load_issuer(store, ca, no_passphrase)
        rows = [rv.RevokedEntry(int(r.serial, 16), r.revoked_at, r.reason, r.not_after) for r in db.of_ca(store, ca.name)]
        signing = []
        for n in range(5):
            t0 = time.perf_counter()
            rv.build_crl(issuer.cert, issuer.key, rows, number=10_000 + n, this_update=now,
                         next_update=now + timedelta(days=7))
            signing.append(time.perf_counter() - t0)
    finally:
        store.close()
    folder = work / "big"
    folder.mkdir()
    secret_yaml = kimpki(env, "secret", "create", "big-credential", "--cert", "big.example.com", "--mutual",
                         "--dry-run", "-o", "yaml")
    (folder / "big.yaml").write_text(secret_yaml)
    (folder / "small.yaml").write_text(kimpki(env, "secret", "create", "small-credential", "--cert", SERVER[0],
                                              "--mutual", "--dry-run", "-o", "yaml"))
    (folder / "gateway.yaml").write_text(kimpki(
        env, "gateway", "render", "--name", "both", "--host", "big.example.com", "--credential", "big-credential",
        "--host", HOSTS["sds"], "--credential", "small-credential", "--mode", "MUTUAL", "-o", "yaml"))
    big_ca = home / "cas" / "big.example" / "ca.crt"
    small_crl = len(x509.load_pem_x509_crl((home / "cas" / "clients.example" / "crl.pem").read_bytes()))
    gw = Gateway(env, folder)
    try:
        ok = handshake(gw.port, "big.example.com", big_ca, home / "certs" / "ok.example" / "current")
        gone = handshake(gw.port, "big.example.com", big_ca, home / "certs" / "gone.example" / "current", tls12=True)
        gone13 = [handshake(gw.port, "big.example.com", big_ca, home / "certs" / "gone.example" / "current")
                  for _ in range(20)]
        big_t, small_t = [], []  # accepted handshakes + GET, paired: the big CRL's cost per connection
        for _ in range(pairs):
            for out, host, ca, client in ((big_t, "big.example.com", big_ca, "ok.example"),
                                          (small_t, HOSTS["sds"], cafile, keeper)):
                t0 = time.perf_counter()
                if handshake(gw.port, host, ca, home / "certs" / client / "current") != "accepted":
                    sys.exit(f"{client} refused by {host}")
                out.append(time.perf_counter() - t0)
    finally:
        gw.stop()
    print(f"CRL of {len(crl)} entries (CA big.example, EC P-256)")
    print(f"{'kimpki revoke':<16} {revoke_s:.3f}s  (one run: records the entry, signs the CRL)")
    print(f"{'kimpki crl':<16} {fmt(crl_runs)}  --refresh: the whole process")
    print(f"{'signing alone':<16} {fmt(signing)}  build_crl in process")
    import base64

    import yaml

    data = sum(len(base64.b64decode(v)) for d in yaml.safe_load_all(secret_yaml) if d for v in d["data"].values())
    print(f"{'size':<16} PEM {len(pem):,} B, DER {len(der):,} B; the credential Secret: data {data:,} B "
          f"(the API server's limit: 1 MiB = 1,048,576 B of data), YAML {len(secret_yaml.encode()):,} B")
    print(f"{'Envoy':<16} gateway serve ready in {gw.ready:.2f}s ({gw.ready_line.split(' (')[0]}); "
          f"ok.example {ok}, gone.example {gone} (TLS 1.2); over TLS 1.3 gone.example seen as "
          f"{dict((o, gone13.count(o)) for o in sorted(set(gone13)))} of 20")
    ratios = [x / y for x, y in zip(big_t, small_t)]
    print(f"{'accepted':<16} handshake + GET with the {len(crl)}-entry CRL {fmt(big_t)}; with a {small_crl}-entry "
          f"CRL {fmt(small_t)}; ratio median {statistics.median(ratios):.2f}")
    if (ok, gone) != ("accepted", "revoked"):
        sys.exit("Envoy did not apply the large CRL as expected")


if __name__ == "__main__":
    sys.exit(main())
