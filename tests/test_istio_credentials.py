"""Credential Secrets from store records: key sets, CA placement, provenance, and the checks that
refuse material a gateway could not serve. Cross-checked with the local gateway's reader, which
applies Istio's credential rules."""

from __future__ import annotations

import base64
import shutil
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from cryptography import x509

from kimpki.errors import OperationError, UsageError
from kimpki.istio import credential as cred
from kimpki.istio.gateway import ServerSpec, render_gateway
from kimpki.istio.volumes import apply_json_patch, mount_ops
from kimpki.localgw.manifests import parse_manifests, resolve
from kimpki.ops import authority, credentials
from kimpki.pki import keys
from kimpki.pki.parse import fingerprint_sha256
from kimpki.store import Store
from tests.istio_helpers import DEPLOYMENT_FILE, decoded, issue_in_process

NOW = datetime.now(timezone.utc)  # the CAs' and the dated leaves' clock (days apart: a slow suite is fine)


def now() -> datetime:
    """The checks' clock: the real time, since the leaves are issued when the fixture runs, which on
    a loaded machine can be minutes after this module was imported (past the 5-minute backdating)."""
    return datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A store with a root, an intermediate under it, an unrelated root, and a few leaves."""
    h = tmp_path_factory.mktemp("home")
    store = Store.open(h)
    for name, parent in (("example.com", None), ("inter", "example.com"), ("other", None)):
        authority.init_ca(store, name, org="example Inc.", common_name=None, key_type=keys.KeyType.EC_P256,
                          days=365, passphrase=None, parent=parent, parent_passphrase=authority.no_passphrase,
                          now=NOW)
    store.close()
    issue_in_process(h, ["kim.example.com", "10.0.0.7"], ca_name="example.com")
    issue_in_process(h, ["kim-new.example.com"], ca_name="inter")
    issue_in_process(h, ["kim-client.example.com"], ca_name="example.com", client=True)
    issue_in_process(h, ["old.example.com"], ca_name="example.com", not_before=NOW - timedelta(days=3),
                     not_after=NOW - timedelta(days=1))
    issue_in_process(h, ["future.example.com"], ca_name="example.com", not_before=NOW + timedelta(days=1),
                     not_after=NOW + timedelta(days=5))
    return h


@pytest.fixture
def store(home):
    s = Store.open(home)
    yield s
    s.close()


def prepare(store, cert, **spec):
    ca_name = spec.pop("ca_name", None)
    name = spec.pop("name", "kim-credential") if not spec.get("file_mounted") else spec.pop("name", None)
    return credentials.prepare(store, cert, cred.CredentialSpec(name=name, **spec), now=now(), ca_name=ca_name)


def test_generic_simple_is_cert_and_key_with_label_and_provenance(store):
    p = prepare(store, "kim.example.com")
    (s,) = p.secrets
    rec = store.get_cert("kim.example.com")
    assert s["apiVersion"] == "v1" and s["kind"] == "Secret" and s["type"] == "Opaque"
    assert s["metadata"]["name"] == "kim-credential" and s["metadata"]["namespace"] == "istio-system"
    assert s["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kimpki"}
    assert decoded(s) == {"cert": rec.cert_path.read_bytes(), "key": rec.key_path.read_bytes()}
    assert s["metadata"]["annotations"] == {
        "kimpki.io/store-name": "kim.example.com", "kimpki.io/hosts": "kim.example.com,10.0.0.7",
        "kimpki.io/ca": "example.com", "kimpki.io/serial": rec.serial,
        "kimpki.io/not-after": rec.not_after.isoformat().replace("+00:00", "Z"),
        "kimpki.io/format": "generic", "kimpki.io/mode": "simple", "kimpki.io/delivery": "sds",
        "kimpki.io/role": "credential"}
    assert cred.read_provenance(s)["hosts"] == ["kim.example.com", "10.0.0.7"]
    assert cred.read_provenance(s)["serial"] == rec.serial
    assert cred.is_managed(s)


@pytest.mark.parametrize("fmt,stype,keys_", [("generic", "Opaque", {"cert", "key", "cacert"}),
                                             ("tls", "kubernetes.io/tls", {"tls.crt", "tls.key", "ca.crt"})])
def test_mutual_carries_the_ca_in_the_credential(store, fmt, stype, keys_):
    (s,) = prepare(store, "kim.example.com", format=fmt, mutual=True).secrets
    assert s["type"] == stype and set(s["data"]) == keys_
    ca_key = "cacert" if fmt == "generic" else "ca.crt"
    assert decoded(s)[ca_key] == store.get_ca("example.com").cert_path.read_bytes()
    assert s["metadata"]["annotations"]["kimpki.io/mode"] == "mutual"


@pytest.mark.parametrize("fmt,ca_key", [("generic", "cacert"), ("tls", "ca.crt")])
def test_ca_secret_moves_the_ca_to_name_cacert(store, fmt, ca_key):
    main, ca = prepare(store, "kim.example.com", format=fmt, mutual=True, ca_secret=True).secrets
    assert ca_key not in main["data"] and len(main["data"]) == 2
    assert ca["metadata"]["name"] == "kim-credential-cacert"
    # Opaque even for the tls form: the API server wants tls.crt and tls.key in a kubernetes.io/tls Secret.
    assert ca["type"] == "Opaque" and list(ca["data"]) == [ca_key]
    assert ca["metadata"]["annotations"]["kimpki.io/role"] == "ca"
    assert ca["metadata"]["annotations"]["kimpki.io/credential"] == "kim-credential"


def test_file_mounted_defaults_to_the_legacy_names(store):
    (s,) = prepare(store, "kim.example.com", file_mounted=True, format="tls").secrets
    assert s["metadata"]["name"] == "istio-ingressgateway-certs" and s["type"] == "kubernetes.io/tls"
    assert set(s["data"]) == {"tls.crt", "tls.key"}
    main, ca = prepare(store, "kim.example.com", file_mounted=True, format="tls", mutual=True).secrets
    assert ca["metadata"]["name"] == "istio-ingressgateway-ca-certs" and ca["type"] == "Opaque"
    assert list(ca["data"]) == ["example.com.crt"]  # <CA name>.crt, as the seed's --from-file=example.com.crt
    _, ca = prepare(store, "kim.example.com", file_mounted=True, format="tls", mutual=True,
                    ca_file_name="clients.crt", name="istio-ingressgateway-bookinfo-certs").secrets
    assert list(ca["data"]) == ["clients.crt"]
    assert main["metadata"]["annotations"]["kimpki.io/delivery"] == "file-mounted"


def test_certificate_value_is_leaf_and_intermediates_never_the_root(store):
    (s,) = prepare(store, "kim-new.example.com", name="kim-new-credential").secrets
    chain = x509.load_pem_x509_certificates(decoded(s)["cert"])
    root = x509.load_pem_x509_certificate(store.get_ca("example.com").cert_path.read_bytes())
    inter = x509.load_pem_x509_certificate(store.get_ca("inter").cert_path.read_bytes())
    assert [x.subject.rfc4514_string() for x in chain] == ["CN=kim-new.example.com", inter.subject.rfc4514_string()]
    assert fingerprint_sha256(root) not in {fingerprint_sha256(x) for x in chain}


@pytest.mark.parametrize("spec,needle", [
    ({"name": None}, "NAME"),
    ({"name": "x", "format": "pem"}, "unknown credential format"),
    ({"name": "x", "ca_secret": True}, "--ca-secret only makes sense with --mutual"),
    ({"name": None, "file_mounted": True, "format": "generic"}, "TLS form"),
    ({"name": None, "file_mounted": True, "format": "tls", "mutual": True, "ca_secret": True}, "--ca-secret is for SDS"),
    ({"name": "x", "ca_file_name": "a.crt"}, "--ca-file-name only"),
    ({"name": None, "file_mounted": True, "format": "tls", "mutual": True, "ca_file_name": "../a"}, "plain file name"),
])
def test_spec_usage_errors(spec, needle):
    with pytest.raises(UsageError, match=needle.replace("-", r"\-").replace(".", r"\.")):
        cred.CredentialSpec(**spec)


# -- refusals ------------------------------------------------------------------------------------

def test_expired_and_not_yet_valid_are_refused(store):
    with pytest.raises(OperationError, match="expired on"):
        prepare(store, "old.example.com")
    with pytest.raises(OperationError, match="is not valid yet"):
        prepare(store, "future.example.com")


def test_a_client_certificate_is_not_a_server_credential(store):
    with pytest.raises(OperationError, match="is a client certificate.*not a server credential"):
        prepare(store, "kim-client.example.com")


def test_mutual_refuses_a_ca_the_certificate_does_not_chain_to(store):
    with pytest.raises(OperationError, match="does not chain to CA 'other'"):
        prepare(store, "kim.example.com", mutual=True, ca_name="other")
    # The intermediate's own root chains fine, and so does the intermediate itself as the published CA.
    assert prepare(store, "kim-new.example.com", mutual=True, ca_name="example.com").ca_name == "example.com"
    # By default the root it chains to is published, under the root's own name (the bundle and the
    # kimpki.io/ca annotation must agree: rotation republishes what the annotation names).
    default = prepare(store, "kim-new.example.com", mutual=True)
    assert default.ca_name == "example.com"
    assert default.secrets[0]["metadata"]["annotations"]["kimpki.io/ca"] == "example.com"


def test_a_key_that_does_not_match_is_refused(home, tmp_path):
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    s = Store.open(copy)
    rec = s.get_cert("kim.example.com")
    rec.key_path.chmod(0o600)
    rec.key_path.write_bytes(keys.key_to_pem(keys.generate_key()))
    with pytest.raises(OperationError, match="does not match the certificate"):
        credentials.prepare(s, "kim.example.com", cred.CredentialSpec("kim-credential"), now=now())
    s.close()


def test_a_certificate_is_found_by_host_too(store):
    assert prepare(store, "10.0.0.7").record.name == "kim.example.com"
    with pytest.raises(OperationError, match="no certificate named 'nope.example.com'"):
        prepare(store, "nope.example.com")


# -- what Istio's rules make of it (the local gateway's reader) ----------------------------------------

def _plans(*objs):
    text = yaml.safe_dump_all(list(objs))
    r = resolve(parse_manifests([("test.yaml", text)]))
    return r.plans, list(r.warnings)


def test_the_gateway_reads_each_form_as_kimpki_meant(store):
    chain = store.get_cert("kim.example.com").cert_path.read_text()
    ca = store.get_ca("example.com").cert_path.read_text()
    cases = [
        (prepare(store, "kim.example.com").secrets, ServerSpec.sds(["kim.example.com"], "kim-credential")),
        (prepare(store, "kim.example.com", format="tls", mutual=True, ca_secret=True).secrets,
         ServerSpec.sds(["kim.example.com"], "kim-credential", "MUTUAL")),
        (prepare(store, "kim.example.com", mutual=True).secrets,
         ServerSpec.sds(["kim.example.com"], "kim-credential", "MUTUAL")),
        (prepare(store, "kim.example.com", file_mounted=True, format="tls", mutual=True).secrets,
         ServerSpec.file_mounted(["kim.example.com"], "MUTUAL", ca_file_name="example.com.crt")),
    ]
    for secrets, server in cases:
        plans, warnings = _plans(*secrets, render_gateway("kim-gateway", [server]))
        assert warnings == [] and len(plans) == 1, (server, warnings)
        assert plans[0].certificates[0].cert_pem == chain
        if server.mode == "MUTUAL":
            assert plans[0].ca.ca_pem == ca
        if server.credential_name and len(secrets) == 2:
            assert plans[0].ca.origin == "Secret kim-credential-cacert (ca.crt)"


def test_a_second_file_mounted_host_is_served_once_its_volume_is_mounted(store):
    deployment = yaml.safe_load(DEPLOYMENT_FILE.read_text())
    name, path = "istio-ingressgateway-bookinfo-certs", "/etc/istio/ingressgateway-bookinfo-certs"
    secrets = prepare(store, "kim-new.example.com", file_mounted=True, format="tls", name=name).secrets
    gw = render_gateway("bookinfo-gateway", [ServerSpec.file_mounted(["kim-new.example.com"], mount_path=path)])
    _, warnings = _plans(*secrets, gw, deployment)
    assert len(warnings) == 1 and "is not in a mounted Secret volume" in warnings[0]
    patched = apply_json_patch(deployment, mount_ops(deployment, secret_name=name, mount_path=path))
    plans, warnings = _plans(*secrets, gw, patched)
    assert warnings == [] and plans[0].credential == f"Secret {name} mounted at {path}"
    assert base64.b64decode(secrets[0]["data"]["tls.crt"]).decode() == plans[0].certificates[0].cert_pem
