"""Hostile or merely unusual input through the real CLI: every case is a one-line error with exit
code 2 naming the bound (never "internal error", never a silent surprise), or, where the input is
valid after all, the certificate a user asked for."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, openssl
from tests.tlspeers import Blackhole

DAYS_BOUND = "--days must be a positive number of days from 0.0417 (1 hour) to 36500 (100 years)"


def sans_of(cert: Path) -> str:
    return openssl("x509", "-in", cert, "-noout", "-ext", "subjectAltName").stdout.decode()


# --------------------------------------------------------------------------- host names

@pytest.mark.parametrize("host", ["::1", "2001:db8::1"])
def test_issue_ipv6_as_first_host_names_the_store_entry_by_the_ip(kimpki, tmp_path, host):
    d = kimpki.json("issue", host, "10.0.0.7", "--out", tmp_path / "out")
    assert (d["name"], d["dns_names"], d["ip_addresses"]) == (host, [], [host, "10.0.0.7"])
    openssl_form = ":".join(f"{int(group, 16):X}" for group in ipaddress.ip_address(host).exploded.split(":"))
    assert f"IP ADDRESS:{openssl_form}, IP ADDRESS:10.0.0.7" in sans_of(Path(d["cert"])).upper()
    assert (tmp_path / "out" / f"{host}.crt").is_file() and (tmp_path / "out" / f"{host}.key").is_file()
    assert host in kimpki.ok("list").out
    kimpki.ok("issue", "--client", host)  # re-issue by the same name: a new version


def test_issue_host_of_201_to_251_characters_is_issued(kimpki, tmp_path):
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 55, "com"])  # 251 characters, a valid name
    d = kimpki.json("issue", host, "--out", tmp_path)
    assert d["name"] == host and d["dns_names"] == [host]
    assert (tmp_path / f"{host}.key").is_file()


def test_issue_host_of_253_characters_says_why_and_takes_name(kimpki):
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57, "com"])  # valid, but NAME.key is 257 bytes
    assert_one_line_error(kimpki("issue", host), 2, "253 characters", "at most 251", "--name NAME")
    d = kimpki.json("issue", host, "--name", "long-host")
    assert d["dns_names"] == [host]


def test_issue_more_than_100_hosts_is_refused(kimpki):
    hosts = [f"h{i}.example.com" for i in range(101)]
    assert_one_line_error(kimpki("issue", *hosts), 2, "101 host names: a certificate holds at most 100")
    assert len(kimpki.json("issue", *hosts[:100])["dns_names"]) == 100


# --------------------------------------------------------------------------- numbers out of range

@pytest.mark.parametrize("value", ["nan", "inf", "1e10", "1e-9", "-3"])
def test_issue_days_not_a_sane_number(kimpki, value):
    assert_one_line_error(kimpki("issue", "kim.example.com", "--days", value), 2, "--days")
    assert "kim.example.com" not in kimpki.ok("list").out


@pytest.mark.parametrize("value", ["0.000000001", "0.04", "36501", "10000000000"])
def test_issue_days_out_of_range(kimpki, value):
    """Plain decimals, which every --days parser takes as numbers: the bound itself refuses them."""
    assert_one_line_error(kimpki("issue", "kim.example.com", "--days", value), 2, DAYS_BOUND)
    assert kimpki.json("issue", "kim.example.com", "--days", "0.0417")["name"] == "kim.example.com"


@pytest.mark.parametrize("option,value,needle", [
    ("--timeout", "nan", "--timeout must be a positive number of seconds, at most 300, not nan"),
    ("--timeout", "inf", "--timeout must be a positive number of seconds, at most 300, not inf"),
    ("--timeout", "1e300", "--timeout must be a positive number of seconds, at most 300, not 1e+300"),
    ("--wait", "inf", "--wait must be a number of seconds from 0 to 3600, not inf"),
    ("--wait", "nan", "--wait must be a number of seconds from 0 to 3600, not nan"),
])
def test_verify_timeout_and_wait_out_of_range(kimpki, option, value, needle):
    # Port 1: were the value accepted, the check would fail with connection_refused (exit 1).
    res = kimpki("verify", "kim.example.com", "--connect", "127.0.0.1:1", option, value)
    assert_one_line_error(res, 2, needle)
    assert_one_line_error(kimpki("verify", "--all", option, value), 2, needle)


@pytest.mark.parametrize("where", ["file", "env"])
def test_passphrase_over_1023_bytes(kimpki, tmp_path, where):
    def given(length: int) -> dict:
        """How the passphrase reaches kimpki: --passphrase-file or KIMPKI_CA_PASSPHRASE."""
        if where == "env":
            return dict(args=[], env={"KIMPKI_CA_PASSPHRASE": "p" * length})
        path = tmp_path / f"pw{length}"
        path.write_text("p" * length + "\n")
        return dict(args=["--passphrase-file", path], env=None)

    too_long, longest = given(1024), given(1023)
    needle = "the passphrase is 1024 bytes long; OpenSSL takes at most 1023"
    assert_one_line_error(kimpki("ca", "init", "ex", *too_long["args"], env=too_long["env"]), 2, needle)
    kimpki.ok("ca", "init", "ex", *longest["args"], env=longest["env"])
    kimpki.ok("issue", "kim.example.com", "--ca", "ex", *longest["args"], env=longest["env"])
    # Against the encrypted CA: not "wrong passphrase" (no passphrase that long can have encrypted it).
    res = kimpki("issue", "kim.example.com", "--ca", "ex", *too_long["args"], env=too_long["env"])
    assert_one_line_error(res, 2, needle)


# --------------------------------------------------------------------------- policies

POLICY_BASE = """\
apiVersion: kimpki.io/v1alpha1
kind: Target
metadata: {name: local}
spec: {manifests: out}
---
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: example.com}
spec: {}
"""

CERT = """\
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: kim.example.com}
spec:
  hosts: [kim.example.com]
  ca: example.com
