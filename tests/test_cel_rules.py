"""The CEL rules of Istio's CRDs (``x-kubernetes-validations``), enforced as a real API server does:
by kimpki (``schema.validate``, ``check -f``, ``gateway apply``) and by the stand-in API server
(through kubectl and the kubernetes client).

The Gateway and VirtualService CRDs carry 27 rules of four kinds (per served version): three on
``spec.servers[].tls`` ("only one of ..."), one on six duration fields of VirtualService http
routes. There is no rule on selector keys in these two kinds (the ``!key.contains("*")`` rule is
on other Istio kinds' workloadSelector), so none is tested here.
"""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from kimpki.istio import schema
from tests.conftest import assert_one_line_error
from tests.istio_helpers import kubectl
from tests.kubeapi.fixtures import *  # noqa: F401,F403

TLS_PATH = "spec.servers[1].tls"
BOTH_NAMES = "only one of credentialName or credentialNames can be set"
NAMES_AND_CERTS = "only one of credentialNames or tlsCertificates can be set"
# Istio's third rule checks credentialNames + tlsCertificates again, under this message:
NAMES_AND_CERTS_AGAIN = "only one of credentialName or tlsCertificates can be set"
DURATION = "must be a valid duration greater than 1ms"
CERTS = [{"serverCertificate": "/etc/certs/tls.crt", "privateKey": "/etc/certs/tls.key"}]


def gateway(name: str, tls: dict) -> dict:
    """Two servers, the second one's tls as given (so the path has an index other than 0)."""
    return {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "istio-system"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["a.example.com"]},
                {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["a.example.com"],
                 "tls": {"mode": "SIMPLE", **tls}}]}}


def virtual_service(name: str, timeout: str) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "istio-system"},
            "spec": {"hosts": ["a.example.com"], "gateways": ["a-gateway"], "http": [
                {"route": [{"destination": {"host": "svc", "port": {"number": 8080}}}]},
                {"timeout": timeout, "route": [{"destination": {"host": "svc", "port": {"number": 8080}}}]}]}}


# (object, [(path, message)] the API server answers with).
NOT_A_DURATION = "type conversion error from 'string' to 'google.protobuf.Duration' evaluating rule: " + DURATION
REFUSED = [
    pytest.param(gateway("both-names", {"credentialName": "a", "credentialNames": ["b"]}),
                 [(TLS_PATH, BOTH_NAMES)], id="credentialName+credentialNames"),
    pytest.param(gateway("names-and-certs", {"credentialNames": ["b"], "tlsCertificates": CERTS}),
                 [(TLS_PATH, NAMES_AND_CERTS), (TLS_PATH, NAMES_AND_CERTS_AGAIN)], id="credentialNames+tlsCertificates"),
    pytest.param(virtual_service("zero-timeout", "0s"), [("spec.http[1].timeout", DURATION)], id="timeout-0s"),
    pytest.param(virtual_service("sub-ms-timeout", "500us"), [("spec.http[1].timeout", DURATION)], id="timeout-500us"),
    pytest.param(virtual_service("bad-timeout", "10x"), [("spec.http[1].timeout", NOT_A_DURATION)],
                 id="timeout-not-a-duration"),
]
ACCEPTED = [
    pytest.param(gateway("one-name", {"credentialName": "a"}), id="credentialName"),
    pytest.param(gateway("names", {"credentialNames": ["a", "b"]}), id="credentialNames"),
    pytest.param(virtual_service("timeout", "1h30m"), id="timeout-1h30m"),
    pytest.param(virtual_service("ms-timeout", "1ms"), id="timeout-1ms"),
]
# The real server's rules let this through (none of the three looks at credentialName together
# with tlsCertificates, whatever the third one's message says); kimpki's own Gateway rules do not.
SERVER_ACCEPTS_KIMPKI_REFUSES = gateway("name-and-certs", {"credentialName": "a", "tlsCertificates": CERTS})


def _type(path: str) -> str:
    return "object" if path.endswith(".tls") else "string"


