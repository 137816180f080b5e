"""Policy files: the shipped examples load into the seed's setup; every kind of mistake is one line
``FILE:LINE: message`` pointing at the offending line."""

from __future__ import annotations

import gc
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from kimpki.errors import UsageError
from kimpki.pki.constraints import NameConstraints
from kimpki.pki.keys import KeyType
from kimpki.policy import PolicyError, load_policy
from tests.conftest import ROOT, assert_one_line_error
from tests.istio_helpers import SEED_SERVERS

POLICIES = ROOT / "policies"

# Valid documents the cases below refer to (line numbers matter only in case.yaml).
BASE = """\
apiVersion: kimpki.io/v1alpha1
kind: Target
metadata: {name: local}
spec: {manifests: out}
---
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: example.com}
spec:
  constraints: {allowedDomains: [example.com], maxDuration: 365d}
---
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: kim.example.com}
spec: {hosts: [kim.example.com], ca: example.com}
---
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: kim-client}
spec: {hosts: [kim-client.example.com], ca: example.com, usage: client}
---
apiVersion: kimpki.io/v1alpha1
kind: Credential
metadata: {name: kim-credential}
spec: {certificate: kim.example.com}
"""

H = "apiVersion: kimpki.io/v1alpha1\n"


def load(tmp_path: Path, case: str, base: str = BASE):
    folder = tmp_path / "p"
    folder.mkdir(exist_ok=True)
    (folder / "base.yaml").write_text(base)
    (folder / "case.yaml").write_text(case)
    return load_policy([folder])


# -- the shipped examples -----------------------------------------------------------------------

def test_the_shipped_policies_describe_the_seeds_setup():
    p = load_policy([POLICIES])
    assert p.files == tuple(f"{POLICIES}/{n}" for n in
                            ("authority.yaml", "certificates.yaml", "credentials.yaml", "gateways.yaml", "target.yaml"))
    (target,) = p.targets
    assert target.manifests == POLICIES / "out" and not target.is_cluster

    (ca,) = p.authorities
    assert (ca.name, ca.org, ca.key_type, ca.parent) == ("example.com", "example Inc.", KeyType.EC_P256, None)
    assert ca.constraints == NameConstraints(("example.com", "bookinfo.com"), max_duration=timedelta(days=365))

    certs = {c.name: c for c in p.certificates}
    assert {n: (c.hosts, c.usage, c.ca, c.org) for n, c in certs.items()} == {
        "kim.example.com": (("kim.example.com",), "server", "example.com", "kim organization"),
        "kim-new.example.com": (("kim-new.example.com",), "server", "example.com", "helloworld organization"),
        "bookinfo.com": (("bookinfo.com",), "server", "example.com", "bookinfo organization"),
        "kim-client": (("kim-client.example.com",), "client", "example.com", None),
    }
    assert certs["bookinfo.com"].key_type is KeyType.RSA_2048
    assert certs["kim.example.com"].renew_before.duration == timedelta(days=30)
    assert certs["bookinfo.com"].renew_before.fraction == pytest.approx(0.33)

    creds = {c.name: c for c in p.credentials}
    assert {n: (c.certificate, c.mode, c.delivery, c.format, c.namespace) for n, c in creds.items()} == {
        "kim-credential": ("kim.example.com", "SIMPLE", "sds", "generic", "istio-system"),
        "kim-new-credential": ("kim-new.example.com", "MUTUAL", "sds", "generic", "istio-system"),
        "istio-ingressgateway-bookinfo-certs": ("bookinfo.com", "SIMPLE", "file-mounted", "tls", "istio-system"),
    }
    assert all(c.target is target for c in p.credentials)

    (mount,) = p.mounts
    assert (mount.name, mount.secret, mount.mount_path, mount.deployment, mount.container) == (
        "ingressgateway-bookinfo-certs", "istio-ingressgateway-bookinfo-certs",
        "/etc/istio/ingressgateway-bookinfo-certs", "istio-ingressgateway", "istio-proxy")