"""


@pytest.mark.parametrize("field,needle", [
    ("duration: 99999999999d",
     "case.yaml:7: Certificate kim.example.com: spec.duration: invalid duration '99999999999d': at most 36500d"),
    ("renewBefore: 9999999999999999999999d",
     "case.yaml:7: Certificate kim.example.com: invalid spec.renewBefore '9999999999999999999999d': at most 36500d"),
    ("duration: 0d",
     "case.yaml:7: Certificate kim.example.com: spec.duration: lifetime '0d' must be at least 1h and at most 36500d"),
    ("duration: 30m", "case.yaml:7: Certificate kim.example.com: spec.duration: lifetime '30m' must be at least 1h"),
])
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_policy_duration_out_of_range_at_load(kimpki, field, needle, command):
    folder = kimpki.cwd / "p"
    folder.mkdir()
    (folder / "base.yaml").write_text(POLICY_BASE)
    (folder / "case.yaml").write_text(CERT + f"  {field}\n")
    assert_one_line_error(kimpki(command, "-f", folder), 2, needle)
    assert not (kimpki.home / "cas" / "example.com").exists()  # refused before anything was made


def test_policy_more_than_100_hosts_at_load(kimpki):
    folder = kimpki.cwd / "p"
    folder.mkdir()
    (folder / "base.yaml").write_text(POLICY_BASE)
    hosts = ", ".join(f"h{i}.example.com" for i in range(101))
    (folder / "case.yaml").write_text(CERT.replace("[kim.example.com]", f"[{hosts}]"))
    assert_one_line_error(kimpki("plan", "-f", folder), 2, "case.yaml:5: Certificate kim.example.com: spec.hosts: "
                                                          "101 host names: a certificate holds at most 100")


# --------------------------------------------------------------------------- manifests

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: kim-gateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [kim.example.com]
    tls: {mode: SIMPLE, credentialName: kim-credential}
"""

SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: kim-credential, namespace: istio-system}\n"


@pytest.mark.parametrize("body,needle", [
    ("data: [a, b]\n", "secret.yaml:5: Secret kim-credential: data must be a mapping of keys to base64 strings, "
                       "not a list"),
    ("stringData: [1]\n", "secret.yaml:5: Secret kim-credential: stringData must be a mapping of keys to strings, "
                          "not a list"),
    ("stringData:\n  cert: {a: 1}\n", "secret.yaml:5: Secret kim-credential: stringData.cert must be a string, "
                                      "not a mapping"),
])
@pytest.mark.parametrize("command", [["check"], ["gateway", "serve", "--port", "0"]])
def test_secret_data_of_the_wrong_type(kimpki, body, needle, command):
    (kimpki.cwd / "gateway.yaml").write_text(GATEWAY)
    (kimpki.cwd / "secret.yaml").write_text("# a comment, so the line is not the document's first\n" + SECRET + body)
    res = kimpki(*command, "-f", "gateway.yaml", "-f", "secret.yaml", timeout=60)
    assert_one_line_error(res, 2, needle)


