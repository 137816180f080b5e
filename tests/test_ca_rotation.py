"""``kimpki ca rotate`` and ``kimpki ca retire`` through the real CLI: the CA bundles during and
after the overlap, the cross certificate, refusals, re-runs; a real Envoy gateway (``kimpki
gateway serve``) checked with curl and ``kimpki verify``; and a cluster (the stand-in API server)
with a failed write half-way.

The setup mirrors the seed: CA example.com, server certificates for kim.example.com (SIMPLE) and
kim-new.example.com (MUTUAL), the client certificate kim-client.example.com.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from cryptography import x509

from tests.conftest import Kimpki, assert_one_line_error, wait_until
from tests.tlspeers import curl_refused
from tests.istio_helpers import kubectl_json
from tests.kubeapi.fixtures import *  # noqa: F401,F403
from tests.test_verify_envoy import ServedGateway

OLD, NEW = "example.com", "example.com-g2"
OLD_SUBJECT, NEW_SUBJECT = "CN=example.com,O=example Inc.", "CN=example.com G2,O=example Inc."
NS = "istio-system"


# --------------------------------------------------------------------------- helpers

def pem_certs(data: bytes | str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data if isinstance(data, bytes) else data.encode())


def subjects(certs: list[x509.Certificate]) -> list[str]:
    return [c.subject.rfc4514_string() for c in certs]


def ca_cert(k: Kimpki, name: str) -> x509.Certificate:
    return pem_certs((k.home / "cas" / name / "ca.crt").read_bytes())[0]


def secrets_in(folder: Path) -> dict[str, dict]:
    """Every Secret in a folder of manifests, by name."""
    out = {}
    for f in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                out[doc["metadata"]["name"]] = doc
    return out


def data(secret: dict, key: str) -> list[x509.Certificate]:
    return pem_certs(base64.b64decode(secret["data"][key]))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def seed(k: Kimpki) -> dict:
    """The seed's CA, two server certificates and the client certificate."""
    return {"ca": k.json("ca", "init", OLD, "--org", "example Inc."),
            "kim": k.json("issue", "kim.example.com", "--org", "kim organization"),
            "kim-new": k.json("issue", "kim-new.example.com", "--org", "kim organization"),
            "client": k.json("issue", "--client", "kim-client.example.com")}


def write_secret(k: Kimpki, folder: Path, file: str, *args: str) -> None:
    (folder / file).write_text(k.ok("secret", "create", *args, "--dry-run", "-o", "yaml").out)


def ca_states(k: Kimpki) -> dict[str, tuple]:
    return {r["name"]: (r["state"], r["default"], r["successor"], r["predecessor"]) for r in k.json("ca", "list")["items"]}


# --------------------------------------------------------------------------- bundles