def _matches(line: str, path: str, message: str) -> bool:
    return line == f'{path}: Invalid value: "{_type(path)}": {message}'


# -- kimpki ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("obj,expected", REFUSED)
def test_schema_validate_reports_each_broken_rule_as_the_api_server_words_it(obj, expected):
    for version in ("v1", "v1beta1", "v1alpha3"):
        o = {**copy.deepcopy(obj), "apiVersion": f"networking.istio.io/{version}"}
        problems = schema.validate(o)
        assert len(problems) == len(expected), problems
        for line, (path, message) in zip(problems, expected):
            assert _matches(line, path, message), line


@pytest.mark.parametrize("obj", [*ACCEPTED, SERVER_ACCEPTS_KIMPKI_REFUSES])
def test_schema_validate_accepts_what_the_rules_allow(obj):
    assert schema.validate(obj) == []


def _write(tmp_path, obj) -> tuple[str, int]:
    """The object as YAML after a Secret document (so the line is not 1); the rule's line."""
    f = tmp_path / "manifests.yaml"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a", "namespace": "istio-system"},
              "type": "kubernetes.io/tls", "data": {}}
    text = yaml.safe_dump(secret) + "---\n" + yaml.safe_dump(obj, sort_keys=False)
    f.write_text(text)
    lines = text.splitlines()
    key = "tls:" if obj["kind"] == "Gateway" else "timeout:"
    return str(f), max(i for i, line in enumerate(lines, 1) if line.strip().lstrip("- ").startswith(key))


@pytest.mark.parametrize("obj,expected", REFUSED)
def test_check_f_refuses_what_the_api_server_would_at_file_and_line(kimpki, tmp_path, obj, expected):
    f, line = _write(tmp_path, obj)
    path, message = expected[0]
    res = kimpki("check", "-f", f)
    assert_one_line_error(res, 2, f"{f}:{line}: {obj['kind']} {obj['metadata']['name']}",
                          f'{path}: Invalid value: "{_type(path)}": ', message)


@pytest.mark.parametrize("obj,expected", REFUSED)
def test_gateway_apply_refuses_before_writing_anything(kube_env, kimpki, tmp_path, obj, expected):
    f, line = _write(tmp_path, obj)  # the file's Secret would be refused too, but later
    path, message = expected[0]
    res = kimpki("gateway", "apply", "-f", f)
    assert_one_line_error(res, 2, f"{f}:{line}: {obj['kind']} {obj['metadata']['name']}",
                          f'{path}: Invalid value: "{_type(path)}": ', message)
    assert kube_env.calls("POST") == [] and kube_env.calls("PUT") == []


@pytest.mark.parametrize("obj", ACCEPTED)
def test_gateway_apply_and_check_f_accept_what_the_rules_allow(kube_env, kimpki, tmp_path, obj):
    f = tmp_path / "istio.yaml"
    f.write_text(yaml.safe_dump(obj))
    d = kimpki.json("gateway", "apply", "-f", f)
    assert [o["action"] for o in d["objects"]] == ["created"]
    res = kimpki("check", "-f", f)
    assert res.code in (0, 1) and "Invalid value" not in res.out + res.err


def test_kimpki_refuses_credential_name_with_tls_certificates_by_its_own_rule(kimpki, tmp_path):
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump(SERVER_ACCEPTS_KIMPKI_REFUSES))
    assert_one_line_error(kimpki("gateway", "apply", "-f", f, "--kubeconfig", "/dev/null"), 2,
                          "Gateway name-and-certs", "only one of credentialName, tlsCertificates may be set")


# -- the stand-in API server ----------------------------------------------------------------------

def _custom_objects(client):
    from kubernetes import client as k

    return k.CustomObjectsApi(client)


def _plural(obj) -> str:
    return {"Gateway": "gateways", "VirtualService": "virtualservices"}[obj["kind"]]