MANAGED = "  labels: {app.kubernetes.io/managed-by: kimpki}\n"


@pytest.mark.parametrize("metadata,needle", [
    (MANAGED + "  annotations:\n    kimpki.io/hosts:\n",
     "secret.yaml:6: metadata.annotations.kimpki.io/hosts must be a string, not null"),
    (MANAGED + "  annotations: [kimpki.io/hosts]\n",
     "secret.yaml:6: metadata.annotations must be a mapping of keys to strings, not a list"),
    ("  labels: true\n", "secret.yaml:5: metadata.labels must be a mapping of keys to strings, not True"),
    ("  namespace: [istio-system]\n", "secret.yaml:4: metadata.namespace must be a string, not a list"),
    # a long value is quoted short: 57 characters and "..."
    ("  labels: {a: " + "9" * 100 + "}\n", "secret.yaml:5: metadata.labels.a must be a string, not " + "9" * 57 + "..."),
], ids=["annotation-null", "annotations-list", "labels-bool", "namespace-list", "label-long-number"])
@pytest.mark.parametrize("command", [["status", "--manifests"], ["rotate", "kim-credential", "--manifests"],
                                     ["renew", "--dry-run", "--manifests"]])
def test_folder_secret_metadata_of_the_wrong_type(kimpki, metadata, needle, command):
    """What 'check' and 'gateway serve' refuse in a file (kubectl would too), commands that sweep a
    folder refuse as well: it used to reach code that expects strings and mappings."""
    folder = kimpki.cwd / "deploy"
    folder.mkdir()
    text = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: kim-credential\n" + metadata + "data: {}\n"
    (folder / "secret.yaml").write_text(text.replace("  name: kim-credential\n  namespace", "  namespace"))
    res = kimpki(*command, folder)
    if command[0] != "renew":
        assert_one_line_error(res, 2, needle)
        return
    # renew logs a place it cannot read as a failure (exit 1) and goes on with the others.
    assert res.code == 1 and f"error cannot read manifests {folder}: {folder}/{needle}" in res.err
    assert "Traceback" not in res.err and "internal error" not in res.err


@pytest.mark.parametrize("text,needle", [
    ("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: foo\nspec: {}\n",
     "gw.yaml:3: metadata must be a mapping (name: ..., namespace: ...), not the string 'foo'"),
    (GATEWAY + "---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n"
               "  kind: VirtualService\n  metadata: [x]\n",
     "gw.yaml:16: metadata must be a mapping (name: ..., namespace: ...), not a list"),
])
def test_gateway_apply_metadata_not_a_mapping(kimpki, text, needle):
    (kimpki.cwd / "gw.yaml").write_text(text)
    # Refused before any cluster is contacted: the kubeconfig does not exist.
    res = kimpki("gateway", "apply", "-f", "gw.yaml", "--kubeconfig", kimpki.cwd / "nowhere")
    assert_one_line_error(res, 2, needle)


# --------------------------------------------------------------------------- sign

def make_csr(folder: Path, name: str, sans: list[str], *, digest: str = "sha256") -> Path:
    """A CSR made by openssl req from a config file (20,000 names do not fit one argument)."""
    key, conf, csr = folder / f"{name}.key", folder / f"{name}.cnf", folder / f"{name}.csr"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    lines = ["[req]", "prompt = no", "distinguished_name = dn", "req_extensions = ext", "[dn]",
             "CN = h0.example.com", "[ext]", "subjectAltName = @alt", "[alt]"]
    counts: dict[str, int] = {}
    for san in sans:
        kind, value = san.split(":", 1)
        counts[kind] = counts.get(kind, 0) + 1
        lines.append(f"{kind}.{counts[kind]} = {value}")
    conf.write_text("\n".join(lines) + "\n")
    openssl("req", "-new", "-key", key, "-config", conf, f"-{digest}", "-out", csr)
    return csr


@pytest.fixture
def signer(kimpki):
    kimpki.ok("ca", "init", "example.com")
    return kimpki


def test_sign_csr_with_20000_sans_is_refused(signer, tmp_path):
    csr = make_csr(tmp_path, "many", [f"DNS:h{i}.example.com" for i in range(20000)])
    assert_one_line_error(signer("sign", csr), 2, "20000 host names: a certificate holds at most 100")
    d = signer.json("sign", make_csr(tmp_path, "hundred", [f"DNS:h{i}.example.com" for i in range(100)]))
    assert len(d["dns_names"]) == 100  # the CN h0 is also the first SAN: no duplicate


