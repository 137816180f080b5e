"""The CEL engine for the Istio CRDs' rules (issue 15): common-expression-language against
cel-python, and what validation costs `kimpki gateway render`.

For each engine that is installed (cel-python is not a kimpki dependency: `pip install
cel-python` into the venv to compare), in fresh processes (median of RUNS):
  * import: `import <engine>` alone (and common-expression-language as kimpki loads it:
    its compiled extension without the package's command line);
  * compile: every distinct rule of every CRD in tests/data/istio/crds.yaml (all Istio kinds);
  * evaluate: the three Gateway tls rules on a tls block, per rule;
then `kimpki gateway render` (the real CLI) with --validate and --no-validate.

  scripts/bench cel [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "tests" / "data" / "istio" / "crds.yaml"

PROBE = r'''
import json, sys, time, yaml
engine, crds = sys.argv[1], sys.argv[2]
rules = []
def walk(n):
    if isinstance(n, dict):
        rules.extend(r["rule"] for r in n.get("x-kubernetes-validations") or [])
        for v in n.values(): walk(v)
    elif isinstance(n, list):
        for x in n: walk(x)
for d in yaml.safe_load_all(open(crds)):
    if d and d.get("kind") == "CustomResourceDefinition": walk(d["spec"]["versions"])
unique = sorted(set(rules))
tls = {"mode": "SIMPLE", "credentialName": "a"}
t0 = time.perf_counter()
if engine == "cel-python":
    import celpy
    t1 = time.perf_counter()
    env = celpy.Environment()
    progs = [env.program(env.compile(r)) for r in unique]
    t2 = time.perf_counter()
    tls_rules = [env.program(env.compile(r)) for r in unique if "credentialName" in r]
    run = lambda p: p.evaluate({"self": celpy.json_to_cel(tls)})
else:
    if engine == "common-expression-language":
        import cel
    else:  # as kimpki loads it: the compiled extension without the package's command line
        from kimpki.istio.celrules import engine as load
        t0 = time.perf_counter()
        cel = load()
    t1 = time.perf_counter()
    progs = [cel.compile(r) for r in unique]
    t2 = time.perf_counter()
    tls_rules = [cel.compile(r) for r in unique if "credentialName" in r]
    run = lambda p: p.execute({"self": tls})
n = 300
t3 = time.perf_counter()
for _ in range(n):
    for p in tls_rules: assert run(p)
t4 = time.perf_counter()
print(json.dumps({"rules": len(rules), "unique": len(unique), "import_ms": 1e3 * (t1 - t0),
                  "compile_ms": 1e3 * (t2 - t1), "eval_us": 1e6 * (t4 - t3) / (n * len(tls_rules))}))
'''


def probe(engine: str, runs: int) -> dict | None:
    out = []
    for _ in range(runs):
        p = subprocess.run([sys.executable, "-c", PROBE, engine, str(CRDS)], capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            return None  # not installed
        out.append(json.loads(p.stdout))
    return {k: statistics.median(o[k] for o in out) for k in out[0]}


def render(flag: str, runs: int) -> float:
    kimpki = [sys.executable, "-m", "kimpki", "gateway", "render", "--host", "a.example.com", "--credential", "a", flag]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(kimpki, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    for engine in ("common-expression-language", "  as kimpki loads it", "cel-python"):
        r = probe(engine, a.runs)
        if r is None:
            print(f"{engine:28} not installed")
            continue
        print(f"{engine:28} import {r['import_ms']:6.0f} ms   compile {int(r['unique'])} distinct rules "
              f"(of {int(r['rules'])}) {r['compile_ms']:6.1f} ms   evaluate {r['eval_us']:7.1f} µs/rule")
    print(f"kimpki gateway render --validate     {render('--validate', a.runs):6.0f} ms (median of {a.runs})")
    print(f"kimpki gateway render --no-validate  {render('--no-validate', a.runs):6.0f} ms")


if __name__ == "__main__":
    main()