@pytest.mark.parametrize("obj,expected", REFUSED)
def test_standin_refuses_through_the_kubernetes_client(kube_api, kube_client, obj, expected):
    from kubernetes.client import ApiException

    api = _custom_objects(kube_client)
    with pytest.raises(ApiException) as e:
        api.create_namespaced_custom_object("networking.istio.io", "v1", "istio-system", _plural(obj), obj)
    assert e.value.status == 422
    body = json.loads(e.value.body)
    name = obj["metadata"]["name"]
    assert body["kind"] == "Status" and body["reason"] == "Invalid" and body["code"] == 422
    assert body["details"]["name"] == name and body["details"]["kind"] == obj["kind"]
    assert body["details"]["group"] == "networking.istio.io"
    causes = body["details"]["causes"]
    assert [c["field"] for c in causes] == [p for p, _ in expected]
    assert all(c["reason"] == "FieldValueInvalid" for c in causes)
    for c, (path, message) in zip(causes, expected):
        assert c["message"] == f'Invalid value: "{_type(path)}": {message}'
    prefix = f'{obj["kind"]}.networking.istio.io "{name}" is invalid: '
    assert body["message"].startswith(prefix)
    shown = [f'{path}: Invalid value: "{_type(path)}": {message}' for path, message in expected]
    assert body["message"] == prefix + (shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]")
    assert kube_api.list_objects(_plural(obj), "istio-system") == []


@pytest.mark.parametrize("obj,expected", REFUSED)
def test_standin_refuses_through_kubectl(kube_env, obj, expected):
    proc = kubectl("create", "-f", "-", input=json.dumps(obj), env={"KUBECONFIG": kube_env.kubeconfig_path},
                   check=False)
    assert proc.returncode != 0
    assert f'The {obj["kind"]} "{obj["metadata"]["name"]}" is invalid' in proc.stderr
    for path, message in expected:
        assert f'{path}: Invalid value: "{_type(path)}": ' in proc.stderr and message in proc.stderr


@pytest.mark.parametrize("obj,expected", REFUSED)
def test_standin_refuses_an_update_that_breaks_a_rule(kube_api, kube_client, obj, expected):
    from kubernetes.client import ApiException

    api = _custom_objects(kube_client)
    good = gateway(obj["metadata"]["name"], {"credentialName": "a"}) if obj["kind"] == "Gateway" else \
        virtual_service(obj["metadata"]["name"], "10s")
    stored = api.create_namespaced_custom_object("networking.istio.io", "v1", "istio-system", _plural(obj), good)
    bad = {**copy.deepcopy(obj), "metadata": {**obj["metadata"], "resourceVersion": stored["metadata"]["resourceVersion"]}}
    with pytest.raises(ApiException) as e:
        api.replace_namespaced_custom_object("networking.istio.io", "v1", "istio-system", _plural(obj),
                                             obj["metadata"]["name"], bad)
    assert e.value.status == 422 and json.loads(e.value.body)["reason"] == "Invalid"


@pytest.mark.parametrize("obj", [*ACCEPTED, SERVER_ACCEPTS_KIMPKI_REFUSES])
def test_standin_accepts_what_the_rules_allow(kube_env, kube_client, obj):
    created = _custom_objects(kube_client).create_namespaced_custom_object(
        "networking.istio.io", "v1", "istio-system", _plural(obj), obj)
    assert created["metadata"]["name"] == obj["metadata"]["name"]
    other = {**copy.deepcopy(obj), "metadata": {**obj["metadata"], "name": obj["metadata"]["name"] + "-kubectl"}}
    kubectl("create", "-f", "-", input=json.dumps(other), env={"KUBECONFIG": kube_env.kubeconfig_path})


# -- the CEL engine is loaded only to validate ---------------------------------------------------