def test_bundles_hold_old_and_new_during_the_overlap_and_new_only_after_retire(kimpki, tmp_path):
    k = kimpki
    seed(k)
    k.ok("issue", "kim-tls.example.com")
    k.ok("issue", "bookinfo.com")
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    # The three places Istio reads a MUTUAL CA from: cacert in the credential, NAME-cacert, and
    # the file-mounted istio-ingressgateway-ca-certs (file example.com.crt, named in the Gateway).
    write_secret(k, deploy, "kim-new.yaml", "kim-new-credential", "--cert", "kim-new.example.com", "--mutual")
    write_secret(k, deploy, "kim-tls.yaml", "kim-tls-credential", "--cert", "kim-tls.example.com", "--mutual",
                 "--format", "tls", "--ca-secret")
    write_secret(k, deploy, "bookinfo.yaml", "--file-mounted", "--cert", "bookinfo.com", "--mutual")
    write_secret(k, deploy, "kim.yaml", "kim-credential", "--cert", "kim.example.com")
    old = ca_cert(k, OLD)

    def bundles() -> dict[str, list[str]]:
        s = secrets_in(deploy)
        assert "ca.crt" not in s["kim-tls-credential"]["data"] and "cacert" not in s["kim-credential"]["data"]
        assert list(s["istio-ingressgateway-ca-certs"]["data"]) == ["example.com.crt"]
        return {"generic": subjects(data(s["kim-new-credential"], "cacert")),
                "ca-secret": subjects(data(s["kim-tls-credential-cacert"], "ca.crt")),
                "file-mounted": subjects(data(s["istio-ingressgateway-ca-certs"], "example.com.crt"))}

    assert bundles() == dict.fromkeys(["generic", "ca-secret", "file-mounted"], [OLD_SUBJECT])

    # A dry run says what would happen and changes nothing.
    before = folder_bytes(deploy)
    plan = k.json("ca", "rotate", OLD, "--manifests", deploy, "--dry-run")
    assert (plan["successor"], plan["successor_action"], plan["dry_run"]) == (NEW, "would create", True)
    assert sorted(i["secret"] for i in plan["widened"]) == ["istio-ingressgateway-certs", "kim-new-credential",
                                                            "kim-tls-credential"]
    assert {i["action"] for i in plan["widened"] + plan["servers"]} == {"would update", "would rotate"}
    assert [(c["name"], c["action"]) for c in plan["clients"]] == [("kim-client.example.com", "would reissue")]
    assert folder_bytes(deploy) == before and list(ca_states(k)) == [OLD]

    rep = k.json("ca", "rotate", OLD, "--manifests", deploy)
    assert (rep["successor"], rep["successor_action"], rep["default_ca"]) == (NEW, "created", NEW)
    assert rep["failed"] is None and rep["remaining"] == [] and rep["ready_to_retire"] is True
    assert {i["secret"]: i["action"] for i in rep["widened"]} == {
        "kim-new-credential": "updated", "kim-tls-credential": "updated", "istio-ingressgateway-certs": "updated"}
    assert {i["secret"]: i["action"] for i in rep["servers"]} == {
        "kim-new-credential": "rotated", "kim-tls-credential": "rotated", "istio-ingressgateway-certs": "rotated",
        "kim-credential": "rotated"}
    new = ca_cert(k, NEW)
    assert new.subject.rfc4514_string() == NEW_SUBJECT
    assert bundles() == dict.fromkeys(["generic", "ca-secret", "file-mounted"], [OLD_SUBJECT, NEW_SUBJECT])
    assert data(secrets_in(deploy)["kim-new-credential"], "cacert") == [old, new]

    # Served chains: a leaf from NEW, then NEW certified by OLD (the cross certificate).
    (cross,) = pem_certs(Path(rep["cross_certificate"]).read_bytes())
    assert (cross.subject, cross.issuer, cross.public_key()) == (new.subject, old.subject, new.public_key())
    cross.verify_directly_issued_by(old)
    s = secrets_in(deploy)
    for name, key in [("kim-credential", "cert"), ("kim-new-credential", "cert"), ("kim-tls-credential", "tls.crt"),
                      ("istio-ingressgateway-certs", "tls.crt")]:
        leaf, *rest = data(s[name], key)
        leaf.verify_directly_issued_by(new)
        assert rest == [cross], name
        assert s[name]["metadata"]["annotations"]["kimpki.io/ca"] == NEW

    # The re-issued client: new key and serial from NEW; the old version stays; its ca.crt trusts both.
    (client,) = rep["clients"]
    assert client["action"] == "reissued" and client["new_serial"] != client["old_serial"]
    pem_certs(Path(client["cert"]).read_bytes())[0].verify_directly_issued_by(new)
    assert Path(client["old_cert"]).is_file() and Path(client["old_key"]).is_file()
    assert pem_certs(Path(client["ca_bundle"]).read_bytes()) == [old, new]
    assert oct(Path(client["key"]).stat().st_mode & 0o777) == "0o600"

    assert ca_states(k) == {OLD: ("superseded", False, NEW, None), NEW: ("active", True, None, OLD)}
    listing = k.ok("ca", "list").out
    assert re.search(rf"^  {re.escape(OLD)} .* superseded by {re.escape(NEW)} ", listing, re.M)
    assert re.search(rf"^\* {re.escape(NEW)} .* active \(replaces {re.escape(OLD)}\) ", listing, re.M)

    ret = k.json("ca", "retire", OLD, "--manifests", deploy)
    assert (ret["action"], ret["successor"], ret["default_ca"], ret["failed"]) == ("retired", NEW, NEW, None)
    assert {i["secret"]: i["action"] for i in ret["rewritten"]} == {
        "kim-new-credential": "updated", "kim-tls-credential": "updated", "istio-ingressgateway-certs": "updated"}
    assert bundles() == dict.fromkeys(["generic", "ca-secret", "file-mounted"], [NEW_SUBJECT])
    assert ca_states(k)[OLD][0] == "retired"
    assert re.search(rf"^  {re.escape(OLD)} .* retired \d{{4}}-\d\d-\d\d ", k.ok("ca", "list").out, re.M)

    # After the overlap new certificates come without the cross certificate, with NEW only to trust.
    after = k.json("issue", "--client", "late.example.com")
    assert subjects(pem_certs(Path(after["cert"]).read_bytes())) == ["CN=late.example.com"]
    assert pem_certs(Path(after["ca"]).read_bytes()) == [new]


