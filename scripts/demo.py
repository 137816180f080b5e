"""Replay the manual secure-gateway setup with kimpki and print a short transcript.

Every step runs the real `kimpki` CLI against a throw-away home; the gateway is the real Envoy
proxy (`kimpki gateway serve`) fed by kimpki's SDS server; handshakes are checked by `kimpki verify`.
After the manual steps come the tools that replace its hard cutovers, against the same Envoy:
`kimpki rotate` under continuous handshakes, `kimpki ca rotate`, `kimpki revoke` of the old client
certificate alone, `ca retire`, then `status`,
`renew --dry-run`, `cron render` and a metrics textfile. Exits non-zero as soon as a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509

KIMPKI = [sys.executable, "-m", "kimpki"]


class DemoFailed(Exception):
    pass


def step(title: str) -> None:
    print(f"\n== {title}")


def shown(home: Path, text: str) -> str:
    """Shorter paths for the transcript: the home as $KIMPKI_HOME, files beside it (the manifests
    folder, the client's copies) by their names."""
    return text.replace(str(home), "$KIMPKI_HOME").replace(str(home.parent) + os.sep, "")


def command_line(home: Path, args: tuple[str, ...] | list[str]) -> str:
    return "$ kimpki " + shown(home, " ".join(a if " " not in a else repr(a) for a in args))


def kimpki(home: Path, *args: str) -> dict:
    cmd = [*KIMPKI, "--home", str(home), *args, "--json"]
    print(command_line(home, args))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DemoFailed(f"kimpki {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def kimpki_text(home: Path, *args: str, out: Path | None = None, expect: int = 0) -> subprocess.CompletedProcess:
    """Run kimpki for its text output (or into a manifest file); check the exit code."""
    print(command_line(home, args) + (f" > {out.name}" if out else ""))
    proc = subprocess.run([*KIMPKI, "--home", str(home), *args], capture_output=True, text=True)
    if proc.returncode != expect:
        raise DemoFailed(f"kimpki {' '.join(args)} exited {proc.returncode} (expected {expect}): "
                         f"{proc.stderr.strip() or proc.stdout.strip()}")
    if out is not None:
        out.write_text(proc.stdout)
    return proc


def verify(home: Path, port: int, host: str, *extra: str, expect: int = 0) -> dict:
    args = ["verify", host, "--connect", f"127.0.0.1:{port}", *extra, "--json"]
    print(command_line(home, args[:-1]))
    proc = subprocess.run([*KIMPKI, "--home", str(home), *args], capture_output=True, text=True)
    if proc.returncode != expect:
        raise DemoFailed(f"verify {host} exited {proc.returncode}, expected {expect}: {proc.stderr.strip()}")
    d = json.loads(proc.stdout)
    leaf = d["served_chain"][0] if d["served_chain"] else {}
    verdict = "PASS" if d["ok"] else f"refused as expected ({d['reason']}: {d['message']})"
    print(f"   {verdict}; {d['tls_version']}, ALPN {d['alpn']}, serial {leaf.get('serial', '-')[:16]}")
    return d


class Gateway:
    """`kimpki gateway serve` in the background: real Envoy fed by kimpki's SDS server."""

    def __init__(self, home: Path, manifests: Path):
        self.port = free_port()
        cmd = [*KIMPKI, "--home", str(home), "gateway", "serve", "-f", str(manifests), "--port", str(self.port)]
        print(f"$ kimpki gateway serve -f {manifests.name} --port {self.port} &")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.envoy_pid = None
        self.lines: list[str] = []
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
        # Keep reading its log (reloads, warnings) so that a full pipe never blocks it.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def envoy_started(self) -> str:
        """Envoy's pid and start time: a restarted Envoy, even one given the same pid, differs."""
        try:
            os.kill(self.envoy_pid, 0)
        except OSError:
            raise DemoFailed(f"Envoy (pid {self.envoy_pid}) is gone") from None
        stat = Path(f"/proc/{self.envoy_pid}/stat")
        return f"{self.envoy_pid}/" + (stat.read_text().rsplit(")", 1)[1].split()[19] if stat.exists() else "")

    def check_same_envoy(self, started: str) -> None:
        if self.proc.poll() is not None:
            raise DemoFailed(f"kimpki gateway serve ended (exit {self.proc.returncode}): {''.join(self.lines[-3:])}")
        if self.envoy_started() != started or any("Envoy pid" in line for line in self.lines):
            raise DemoFailed(f"Envoy was restarted (pid {self.envoy_pid} at first)")

    def reloads(self) -> int:
        return sum("reloaded" in line for line in self.lines)

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


def ca_cert(home: Path, ca: str) -> Path:
    return home / "cas" / ca / "ca.crt"


def handshake(port: int, host: str, cafile: Path, client: tuple[str, str] | None = None) -> str:
    """One client connection: TLS verified against ``cafile`` (SNI ``host``), then GET /health.
    Returns the served serial (hex); raises on any failure, a refused client certificate included."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    if client:
        ctx.load_cert_chain(*client)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            serial = format(x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number, "x")
            # Over TLS 1.3 a MUTUAL server judges the client certificate only now. Read up to the
            # body and hang up: Envoy waits for the client to close first, so EOF would come late.
            tls.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while not answer.endswith(b'{"status":"UP"}') and (chunk := tls.recv(4096)):
                answer += chunk
    if not (answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"UP"}')):
        raise ConnectionError(f"unexpected answer {answer[:60]!r}")
    return serial


def accepted(*args) -> bool:
    try:
        handshake(*args)
        return True
    except (OSError, ValueError):  # ssl.SSLError and ConnectionError are OSErrors
        return False


def wait_until(what: str, check, timeout: float = 10.0) -> None:
    """Poll: the gateway picks a changed manifest up within a fraction of a second. A failed
    connection counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while not _holds(check):
        if time.monotonic() > deadline:
            raise DemoFailed(f"the gateway did not show {what} within {timeout:.0f} s")
        time.sleep(0.05)


def _holds(check) -> bool:
    try:
        return bool(check())
    except (OSError, ValueError):
        return False


class Handshakes:
    """A few client threads connecting continuously (handshake + GET /health), recording the
    serial served or the failure: what an outage during a rotation would show."""

    def __init__(self, port: int, host: str, cafile: Path, threads: int = 3):
        self.serials: list[str] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(port, host, cafile), daemon=True)
                        for _ in range(threads)]

    def _run(self, *target) -> None:
        while not self.stopping.is_set():
            try:
                self.serials.append(handshake(*target))
            except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                self.failures.append(f"{type(e).__name__}: {e}")

    def start(self) -> "Handshakes":
        for t in self.threads:
            t.start()
        return self

    def wait_for(self, condition, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition() and not self.failures:
            if time.monotonic() > deadline:
                raise DemoFailed(f"no {what} within {timeout:.0f} s")
            time.sleep(0.01)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(10)


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
    reference = Path(__file__).resolve().parent.parent / "tests" / "data" / "istio" / "istio-ingressgateway-deployment.yaml"
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

        step("8. kimpki rotate: a new key and certificate for kim.example.com while clients keep connecting")
        envoy_started = gw.envoy_started()
        load = Handshakes(gw.port, "kim.example.com", ca_cert(home, "example.com")).start()
        try:
            load.wait_for(lambda: len(load.serials) >= 20, "the first handshakes")
            rotated = kimpki(home, "rotate", "kim-credential", "--manifests", str(work))
            new = rotated["new_serial"]
            load.wait_for(lambda: load.serials[-10:].count(new) == 10, f"serial {new[:16]} served")
        finally:
            load.stop()
        if load.failures:
            raise DemoFailed(f"{len(load.failures)} of {len(load.serials) + len(load.failures)} handshakes failed "
                             f"during the rotation, e.g. {load.failures[0]}")
        print(f"   {len(load.serials)} handshakes + GET /health by {len(load.threads)} threads, 0 failed; "
              f"serial {rotated['old_serial'][:16]} -> {new[:16]}")
        served = verify(home, gw.port, "kim.example.com", "--ca", "example.com", "--http-path", "/health")
        if served["served_chain"][0]["serial"] != new:
            raise DemoFailed(f"kim.example.com serves {served['served_chain'][0]['serial']}, not the new serial {new}")
        gw.check_same_envoy(envoy_started)

        step("9. kimpki ca rotate: example.com -> a successor; MUTUAL accepts clients from either CA meanwhile")
        rep = kimpki(home, "ca", "rotate", "example.com", "--manifests", str(work))
        if len(rep["clients"]) != 1:
            raise DemoFailed(f"expected kim-client.example.com re-issued, got {rep['clients']}")
        client = rep["clients"][0]
        if not rep["ready_to_retire"]:
            raise DemoFailed(f"example.com is not ready to retire: {'; '.join(rep['remaining'] or [])}")
        # The client handed kim-client.example.com in step 2 still holds those files (ca rotate
        # leaves them on disk and valid): here is its copy, to connect as it would.
        old_files = (home.parent / "kim-client-old.crt", home.parent / "kim-client-old.key")
        shutil.copy2(client["old_cert"], old_files[0])
        shutil.copy2(client["old_key"], old_files[1])
        old_client = ("--cert", str(old_files[0]), "--key", str(old_files[1]))
        print(f"   {rep['successor']} {rep['successor_action']}; {len(rep['widened'])} MUTUAL bundle widened to both CAs, "
              f"{len(rep['servers'])} server credentials moved, kim-client re-issued (its holder keeps the old "
              f"one: {old_files[0].stem}.*); ready to retire")
        moved = {s["secret"]: s["new_serial"] for s in rep["servers"]}
        new_ca = rep["successor"]
        wait_until(f"kim-new.example.com served from {new_ca}", lambda: handshake(
            gw.port, "kim-new.example.com", ca_cert(home, new_ca), (client["cert"], client["key"]))
            == moved["kim-new-credential"])
        verify(home, gw.port, "kim-new.example.com", "--ca", "example.com", *old_client, "--mode", "mutual")
        verify(home, gw.port, "kim-new.example.com", "--ca", new_ca, "--client", "kim-client.example.com",
               "--mode", "mutual")
        gw.check_same_envoy(envoy_started)

        step("10. kimpki revoke: shut out the old client certificate alone, not its whole CA")
        rev = kimpki(home, "revoke", "--serial", client["old_serial"], "--ca", "example.com", "--reason",
                     "superseded", "--manifests", str(work))
        print(f"   serial {rev['serial'][:16]}... revoked ({rev['reason']}); CRL {rev['crl']['crl_number']} of "
              f"{rev['crl']['ca']} into {', '.join('secret/' + r['secret'] for r in rev['republished'])}")
        wait_until("the revoked client certificate refused", lambda: not accepted(
            gw.port, "kim-new.example.com", ca_cert(home, new_ca), tuple(map(str, old_files))))
        refused = verify(home, gw.port, "kim-new.example.com", "--ca", "example.com", *old_client, "--mode",
                         "mutual", expect=1)
        if refused["reason"] != "client_certificate_revoked":
            raise DemoFailed(f"the revoked client certificate was refused as {refused['reason']}")
        verify(home, gw.port, "kim-new.example.com", "--ca", new_ca, "--client", "kim-client.example.com",
               "--mode", "mutual")
        gw.check_same_envoy(envoy_started)

        step("11. kimpki ca retire: the overlap ends; only the new CA's client certificates are accepted")
        ret = kimpki(home, "ca", "retire", "example.com", "--manifests", str(work))
        print(f"   example.com {ret['action']}; {len(ret['rewritten'])} MUTUAL bundle rewritten to {ret['successor']}, "
              f"default CA {ret['default_ca']}")
        wait_until("the old client certificate refused", lambda: not accepted(
            gw.port, "kim-new.example.com", ca_cert(home, new_ca), tuple(map(str, old_files))))
        verify(home, gw.port, "kim-new.example.com", "--ca", new_ca, *old_client, "--mode", "mutual", expect=1)
        verify(home, gw.port, "kim-new.example.com", "--ca", new_ca, "--client", "kim-client.example.com",
               "--mode", "mutual")
        gw.check_same_envoy(envoy_started)
        print(f"   Envoy pid {gw.envoy_pid} unchanged since step 4: {gw.reloads()} reloads, all through SDS pushes")

        step("12. What cron will watch: status, a renew run with nothing due, the crontab line")
        table = kimpki_text(home, "status", "--manifests", str(work), "--fail-on", "due").stdout
        print("\n".join("   " + line for line in table.rstrip().splitlines()))
        log = kimpki_text(home, "renew", "--manifests", str(work), "--dry-run").stderr.strip()
        if "nothing due" not in log:
            raise DemoFailed(f"renew --dry-run found something due: {log}")
        print("   " + log.splitlines()[-1])
        crontab = kimpki_text(home, "cron", "render", "--manifests", str(work)).stdout.strip()
        print("   " + shown(home, crontab.splitlines()[-1]))

        step("13. Metrics for Prometheus: a textfile for node_exporter, CA certificates included")
        prom = work / "kimpki.prom"
        kimpki_text(home, "status", "--manifests", str(work), "--textfile", str(prom))
        series = [line for line in prom.read_text().splitlines()
                  if line.startswith("kimpki_certificate_not_after_timestamp_seconds")]
        picked = [next((line for line in series if f'kind="{kind}"' in line), None) for kind in ("ca", "server")]
        if None in picked:
            raise DemoFailed(f"{prom.name} lacks a CA or a server certificate series")
        print(f"   {prom.name}: {len(series)} certificates, e.g.")
        print("\n".join("   " + line for line in picked))
    finally:
        gw.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--home", help="Use this kimpki home instead of a temporary one (kept afterwards).")
    args = ap.parse_args()
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="kimpki-demo-")) / "home"
    print(f"kimpki demo: home {home} ($KIMPKI_HOME below)")
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
