"""The README's first command must keep working: run the demo as a user would (minus the venv bootstrap)."""

import re
import subprocess
import sys

from tests.conftest import ROOT


def run_demo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts/demo.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_demo_runs_end_to_end():
    proc = run_demo()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "All steps passed." in out
    assert "Traceback" not in proc.stderr
    # The transcript tells the story in order: the seed's steps, then the tools that replace its
    # hard cutovers, all on the one Envoy started in step 4.
    expected = [
        r"== 4\. A real local ingress gateway",
        r"Envoy pid (?P<pid>\d+)",
        r"\$ kimpki rotate kim-credential --manifests manifests\n"
        r"   [1-9]\d* handshakes \+ GET /health by 3 threads, 0 failed; serial (?P<old>[0-9a-f]+) -> (?P<new>[0-9a-f]+)",
        r"\$ kimpki verify kim\.example\.com .*\n   PASS; .*serial (?P=new)\n",
        r"\$ kimpki ca rotate example\.com --manifests manifests\n   example\.com-g2 created; .*ready to retire",
        r"--ca example\.com --cert kim-client-old\.crt --key kim-client-old\.key --mode mutual\n   PASS",
        r"--ca example\.com-g2 --client kim-client\.example\.com --mode mutual\n   PASS",
        r"\$ kimpki revoke --serial [0-9a-f]+ --ca example\.com --reason superseded --manifests manifests\n"
        r"   serial [0-9a-f]+\.\.\. revoked \(superseded\); CRL \d+ of example\.com into secret/kim-new-credential",
        r"--ca example\.com --cert kim-client-old\.crt --key kim-client-old\.key --mode mutual\n"
        r"   refused as expected \(client_certificate_revoked",
        r"--ca example\.com-g2 --client kim-client\.example\.com --mode mutual\n   PASS",
        r"\$ kimpki ca retire example\.com --manifests manifests\n   example\.com retired",
        r"--ca example\.com-g2 --cert kim-client-old\.crt --key kim-client-old\.key --mode mutual\n"
        r"   refused as expected \(client_certificate_refused",
        r"--ca example\.com-g2 --client kim-client\.example\.com --mode mutual\n   PASS",
        r"Envoy pid (?P=pid) unchanged since step 4",
        r"\$ kimpki status --manifests manifests --fail-on due\n.*SECRET.*STATE\n(.*valid\n){3}",
        r"\$ kimpki renew --manifests manifests --dry-run\n.* nothing due; next renewal",
        r"\$ kimpki cron render --manifests manifests\n   17 3 \* \* \* \S+ --home \$KIMPKI_HOME renew --manifests",
    ]
    pattern = "(?s:.*?)".join(f"(?:{e})" for e in expected)
    m = re.search(pattern, out)
    assert m, out
    assert m["old"] != m["new"]


def test_a_failing_step_stops_the_demo_with_one_line_and_exit_1(tmp_path):
    home = tmp_path / "home"
    subprocess.run([sys.executable, "-m", "kimpki", "--home", str(home), "ca", "init", "example.com"],
                   check=True, capture_output=True)
    proc = run_demo("--home", str(home), timeout=60)  # step 1 then finds example.com already there
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "All steps passed." not in proc.stdout
    assert re.fullmatch(r"\nDEMO FAILED: kimpki ca init example\.com .*exited 1: .*\n", proc.stderr), proc.stderr
