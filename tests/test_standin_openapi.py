"""The stand-in API server checks a custom resource against its CRD's structural schema (types,
enums, required fields, item counts, bounds) before the CEL rules, with the real server's words
(apiextensions-apiserver ``kubeOpenAPIResultToFieldErrors``; its own tests spell them, e.g.
``field: Invalid value: "string": field in body must be of type object: "string"``,
``fieldX: Too many: 3: must have at most 2 items``, ``field.nestedint: Unsupported value: "x":
supported values: "1", "2"``). kimpki refuses the same objects before sending them (``check -f``,
``gateway apply``), so the stand-in is reached here through kubectl and the kubernetes client."""

from __future__ import annotations

import copy
import json

import pytest

from tests.istio_helpers import kubectl
from tests.kubeapi.fixtures import *  # noqa: F401,F403
from tests.test_cel_rules import BOTH_NAMES, gateway

SKIPPED = ('<nil>: Invalid value: "null": some validation rules were not checked because the object was '
           'invalid; correct the existing errors to complete validation')
MODES = '"PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"'


def _port(obj: dict, **port) -> dict:
    obj = copy.deepcopy(obj)
    obj["spec"]["servers"][1]["port"] = port
    return obj


REFUSED = [
    pytest.param(_port(gateway("port-type", {"credentialName": "a"}), number="443", name="https", protocol="HTTPS"),
                 ["spec.servers[1].port.number: Invalid value: \"string\": spec.servers[1].port.number in body "
                  "must be of type integer: \"string\"", SKIPPED], id="type"),
    pytest.param(gateway("mode", {"mode": "STRICT", "credentialName": "a"}),
                 [f'spec.servers[1].tls.mode: Unsupported value: "STRICT": supported values: {MODES}', SKIPPED],
                 id="enum"),
    pytest.param(_port(gateway("no-name", {"credentialName": "a"}), number=443, protocol="HTTPS"),
                 ["spec.servers[1].port.name: Required value", SKIPPED], id="required"),
    pytest.param(gateway("three", {"credentialNames": ["a", "b", "c"]}),
                 ["spec.servers[1].tls.credentialNames: Too many: 3: must have at most 2 items", SKIPPED],
                 id="maxItems"),
    pytest.param(gateway("none", {"credentialNames": []}),
                 ["spec.servers[1].tls.credentialNames: Invalid value: 0: spec.servers[1].tls.credentialNames in "
                  "body should have at least 1 items"], id="minItems"),
    pytest.param(_port(gateway("big", {"credentialName": "a"}), number=5000000000, name="https", protocol="HTTPS"),
                 ["spec.servers[1].port.number: Invalid value: 5000000000: spec.servers[1].port.number in body "
                  "should be less than or equal to 4294967295"], id="maximum"),
]


def _message(obj: dict, shown: list[str]) -> str:
    prefix = f'{obj["kind"]}.networking.istio.io "{obj["metadata"]["name"]}" is invalid: '
    return prefix + (shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]")


@pytest.mark.parametrize("obj,expected", REFUSED)
def test_standin_refuses_what_the_schema_forbids(kube_api, kube_client, obj, expected):
    from kubernetes import client as k
    from kubernetes.client import ApiException

    with pytest.raises(ApiException) as e:
        k.CustomObjectsApi(kube_client).create_namespaced_custom_object(
            "networking.istio.io", "v1", "istio-system", "gateways", obj)
    assert e.value.status == 422
    body = json.loads(e.value.body)
    assert body["reason"] == "Invalid" and body["message"] == _message(obj, expected)
    assert kube_api.list_objects("gateways", "istio-system") == []


def test_standin_reports_the_schema_through_kubectl(kube_env):
    obj = gateway("kubectl-enum", {"mode": "STRICT", "credentialNames": ["a", "b", "c"]})
    proc = kubectl("create", "-f", "-", input=json.dumps(obj), env={"KUBECONFIG": kube_env.kubeconfig_path},
                   check=False)
    assert proc.returncode != 0
    assert 'The Gateway "kubectl-enum" is invalid' in proc.stderr
    assert 'spec.servers[1].tls.mode: Unsupported value: "STRICT"' in proc.stderr
    assert "spec.servers[1].tls.credentialNames: Too many: 3: must have at most 2 items" in proc.stderr


def test_cel_rules_still_run_after_a_non_blocking_schema_error(kube_client):
    """minItems is no blocking error (strategy.go hasBlockingErr): the CEL rules are evaluated too."""
    from kubernetes import client as k
    from kubernetes.client import ApiException

    obj = gateway("both", {"credentialName": "a", "credentialNames": []})
    with pytest.raises(ApiException) as e:
        k.CustomObjectsApi(kube_client).create_namespaced_custom_object(
            "networking.istio.io", "v1", "istio-system", "gateways", obj)
    message = json.loads(e.value.body)["message"]
    assert "should have at least 1 items" in message and BOTH_NAMES in message and "not checked" not in message


def test_standin_accepts_a_dual_gateway(kube_client):
    from kubernetes import client as k

    obj = gateway("dual", {"mode": "MUTUAL", "credentialNames": ["a", "a-rsa"], "caCertCredentialName": "c-cacert"})
    k.CustomObjectsApi(kube_client).create_namespaced_custom_object(
        "networking.istio.io", "v1", "istio-system", "gateways", obj)
