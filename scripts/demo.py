"""Replay the operator notes' secure-gateway story with kimpki and print a short transcript.

Every step runs the real `kimpki` CLI against a throw-away home; the gateway is the real Envoy
proxy (`kimpki gateway serve`) fed by file-based SDS; handshakes are checked by `kimpki verify`.
Exits non-zero as soon as a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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


def kimpki_text(home: Path, *args: str, out: Path | None = None, expect: int = 0) -> str:
    """Run kimpki for its text output (or into a manifest file); check the exit code."""
    print("$ kimpki " + " ".join(a if " " not in a else repr(a) for a in args) + (f" > {out.name}" if out else ""))
    proc = subprocess.run([*KIMPKI, "--home", str(home), *args], capture_output=True, text=True)
    if proc.returncode != expect:
        raise DemoFailed(f"kimpki {' '.join(args)} exited {proc.returncode} (expected {expect}): "
                         f"{proc.stderr.strip() or proc.stdout.strip()}")
    if out is not None:
        out.write_text(proc.stdout)
    return proc.stdout + proc.stderr


def verify(home: Path, port: int, host: str, *extra: str, expect: int = 0) -> dict:
    args = ["verify", host, "--connect", f"127.0.0.1:{port}", *extra, "--json"]
    print("$ kimpki " + " ".join(args[:-1]))
    proc = subprocess.run([*KIMPKI, "--home", str(home), *args], capture_output=True, text=True)
    if proc.returncode != expect:
        raise DemoFailed(f"verify {host} exited {proc.returncode}, expected {expect}: {proc.stderr.strip()}")
    d = json.loads(proc.stdout)
    leaf = d["served_chain"][0] if d["served_chain"] else {}
    verdict = "PASS" if d["ok"] else f"refused as expected ({d['reason']}: {d['message']})"
    print(f"   {verdict}; {d['tls_version']}, ALPN {d['alpn']}, serial {leaf.get('serial', '-')[:16]}")
    return d


class Gateway:
    """`kimpki gateway serve` in the background: real Envoy fed by file-based SDS."""

    def __init__(self, home: Path, manifests: Path):
        self.port = free_port()
        cmd = [*KIMPKI, "--home", str(home), "gateway", "serve", "-f", str(manifests), "--port", str(self.port)]
        print(f"$ kimpki gateway serve -f {manifests.name} --port {self.port} &")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.envoy_pid = None
        deadline = time.monotonic() + 30
        for line in self.proc.stdout:
            print("   " + line.rstrip())
            m = re.search(r"Envoy pid (\d+)", line)
            if m:
                self.envoy_pid = int(m.group(1))
                break
            if time.monotonic() > deadline:
                break
        if self.envoy_pid is None:
            self.stop()
            raise DemoFailed("the local gateway did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_serial(home: Path, port: int, host: str, serial: str, *extra: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        proc = subprocess.run([*KIMPKI, "--home", str(home), "verify", host, "--connect", f"127.0.0.1:{port}",
                               *extra, "--json"], capture_output=True, text=True)
        chain = json.loads(proc.stdout)["served_chain"] if proc.stdout.strip() else []
        if chain and chain[0]["serial"] == serial:
            return
        time.sleep(0.2)
    raise DemoFailed(f"the gateway did not start serving serial {serial[:16]} for {host} within 5 s")


def run(home: Path) -> None:
    work = home.parent / "manifests"
    work.mkdir(parents=True, exist_ok=True)

    step("1. A root CA (replaces: openssl req -x509 ... -subj '/O=example Inc./CN=example.com')")
    ca = kimpki(home, "ca", "init", "example.com", "--org", "example Inc.")
    print(f"   root {ca['subject']}, serial {ca['serial'][:16]}..., key {ca['key_type']}, 0600 at {ca['key']}")

    step("2. Server and client certificates (replaces: openssl req + openssl x509 -req -set_serial 0)")
    for host, org in [("kim.example.com", "kim organization"), ("kim-new.example.com", "kim organization"),
                      ("bookinfo.com", "bookinfo organization")]:
        d = kimpki(home, "issue", host, "--org", org)
        print(f"   {host}: v3, SAN DNS:{','.join(d['dns_names'])}, serial {d['serial'][:16]}..., until {d['not_after']}")
    client = kimpki(home, "issue", "--client", "kim-client.example.com")
    print(f"   kim-client.example.com: clientAuth, serial {client['serial'][:16]}...")

    step("3. Credential Secrets, Gateways and the volume patch, as manifests (no cluster needed)")
    kimpki_text(home, "secret", "create", "kim-credential", "--cert", "kim.example.com", "--dry-run", "-o", "yaml",
                out=work / "kim-credential.yaml")
    kimpki_text(home, "secret", "create", "kim-new-credential", "--cert", "kim-new.example.com", "--mutual",
                "--dry-run", "-o", "yaml", out=work / "kim-new-credential.yaml")
    kimpki_text(home, "secret", "create", "istio-ingressgateway-bookinfo-certs", "--file-mounted", "--cert",
                "bookinfo.com", "--dry-run", "-o", "yaml", out=work / "bookinfo-certs.yaml")
    kimpki_text(home, "gateway", "render", "--name", "kim-gateway", "--host", "kim.example.com", "--credential",
                "kim-credential", "--host", "kim-new.example.com", "--credential", "kim-new-credential",
                "--mode", "simple", "--mode", "mutual", "-o", "yaml", out=work / "kim-gateway.yaml")
    kimpki_text(home, "gateway", "render", "--name", "bookinfo-gateway", "--host", "bookinfo.com", "--file-mounted",
                "--mount-path", "/etc/istio/ingressgateway-bookinfo-certs", "-o", "yaml",
                out=work / "bookinfo-gateway.yaml")
    reference = Path(__file__).resolve().parent / "data" / "istio-ingressgateway-deployment.yaml"
    kimpki_text(home, "gateway", "mount", "--local", "-f", str(reference), "--secret",
                "istio-ingressgateway-bookinfo-certs", "--mount-path", "/etc/istio/ingressgateway-bookinfo-certs",
                "-o", "yaml", out=work / "ingressgateway-deployment.yaml")

    step("4. A real local ingress gateway (Envoy) from those manifests")
    gw = Gateway(home, work)
    try:
        step("5. SIMPLE: kim.example.com (replaces: curl -v --resolve ... --cacert example.com.crt)")
        verify(home, gw.port, "kim.example.com", "--ca", "example.com", "--http-path", "/health")

        step("6. MUTUAL: kim-new.example.com refuses a client without a certificate, accepts kim-client")
        verify(home, gw.port, "kim-new.example.com", "--ca", "example.com", "--client", "kim-client.example.com",
               "--mode", "mutual", "--http-path", "/health")

        step("7. bookinfo.com on the same port, picked by SNI (file-mounted Secret + volume patch)")
        verify(home, gw.port, "bookinfo.com", "--ca", "example.com", "--http-path", "/health")

        step("8. Rotation to a new CA without restarting the gateway")
        kimpki(home, "ca", "init", "example-2026", "--org", "example Inc.")
        new_server = kimpki(home, "issue", "kim-new.example.com", "--ca", "example-2026")
        kimpki(home, "issue", "--client", "kim-client-2026.example.com", "--ca", "example-2026")
        kimpki_text(home, "secret", "create", "kim-new-credential", "--cert", "kim-new.example.com", "--mutual",
                    "--dry-run", "-o", "yaml", out=work / "kim-new-credential.yaml")
        wait_for_serial(home, gw.port, "kim-new.example.com", new_server["serial"], "--ca", "example-2026",
                        "--client", "kim-client-2026.example.com")
        verify(home, gw.port, "kim-new.example.com", "--ca", "example-2026", "--client", "kim-client-2026.example.com",
               "--mode", "mutual")
        verify(home, gw.port, "kim-new.example.com", "--ca", "example-2026", "--client", "kim-client.example.com",
               "--mode", "mutual", expect=1)
        os.kill(gw.envoy_pid, 0)  # raises if Envoy was restarted or died
        print(f"   Envoy pid {gw.envoy_pid} unchanged: the new certificate and CA arrived through file-based SDS")
    finally:
        gw.stop()

    step("9. The inventory")
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