def test_a_rerun_reuses_the_successor_and_changes_nothing_done(kimpki, tmp_path):
    k = kimpki
    seed(k)
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    write_secret(k, deploy, "kim-new.yaml", "kim-new-credential", "--cert", "kim-new.example.com", "--mutual")
    first = k.json("ca", "rotate", OLD, "--manifests", deploy)
    assert first["successor_action"] == "created"
    files, versions = folder_bytes(deploy), k.json("list", "--all")["items"]

    again = k.json("ca", "rotate", OLD, "--manifests", deploy)
    assert (again["successor"], again["successor_action"]) == (NEW, "reused")
    assert again["widened"] == [] and again["clients"] == []
    assert [(i["secret"], i["action"]) for i in again["servers"]] == [("kim-new-credential", "already rotated")]
    # kim.example.com is in the store but in no place this rotation looks at: it is left alone, and said so.
    assert again["remaining"] == [f"server certificate kim.example.com is current and was issued by {OLD}"]
    assert again["ready_to_retire"] is False
    assert folder_bytes(deploy) == files and k.json("list", "--all")["items"] == versions
    assert list(ca_states(k)) == [OLD, NEW]
    assert k.json("issue", "kim.example.com")["ca_name"] == NEW  # the successor is the default now
    text = k.ok("ca", "rotate", OLD, "--manifests", deploy).out
    assert f"CA {OLD} -> {NEW} (reused; default CA {NEW})" in text
    assert "already rotated" in text and f"ready to retire: kimpki ca retire {OLD}" in text

    # Retiring twice is fine too: the second run only checks and rewrites nothing.
    assert k.json("ca", "retire", OLD, "--manifests", deploy)["action"] == "retired"
    files = folder_bytes(deploy)
    twice = k.json("ca", "retire", OLD, "--manifests", deploy)
    assert twice["action"] == "already retired"
    assert [i["action"] for i in twice["rewritten"]] == ["unchanged"]
    assert folder_bytes(deploy) == files


# --------------------------------------------------------------------------- refusals

