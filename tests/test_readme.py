"""Every ```bash example in the README runs, as written, on a fresh home (no cluster needed).

The blocks are run in the README's order by the real shell with the project's ``kimpki`` on PATH:
the quick tour on its own home; the gateway walk-through (credentials, local Envoy, verify,
rotation, CA rotation, status, renew) as one session; the policy block on a copy of
``policies/``. The first block (``scripts/demo``, ``scripts/test``) is what CI itself runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BLOCKS = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def run(script: str, cwd: Path, home: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMPKI_")}
    env["KIMPKI_HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # -e: any failing line fails the block; the trap stops a background gateway if one is left.
    wrapped = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script
    return subprocess.run(["bash", "-c", wrapped], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def block(*needles: str) -> str:
    found = [b for b in BLOCKS if all(n in b for n in needles)]
    assert len(found) == 1, (needles, len(found))
    return found[0]


def test_every_bash_block_is_covered():
    covered = {block("scripts/demo"), block("kimpki ca init example-issuing"), block("mkdir -p deploy"),
               block("kimpki gateway serve -f deploy/"), block("kimpki rotate kim-credential --manifests"),
               block("kimpki plan -f policies/")}
    assert covered == set(BLOCKS)


def test_quick_tour(tmp_path):
    r = run(block("kimpki ca init example-issuing"), tmp_path, tmp_path / "home")
    assert r.returncode == 0, r.stderr + r.stdout


def test_gateway_walk_through_on_a_local_envoy(tmp_path):
    script = "\n".join([block("mkdir -p deploy"), block("kimpki gateway serve -f deploy/"),
                        block("kimpki rotate kim-credential --manifests")])
    r = run(script, tmp_path, tmp_path / "home")
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stdout.count("PASS") >= 3 and "2 passed, 0 failed" in r.stdout
    assert "rotated" in r.stdout and "MUTUAL bundles widened" in r.stdout
    assert "nothing due" in r.stderr
    assert " renew --manifests " in r.stdout  # the crontab line


def test_policy_block(tmp_path):
    shutil.copytree(ROOT / "policies", tmp_path / "policies", ignore=shutil.ignore_patterns("out"))
    r = run(block("kimpki plan -f policies/"), tmp_path, tmp_path / "home")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "refused: outside the CA's name constraints" in r.stdout
    assert "evil.com is not in allowedDomains" in r.stderr


def test_commands_named_in_the_seed_table_exist():
    table = (ROOT / "README.md").read_text().split("## Quick tour")[0]
    named = sorted(set(re.findall(r"`kimpki ([a-z]+)", table)))
    out = subprocess.run([sys.executable, "-m", "kimpki", "--help"], capture_output=True, text=True).stdout
    listed = set(re.findall(r"^  ([a-z]+)\s", out, re.M))
    assert named and set(named) <= listed, set(named) - listed
