"""CRL delivery (issue 13): MUTUAL credentials carry the CRL of every CA of their client trust,
where Istio reads it (``crl`` beside ``cacert``, ``ca.crl`` beside ``ca.crt``, in ``NAME-cacert``
when that Secret is written), or none at all; a partial or expired set is refused.

Checked with real certificates: the delivered CRLs verify against their CAs (``openssl crl
-verify``) and make ``openssl verify -crl_check_all`` refuse exactly the revoked client.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kimpki.istio.credential import CredentialMaterial, CredentialSpec, Provenance, build_credential
from tests.conftest import assert_one_line_error, openssl
from tests.kubeapi.fixtures import kube_api  # noqa: F401  (a fixture)

PEM_CRL = b"-----BEGIN X509 CRL-----"


@pytest.fixture
def tree(kimpki):
    """root.example > issuing.example; a server and two clients from the intermediate."""
    k = kimpki
    k.ok("ca", "init", "root.example")
    k.ok("ca", "init", "issuing.example", "--parent", "root.example")
    k.ok("issue", "kim.example.com", "--ca", "issuing.example")
    k.ok("issue", "--client", "a.example.com", "--ca", "issuing.example")
    k.ok("issue", "--client", "b.example.com", "--ca", "issuing.example")
    return k


def secrets_of(k, *args: str) -> dict[str, dict[str, bytes]]:
    out = json.loads(k.ok("secret", "create", "kim-credential", "--cert", "kim.example.com", *args,
                          "--dry-run", "-o", "json").out)
    items = out["items"] if out.get("kind") == "List" else [out]
    return {s["metadata"]["name"]: {key: base64.b64decode(v) for key, v in s["data"].items()} for s in items}


def split_crls(pem: bytes) -> list[x509.CertificateRevocationList]:
    parts = [PEM_CRL + p for p in pem.split(PEM_CRL)[1:]]
    return [x509.load_pem_x509_crl(p) for p in parts]


def test_no_crl_until_the_tree_uses_revocation(tree):
    for args in ([], ["--mutual"], ["--mutual", "--format", "tls"], ["--mutual", "--ca-secret"]):
        for data in secrets_of(tree, *args).values():
            assert "crl" not in data and "ca.crl" not in data, args


def test_revoke_signs_every_crl_of_the_tree(tree):
    d = tree.json("revoke", "a.example.com")
    assert d["crl"]["ca"] == "issuing.example"
    assert [c["ca"] for c in d["tree_crls"]] == ["root.example"]  # the root had none: signed with it
    assert (tree.home / "cas" / "root.example" / "crl.pem").exists()
    again = tree.json("revoke", "b.example.com")  # the root's CRL is fresh: left as it is
    assert again["tree_crls"] == []


@pytest.mark.parametrize("args,holder,ca_key,crl_key", [
    (["--mutual"], "kim-credential", "cacert", "crl"),
    (["--mutual", "--format", "tls"], "kim-credential", "ca.crt", "ca.crl"),
    (["--mutual", "--ca-secret"], "kim-credential-cacert", "cacert", "crl"),
    (["--mutual", "--ca-secret", "--format", "tls"], "kim-credential-cacert", "ca.crt", "ca.crl"),
])
def test_mutual_credentials_carry_every_crl_beside_the_ca(tree, tmp_path, args, holder, ca_key, crl_key):
    tree.ok("revoke", "a.example.com", "--reason", "keyCompromise")
    secrets = secrets_of(tree, *args)
    data = secrets[holder]
    assert set(data) & {"cacert", "ca.crt", "crl", "ca.crl"} == {ca_key, crl_key}
    for name, other in secrets.items():  # nowhere else: Istio would not read it there
        if name != holder:
            assert "crl" not in other and "ca.crl" not in other
    crls = split_crls(data[crl_key])
    assert [c.issuer.rfc4514_string() for c in crls] == ["CN=root.example", "CN=issuing.example"]
    for crl, ca in zip(crls, ("root.example", "issuing.example")):
        one = tmp_path / f"{ca}.crl"
        one.write_bytes(crl.public_bytes(Encoding.PEM))
        r = openssl("crl", "-in", one, "-noout", "-verify", "-CAfile", tree.home / "cas" / ca / "ca.crt", check=False)
        assert r.returncode == 0 and b"verify OK" in r.stderr, r
    # What Envoy does with it: openssl verify with every CRL of the path, against the delivered CA.
    (tmp_path / "ca.pem").write_bytes(data[ca_key])
    (tmp_path / "crls.pem").write_bytes(data[crl_key])

    def check(client: str):
        return openssl("verify", "-crl_check_all", "-CRLfile", tmp_path / "crls.pem", "-CAfile", tmp_path / "ca.pem",
                       "-untrusted", tree.home / "cas" / "issuing.example" / "ca.crt",
                       tree.home / "certs" / client / "current" / "cert.crt", check=False)

    assert check("b.example.com").returncode == 0
    revoked = check("a.example.com")
    assert revoked.returncode == 2 and b"certificate revoked" in revoked.stderr, revoked


def test_simple_credentials_carry_no_crl(tree):
    tree.ok("revoke", "a.example.com")
    (data,) = secrets_of(tree).values()
    assert set(data) == {"cert", "key"}


def test_a_partial_set_is_refused(tree):
    tree.ok("crl", "root.example")  # the root uses revocation; the intermediate has no CRL yet
    res = tree("secret", "create", "kim-credential", "--cert", "kim.example.com", "--mutual", "--dry-run",
               "-o", "yaml")
    assert_one_line_error(res, 1, "CA 'issuing.example' has no CRL", "kimpki crl issuing.example")
    tree.ok("crl", "issuing.example")
    crls = split_crls(secrets_of(tree, "--mutual")["kim-credential"]["crl"])
    assert len(crls) == 2


def test_an_expired_crl_is_refused(tree):
    from kimpki.ops import revoking
    from kimpki.ops.authority import no_passphrase
    from kimpki.store import Store

    tree.ok("revoke", "a.example.com")
    store = Store.open(tree.home)
    try:  # a CRL signed two hours ago, valid for one: past its nextUpdate now
        revoking.set_crl_validity(store, "root.example", timedelta(hours=1))
        revoking.current_crl(store, "root.example", now=datetime.now(timezone.utc) - timedelta(hours=2),
                             passphrase=no_passphrase, refresh=True)
    finally:
        store.close()
    res = tree("secret", "create", "kim-credential", "--cert", "kim.example.com", "--mutual", "--dry-run")
    assert_one_line_error(res, 1, "the CRL of CA 'root.example' expired on", "kimpki crl root.example")
    tree.ok("crl", "root.example")  # due: signed anew
    assert len(split_crls(secrets_of(tree, "--mutual")["kim-credential"]["crl"])) == 2


def test_rotate_keeps_delivering_the_crls(tree, tmp_path):
    tree.ok("revoke", "a.example.com")
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "kim.yaml").write_text(tree.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                             "--mutual", "--format", "tls", "--dry-run", "-o", "yaml").out)
    tree.ok("revoke", "b.example.com")  # a newer CRL of issuing.example
    tree.ok("rotate", "kim-credential", "--manifests", deploy)
    import yaml

    (secret,) = [d for d in yaml.safe_load_all((deploy / "kim.yaml").read_text()) if d]
    crls = split_crls(base64.b64decode(secret["data"]["ca.crl"]))
    assert len(crls[1]) == 2  # both revocations: the rotation took the store's current CRLs


def test_build_credential_puts_the_crl_beside_the_ca():
    """istio/ stays pure: bytes in, dicts out."""
    material = CredentialMaterial(b"CHAIN", b"KEY", b"CA", b"CRL")
    prov = Provenance("kim", ("kim.example.com",), "ca", "01", "2030-01-01T00:00:00Z")

    def data(**spec):
        return [{k: base64.b64decode(v) for k, v in s["data"].items()}
                for s in build_credential(CredentialSpec("kim", **spec), material, prov).secrets]

    assert data(mutual=True) == [{"cert": b"CHAIN", "key": b"KEY", "cacert": b"CA", "crl": b"CRL"}]
    assert data(mutual=True, format="tls") == [{"tls.crt": b"CHAIN", "tls.key": b"KEY", "ca.crt": b"CA",
                                                "ca.crl": b"CRL"}]
    assert data(mutual=True, ca_secret=True)[1] == {"cacert": b"CA", "crl": b"CRL"}
    assert data(mutual=False) == [{"cert": b"CHAIN", "key": b"KEY"}]


def test_revoke_republishes_in_a_cluster_only_the_crl_key(tree, kube_api):
    """-n, --kubeconfig and --context choose the cluster; each MUTUAL credential of the tree gets
    the new CRLs in place (resourceVersion moves, nothing but the CRL key changes); a SIMPLE one,
    and one trusting another tree, are left alone."""
    kc = ["--kubeconfig", kube_api.kubeconfig_path]
    tree.ok("ca", "init", "other.example")
    tree.ok("issue", "other-server.example.com", "--ca", "other.example")
    tree.ok("revoke", "a.example.com")
    tree.ok("secret", "create", "kim-credential", "--cert", "kim.example.com", "--mutual", "--ca-secret", *kc)
    tree.ok("secret", "create", "kim-simple", "--cert", "kim.example.com", *kc)
    tree.ok("secret", "create", "other-credential", "--cert", "other-server.example.com", "--mutual", *kc)
    before = {n: kube_api.get_object("secrets", "istio-system", n)
              for n in ("kim-credential", "kim-credential-cacert", "kim-simple", "other-credential")}
    d = tree.json("revoke", "b.example.com", "-n", "istio-system", *kc, "--context", "kubeapi-standin")
    assert [(r["secret"], r["action"]) for r in d["republished"]] == [("kim-credential-cacert", "updated")]
    after = {n: kube_api.get_object("secrets", "istio-system", n) for n in before}
    for name in ("kim-credential", "kim-simple", "other-credential"):
        assert after[name]["metadata"]["resourceVersion"] == before[name]["metadata"]["resourceVersion"], name
    old, new = before["kim-credential-cacert"], after["kim-credential-cacert"]
    assert new["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"]
    assert {k: v for k, v in new["data"].items() if k != "crl"} == {k: v for k, v in old["data"].items() if k != "crl"}
    assert new["metadata"]["annotations"] == old["metadata"]["annotations"]
    crls = split_crls(base64.b64decode(new["data"]["crl"]))
    assert sorted(len(c) for c in crls) == [0, 2]  # the intermediate's CRL lists a and b
    again = tree.json("revoke", "b.example.com", "--namespace", "istio-system", *kc)  # already: republish only
    assert again["already_revoked"] and [r["action"] for r in again["republished"]] == ["unchanged"]
    assert_one_line_error(tree("revoke", "b.example.com", "--manifests", tree.cwd, *kc), 2, "one or the other")


@pytest.mark.parametrize("rotated", ["root.example", "issuing.example"])
def test_ca_rotate_gives_the_successor_a_crl(tree, tmp_path, rotated):
    """A successor joins a tree that uses revocation: ca rotate signs its CRL, so the widened
    credentials carry a complete set (else they would be refused, or Envoy would refuse its clients)."""
    tree.ok("revoke", "a.example.com")
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "kim.yaml").write_text(tree.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                             "--mutual", "--dry-run", "-o", "yaml").out)
    d = tree.json("ca", "rotate", rotated, "--manifests", deploy)
    assert d["failed"] is None and d["crls_signed"] == [d["successor"]], d
    # A new root widens the credential's bundle (and so its CRLs); a new intermediate leaves the
    # bundle (the root) as it is, and only its CRL is added.
    assert [r["action"] for r in d["crls_republished"]] == (["unchanged"] if rotated == "root.example"
                                                            else ["updated"])
    import yaml

    (secret,) = [s for s in yaml.safe_load_all((deploy / "kim.yaml").read_text()) if s]
    issuers = {c.issuer.rfc4514_string() for c in split_crls(base64.b64decode(secret["data"]["crl"]))}
    new_cn = x509.load_pem_x509_certificate((tree.home / "cas" / d["successor"] / "ca.crt").read_bytes()).subject
    assert issuers == {"CN=root.example", "CN=issuing.example", new_cn.rfc4514_string()}


def test_renew_keeps_the_delivered_crls_fresh(tree, tmp_path):
    """A CRL a Secret carries expires too: renew re-signs the due ones and republishes them."""
    from kimpki.ops import revoking
    from kimpki.ops.authority import no_passphrase
    from kimpki.store import Store
    import yaml

    tree.ok("revoke", "a.example.com")
    store = Store.open(tree.home)
    try:  # the root's CRL signed 5 days ago with 7 days' validity: inside its last third
        revoking.current_crl(store, "root.example", now=datetime.now(timezone.utc) - timedelta(days=5),
                             passphrase=no_passphrase, refresh=True)
    finally:
        store.close()
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "kim.yaml").write_text(tree.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                             "--mutual", "--dry-run", "-o", "yaml").out)

    def root_crl() -> x509.CertificateRevocationList:
        (secret,) = [s for s in yaml.safe_load_all((deploy / "kim.yaml").read_text()) if s]
        return split_crls(base64.b64decode(secret["data"]["crl"]))[0]

    old = root_crl()
    res = tree.ok("renew", "--manifests", deploy, "--json")
    d = res.json
    assert d["crls_signed"] == ["root.example"] and d["errors"] == []
    assert "CRL of CA root.example re-signed" in res.err and "secret/kim-credential" in res.err
    assert [r["secret"] for r in d["crls_republished"]] == ["kim-credential"]
    new = root_crl()
    assert new.next_update_utc - old.next_update_utc > timedelta(days=4)
    again = tree.json("renew", "--manifests", deploy)  # fresh now: nothing signed, nothing rewritten
    assert again["crls_signed"] == [] and again["crls_republished"] == []


def test_a_home_without_the_revocation_state_does_not_drop_the_crls(kimpki, tmp_path):
    """Rotating from a home that knows the CA but not its revocations (another machine's, or the
    CronJob's memory home) would write the credential without its CRLs and admit the revoked
    clients again: refused, the Secret untouched."""
    import shutil

    from tests.conftest import Kimpki

    k = kimpki
    k.ok("ca", "init", "solo.example")
    k.ok("issue", "kim.example.com", "--ca", "solo.example")
    k.ok("issue", "--client", "a.example.com", "--ca", "solo.example")
    k.ok("revoke", "a.example.com")
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "kim.yaml").write_text(k.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                          "--mutual", "--dry-run", "-o", "yaml").out)
    before = (deploy / "kim.yaml").read_text()
    other = Kimpki(tmp_path / "other-home", k.cwd)
    ca_dir = k.home / "cas" / "solo.example"
    shutil.copy(ca_dir / "ca.key", tmp_path / "solo.key")
    other.ok("ca", "import", "solo.example", "--cert", ca_dir / "ca.crt", "--key", tmp_path / "solo.key")
    assert_one_line_error(other("rotate", "kim-credential", "--manifests", deploy), 1,
                          "carries CRLs, but this kimpki home has no revocation state for CA 'solo.example'")
    assert (deploy / "kim.yaml").read_text() == before
    k.ok("rotate", "kim-credential", "--manifests", deploy)  # the home that revoked: fine