@pytest.mark.parametrize("san,needle", [
    ("URI:spiffe://cluster.local/ns/default/sa/kim", "subjectAltName URI:spiffe://cluster.local/ns/default/sa/kim"),
    ("email:kim@example.com", "subjectAltName email:kim@example.com"),
    ("otherName:1.3.6.1.4.1.311.20.2.3;UTF8:kim@example.com", "subjectAltName otherName"),
])
def test_sign_csr_with_a_non_dns_non_ip_san_is_refused(signer, tmp_path, san, needle):
    csr = make_csr(tmp_path, "odd", ["DNS:h0.example.com", san])
    assert_one_line_error(signer("sign", csr), 2, needle, "kimpki issues DNS names and IP addresses only")
    assert signer.ok("list").out.count("h0.example.com") == 0


def test_sign_sha1_csr_says_sha1(signer, tmp_path):
    csr = make_csr(tmp_path, "old", ["DNS:h0.example.com"], digest="sha1")
    assert_one_line_error(signer("sign", csr), 2, "signed with SHA-1", "openssl req -sha256")


def test_sign_csr_whose_key_or_version_does_not_read(signer, tmp_path):
    """cryptography loads a CSR's outer structure only: a key off its curve surfaced when the
    signature was checked, a version it does not know when the CSR was loaded; both were internal errors."""
    csr = make_csr(tmp_path, "bent", ["DNS:h0.example.com"])
    der = openssl("req", "-in", csr, "-outform", "DER").stdout
    point = openssl("pkey", "-in", tmp_path / "bent.key", "-pubout", "-outform", "DER").stdout[-65:]  # 04 || x || y
    assert der.count(point) == 1
    off_curve, version_64 = tmp_path / "off-curve.csr", tmp_path / "version-64.csr"
    off_curve.write_bytes(der.replace(point, point[:-1] + bytes([point[-1] ^ 1])))
    # CertificationRequestInfo starts with its version, INTEGER 0 (02 01 00); 64 is no version.
    header = der.index(b"\x02\x01\x00")
    version_64.write_bytes(der[:header] + b"\x02\x01\x40" + der[header + 3:])
    assert_one_line_error(signer("sign", off_curve), 2,
                          "not a readable certificate signing request (its public key cannot be read")
    assert_one_line_error(signer("sign", version_64), 2, "not a readable certificate signing request (")
    assert signer.ok("list").out.count("h0.example.com") == 0


def test_sign_days_below_an_hour(signer, tmp_path):
    csr = make_csr(tmp_path, "short", ["DNS:h0.example.com"])
    assert_one_line_error(signer("sign", csr, "--days", "0.000000001"), 2, DAYS_BOUND)
    d = signer.json("sign", csr, "--days", str(1 / 24))
    assert d["not_after"] > d["not_before"]


# --------------------------------------------------------------------------- verify

def test_verify_wait_cuts_the_last_attempt_to_what_is_left(kimpki):
    """--wait 4 --timeout 3 against a server that accepts and never answers: the first attempt
    times out after 3 s; the second gets only what is left of the 4 s (at most 4 - 3 - 0.25),
    not 3 s again (6.4 s before)."""
    with Blackhole() as hole:
        res = kimpki("verify", "kim.example.com", "--connect", f"127.0.0.1:{hole.port}", "--wait", "4",
                     "--timeout", "3", "--json")
    assert res.code == 1, res.err
    d = json.loads(res.out)
    assert d["reason"] == "timeout"
    assert d["attempts"] == 2
    assert 0.25 <= d["timeout_s"] <= 0.75
    assert d["message"].endswith(f"within {d['timeout_s']:g} s")


def test_verify_single_attempt_keeps_its_timeout(kimpki):
    with Blackhole() as hole:
        d = json.loads(kimpki("verify", "kim.example.com", "--connect", f"127.0.0.1:{hole.port}",
                              "--timeout", "0.5", "--json").out)
    assert (d["reason"], d["attempts"], d["timeout_s"]) == ("timeout", 1, 0.5)


def test_verify_unresolvable_connect_host_is_name_resolution(kimpki):
    res = kimpki("verify", "kim.example.com", "--connect", "no-such-gateway.invalid:8443", "--json")
    assert res.code == 1
    d = json.loads(res.out)
    assert d["reason"] == "name_resolution"
    assert "cannot resolve no-such-gateway.invalid" in d["message"]
    assert "name_resolution" in " ".join(kimpki.ok("verify", "--help").out.split())
