"""Time `kimpki verify --all` over many SNI hosts on one real local gateway, against curl.

Set-up (not timed), in a temporary directory:
  * a kimpki home with one CA (`kimpki ca init`) and HOSTS server certificates
    h000.bench.example.com ... (issued through kimpki's own use case, in this process, to keep
    the set-up short), one credential Secret manifest each (what `kimpki secret create NAME
    --cert HOST --dry-run -o yaml` prints) and one Gateway with HOSTS SIMPLE servers
    (`kimpki gateway render`);
  * the real Envoy gateway serving them all on one port by SNI (kimpki.localgw.LocalGateway).

Timed, whole processes, alternating so that machine drift hits both sides alike:
  verify-all   `kimpki verify --all --connect 127.0.0.1:PORT`: every certificate in the
               inventory, concurrently; trust, hostname, expiry, the gateway's verdict and
               "is it the store's current serial"
  verify-http  the same with `--http-path /health` (each check also GETs /health)
  curl         the baseline: HOSTS sequential `curl -sS -o /dev/null --resolve H:PORT:127.0.0.1
               --cacert ca.crt https://H:PORT/health` processes (trust, hostname, expiry, HTTP)

Before timing, one `verify --all --json` run must report HOSTS rows, all passed, and one curl
round must succeed for every host: a benchmark of failing checks would be meaningless.

  scripts/bench verify [--hosts 100] [--runs 11]
  scripts/bench verify --hold      # set up, print the two commands, serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_common import compare  # scripts/ is on sys.path: this script's own folder

KIMPKI = str(Path(sys.executable).with_name("kimpki"))
CA_NAME = "bench.example.com"


def host_names(n: int) -> list[str]:
    return [f"h{i:03d}.bench.example.com" for i in range(n)]


def set_up(work: Path, n: int) -> tuple[Path, Path, list[str]]:
    """A kimpki home with a CA and ``n`` server certificates, and their manifests. Returns
    (home, manifests folder, hosts)."""
    import yaml

    from kimpki.istio.credential import CredentialSpec
    from kimpki.ops import credentials, issuing
    from kimpki.ops.authority import no_passphrase
    from kimpki.store import Store

    home, manifests = work / "home", work / "manifests"
    manifests.mkdir(parents=True)
    subprocess.run([KIMPKI, "--home", str(home), "ca", "init", CA_NAME, "--org", "bench Inc."], check=True,
                   stdout=subprocess.DEVNULL)
    hosts = host_names(n)
    store = Store.open(home)
    now = datetime.now(timezone.utc)
    secrets = []
    with store.batch():  # one commit for all, as `kimpki apply` issues
        for host in hosts:
            issuing.issue(store, [host], ca_name=CA_NAME, now=now, passphrase=no_passphrase)
    for host in hosts:
        spec = CredentialSpec(name=credential_name(host))  # generic key set, SIMPLE, SDS: secret create's default
        secrets.extend(credentials.prepare(store, host, spec, now=now).secrets)
    (manifests / "secrets.yaml").write_text("---\n".join(yaml.safe_dump(s, sort_keys=False) for s in secrets))
    render = [KIMPKI, "gateway", "render", "--name", "bench-gateway", "--no-virtual-service", "-o", "yaml"]
    for host in hosts:
        render += ["--host", host, "--credential", credential_name(host)]
    gateway = subprocess.run(render, check=True, capture_output=True, text=True).stdout
    (manifests / "gateway.yaml").write_text(gateway)
    return home, manifests, hosts


def credential_name(host: str) -> str:
    return host.split(".", 1)[0] + "-credential"


def write_commands(work: Path, home: Path, hosts: list[str], port: int) -> dict[str, list[str]]:
    """The timed commands; the curl baseline is a shell script of sequential curl processes."""
    ca = home / "cas" / CA_NAME / "ca.crt"
    lines = ["#!/bin/sh", "# one curl process per host, one after the other, as an operator would check", "set -e"]
    for h in hosts:
        lines.append(f"curl -sS -o /dev/null --resolve {h}:{port}:127.0.0.1 --cacert {shlex.quote(str(ca))} "
                     f"https://{h}:{port}/health")
    script = work / "curl-each-host.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    verify = [KIMPKI, "--home", str(home), "verify", "--all", "--connect", f"127.0.0.1:{port}"]
    return {"verify-all": verify, "verify-http": verify + ["--http-path", "/health"], "curl": [str(script)]}


def sanity_check(commands: dict[str, list[str]], n: int) -> None:
    for name in ("verify-all", "verify-http"):
        proc = subprocess.run(commands[name] + ["--json"], capture_output=True, text=True)
        rows = json.loads(proc.stdout)["items"] if proc.stdout.strip() else []
        passed = sum(1 for r in rows if r["ok"])
        if proc.returncode != 0 or len(rows) != n or passed != n:
            sys.exit(f"bench: {name} checked {len(rows)} hosts, {passed} passed (want {n}): {proc.stderr.strip()}")
    proc = subprocess.run(commands["curl"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: the curl baseline failed: {proc.stderr.strip()}")


def run_once(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench verify", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=100, help="SNI hosts on the gateway (default 100)")
    ap.add_argument("--runs", type=int, default=11, help="alternating timed pairs after one warm-up (default 11)")
    ap.add_argument("--hold", action="store_true",
                    help="set up, print the timed commands, and keep the gateway serving until Ctrl-C")
    args = ap.parse_args()
    if args.hosts < 1 or args.runs < 1:
        ap.error("--hosts and --runs must be positive")

    from kimpki.localgw.runner import LocalGateway

    work = Path(tempfile.mkdtemp(prefix="kimpki-bench-verify-"))
    try:
        t0 = time.perf_counter()
        home, manifests, hosts = set_up(work, args.hosts)
        with LocalGateway([manifests], port_map={443: 0}) as gw:
            port = gw.ports[443]
            commands = write_commands(work, home, hosts, port)
            sanity_check(commands, args.hosts)
            print(f"# {args.hosts} SNI hosts on one Envoy gateway (pid {gw.pid}) at 127.0.0.1:{port}; "
                  f"set up in {time.perf_counter() - t0:.1f} s; python {sys.version.split()[0]}, "
                  f"{os.cpu_count()} CPUs", flush=True)
            if args.hold:
                for name, cmd in commands.items():
                    print(f"{name}: {shlex.join(cmd)}")
                print("serving until Ctrl-C", flush=True)
                stop = threading.Event()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, lambda *_: stop.set())
                while not stop.wait(0.5):
                    pass
                return 0
            print(f"# {args.runs} alternating runs after one warm-up\n", flush=True)
            for name in ("verify-all", "verify-http"):
                compare(name, lambda: run_once(commands[name]), "curl", lambda: run_once(commands["curl"]), args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
