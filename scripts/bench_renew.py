"""Time `kimpki renew` against the Kubernetes API stand-in (tests/kubeapi), whole processes.

Two cases (issue 5, "Performance"):

  sweep   SECRETS managed credential Secrets (default 10,000) in istio-system, none due.
          Timed: `kimpki renew --dry-run` (list, decide, report) and `kimpki renew` (the same
          plus the renewal Lease), each the whole process. Counted: the API requests each run
          sends (target: at most SECRETS/500 + 5, the Lease included; 10,000 → 25) and the wall
          time (target: at most 5 s for 10,000).
  renew   DUE managed credential Secrets (default 1,000), all due, EC P-256 keys. Timed: one
          `kimpki renew` that renews them all (target: at most 60 s for 1,000). Checked: every
          one renewed, one PUT per Secret, a new serial in each Secret.

Set-up (not timed), in a temporary directory: a kimpki home with one CA (kimpki's own use
cases, in this process); one real credential Secret built by kimpki.ops.credentials from a
server certificate issued by that CA; the stand-in API server (HTTPS, the real `kubernetes`
client talks to it) running in this process, with the Secrets loaded directly into its store.
To keep the set-up short every Secret carries the same certificate PEM and key (the Secrets
differ in name and in their kimpki.io annotations: store name and hosts); for "renew" that
certificate was issued with a past validity so that it is due. kimpki decides from each
Secret's own certificate, parses each one, and issues a distinct new certificate and key per
Secret, so sharing the old PEM changes nothing that is measured.

  scripts/bench renew sweep [--secrets 10000] [--runs 5]
  scripts/bench renew renew [--due 1000]
  scripts/bench renew sweep --hold   # set up, print the environment and command, serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.kubeapi: the API stand-in

KIMPKI = str(Path(sys.executable).with_name("kimpki"))
CA_NAME = "bench.example.com"
NS = "istio-system"
PAGE = 500


def set_up_home(home: Path, *, due: bool) -> dict:
    """A home with a CA and one server certificate; returns the credential Secret built from it
    (due: issued 80 of 90 days ago, inside the last third)."""
    from kimpki.istio.credential import CredentialSpec
    from kimpki.ops import authority, credentials, issuing
    from kimpki.pki import keys
    from kimpki.store import Store

    now = datetime.now(timezone.utc)
    store = Store.open(home)
    try:
        authority.init_ca(store, CA_NAME, org="bench", common_name=None, key_type=keys.KeyType.EC_P256,
                          days=3650, passphrase=None, parent=None, parent_passphrase=authority.no_passphrase,
                          now=now)
        nb = now - timedelta(days=80) if due else now - timedelta(minutes=5)
        res = issuing.issue(store, ["h0.bench.example.com"], ca_name=CA_NAME, now=now,
                            passphrase=authority.no_passphrase, not_before=nb, not_after=nb + timedelta(days=90))
        prepared = credentials.prepare(store, res.record.name, CredentialSpec("template", NS), now=now)
        return prepared.secrets[0]
    finally:
        store.close()


def secrets_like(template: dict, n: int) -> list[dict]:
    out = []
    for i in range(n):
        s = copy.deepcopy(template)
        host = f"h{i:05d}.bench.example.com"
        s["metadata"]["name"] = f"cred-{i:05d}"
        ann = s["metadata"]["annotations"]
        ann["kimpki.io/store-name"] = host
        ann["kimpki.io/hosts"] = host
        out.append(s)
    return out


def start_server(secrets: list[dict]):
    from tests.kubeapi import KubeApiServer

    srv = KubeApiServer().start()
    t0 = time.perf_counter()
    srv.put_objects(secrets)
    print(f"# loaded {len(secrets)} Secrets into the API stand-in in {time.perf_counter() - t0:.1f} s", flush=True)
    return srv


def env_for(home: Path, srv) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMPKI_")}
    env.update(KIMPKI_HOME=str(home), KUBECONFIG=srv.kubeconfig_path, KUBECACHEDIR=str(home.parent / "kube-cache"))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return env


def run(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.2f} s  (min {min(xs):.2f}, max {max(xs):.2f}, {len(xs)} runs)"


def sweep(args, work: Path) -> None:
    home = work / "home"
    srv = start_server(secrets_like(set_up_home(home, due=False), args.secrets))
    env = env_for(home, srv)
    budget = -(-args.secrets // PAGE) + 5
    try:
        if args.hold:
            hold(env, [KIMPKI, "renew", "--dry-run"])
            return
        for label, extra in (("renew --dry-run", ["--dry-run"]), ("renew", [])):
            cmd = [KIMPKI, "renew", *extra, "--json"]
            run(cmd, env)  # warm-up: page cache, .pyc files
            times, counts = [], []
            for _ in range(args.runs):
                srv.clear_requests()
                dt, proc = run(cmd, env)
                if proc.returncode != 0:
                    sys.exit(f"{label} failed ({proc.returncode}): {proc.stderr.strip()}")
                summary = json.loads(proc.stdout)
                if summary["checked"] != args.secrets or summary["due"] != 0:
                    sys.exit(f"{label}: expected {args.secrets} checked and none due, got {summary['checked']} "
                             f"checked, {summary['due']} due")
                times.append(dt)
                counts.append(len(srv.requests))
            lists = sum(1 for m, p, q in srv.requests if m == "GET" and p.endswith("/secrets"))
            print(f"{label:<16} {fmt(times)}; API requests {max(counts)} (last run: {lists} LIST pages; "
                  f"budget {budget})")
    finally:
        srv.stop()


def renew_all(args, work: Path) -> None:
    home = work / "home"
    srv = start_server(secrets_like(set_up_home(home, due=True), args.due))
    env = env_for(home, srv)
    try:
        if args.hold:
            hold(env, [KIMPKI, "renew"])
            return
        srv.clear_requests()
        dt, proc = run([KIMPKI, "renew", "--json"], env)
        if proc.returncode != 0:
            sys.exit(f"renew failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        summary = json.loads(proc.stdout)
        puts = len(srv.calls(method="PUT", resource="secrets"))
        serials = {s["metadata"]["annotations"]["kimpki.io/serial"] for s in srv.list_objects("secrets", NS)}
        ok = summary["renewed"] == args.due and puts == args.due and len(serials) == args.due
        print(f"renew {args.due} due  {dt:.1f} s wall, {dt / args.due * 1000:.1f} ms per credential; "
              f"renewed {summary['renewed']}, failed {summary['failed']}, Secret PUTs {puts}, "
              f"distinct serials {len(serials)}, API requests {len(srv.requests)}"
              + ("" if ok else "  ** NOT ALL RENEWED **"))
        if not ok:
            sys.exit(1)
    finally:
        srv.stop()


def hold(env: dict, cmd: list[str]) -> None:
    print("# environment and command (Ctrl-C stops the API stand-in):")
    print(" ".join(f"{k}={shlex.quote(env[k])}" for k in ("KIMPKI_HOME", "KUBECONFIG", "KUBECACHEDIR"))
          + " " + shlex.join(cmd), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="case", required=True)
    s = sub.add_parser("sweep", help="SECRETS managed Secrets, none due: renew --dry-run and renew")
    s.add_argument("--secrets", type=int, default=10_000)
    s.add_argument("--runs", type=int, default=5)
    s.add_argument("--hold", action="store_true")
    r = sub.add_parser("renew", help="DUE managed Secrets, all due: renew them all")
    r.add_argument("--due", type=int, default=1_000)
    r.add_argument("--hold", action="store_true")
    args = ap.parse_args()
    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="kimpki-bench-renew-") as d:
        (sweep if args.case == "sweep" else renew_all)(args, Path(d))


if __name__ == "__main__":
    main()
