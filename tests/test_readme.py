"""Every ```bash example in the README runs, as written, on a fresh home (no cluster needed).

The blocks are run in the README's order by the real shell with the project's ``kimpki`` on PATH:
the quick tour on its own home; the gateway walk-through (credentials, local Envoy, verify,
rotation, CA rotation, status, renew) as one session; the policy block on a copy of
``policies/``. The first block (``scripts/demo``, ``scripts/test``) is what CI itself runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import ROOT
from tests.tlspeers import free_port

BLOCKS = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def run(script: str, cwd: Path, home: Path, timeout: float = 240, path_first: Path | None = None,
        **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMPKI_")}
    env["KIMPKI_HOME"] = str(home)
    env["PORT"] = str(free_port())  # the README's gateway port (8443 when unset): never a fixed one here
    env.update(variables)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TMPDIR"] = str(cwd / ".tmp")  # the gateway's run folder and a kept Envoy log stay in the test's folder
    (cwd / ".tmp").mkdir(exist_ok=True)
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
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
               block("kimpki status -o prometheus"), block("kimpki revoke leaked.example.com"),
               block("revoke-deploy/gateway.yaml"), block("kimpki revoke stapled.example"),
               block("kimpki revoke mallory.example"), block("kimpki plan -f policies/"),
               block("--mode OPTIONAL_MUTUAL"), block("kimpki issue dual.example.com --dual")}
    assert covered == set(BLOCKS)


def test_quick_tour(tmp_path):
    home = tmp_path / "home"
    r = run(block("kimpki ca init example-issuing"), tmp_path, home)
    assert r.returncode == 0, r.stderr + r.stdout
    # Each line does what its comment says.
    assert "CA example.com (root, default)" in r.stdout and "CA example-issuing (intermediate)" in r.stdout
    cas = {p.parent.name: x509.load_pem_x509_certificate(p.read_bytes()) for p in home.glob("cas/*/ca.crt")}
    assert cas["example-issuing"].issuer == cas["example.com"].subject
    server = x509.load_pem_x509_certificates((home / "certs/kim.example.com/current/cert.crt").read_bytes())[0]
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in sans] == ["kim.example.com", "*.kim.example.com", "10.0.0.7"]
    assert server.issuer == cas["example-issuing"].subject  # issued by the intermediate (--ca)
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey) and server.public_key().curve.name == "secp256r1"
    assert round((server.not_valid_after_utc - server.not_valid_before_utc).total_seconds() / 86400) == 90
    assert sorted(p.name for p in (tmp_path / "client").iterdir()) == \
        ["ca.crt", "kim-client.example.com.crt", "kim-client.example.com.key"]
    listed = {line.split()[0]: line.split() for line in r.stdout.splitlines()
              if line.startswith(("kim.example.com ", "kim-client.example.com "))}
    assert (listed["kim.example.com"][1], listed["kim.example.com"][-1]) == ("server", "valid")
    assert (listed["kim-client.example.com"][1], listed["kim-client.example.com"][-1]) == ("client", "valid")
    inspected = json.loads(r.stdout[r.stdout.index("\n{") + 1:])
    assert inspected["chain"]["ok"] and inspected["chain"]["against"] == "CA example.com"
    assert inspected["chain"]["path"] == ["CN=kim-client.example.com", "CN=example-issuing",
                                          "CN=example.com,O=example Inc."]
    assert inspected["certificates"][0]["extended_key_usage"] == ["client_auth"]


def test_gateway_walk_through_on_a_local_envoy(tmp_path):
    script = "\n".join([block("mkdir -p deploy"), block("kimpki gateway serve -f deploy/"),
                        block("kimpki rotate kim-credential --manifests"), block("kimpki status -o prometheus")])
    port = free_port()
    r = run(script, tmp_path, tmp_path / "home", PORT=str(port))
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"on https://127.0.0.1:{port}" in (tmp_path / "gateway.log").read_text() + r.stdout
    assert r.stdout.count("PASS") >= 3 and "2 passed, 0 failed" in r.stdout
    assert "rotated" in r.stdout and "MUTUAL bundles widened" in r.stdout
    assert "nothing due" in r.stderr
    assert " renew --manifests " in r.stdout  # the crontab line
    assert 'kind="ca"' in r.stdout and "kimpki_renew_success 1.0" in r.stdout  # the monitoring block
    assert (tmp_path / "kimpki.prom").read_text().count('kind="ca"') >= 1


def test_gateway_block_ends_with_serves_error_when_envoy_cannot_start(tmp_path):
    """Every wait in the README is bounded: a serve that fails ends the block with its own error
    instead of a wait for "ready in" that never comes (here: an Envoy binary that cannot run)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "envoy").write_text("#!/bin/sh\necho 'critical: cannot start' >&2\nexit 1\n")
    (fake / "envoy").chmod(0o755)
    setup = run(block("mkdir -p deploy"), tmp_path, tmp_path / "home")
    assert setup.returncode == 0, setup.stderr + setup.stdout
    r = run(block("kimpki gateway serve -f deploy/"), tmp_path, tmp_path / "home", timeout=60, path_first=fake)
    assert r.returncode == 1, r.stdout + r.stderr  # the first verify's exit code ended the block
    assert "kimpki: error: Envoy exited" in r.stdout, r.stdout + r.stderr  # the loop printed serve's log
    assert "connection_refused" in r.stdout + r.stderr  # and the next line ran, failed, and ended the block


