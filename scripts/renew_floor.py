"""The floor under `kimpki renew`: the essential work of renewing every due credential Secret,
written as plainly as Python allows, to show how much of renew's time is the work itself.

Not kimpki and not for use: it takes no lock and no Lease, keeps no inventory beyond one table,
writes no log, checks nothing kimpki checks but the new signature and key, and stops at the first
error. What it does per due Secret is what kimpki must do too:

  list the managed Secrets (pages of 500); parse each served certificate; due = the last third of
  its lifetime; a new EC P-256 key; a leaf with kimpki's extensions signed by the CA; its key,
  chain and CA written into a new 0700 folder (O_EXCL|O_NOFOLLOW), one SQLite row per version, a
  file-system sync and a commit per 100; the signature verified and the key matched; the Secret
  rebuilt and written with a guarded PUT (its resourceVersion), 8 at a time; the rows marked
  current.

With --workers N the due Secrets are split across N processes after the listing (each its own
connections and table), an upper bound for what N processes could gain.

Run by `scripts/bench renew renew --floor` (KIMPKI_HOME: a bench home with one unencrypted CA;
KUBECONFIG: the API stand-in). Prints {"renewed": N} on stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import kubernetes.client
import kubernetes.config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NS = "istio-system"
SELECTOR = "app.kubernetes.io%2Fmanaged-by%3Dkimpki"
BATCH = 100
WRITERS = 8


class Api:
    """Requests straight to the client's urllib3 pool, with its auth (as kimpki's own client)."""

    def __init__(self, cfg: kubernetes.client.Configuration):
        self.client = kubernetes.client.ApiClient(cfg)
        self.pool, self.host = self.client.rest_client.pool_manager, cfg.host

    def call(self, method: str, path: str, body: bytes | None = None) -> dict:
        headers = {**self.client.default_headers, "Accept": "application/json", "Content-Type": "application/json"}
        self.client.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        r = self.pool.urlopen(method, self.host + path, body=body, headers=headers, redirect=False)
        if r.status >= 300:
            sys.exit(f"{method} {path}: {r.status} {r.data[:300]!r}")
        return json.loads(r.data)


def list_secrets(api: Api) -> list[dict]:
    items, cont = [], ""
    while True:
        page = api.call("GET", f"/api/v1/namespaces/{NS}/secrets?labelSelector={SELECTOR}&limit=500"
                        + (f"&continue={cont}" if cont else ""))
        items += page["items"]
        cont = page["metadata"].get("continue")
        if not cont:
            return items


def due(secret: dict, now: datetime) -> bool:
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["cert"]))
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return now >= cert.not_valid_after_utc - life / 3


def leaf(host: str, key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ca_key, aki, now: datetime):
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(aki, critical=False)
            .sign(ca_key, hashes.SHA256()))


def write_new(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def renew(cfg, secrets: list[dict], home: Path, worker: int, now: datetime) -> None:
    api = Api(cfg)
    (ca_dir,) = (home / "cas").iterdir()
    ca_pem = (ca_dir / "ca.crt").read_bytes()
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    floor = home / f"floor-{worker}"
    floor.mkdir(mode=0o700)
    db = sqlite3.connect(floor / "inventory.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE versions (id INTEGER PRIMARY KEY, name TEXT, serial TEXT, state TEXT)")
    writes = []
    with ThreadPoolExecutor(WRITERS) as pool:
        for b in range(0, len(secrets), BATCH):
            ready = []
            db.execute("BEGIN IMMEDIATE")
            for s in secrets[b:b + BATCH]:
                host = s["metadata"]["annotations"]["kimpki.io/hosts"]
                key = ec.generate_private_key(ec.SECP256R1())
                cert = leaf(host, key, ca_cert, ca_key, aki, now)
                key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
                cert_pem = cert.public_bytes(serialization.Encoding.PEM)
                serial = format(cert.serial_number, "x")
                folder = floor / serial
                os.mkdir(folder, 0o700)
                write_new(f"{folder}/cert.key", key_pem, 0o600)
                write_new(f"{folder}/cert.crt", cert_pem, 0o644)
                write_new(f"{folder}/ca.crt", ca_pem, 0o644)
                db.execute("INSERT INTO versions (name, serial, state) VALUES (?, ?, 'pending')", (host, serial))
                cert.verify_directly_issued_by(ca_cert)
                if serialization.load_pem_private_key(key_pem, None).public_key() != cert.public_key():
                    sys.exit(f"{host}: key and certificate differ")
                meta = s["metadata"]
                new = {"apiVersion": "v1", "kind": "Secret", "type": s.get("type", "Opaque"),
                       "metadata": {**meta, "annotations": {**meta["annotations"], "kimpki.io/serial": serial}},
                       "data": {**s["data"], "cert": base64.b64encode(cert_pem).decode(),
                                "key": base64.b64encode(key_pem).decode()}}
                ready.append((meta["name"], json.dumps(new).encode()))
            os.sync()
            db.execute("COMMIT")
            writes += [pool.submit(api.call, "PUT", f"/api/v1/namespaces/{NS}/secrets/{name}", body)
                       for name, body in ready]
        for w in writes:
            w.result()
    db.execute("UPDATE versions SET state = 'current'")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    now = datetime.now(timezone.utc)
    cfg = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(os.environ["KUBECONFIG"], client_configuration=cfg)
    home = Path(os.environ["KIMPKI_HOME"])
    todo = [s for s in list_secrets(Api(cfg)) if due(s, now)]
    children = []
    for worker in range(1, args.workers):
        pid = os.fork()
        if pid == 0:  # a child renews its share and exits at once, never returning into this loop
            code = 1
            try:
                renew(cfg, todo[worker::args.workers], home, worker, now)
                code = 0
            except SystemExit as e:
                print(e, file=sys.stderr)
            finally:
                os._exit(code)
        children.append(pid)
    renew(cfg, todo[0::args.workers], home, 0, now)  # every error exits: what returns renewed its share
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            sys.exit(f"a worker failed (status {status})")
    print(json.dumps({"renewed": len(todo)}))


if __name__ == "__main__":
    main()
