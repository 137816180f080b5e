"""Helpers shared by the Istio credential, Gateway and mount tests: kubectl as an oracle, in-process
issuance against a test home, and the seed's four Gateway variants."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from tests.conftest import ROOT

# Copies of Istio's reference files (each file's header names its Istio release and source file).
REFERENCE = ROOT / "tests" / "data" / "istio"
DEPLOYMENT_FILE = REFERENCE / "istio-ingressgateway-deployment.yaml"
CRDS_FILE = REFERENCE / "crds.yaml"

# The seed's patch for a second file-mounted host (bookinfo), verbatim.
SEED_PATCH = [
    {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/0",
     "value": {"mountPath": "/etc/istio/ingressgateway-bookinfo-certs", "name": "ingressgateway-bookinfo-certs",
               "readOnly": True}},
    {"op": "add", "path": "/spec/template/spec/volumes/0",
     "value": {"name": "ingressgateway-bookinfo-certs",
               "secret": {"secretName": "istio-ingressgateway-bookinfo-certs", "optional": True}}},
]

# `kimpki gateway render` arguments for the seed's four Gateways.
SEED_VARIANTS = {
    "file-mounted-simple": ["--host", "kim.example.com", "--file-mounted", "--mode", "SIMPLE"],
    "file-mounted-mutual": ["--host", "kim.example.com", "--file-mounted", "--mode", "MUTUAL",
                            "--ca-file-name", "example.com.crt"],
    "sds-simple": ["--host", "kim.example.com", "--credential", "kim-credential", "--mode", "SIMPLE"],
    "sds-mutual": ["--name", "kim-gateway",
                   "--host", "kim.example.com", "--credential", "kim-credential", "--mode", "SIMPLE",
                   "--host", "kim-new.example.com", "--credential", "kim-new-credential", "--mode", "MUTUAL"],
}

# The seed's servers (its YAML, as dicts) for each variant.
SEED_SERVERS = {
    "file-mounted-simple": [
        {"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
         "tls": {"mode": "SIMPLE", "serverCertificate": "/etc/istio/ingressgateway-certs/tls.crt",
                 "privateKey": "/etc/istio/ingressgateway-certs/tls.key"},
         "hosts": ["kim.example.com"]}],
    "file-mounted-mutual": [
        {"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
         "tls": {"mode": "MUTUAL", "serverCertificate": "/etc/istio/ingressgateway-certs/tls.crt",
                 "privateKey": "/etc/istio/ingressgateway-certs/tls.key",
                 "caCertificates": "/etc/istio/ingressgateway-ca-certs/example.com.crt"},
         "hosts": ["kim.example.com"]}],
    "sds-simple": [
        {"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
         "tls": {"mode": "SIMPLE", "credentialName": "kim-credential"},
         "hosts": ["kim.example.com"]}],
    "sds-mutual": [
        {"port": {"number": 443, "name": "https-kim", "protocol": "HTTPS"},
         "tls": {"mode": "SIMPLE", "credentialName": "kim-credential"},
         "hosts": ["kim.example.com"]},
        {"port": {"number": 443, "name": "https-kim-new", "protocol": "HTTPS"},
         "tls": {"mode": "MUTUAL", "credentialName": "kim-new-credential"},
         "hosts": ["kim-new.example.com"]}],
}


def kubectl(*args, input: str | None = None, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """kubectl with no cluster unless ``env`` points at one (KUBECONFIG of the stand-in)."""
    e = {**os.environ, **(env or {})}
    if not env or "KUBECONFIG" not in env:
        e.setdefault("KUBECONFIG", os.devnull)
    proc = subprocess.run(["kubectl", *map(str, args)], capture_output=True, text=True, input=input, env=e)
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(map(str, args))}: {proc.stderr}"
    return proc


def kubectl_json(*args, **kw) -> dict:
    return json.loads(kubectl(*args, "-o", "json", **kw).stdout)


def decoded(secret: dict) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def issue_in_process(home: Path, hosts: list[str], *, ca_name: str | None = None, not_before: datetime | None = None,
                     not_after: datetime | None = None, client: bool = False, name: str | None = None):
    """Issue through kimpki.ops.issuing against a test home (for validity windows the CLI does not offer)."""
    from kimpki.ops import issuing
    from kimpki.pki.profiles import LeafKind
    from kimpki.store import Store

    store = Store.open(home)
    try:
        return issuing.issue(store, hosts, kind=LeafKind.CLIENT if client else LeafKind.SERVER, ca_name=ca_name,
                             now=datetime.now(timezone.utc), passphrase=lambda _: None, name=name,
                             not_before=not_before, not_after=not_after).to_dict()
    finally:
        store.close()