def test_the_shipped_gateways_render_as_the_seeds():
    gws = {g.name: g for g in load_policy([POLICIES]).gateways}
    gw, vs = gws["kim-gateway"].objects
    assert gw["kind"] == "Gateway" and gw["metadata"] == {"name": "kim-gateway", "namespace": "istio-system"}
    assert gw["spec"] == {"selector": {"istio": "ingressgateway"}, "servers": SEED_SERVERS["sds-mutual"]}
    assert vs["metadata"]["name"] == "kim-gateway-service"
    assert vs["spec"]["hosts"] == ["kim.example.com", "kim-new.example.com"]
    assert vs["spec"]["gateways"] == ["kim-gateway"]
    book, book_vs = gws["bookinfo-gateway"].objects
    # The seed's bookinfo Gateway, verbatim.
    assert book["spec"]["servers"] == [{
        "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
        "tls": {"mode": "SIMPLE", "serverCertificate": "/etc/istio/ingressgateway-bookinfo-certs/tls.crt",
                "privateKey": "/etc/istio/ingressgateway-bookinfo-certs/tls.key"},
        "hosts": ["bookinfo.com"]}]
    assert book_vs["metadata"]["name"] == "bookinfo-gateway-service"
    assert book_vs["spec"]["http"][0]["route"][0]["destination"] == {
        "host": "kim-gateway-service.default.svc.cluster.local", "port": {"number": 8080}}


def test_files_folders_and_non_policy_files(tmp_path):
    shutil.copytree(POLICIES, tmp_path / "policies")
    (tmp_path / "policies" / "notes.txt").write_text("not a policy")
    # A folder and one of its files named again: each file read once.
    p = load_policy([tmp_path / "policies", tmp_path / "policies" / "gateways.yaml"])
    assert len(p.gateways) == 2 and len(p.files) == 5
    assert p.targets[0].manifests == (tmp_path / "policies" / "out")  # relative to the policy file
    with pytest.raises(UsageError, match="no policy files"):
        load_policy([_empty(tmp_path)])
    with pytest.raises(UsageError, match="no such policy file or folder"):
        load_policy([tmp_path / "nope"])


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_the_only_target_is_the_default_and_several_need_naming(tmp_path):
    p = load(tmp_path, H + "kind: Target\nmetadata: {name: prod}\nspec:\n  cluster: {context: prod, kubeconfig: kc}\n"
                          "---\n" + H + "kind: Credential\nmetadata: {name: other}\n"
                          "spec: {certificate: kim.example.com, target: prod}\n",
             base=BASE.replace("spec: {certificate: kim.example.com}", "spec: {certificate: kim.example.com, target: local}"))
    prod = next(t for t in p.targets if t.name == "prod")
    assert (prod.context, prod.kubeconfig, prod.is_cluster) == ("prod", str(tmp_path / "p" / "kc"), True)
    assert p.credential("other").target is prod and p.credential("kim-credential").target.name == "local"


def test_mode_is_case_insensitive_and_defaults_follow_delivery(tmp_path):
    p = load(tmp_path, H + "kind: Credential\nmetadata: {name: x, namespace: gw}\n"
                          "spec: {certificate: kim.example.com, mode: mutual, caSecret: true, format: tls}\n")
    x = p.credential("x")
    assert (x.mode, x.ca_secret, x.format, x.namespace, x.delivery) == ("MUTUAL", True, "tls", "gw", "sds")


# -- every kind of mistake, at its line ----------------------------------------------------------

def doc(kind: str, name: str, spec: str, meta: str = "") -> str:
    return H + f"kind: {kind}\nmetadata:\n  name: {name}\n{meta}spec:\n{spec}"