@pytest.mark.parametrize("validate,loaded", [("--validate", True), ("--no-validate", False)])
def test_render_loads_the_cel_engine_only_to_validate(kimpki, validate, loaded):
    import subprocess
    import sys

    code = ("import sys, runpy\n"
            f"sys.argv = ['kimpki', 'gateway', 'render', '--host', 'a.example.com', '--credential', 'a', {validate!r}]\n"
            "try:\n    runpy.run_module('kimpki', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "print('CEL', 'cel.cel' in sys.modules, file=sys.stderr)\n"
            "print('CLI', sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', 'prompt_toolkit')), "
            "file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=kimpki.env, capture_output=True, text=True,
                          cwd=kimpki.cwd)
    assert proc.returncode == 0, proc.stderr
    assert f"CEL {loaded}" in proc.stderr
    assert "CLI []" in proc.stderr  # the engine's own command line is not loaded with it


def test_engine_loaded_after_the_package_itself_is_reused(kimpki):
    """A process that imported ``cel`` first (the stand-in does) must not load the extension again:
    its init registers a Rust logger, and a second registration panics (SetLoggerError)."""
    import subprocess
    import sys

    code = ("import sys\nimport cel\n"
            "from kimpki.istio import celrules\n"
            "assert celrules.engine() is sys.modules['cel.cel']\n"
            "print(celrules.engine().compile('1 + 1').execute({}))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=kimpki.env, capture_output=True, text=True,
                          cwd=kimpki.cwd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2"


# -- how a rule is evaluated (a schema of our own: the shipped CRDs have no transition rule) -------

RULES_SCHEMA = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
    "replicas": {"type": "integer", "x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": "replicas is immutable"}]},
    "ports": {"type": "array", "items": {"type": "integer", "x-kubernetes-validations": [{"rule": "self > 0"}]}},
    "labels": {"type": "object", "additionalProperties": {"type": "string"},
               "x-kubernetes-validations": [{"rule": 'self.all(key, !key.contains("*"))',
                                             "message": "wildcard not allowed in label key match"}]}}}}}


@pytest.mark.parametrize("obj,old,expected", [
    ({"spec": {"replicas": 2}}, None, []),  # create: a transition rule is not evaluated
    ({"spec": {"replicas": 2}}, {"spec": {"replicas": 2}}, []),
    ({"spec": {"replicas": 3}}, {"spec": {"replicas": 2}},
     ['spec.replicas: Invalid value: "integer": replicas is immutable']),
    ({"spec": {"replicas": 3}}, {"spec": {}}, []),  # no old value at that place
    ({"spec": {"ports": [1, 0, None]}}, None, ['spec.ports[1]: Invalid value: "integer": failed rule: self > 0']),
    ({"spec": {"labels": {"app": "a", "x*": "b"}}}, None,
     ['spec.labels: Invalid value: "object": wildcard not allowed in label key match']),
    ({"spec": {"labels": None}}, None, []),  # null: not evaluated
], ids=["create", "same", "changed", "no-old-value", "default-message", "map-keys", "null"])
def test_rules_are_evaluated_where_the_api_server_evaluates_them(obj, old, expected):
    from kimpki.istio import celrules
    from tests.kubeapi import celrules as standin

    assert [str(e) for e in celrules.check(RULES_SCHEMA, obj, old)] == expected
    assert [str(e) for e in standin._walk_errors(RULES_SCHEMA, obj, old)] == expected


def test_standin_refuses_a_patch_that_breaks_a_rule(kube_env):
    env = {"KUBECONFIG": kube_env.kubeconfig_path}
    kubectl("create", "-f", "-", input=json.dumps(gateway("patched", {"credentialName": "a"})), env=env)
    patch = {"spec": {"servers": [gateway("patched", {"credentialName": "a", "credentialNames": ["b"]})
                                  ["spec"]["servers"][1]]}}
    proc = kubectl("-n", "istio-system", "patch", "gateway", "patched", "--type", "merge", "-p", json.dumps(patch),
                   env=env, check=False)
    assert proc.returncode != 0
    assert f'spec.servers[0].tls: Invalid value: "object": {BOTH_NAMES}' in proc.stderr
    stored = kube_env.get_object("gateways", "istio-system", "patched")
    assert "credentialNames" not in stored["spec"]["servers"][1]["tls"]