def test_retire_refuses_while_something_depends_on_the_old_ca(kimpki, tmp_path):
    k = kimpki
    s = seed(k)
    rotated, elsewhere = tmp_path / "rotated", tmp_path / "elsewhere"
    rotated.mkdir()
    elsewhere.mkdir()
    write_secret(k, rotated, "kim-new.yaml", "kim-new-credential", "--cert", "kim-new.example.com", "--mutual")

    res = k("ca", "retire", OLD, "--manifests", rotated)
    assert_one_line_error(res, 1, f"CA '{OLD}' has no successor", f"kimpki ca rotate {OLD}")

    # The SIMPLE credential lives in a folder this rotation does not look at.
    write_secret(k, elsewhere, "kim.yaml", "kim-credential", "--cert", "kim.example.com")
    k.json("ca", "rotate", OLD, "--manifests", rotated)
    late = k.json("issue", "--client", "late-client.example.com", "--ca", OLD)  # superseded CAs still issue
    files = folder_bytes(rotated)
    res = k("ca", "retire", OLD, "--manifests", rotated, "--manifests", elsewhere)
    assert_one_line_error(res, 1)
    assert res.err.strip() == (
        f"kimpki: error: cannot retire CA '{OLD}': kim-credential ({NS}) still serves serial {s['kim']['serial']} "
        f"from {OLD}; client certificate late-client.example.com is current and was issued by {OLD} "
        f"(move them to {NEW} with 'kimpki ca rotate {OLD}')")
    assert folder_bytes(rotated) == files and ca_states(k)[OLD][0] == "superseded"
    assert data(secrets_in(rotated)["kim-new-credential"], "cacert") == [ca_cert(k, OLD), ca_cert(k, NEW)]

    # Rotating a CA that is itself mid-rotation, or to a different successor: refused.
    assert_one_line_error(k("ca", "rotate", NEW, "--manifests", rotated), 1,
                          f"CA '{NEW}' is itself replacing '{OLD}', which is not retired yet",
                          f"kimpki ca retire {OLD}")
    assert_one_line_error(k("ca", "rotate", OLD, "--new-name", "other", "--manifests", rotated), 1,
                          f"already being replaced by '{NEW}'")
    assert_one_line_error(k("ca", "rotate", "nope", "--manifests", rotated), 1, "no CA named 'nope'")
    assert_one_line_error(k("ca", "rotate", OLD, "--manifests", tmp_path / "missing"), 2, "no such manifests folder")
    assert_one_line_error(k("ca", "rotate", OLD, "--key-type", "dsa", "--manifests", rotated), 2)

    # The same command over both folders moves the rest; then retiring works.
    rep = k.json("ca", "rotate", OLD, "--manifests", rotated, "--manifests", elsewhere)
    assert [(i["secret"], i["action"]) for i in rep["servers"]] == [("kim-new-credential", "already rotated"),
                                                                      ("kim-credential", "rotated")]
    assert [(c["name"], c["old_serial"]) for c in rep["clients"]] == [("late-client.example.com", late["serial"])]
    assert rep["ready_to_retire"] is True
    k.ok("ca", "retire", OLD, "--manifests", rotated, "--manifests", elsewhere)

    # A retired CA no longer issues, and cannot be rotated again.
    assert_one_line_error(k("issue", "x.example.com", "--ca", OLD), 1,
                          f"CA '{OLD}' was retired on", "may no longer issue", f"issue from its successor '{NEW}'")
    assert_one_line_error(k("ca", "init", "sub", "--parent", OLD), 1, "may no longer issue")
    assert_one_line_error(k("ca", "rotate", OLD, "--manifests", rotated), 1, f"CA '{OLD}' is retired")
    assert k.json("issue", "x.example.com")["ca_name"] == NEW  # the default moved


def test_an_encrypted_ca_key_needs_a_passphrase_for_the_successor(kimpki, tmp_path):
    k = kimpki
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    empty = tmp_path / "deploy"
    empty.mkdir()
    k.ok("ca", "init", OLD, "--passphrase-file", pw)
    res = k("ca", "rotate", OLD, "--manifests", empty)
    assert_one_line_error(res, 2, f"the key of CA '{OLD}' is encrypted", "--passphrase-file")
    assert list(ca_states(k)) == [OLD]
    rep = k.json("ca", "rotate", OLD, "--manifests", empty, "--passphrase-file", pw)
    assert rep["successor_action"] == "created"
    (succ,) = [r for r in k.json("ca", "list")["items"] if r["name"] == NEW]
    assert succ["encrypted"] is True
    assert b"ENCRYPTED" in (k.home / "cas" / NEW / "ca.key").read_bytes()