ERRORS = [
    # document shape, apiVersion, kind
    ("not-a-mapping", "- a\n- b\n", 1, "the document must be a mapping, not a list"),
    ("bad-yaml", H + "kind: Certificate\nmetadata: {name: x\nspec: {}\n", 4, "not valid YAML: "),
    ("no-apiVersion", "kind: Certificate\nmetadata: {name: x}\nspec: {}\n", 1, "apiVersion is required"),
    ("wrong-apiVersion", "apiVersion: kimpki.io/v1\nkind: Certificate\n", 1,
     "apiVersion must be kimpki.io/v1alpha1, not kimpki.io/v1"),
    ("unknown-kind", H + "kind: Certificat\nmetadata: {name: x}\nspec: {}\n", 2,
     "unknown kind 'Certificat' (kinds: Target, CertificateAuthority, Certificate, Credential, GatewayMount, Gateway)"),
    ("unknown-top-field", H + "kind: Certificate\nmetdata: {name: x}\n", 3,
     "unknown field metdata (valid: apiVersion, kind, metadata, spec)"),
    ("no-spec", H + "kind: Certificate\nmetadata: {name: x}\n", 1, "Certificate x: spec is required"),
    # unknown and missing fields
    ("unknown-spec-field", doc("Certificate", "x", "  hostss: [kim.example.com]\n  ca: example.com\n"), 6,
     "Certificate x: unknown field spec.hostss (valid: hosts, usage, ca, org, keyType, duration, renewBefore, dual)"),
    ("unknown-metadata-field", doc("Certificate", "x", "  ca: example.com\n", meta="  namespace: default\n"), 5,
     "Certificate: unknown field metadata.namespace (valid: name)"),
    ("unknown-constraint", doc("CertificateAuthority", "ca2", "  constraints:\n    allowWildcard: true\n"), 7,
     "CertificateAuthority ca2: unknown field spec.constraints.allowWildcard (valid: allowedDomains, "
     "allowBareDomains, allowSubdomains, allowWildcards, allowIPs, maxDuration)"),
    ("duplicate-field", doc("Certificate", "x", "  hosts: [kim.example.com]\n  ca: example.com\n"
                                                "  hosts: [b.example.com]\n"), 8,
     "Certificate x: duplicate field spec.hosts (first given at line 6)"),
    ("missing-field", doc("Certificate", "x", "  hosts: [kim.example.com]\n"), 6, "Certificate x: spec.ca is required"),
    ("missing-name", H + "kind: Certificate\nmetadata: {}\nspec: {}\n", 3, "Certificate: metadata.name is required"),
    # an org as RFC 5280 bounds it, on one line (as --org; kimpki.pki.names.check_org)
    ("org-too-long", doc("CertificateAuthority", "ca2", "  org: " + "o" * 65 + "\n"), 6,
     "CertificateAuthority ca2: organisation 'oooooooooooooooooooo'... is longer than 64 characters"),
    ("org-control-character", doc("Certificate", "x", "  hosts: [kim.example.com]\n  ca: example.com\n"
                                                      "  org: \"kim\\norganization\"\n"), 8,
     "Certificate x: organisation 'kim\\norganization' holds a control character"),
    # wrong types
    ("hosts-not-a-list", doc("Certificate", "x", "  hosts: kim.example.com\n  ca: example.com\n"), 6,
     "Certificate x: spec.hosts must be a list, not a string (kim.example.com)"),
    ("host-not-a-string", doc("Certificate", "x", "  hosts:\n  - kim.example.com\n  - 42\n  ca: example.com\n"), 8,
     "Certificate x: spec.hosts[1] must be a non-empty string, not an integer (42)"),
    ("bool-expected", doc("CertificateAuthority", "ca2", "  constraints:\n    allowIPs: maybe\n"), 7,
     "CertificateAuthority ca2: spec.constraints.allowIPs must be true or false, not a string (maybe)"),
    ("string-expected", doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.com\n  org: [a, b]\n"), 8,
     "Certificate x: spec.org must be a string, not a list"),
    # what YAML makes of a scalar besides strings and numbers, named as such and on one line
    ("date-expected-string", doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.com\n  org: 2024-01-01\n"),
     8, "Certificate x: spec.org must be a string, not a date (2024-01-01)"),
    ("timestamp-expected-string", doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: 2024-01-01 02:03:00\n"), 7,
     "Certificate x: spec.ca must be a string, not a timestamp (2024-01-01 02:03:00)"),
    ("binary-expected-string", doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.com\n"
                                                       "  org: !!binary |\n    AP8=\n"), 8,
     "Certificate x: spec.org must be a string, not binary data (AP8=)"),
    ("block-scalar-expected-list", doc("Certificate", "x", "  hosts: |\n    a.example.com\n    b.example.com\n"
                                                           "  ca: example.com\n"), 6,
     "Certificate x: spec.hosts must be a list, not a string (a.example.com b.example.com)"),
    ("long-value-shortened", doc("Certificate", "x", f"  hosts: {'a' * 100}\n  ca: example.com\n"), 6,
     f"Certificate x: spec.hosts must be a list, not a string ({'a' * 57}...)"),
    ("nul-in-path", doc("Target", "t2", '  manifests: "out\\0x"\n'), 6,
     "Target t2: spec.manifests: a path must not contain a NUL character"),
    ("mapping-expected", doc("Gateway", "gw", "  servers:\n  - kim-credential\n"), 7,
     "Gateway gw: spec.servers[0] must be a mapping, not a string (kim-credential)"),
    # values
    ("bad-duration", doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.com\n  duration: 90x\n"), 8,
     "Certificate x: spec.duration: invalid duration '90x': use a number with s, m, h, d or w (e.g. 90d, 12h)"),
    ("bad-renew-before", doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.com\n  renewBefore: soon\n"),
     8, "Certificate x: spec.renewBefore must be a duration (30d, 12h) or a percentage of the lifetime (25%), "
        "not 'soon'"),
    ("bad-max-duration", doc("CertificateAuthority", "ca2", "  constraints:\n    maxDuration: forever\n"), 7,
     "CertificateAuthority ca2: spec.constraints.maxDuration: invalid duration 'forever'"),
    ("bad-host", doc("Certificate", "x", "  hosts:\n  - kim.example.com\n  - bad..example.com\n  ca: example.com\n"), 8,
     "Certificate x: spec.hosts: invalid host name 'bad..example.com': empty label"),
    ("bad-wildcard", doc("Certificate", "x", "  hosts: ['*.*.example.com']\n  ca: example.com\n"), 6,
     "Certificate x: spec.hosts: invalid host name '*.*.example.com'"),
    ("bad-key-type", doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.com\n  keyType: dsa\n"), 8,
     "Certificate x: spec.keyType: unknown key type 'dsa'"),
    ("bad-usage", doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.com\n  usage: both\n"), 8,
     "Certificate x: spec.usage must be server or client, not 'both'"),
    ("bad-store-name", doc("Certificate", "../x", "  hosts: [a.example.com]\n  ca: example.com\n"), 4,
     "Certificate ../x: metadata.name: invalid name '../x'"),
    ("bad-secret-name", doc("Credential", "Kim_Credential", "  certificate: kim.example.com\n"), 4,
     "Credential Kim_Credential: metadata.name 'Kim_Credential' is not a valid Kubernetes name"),
    ("bad-namespace", doc("Credential", "c2", "  certificate: kim.example.com\n", meta="  namespace: Istio.System\n"), 5,
     "Credential c2: metadata.namespace 'Istio.System' is not a valid namespace"),
    ("bad-mode", doc("Credential", "c2", "  certificate: kim.example.com\n  mode: STRICT\n"), 7,
     "Credential c2: spec.mode must be SIMPLE or MUTUAL, not 'STRICT'"),
    ("bad-delivery", doc("Credential", "c2", "  certificate: kim.example.com\n  delivery: mounted\n"), 7,
     "Credential c2: spec.delivery must be sds or file-mounted, not 'mounted'"),
    ("ca-secret-simple", doc("Credential", "c2", "  certificate: kim.example.com\n  caSecret: true\n"), 7,
     "Credential c2: spec.caSecret (the CA bundle in a separate Secret NAME-cacert) is for MUTUAL credentials "
     "delivered by SDS"),
    ("file-mounted-generic", doc("Credential", "c2", "  certificate: kim.example.com\n  delivery: file-mounted\n"
                                                     "  format: generic\n"), 8,
     "Credential c2: a file-mounted credential is always in the TLS form (tls.crt, tls.key): drop format: generic"),
    ("client-ca-simple", doc("Credential", "c2", "  certificate: kim.example.com\n  clientCA: example.com\n"), 7,
     "Credential c2: spec.clientCA is the CA client certificates are checked against: it needs mode: MUTUAL"),
    ("relative-mount-path", doc("GatewayMount", "v", "  secret: s\n  mountPath: etc/x\n"), 7,
     "GatewayMount v: spec.mountPath must be absolute, not 'etc/x'"),
    ("inline-passphrase", doc("CertificateAuthority", "ca2", "  passphrase: hunter2\n"), 6,
     "CertificateAuthority ca2: spec.passphrase must be {{file: PATH}} or {{env: VARIABLE}}; a passphrase is never "
     "written into a policy"),
    ("passphrase-both", doc("CertificateAuthority", "ca2", "  passphrase: {file: pw, env: PW}\n"), 6,
     "CertificateAuthority ca2: spec.passphrase needs exactly one of file or env"),
    ("target-both", doc("Target", "t2", "  manifests: out2\n  cluster: {context: c}\n"), 6,
     "Target t2: spec needs exactly one of manifests (a folder) or cluster"),
    ("allowed-domain-wildcard", doc("CertificateAuthority", "ca2", "  constraints:\n"
                                                                  "    allowedDomains: ['*.example.com']\n"), 7,
     "CertificateAuthority ca2: spec.constraints.allowedDomains: '*.example.com' is not a domain name"),
    ("bad-service", doc("Gateway", "gw", "  servers: [{credential: kim-credential}]\n"
                                         "  virtualService: {service: kim-gateway-service}\n"), 7,
     "Gateway gw: spec.virtualService.service must be SERVICE:PORT (e.g. kim-gateway-service:8080), "
     "not 'kim-gateway-service'"),
    # references between documents
    ("dangling-ca", doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.org\n"), 7,
     "Certificate x: spec.ca 'example.org' is not a CertificateAuthority in the policy (known: example.com)"),
    ("dangling-parent", doc("CertificateAuthority", "issuing", "  parent: root\n"), 6,
     "CertificateAuthority issuing: spec.parent 'root' is not a CertificateAuthority in the policy"),
    ("dangling-certificate", doc("Credential", "c2", "  certificate: kim-new.example.com\n"), 6,
     "Credential c2: spec.certificate 'kim-new.example.com' is not a Certificate in the policy "
     "(known: kim-client, kim.example.com)"),
    ("dangling-client-ca", doc("Credential", "c2", "  certificate: kim.example.com\n  mode: MUTUAL\n"
                                                   "  clientCA: clients\n"), 8,
     "Credential c2: spec.clientCA 'clients' is not a CertificateAuthority in the policy"),
    ("dangling-credential", doc("Gateway", "gw", "  servers:\n  - credential: kim-new-credential\n"), 7,
     "Gateway gw: credential 'kim-new-credential' is not a Credential in the policy (known: kim-credential)"),
    ("dangling-target", doc("Credential", "c2", "  certificate: kim.example.com\n  target: prod\n"), 7,
     "Credential c2: spec.target 'prod' is not a Target in the policy (Targets: local)"),
    ("client-cert-as-server", doc("Credential", "c2", "  certificate: kim-client\n"), 6,
     "Credential c2: certificate kim-client is a client certificate (usage: client), not a server credential"),
    ("duplicate-name", doc("Certificate", "kim.example.com", "  hosts: [a.example.com]\n  ca: example.com\n"), 4,
     "Certificate kim.example.com: duplicate name (also defined at {base}:14)"),
    ("duplicate-credential-other-namespace", doc("Credential", "kim-credential", "  certificate: kim.example.com\n",
                                                 meta="  namespace: other\n"), 4,
     "Credential kim-credential: duplicate name (also defined at {base}:24)"),
    ("parent-cycle", doc("CertificateAuthority", "a", "  parent: b\n") + "---\n"
                     + doc("CertificateAuthority", "b", "  parent: a\n"), 6,
     "CertificateAuthority a: parent cycle: a -> b -> a"),
    ("outside-constraints", doc("Certificate", "x", "  hosts: [kim.example.com, evil.com]\n  ca: example.com\n"), 6,
     "Certificate x: CA example.com does not allow it: evil.com is not in allowedDomains (example.com)"),
    ("over-max-duration", doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.com\n  duration: 400d\n"), 6,
     "Certificate x: CA example.com does not allow it: a validity of 400d exceeds maxDuration 365d"),
    ("host-not-covered", doc("Gateway", "gw", "  servers:\n  - credential: kim-credential\n"
                                              "    hosts: [other.example.com]\n"), 7,
     "Gateway gw: host other.example.com is not covered by certificate kim.example.com (kim.example.com)"),
    ("file-mounted-without-mount", doc("Credential", "bookinfo-certs", "  certificate: kim.example.com\n"
                                                                      "  delivery: file-mounted\n") + "---\n"
     + doc("Gateway", "gw", "  servers:\n  - credential: bookinfo-certs\n"), 15,
     "Gateway gw: credential bookinfo-certs is file-mounted, but no GatewayMount mounts Secret bookinfo-certs "
     "(add one, e.g. mountPath: /etc/istio/bookinfo-certs)"),
    ("same-secret-twice", doc("Credential", "c2", "  certificate: kim.example.com\n  mode: MUTUAL\n  caSecret: true\n")
     + "---\n" + doc("Credential", "c2-cacert", "  certificate: kim.example.com\n"), 13,
     "Credential c2-cacert: Secret istio-system/c2-cacert is also written by Credential c2"),
    # maintenance windows
    ("window-bad-weekday", doc("Credential", "c2", "  certificate: kim.example.com\n  maintenanceWindows:\n"
                                                   "  - days: [Mon, Funday]\n    start: 02:00\n    duration: 4h\n"), 8,
     "Credential c2: spec.maintenanceWindows[0].days: unknown weekday 'Funday'"),
    ("window-bad-time", doc("Credential", "c2", "  certificate: kim.example.com\n  maintenanceWindows:\n"
                                                "  - days: [Sat]\n    start: '25:00'\n    duration: 4h\n"), 9,
     "Credential c2: spec.maintenanceWindows[0].start: invalid time '25:00': use HH:MM on a 24-hour clock"),
    ("window-start-not-a-time", doc("Credential", "c2", "  certificate: kim.example.com\n  maintenanceWindows:\n"
                                                        "  - start: [2]\n    duration: 4h\n"), 8,
     "Credential c2: spec.maintenanceWindows[0].start must be a time of day such as 02:00, not a list"),
    ("window-unknown-zone", doc("Credential", "c2", "  certificate: kim.example.com\n  maintenanceWindows:\n"
                                                    "  - start: 02:00\n    duration: 4h\n"
                                                    "    timeZone: Europe/Atlantis\n"), 10,
     "Credential c2: spec.maintenanceWindows[0].timeZone: unknown time zone 'Europe/Atlantis'"),
    ("window-empty", doc("Credential", "c2", "  certificate: kim.example.com\n  maintenanceWindows: []\n"), 7,
     "Credential c2: spec.maintenanceWindows must not be empty"),
    ("window-unknown-field", doc("Credential", "c2", "  certificate: kim.example.com\n  maintenanceWindows:\n"
                                                     "  - start: 02:00\n    duration: 4h\n    timezone: UTC\n"), 10,
     "Credential c2: unknown field spec.maintenanceWindows[0].timezone (valid: days, start, duration, end, timeZone)"),
    ("window-no-length", doc("Credential", "c2", "  certificate: kim.example.com\n  maintenanceWindows:\n"
                                                 "  - days: [Sat]\n    start: 02:00\n"), 8,
     "Credential c2: spec.maintenanceWindows[0] needs exactly one of duration (e.g. 4h) and end (e.g. 06:00)"),
    ("window-end-is-start", doc("Credential", "c2", "  certificate: kim.example.com\n  maintenanceWindows:\n"
                                                    "  - start: 02:00\n    end: 02:00\n"), 9,
     "Credential c2: spec.maintenanceWindows[0].end: end 02:00 is the start: for a whole day use duration: 24h"),
    ("window-on-a-target", doc("Target", "t2", "  manifests: out2\n  maintenanceWindows:\n"
                                               "  - start: 02:00\n    duration: 9d\n"), 9,
     "Target t2: spec.maintenanceWindows[0].duration: invalid duration '9d': a maintenance window lasts more than 0 "
     "and at most 7d"),
]


