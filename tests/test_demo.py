"""The README's first command must keep working: run the demo as a user would (minus the venv bootstrap)."""

import subprocess
import sys

from tests.conftest import ROOT


def test_demo_runs_end_to_end():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/demo.py")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All steps passed." in proc.stdout
    assert "Traceback" not in proc.stderr