def test_an_intermediate_is_replaced_under_the_same_root(kimpki, tmp_path):
    k = kimpki
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    k.ok("ca", "init", OLD, "--org", "example Inc.")
    k.ok("ca", "init", "example-issuing", "--parent", OLD, "--org", "example Inc.")
    k.ok("issue", "kim.example.com", "--ca", "example-issuing")
    client = k.json("issue", "--client", "kim-client.example.com", "--ca", "example-issuing")
    write_secret(k, deploy, "kim.yaml", "kim-credential", "--cert", "kim.example.com")

    rep = k.json("ca", "rotate", "example-issuing", "--manifests", deploy)
    assert (rep["successor"], rep["cross_certificate"]) == ("example-issuing-g2", None)
    assert rep["default_ca"] == OLD  # the intermediate was not the default
    (row,) = [r for r in k.json("ca", "list")["items"] if r["name"] == "example-issuing-g2"]
    assert (row["kind"], row["parent"], row["subject"]) == ("intermediate", OLD, "CN=example-issuing G2,O=example Inc.")
    root, issuing2 = ca_cert(k, OLD), ca_cert(k, "example-issuing-g2")
    leaf, *chain = data(secrets_in(deploy)["kim-credential"], "cert")
    leaf.verify_directly_issued_by(issuing2)
    assert chain == [issuing2]
    # Both generations chain to the same root: the clients' trust does not change.
    (new_client,) = rep["clients"]
    assert pem_certs(Path(new_client["ca_bundle"]).read_bytes()) == [root]
    assert Path(client["ca"]).read_bytes() == Path(new_client["ca_bundle"]).read_bytes()
    assert k.json("ca", "retire", "example-issuing", "--manifests", deploy)["action"] == "retired"


def test_help_explains_the_overlap_with_examples(kimpki):
    out = kimpki.ok("ca", "rotate", "--help").out
    for needle in ["cross certificate", "newWithOld", "trust only the old root", "both roots",
                   "kimpki ca retire NAME", "Examples:", "kimpki ca rotate example.com --manifests ./deploy",
                   "Exit codes"]:
        assert needle in " ".join(out.split()), needle
    out = kimpki.ok("ca", "retire", "--help").out
    assert "Examples:" in out and "kimpki ca retire example.com" in out and "Refuses" in out
    out = kimpki.ok("ca", "--help").out
    assert "rotate" in out and "retire" in out


# --------------------------------------------------------------------------- a real gateway

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """kim.example.com (SIMPLE) and kim-new.example.com (MUTUAL) served by one real Envoy."""
    root = tmp_path_factory.mktemp("ca-rotation-envoy")
    (root / "work").mkdir()
    k = Kimpki(root / "home", root / "work")
    s = seed(k)
    manifests = root / "manifests"
    manifests.mkdir()
    write_secret(k, manifests, "kim-credential.yaml", "kim-credential", "--cert", "kim.example.com")
    write_secret(k, manifests, "kim-new-credential.yaml", "kim-new-credential", "--cert", "kim-new.example.com",
                 "--mutual")
    (manifests / "kim-gateway.yaml").write_text(k.ok(
        "gateway", "render", "--name", "kim-gateway", "--host", "kim.example.com", "--credential", "kim-credential",
        "--mode", "SIMPLE", "--host", "kim-new.example.com", "--credential", "kim-new-credential", "--mode", "MUTUAL",
        "-o", "yaml").out)
    gw = ServedGateway(k, manifests, 2)
    try:
        yield SimpleNamespace(k=k, gw=gw, port=gw.port, manifests=manifests, **s)
    finally:
        code = gw.stop()
    assert code == 0, "".join(gw.stderr)


