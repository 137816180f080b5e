"""Replay the operator notes' secure-gateway story with kimpki and print a short transcript.

Every step runs the real `kimpki` CLI against a throw-away home; handshakes are real TLS on
loopback. Exits non-zero as soon as a step fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

KIMPKI = [sys.executable, "-m", "kimpki"]


class DemoFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"\n== {title}")


def kimpki(home: Path, *args: str) -> dict:
    cmd = [*KIMPKI, "--home", str(home), *args, "--json"]
    print("$ kimpki " + " ".join(a if " " not in a else repr(a) for a in args))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DemoFailed(f"kimpki {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def serve_once(cert: str, key: str, client_ca: str | None) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    sock = socket.create_server(("127.0.0.1", 0))

    def run():
        with sock:
            conn, _ = sock.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1024)
                    tls.sendall(b'HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{"status":"UP"}')
            except (ssl.SSLError, OSError):
                pass

    threading.Thread(target=run, daemon=True).start()
    return sock.getsockname()[1]


def handshake(port: int, host: str, ca: str, cert: str | None = None, key: str | None = None) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.hostname_checks_common_name = False  # SANs only, like Go, Chrome and curl
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET /health HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
            reply = tls.recv(1024)  # with TLS 1.3 a refused client certificate surfaces here
            if not reply:
                raise ssl.SSLError("connection closed by the server")
            status = reply.split(b"\r\n")[0].decode()
            body = reply.split(b"\r\n\r\n")[-1].decode()
            return f"{tls.version()}, {status}, body {body}"


def run(home: Path) -> None:
    step("1. A root CA (replaces: openssl req -x509 ... -subj '/O=example Inc./CN=example.com')")
    ca = kimpki(home, "ca", "init", "example.com", "--org", "example Inc.")
    print(f"   root {ca['subject']}, serial {ca['serial'][:16]}..., key {ca['key_type']}, 0600 at {ca['key']}")

    step("2. Server certificates (replaces: openssl req + openssl x509 -req -set_serial 0)")
    certs = {}
    for host, org in [("kim.example.com", "kim organization"), ("kim-new.example.com", "kim organization"),
                      ("bookinfo.com", "bookinfo organization")]:
        certs[host] = kimpki(home, "issue", host, "--org", org)
        d = certs[host]
        print(f"   {host}: v3, SAN DNS:{','.join(d['dns_names'])}, serial {d['serial'][:16]}..., until {d['not_after']}")

    step("3. A client certificate for MUTUAL TLS")
    client = kimpki(home, "issue", "--client", "kim-client.example.com")
    print(f"   kim-client.example.com: clientAuth, serial {client['serial'][:16]}...")

    step("4. SIMPLE TLS: kim.example.com on loopback, client trusts only the example.com root")
    s = certs["kim.example.com"]
    port = serve_once(s["cert"], s["key"], None)
    print(f"   OK: {handshake(port, 'kim.example.com', s['ca'])}")

    step("5. MUTUAL TLS: kim-new.example.com demands a client certificate")
    m = certs["kim-new.example.com"]
    port = serve_once(m["cert"], m["key"], m["ca"])
    try:
        handshake(port, "kim-new.example.com", m["ca"])
        raise DemoFailed("the MUTUAL server accepted a client without a certificate")
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
        print(f"   refused without a client certificate, as it should be ({getattr(e, 'reason', None) or e})")
    port = serve_once(m["cert"], m["key"], m["ca"])
    print(f"   OK with kim-client.example.com: {handshake(port, 'kim-new.example.com', m['ca'], client['cert'], client['key'])}")

    step("6. The inventory")
    subprocess.run([*KIMPKI, "--home", str(home), "list"], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--home", help="Use this kimpki home instead of a temporary one (kept afterwards).")
    args = ap.parse_args()
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="kimpki-demo-")) / "home"
    print(f"kimpki demo: home {home}")
    try:
        run(home)
    except DemoFailed as e:
        print(f"\nDEMO FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.home:
            shutil.rmtree(home.parent, ignore_errors=True)
    print("\nAll steps passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