@pytest.mark.parametrize("case,text,line,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_each_mistake_is_one_line_at_its_line(tmp_path, case, text, line, message):
    with pytest.raises(PolicyError) as e:
        load(tmp_path, text)
    base = str(tmp_path / "p" / "base.yaml")
    expected = f"{tmp_path / 'p' / 'case.yaml'}:{line}: {message.format(base=base)}"
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(expected), (str(e.value), expected)


def test_loading_leaves_the_garbage_collector_on(tmp_path):
    """load_policy pauses the cyclic collector while the documents' nodes live; it is on again
    after a policy, and after a refused one."""
    assert load(tmp_path, "").certificate("kim.example.com").hosts == ("kim.example.com",)
    assert gc.isenabled()
    with pytest.raises(PolicyError):
        load(tmp_path, H + "kind: Nope\n")
    assert gc.isenabled()


def test_maintenance_windows_on_a_target_are_its_credentials_default(tmp_path):
    from datetime import time, timezone

    base = BASE.replace("spec: {manifests: out}", """spec:
  manifests: out
  maintenanceWindows:
  - days: [Sat, Sun]
    start: 02:00            # unquoted: YAML 1.1 would read the number 120
    duration: 4h
""")
    p = load(tmp_path, doc("Credential", "own", "  certificate: kim.example.com\n  maintenanceWindows:\n"
                                              "  - days: [Mon-Fri]\n    start: '23:30'\n    end: 01:00\n"
                                              "    timeZone: Europe/Berlin\n"), base=base)
    (target_window,) = p.targets[0].maintenance_windows
    assert (target_window.weekdays, target_window.start, target_window.zone) == ({5, 6}, time(2), timezone.utc)
    assert p.credential("kim-credential").maintenance_windows == (target_window,)  # inherited
    (own,) = p.credential("own").maintenance_windows  # its own replace the Target's
    assert own.describe() == "Mon,Tue,Wed,Thu,Fri 23:30-01:00 Europe/Berlin"
    # Without any: () on both, i.e. renew at any time.
    plain = load(tmp_path, doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.com\n"))
    assert plain.targets[0].maintenance_windows == () and plain.credential("kim-credential").maintenance_windows == ()


def test_unknown_target_defaults(tmp_path):
    no_target = BASE.split("---\n", 1)[1]
    with pytest.raises(PolicyError, match=r"base.yaml:19: Credential kim-credential: there is no Target"):
        load(tmp_path, doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.com\n"), base=no_target)
    with pytest.raises(PolicyError, match=r"base.yaml:24: Credential kim-credential: spec.target is required when "
                                          r"there are several Targets \(local, t2\)"):
        load(tmp_path, doc("Target", "t2", "  manifests: elsewhere\n"))


def test_policy_errors_through_the_cli_are_one_line_with_exit_code_2(kimpki, tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "base.yaml").write_text(BASE)
    (folder / "case.yaml").write_text(doc("Certificate", "x", "  hosts: [a.example.com]\n  ca: example.org\n"))
    for command in ("plan", "apply"):
        res = kimpki(command, "-f", folder)
        assert_one_line_error(res, 2, f"kimpki: error: {folder}/case.yaml:7: Certificate x: spec.ca 'example.org'")
    assert not (folder / "out").exists()
    res = kimpki("plan", "-f", tmp_path / "missing")
    assert_one_line_error(res, 2, "no such policy file or folder")


SEED_CREDENTIALS = {  # the Credentials behind each of the seed's four Gateways
    "file-mounted-simple": [("istio-ingressgateway-certs", "kim.example.com", "SIMPLE", "file-mounted")],
    "file-mounted-mutual": [("istio-ingressgateway-certs", "kim.example.com", "MUTUAL", "file-mounted")],
    "sds-simple": [("kim-credential", "kim.example.com", "SIMPLE", "sds")],
    "sds-mutual": [("kim-credential", "kim.example.com", "SIMPLE", "sds"),
                   ("kim-new-credential", "kim-new.example.com", "MUTUAL", "sds")],
}


@pytest.mark.parametrize("variant", sorted(SEED_CREDENTIALS))
def test_each_of_the_seeds_gateways_can_be_declared(tmp_path, variant):
    docs = [doc("Certificate", "kim-new.example.com", "  hosts: [kim-new.example.com]\n  ca: example.com\n")]
    for name, cert, mode, delivery in SEED_CREDENTIALS[variant]:
        if name != "kim-credential":
            docs.append(doc("Credential", name, f"  certificate: {cert}\n  mode: {mode}\n  delivery: {delivery}\n"))
    servers = "".join(f"  - credential: {name}\n" for name, *_ in SEED_CREDENTIALS[variant])
    docs.append(doc("Gateway", "kim-gateway", "  servers:\n" + servers))
    base = BASE.replace("spec: {certificate: kim.example.com}",
                        "spec: {certificate: kim.example.com, mode: %s}" % SEED_CREDENTIALS[variant][0][2])
    (gw,) = load(tmp_path, "---\n".join(docs), base=base).gateways
    assert gw.objects[0]["spec"]["servers"] == SEED_SERVERS[variant]