def test_revocation_block(tmp_path):
    r = run(block("kimpki revoke leaked.example.com"), tmp_path, tmp_path / "home")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "revoked" in r.stdout.split("leaked.example.com", 2)[-1]  # the list line's state
    assert "certificate revoked" in r.stdout  # openssl's verdict with the CRL
    assert "secret/revoke-credential (istio-system): CRLs updated" in r.stdout  # republished in the folder
    r = run(block("revoke-deploy/gateway.yaml"), tmp_path, tmp_path / "home")  # check and status on it
    assert r.returncode == 0, r.stderr + r.stdout
    assert "crl_complete" in r.stdout and "crl_fresh" in r.stdout
    assert re.search(r"^revoke-demo\.example +\d+ +\d{4}-\d\d-\d\d \d\d:\d\d +valid +1$", r.stdout, re.M), r.stdout


def test_ocsp_staple_block(tmp_path):
    """After the revocation block, in the same session (its CA and folder)."""
    r = run(block("kimpki revoke leaked.example.com") + block("kimpki revoke stapled.example"), tmp_path,
            tmp_path / "home")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "secret/stapled-credential (istio-system): OCSP staple updated (revoked" in r.stdout
    assert "istio-system/stapled-credential: next update" in r.stdout.split("OCSP staples:")[-1]


def test_optional_mutual_block(tmp_path):
    r = run(block("--mode OPTIONAL_MUTUAL"), tmp_path, tmp_path / "home")
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stdout.count("\nPASS\n") == 2 and "bob refused: client_identity_not_allowed" in r.stdout
    assert re.search(r"ok +tls_floor +a client offering only TLS 1\.2 was refused", r.stdout), r.stdout
    assert re.search(r"ok +client_certificate_optional ", r.stdout), r.stdout
    assert "kimpki: error: client_identity_not_allowed:" in r.stderr


def test_revoking_a_client_certificate_on_the_local_gateway(tmp_path):
    port = free_port()
    r = run(block("kimpki revoke mallory.example"), tmp_path, tmp_path / "home", PORT=str(port))
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"on https://127.0.0.1:{port}" in r.stdout  # serve's serving line
    before, after = r.stdout.split("revoked mallory.example", 1)
    assert before.count("PASS") == 1  # mallory accepted before the revocation
    assert "secret/shop-credential (istio-system): CRLs updated" in after
    assert "client_certificate_revoked" in after and after.count("PASS") == 1  # mallory refused, alice accepted
    assert (tmp_path / "revoke-gw.log").read_text().count("Envoy pid") == 1  # one Envoy throughout


def test_dual_block(tmp_path):
    r = run(block("kimpki issue dual.example.com --dual"), tmp_path, tmp_path / "home")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "dual.example.com-rsa" in r.stdout and "all credentials OK" in r.stdout
    gateway = (tmp_path / "dual" / "gateway.yaml").read_text()
    assert "credentialNames:" in gateway and "caCertCredentialName: dual-clients-cacert" in gateway


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
