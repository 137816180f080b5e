"""Time `kimpki apply -f` of a policy with many certificates, whole processes.

Two policies, generated in a temporary directory:
  certs        one CA (created by `kimpki ca init`, not timed) and CERTS Certificates (EC P-256):
               apply issues them all into the store;
  credentials  the same plus one SIMPLE Credential per certificate and one Gateway naming them
               all, written to a manifests folder (what `kimpki gateway serve -f` reads).

Each run starts from a fresh copy of the home that holds only the CA, all made before the first
timed run and removed after the last (see fresh_runs). With --against GIT_REF,
kimpki as it was at that commit runs the same apply right after, run for run (the anchor).

  scripts/bench apply [--certs 1000] [--runs 3] [--against 1b44aa0] [--cases certs,credentials]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import kimpki_command  # scripts/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parent.parent
CA = "bench.example.com"


def policy(folder: Path, n: int, credentials: bool) -> Path:
    folder.mkdir(parents=True)
    docs = [f"apiVersion: kimpki.io/v1alpha1\nkind: CertificateAuthority\nmetadata: {{name: {CA}}}\n"
            "spec: {keyType: ec-p256, duration: 3650d}\n"]
    servers = []
    for i in range(n):
        h = f"h{i:04d}.bench.example.com"
        docs.append(f"apiVersion: kimpki.io/v1alpha1\nkind: Certificate\nmetadata: {{name: {h}}}\n"
                    f"spec: {{hosts: [{h}], ca: {CA}, duration: 90d}}\n")
        if credentials:
            docs.append(f"apiVersion: kimpki.io/v1alpha1\nkind: Credential\n"
                        f"metadata: {{name: c{i:04d}, namespace: istio-system}}\n"
                        f"spec: {{certificate: {h}, mode: SIMPLE}}\n")
            servers.append(f"    - credential: c{i:04d}")
    if credentials:
        docs.append("apiVersion: kimpki.io/v1alpha1\nkind: Target\nmetadata: {name: local}\nspec: {manifests: out}\n")
        docs.append("apiVersion: kimpki.io/v1alpha1\nkind: Gateway\nmetadata: {name: bench, namespace: istio-system}\n"
                    "spec:\n  servers:\n" + "\n".join(servers) + "\n")
    (folder / "policy.yaml").write_text("---\n".join(docs))
    return folder


def fresh_runs(template: Path, pol: Path, work: Path, n: int) -> list[tuple[Path, Path]]:
    """``n`` (home, policy folder) pairs, each a fresh copy, all made before the first timed run.

    Nothing is deleted between timed runs: on ext4, creating inodes right after thousands were
    deleted (the last run's 6,000) makes each creation scan past the freed ones, which would time
    the benchmark's own clean-up rather than kimpki. The copies go with the temporary folder."""
    runs = []
    for i in range(n):
        home, folder = work / f"run-{pol.name}-{i}" / "home", work / f"run-{pol.name}-{i}" / pol.name
        shutil.copytree(template, home, symlinks=True)
        folder.mkdir()
        shutil.copy2(pol / "policy.yaml", folder / "policy.yaml")
        runs.append((home, folder))
    return runs


def apply_once(cmd: list[str], home: Path, pol: Path) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMPKI_")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, "--home", str(home), "apply", "-f", str(pol)], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"apply failed ({proc.returncode}): {proc.stderr.strip()[-1000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--certs", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", metavar="GIT_REF")
    ap.add_argument("--cases", default="certs,credentials")
    args = ap.parse_args()
    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="kimpki-bench-apply-") as d:
        work = Path(d)
        template = work / "home"
        subprocess.run([sys.executable, "-m", "kimpki", "--home", str(template), "ca", "init", CA], check=True,
                       stdout=subprocess.DEVNULL)
        sides = [("kimpki", kimpki_command(None, work))]
        if args.against:
            sides.append((f"kimpki@{args.against}", kimpki_command(args.against, work)))
        for case in args.cases.split(","):
            pol = policy(work / case, args.certs, case == "credentials")
            walls: dict[str, list[float]] = {n: [] for n, _ in sides}
            cpus: dict[str, list[float]] = {n: [] for n, _ in sides}
            runs = iter(fresh_runs(template, pol, work, args.runs * len(sides)))
            for _ in range(args.runs):  # A B A B ...
                for name, cmd in sides:
                    w, c = apply_once(cmd, *next(runs))
                    walls[name].append(w)
                    cpus[name].append(c)
            for name, _ in sides:
                ws = walls[name]
                print(f"{case:<12} {name:<18} apply of {args.certs}: wall median {statistics.median(ws):.2f} s "
                      f"(min {min(ws):.2f}, max {max(ws):.2f}, {len(ws)} runs); CPU median "
                      f"{statistics.median(cpus[name]):.2f} s", flush=True)
            if args.against:
                ratios = [a / b for a, b in zip(walls["kimpki"], walls[f"kimpki@{args.against}"])]
                print(f"{case:<12} {'ratio':<18} wall kimpki/kimpki@{args.against} median "
                      f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})\n", flush=True)


if __name__ == "__main__":
    main()