def curl(site, host: str, trust: str, client: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    extra = ["--cert", client[0], "--key", client[1]] if client else []
    return subprocess.run(["curl", "-sS", "--max-time", "5", "--resolve", f"{host}:{site.port}:127.0.0.1",
                           "--cacert", trust, *extra, f"https://{host}:{site.port}/health"],
                          capture_output=True, text=True, timeout=15)


def accepted(r: subprocess.CompletedProcess) -> bool:
    return r.returncode == 0 and r.stdout == '{"status":"UP"}'


def refused(r: subprocess.CompletedProcess) -> bool:
    """Envoy's unknown-CA alert read by curl, or the connection closed under curl's first bytes."""
    return curl_refused(r, "alert unknown ca")


def served_chain(site, host: str) -> list[x509.Certificate]:
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{site.port}", "-servername", host,
                        "-showcerts"], input="", capture_output=True, text=True, timeout=15)
    return pem_certs("".join(re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", r.stdout, re.S)))


def verify_mutual(site, *trust_and_client: str, code: int) -> dict:
    res = site.k("verify", "kim-new.example.com", "--connect", f"127.0.0.1:{site.port}", "--mode", "mutual",
                 *trust_and_client, "--json")
    assert res.code == code, (res.code, res.err, res.out)
    return res.json


def test_gateway_accepts_old_and_new_clients_during_the_overlap_and_only_new_ones_after_retire(site):
    k = site.k
    old_trust = site.ca["cert"]  # what clients were given with the seed's CA
    old_client = (site.client["cert"], site.client["key"])  # the version directory: kept after re-issue
    assert accepted(curl(site, "kim-new.example.com", old_trust, old_client))
    assert verify_mutual(site, "--ca", OLD, "--client", "kim-client.example.com", code=0)["ok"]

    rep = k.json("ca", "rotate", OLD, "--manifests", site.manifests)
    assert rep["ready_to_retire"] is True
    served = {i["secret"]: i["new_serial"] for i in rep["servers"]}
    (reissued,) = rep["clients"]
    new_client = (reissued["cert"], reissued["key"])
    new_trust = str(k.home / "cas" / NEW / "ca.crt")
    chain = wait_until(lambda: (
        c if (c := served_chain(site, "kim-new.example.com")) and format(c[0].serial_number, "x") ==
        served["kim-new-credential"] else None), "the gateway to serve kim-new.example.com's new certificate")
    wait_until(lambda: format(served_chain(site, "kim.example.com")[0].serial_number, "x") == served["kim-credential"],
               "the gateway to serve kim.example.com's new certificate")
    # The server certificate comes from NEW, followed by NEW certified by OLD.
    assert [(c.subject.rfc4514_string(), c.issuer.rfc4514_string()) for c in chain] == [
        ("CN=kim-new.example.com,O=kim organization", NEW_SUBJECT), (NEW_SUBJECT, OLD_SUBJECT)]

    # The overlap: client certificates from either CA are accepted, by clients trusting either root
    # (or the both-roots ca.crt handed out with the new client certificate).
    for trust in (old_trust, new_trust, reissued["ca_bundle"]):
        for client in (old_client, new_client):
            r = curl(site, "kim-new.example.com", trust, client)
            assert accepted(r), (trust, client, r.returncode, r.stderr)
        assert accepted(curl(site, "kim.example.com", trust))
    assert verify_mutual(site, "--ca", NEW, "--client", "kim-client.example.com", code=0)["ok"]
    assert verify_mutual(site, "--ca", OLD, "--cert", old_client[0], "--key", old_client[1], code=0)["ok"]

    ret = k.json("ca", "retire", OLD, "--manifests", site.manifests)
    assert ret["action"] == "retired"
    wait_until(lambda: refused(curl(site, "kim-new.example.com", new_trust, old_client)),
               "the gateway to refuse the old client certificate")
    r = curl(site, "kim-new.example.com", new_trust, old_client)
    assert refused(r), (r.returncode, r.stderr)
    d = verify_mutual(site, "--ca", NEW, "--cert", old_client[0], "--key", old_client[1], code=1)
    assert d["reason"] == "client_certificate_refused"
    assert accepted(curl(site, "kim-new.example.com", new_trust, new_client))
    assert verify_mutual(site, "--ca", NEW, "--client", "kim-client.example.com", code=0)["ok"]
    # Server certificates issued during the overlap keep the cross certificate until renewed.
    assert accepted(curl(site, "kim-new.example.com", old_trust, new_client))

    # All through SDS pushes: the same Envoy process, started once.
    os.kill(site.gw.envoy_pid, 0)
    assert "envoy" in Path(f"/proc/{site.gw.envoy_pid}/cmdline").read_bytes().decode(errors="replace")
    assert sum("ready in" in line for line in site.gw.stderr) == 1
    assert any("reloaded" in line and "kim-new-credential" in line for line in site.gw.stderr)


# --------------------------------------------------------------------------- a cluster

def test_cluster_secrets_are_updated_in_place_and_a_failed_write_is_finished_by_a_rerun(kube_env, kimpki):
    k, srv = kimpki, kube_env
    env = {"KUBECONFIG": srv.kubeconfig_path}
    s = seed(k)
    k.ok("secret", "create", "kim-credential", "--cert", "kim.example.com", env=env)
    k.ok("secret", "create", "kim-new-credential", "--cert", "kim-new.example.com", "--mutual", "--format", "tls",
         "--ca-secret", env=env)
    names = ["kim-credential", "kim-new-credential", "kim-new-credential-cacert"]
    uids = {n: srv.get_object("secrets", NS, n)["metadata"]["uid"] for n in names}
    kept_rv = srv.get_object("secrets", NS, "kim-credential")["metadata"]["resourceVersion"]
    created = len(srv.calls("POST", "secrets"))

    # The API server fails the update of kim-credential: the rotation stops at that step.
    srv.fail(method="PUT", resource="secrets", name="kim-credential", status=500)
    res = k("ca", "rotate", OLD, "--json", env=env)
    assert_one_line_error(res, 1, f"ca rotate {OLD}: step servers failed", "kim-credential",
                          "run the same command again to finish")
    partial = res.json
    assert partial["failed"]["step"] == "servers" and partial["successor_action"] == "created"
    assert [i["secret"] for i in partial["widened"]] == ["kim-new-credential"]
    live = srv.get_object("secrets", NS, "kim-credential")
    assert live["metadata"]["resourceVersion"] == kept_rv
    assert live["metadata"]["annotations"]["kimpki.io/serial"] == s["kim"]["serial"]
    cacert = kubectl_json("get", "secret", "kim-new-credential-cacert", "-n", NS, env=env)
    assert subjects(data(cacert, "ca.crt")) == [OLD_SUBJECT, NEW_SUBJECT]  # widened before the failure

    rep = k.json("ca", "rotate", OLD, env=env)
    assert rep["successor_action"] == "reused" and rep["failed"] is None and rep["ready_to_retire"] is True
    assert {i["secret"]: i["action"] for i in rep["servers"]} == {"kim-credential": "resumed",
                                                                  "kim-new-credential": "rotated"}
    assert [c["name"] for c in rep["clients"]] == ["kim-client.example.com"]
    for n in ["kim-credential", "kim-new-credential"]:
        leaf, cross = data(srv.get_object("secrets", NS, n), "tls.crt" if n == "kim-new-credential" else "cert")
        leaf.verify_directly_issued_by(ca_cert(k, NEW))

    ret = k.json("ca", "retire", OLD, env=env)
    assert ret["action"] == "retired"
    cacert = kubectl_json("get", "secret", "kim-new-credential-cacert", "-n", NS, env=env)
    assert subjects(data(cacert, "ca.crt")) == [NEW_SUBJECT]
    # Updated in place all along: the same objects, never deleted or re-created.
    assert {n: srv.get_object("secrets", NS, n)["metadata"]["uid"] for n in names} == uids
    assert srv.calls("DELETE") == [] and len(srv.calls("POST", "secrets")) == created
