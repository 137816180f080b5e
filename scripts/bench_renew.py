"""Time `kimpki renew` against the Kubernetes API stand-in (tests/kubeapi), whole processes.

Two cases (issue 5, "Performance"):

  sweep   SECRETS managed credential Secrets (default 10,000) in istio-system, none due.
          Timed: `kimpki renew --dry-run` (list, decide, report) and `kimpki renew` (the same
          plus the renewal Lease), each the whole process. Counted: the API requests each run
          sends (target: at most SECRETS/500 + 5, the Lease included; 10,000 → 25) and the wall
          time (target: at most 5 s for 10,000).
  renew   DUE managed credential Secrets (default 1,000), all due, EC P-256 keys. Timed: RUNS
          `kimpki renew` runs that each renew them all from a fresh copy of the home (target: at
          most 3 s for 1,000, with the same request count: one guarded PUT per Secret), wall and
          CPU time; with --against REF, kimpki as it was at git REF too, run for run (the anchor);
          with --floor, scripts/renew_floor.py too: the same work with nothing but the essentials,
          in one process and in two (how close kimpki is to the floor, and how low the floor is).
          Checked: every one renewed, one PUT per Secret, a new serial in each Secret.

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
  scripts/bench renew renew [--due 1000] [--runs 3] [--against 1b44aa0] [--floor]
  scripts/bench renew sweep --hold   # set up, print the environment and command, serve until Ctrl-C
  scripts/bench renew status [--secrets 10000] [--runs 3]
          `kimpki status --cluster` and `kimpki check` over SECRETS managed Secrets (and Gateways
          naming them, 1,000 servers each): wall time, API requests, peak memory; the anchor is
          `kubectl get secrets -l app.kubernetes.io/managed-by=kimpki -o json` of the same Secrets.
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
from bench_common import kimpki_command  # noqa: E402 - scripts/ is sys.path[0] when run as a script

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


def fresh_homes(template_home: Path, work: Path, n: int) -> list[Path]:
    """``n`` copies of the home, all made before the first timed run and removed with the
    temporary folder after the last: on ext4, creating inodes right after thousands were deleted
    (the last run's new versions) scans past the freed ones, which would time the benchmark's own
    clean-up rather than kimpki."""
    import shutil

    homes = []
    for i in range(n):
        home = work / f"run-{i}" / "home"
        shutil.copytree(template_home, home, symlinks=True)  # the store's `current` links stay links
        homes.append(home)
    return homes


def renew_once(cmd: list[str], home: Path, secrets: list[dict], srv, due: int) -> dict:
    """One `renew` of DUE due Secrets from a fresh copy of the home: wall and CPU time, requests."""
    import resource

    srv.put_objects(secrets)  # every Secret due again (the last run renewed them)
    env = env_for(home, srv)
    srv.clear_requests()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    dt, proc = run(cmd, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"renew failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    summary = json.loads(proc.stdout)
    puts = len(srv.calls(method="PUT", resource="secrets"))
    serials = {s["metadata"]["annotations"]["kimpki.io/serial"] for s in srv.list_objects("secrets", NS)}
    if not (summary["renewed"] == due and puts == due and len(serials) == due):
        sys.exit(f"renew did not renew all: renewed {summary['renewed']}, PUTs {puts}, serials {len(serials)}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": dt, "cpu": cpu, "requests": len(srv.requests)}


def renew_all(args, work: Path) -> None:
    template = work / "home"
    secrets = secrets_like(set_up_home(template, due=True), args.due)
    srv = start_server(secrets)
    try:
        if args.hold:
            hold(env_for(template, srv), [KIMPKI, "renew"])
            return
        renew_json = ["renew", "--json"]
        sides = [("kimpki", [*kimpki_command(None, work), *renew_json])]
        if args.against:
            sides.append((f"kimpki@{args.against}", [*kimpki_command(args.against, work), *renew_json]))
        if args.floor:  # the essential work alone (scripts/renew_floor.py), in one process and in two
            floor = [sys.executable, str(ROOT / "scripts" / "renew_floor.py")]
            sides += [("floor", floor), ("floor, 2 processes", [*floor, "--workers", "2"])]
        runs: dict[str, list[dict]] = {name: [] for name, _ in sides}
        homes = iter(fresh_homes(template, work, args.runs * len(sides)))
        for _ in range(args.runs):  # A B A B ...: drift hits both alike
            for name, cmd in sides:
                runs[name].append(renew_once(cmd, next(homes), secrets, srv, args.due))
        for name, rs in runs.items():
            print(f"{name:<24} renew {args.due} due: wall {fmt([r['wall'] for r in rs])}; "
                  f"CPU median {statistics.median(r['cpu'] for r in rs):.2f} s; "
                  f"API requests {max(r['requests'] for r in rs)}")
        pairs = [("kimpki", f"kimpki@{args.against}")] if args.against else []
        if args.floor:
            pairs.append(("kimpki", "floor"))
            if args.against:
                pairs += [("floor", f"kimpki@{args.against}"), ("floor, 2 processes", f"kimpki@{args.against}")]
        for a, b in pairs:
            ratios = [x["wall"] / y["wall"] for x, y in zip(runs[a], runs[b])]
            print(f"{'ratio':<24} wall {a} / {b} median {statistics.median(ratios):.2f} "
                  f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
    finally:
        srv.stop()


def gateways_for(secrets: list[dict], per_gateway: int = 1000) -> list[dict]:
    """Gateways whose SIMPLE servers name the Secrets (what `check` looks at), 1,000 servers each."""
    out = []
    for g in range(0, len(secrets), per_gateway):
        servers = [{"port": {"number": 443, "name": f"https-{i:05d}", "protocol": "HTTPS"},
                    "hosts": [s["metadata"]["annotations"]["kimpki.io/hosts"]],
                    "tls": {"mode": "SIMPLE", "credentialName": s["metadata"]["name"]}}
                   for i, s in enumerate(secrets[g:g + per_gateway], start=g)]
        out.append({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                    "metadata": {"name": f"bench-{g // per_gateway:02d}", "namespace": NS},
                    "spec": {"selector": {"istio": "ingressgateway"}, "servers": servers}})
    return out


def timed_with_peak(cmd: list[str], env: dict) -> tuple[float, int, subprocess.CompletedProcess]:
    """Wall time and peak resident memory (KiB, GNU time's %M) of one whole process."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    peak = int(proc.stderr.strip().splitlines()[-1])
    return dt, peak, proc


def status_check(args, work: Path) -> None:
    """status and check over SECRETS managed Secrets, against `kubectl get` of the same Secrets."""
    home = work / "home"
    secrets = secrets_like(set_up_home(home, due=False), args.secrets)
    srv = start_server(secrets)
    srv.put_objects(gateways_for(secrets))
    env = env_for(home, srv)
    cases = [
        ("kimpki status --cluster", [KIMPKI, "status", "--cluster", "--json"]),
        ("kimpki check", [KIMPKI, "check", "--json"]),
        ("kubectl get secrets", ["kubectl", "get", "secrets", "-n", NS, "-l", "app.kubernetes.io/managed-by=kimpki",
                                 "-o", "json"]),
    ]
    try:
        for label, cmd in cases:
            timed_with_peak(cmd, env)  # warm-up
            walls, peaks, counts = [], [], []
            for _ in range(args.runs):
                srv.clear_requests()
                dt, peak, proc = timed_with_peak(cmd, env)
                if proc.returncode not in (0, 1):
                    sys.exit(f"{label} failed ({proc.returncode}): {proc.stderr.strip()[-1000:]}")
                walls.append(dt)
                peaks.append(peak)
                counts.append(len(srv.requests))
            print(f"{label:<24} {args.secrets} Secrets: wall {fmt(walls)}; API requests {max(counts)}; "
                  f"peak RSS median {statistics.median(peaks) / 1024:.0f} MiB", flush=True)
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
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--against", metavar="GIT_REF",
                   help="also time kimpki as it was at this commit, run for run (e.g. 1b44aa0, before batching)")
    r.add_argument("--floor", action="store_true",
                   help="also time scripts/renew_floor.py (the essential work alone), in 1 and 2 processes")
    r.add_argument("--hold", action="store_true")
    st = sub.add_parser("status", help="SECRETS managed Secrets: status and check, vs kubectl get")
    st.add_argument("--secrets", type=int, default=10_000)
    st.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="kimpki-bench-renew-") as d:
        {"sweep": sweep, "renew": renew_all, "status": status_check}[args.case](args, Path(d))


if __name__ == "__main__":
    main()
