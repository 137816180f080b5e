"""A CA's CRL validity in a policy (``crlValidity``): checked where it is written (``FILE:LINE``),
set by ``apply`` for every generation of the CA, and used by every CRL kimpki then signs
(``revoke``, ``renew``, ``kimpki crl``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509

from kimpki.policy import PolicyError, load_policy
from tests.conftest import assert_one_line_error

POLICY = """\
apiVersion: kimpki.io/v1alpha1
kind: Target
metadata: {name: local}
spec: {manifests: out}
---
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: root.example}
spec:
  duration: 365d
  crlValidity: VALUE
---
apiVersion: kimpki.io/v1alpha1
kind: Certificate
metadata: {name: a.example.com}
spec: {hosts: [a.example.com], ca: root.example, usage: client}
"""


def write(folder, value: str):
    folder.mkdir(exist_ok=True)
    (folder / "pki.yaml").write_text(POLICY.replace("VALUE", value))
    return folder


def test_crl_validity_loads(tmp_path):
    (ca,) = load_policy([write(tmp_path / "p", "3d")]).authorities
    assert ca.crl_validity == timedelta(days=3)
    (ca,) = load_policy([write(tmp_path / "q", "36h")]).authorities
    assert ca.crl_validity == timedelta(hours=36)


@pytest.mark.parametrize("value,message", [
    ("30m", "spec.crlValidity: a CRL's validity must be between 1h and 366d"),
    ("400d", "spec.crlValidity: a CRL's validity must be between 1h and 366d"),
    ("soon", "spec.crlValidity: invalid duration 'soon'"),
])
def test_a_bad_crl_validity_is_one_line_at_its_line(tmp_path, value, message):
    folder = write(tmp_path / "p", value)
    with pytest.raises(PolicyError) as e:
        load_policy([folder])
    assert str(e.value).startswith(f"{folder / 'pki.yaml'}:11: CertificateAuthority root.example: {message}"), \
        str(e.value)


def test_apply_sets_it_and_revoke_signs_with_it(kimpki, tmp_path):
    k = kimpki
    policies = write(tmp_path / "policies", "3d")
    plan = k.json("plan", "-f", policies)
    assert ("set", "CrlValidity", "root.example") in [(a["action"], a["kind"], a["name"]) for a in plan["actions"]]
    k.ok("apply", "-f", policies)
    assert k.ok("apply", "-f", policies).out.strip() == "no changes"
    d = k.json("revoke", "a.example.com")
    crl = x509.load_pem_x509_crl((k.home / "cas" / "root.example" / "crl.pem").read_bytes())
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=3) and d["crl"]["crl_number"] >= 1
    write(policies, "5d")
    report = k.json("apply", "-f", policies)
    assert [(a["action"], a["kind"], a["reason"]) for a in report["actions"]] == [
        ("set", "CrlValidity", "CRLs valid 5 days")]
    crl = k.json("crl", "root.example", "--refresh")
    assert crl["next_update"] > crl["this_update"]
    pem = x509.load_pem_x509_crl((k.home / "cas" / "root.example" / "crl.pem").read_bytes())
    assert pem.next_update_utc - pem.last_update_utc == timedelta(days=5)
    assert_one_line_error(k("apply", "-f", write(tmp_path / "bad", "0h")), 2, "pki.yaml:11:")
