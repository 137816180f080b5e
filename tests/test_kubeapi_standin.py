"""Pins the behaviour of the stand-in Kubernetes API server (tests/kubeapi).

Every expectation here is what a real kube-apiserver answers (messages, reasons and
``details`` are built like k8s.io/apimachinery/pkg/api/errors builds them). Requests go
through the real ``kubernetes`` Python client and the real ``kubectl`` binary, over HTTPS.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import ssl
import subprocess
import urllib.request

import pytest
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client import ApiException

from tests.kubeapi import KubeApiServer
from tests.kubeapi.fixtures import kube_api, kube_env  # noqa: F401  (fixtures)

NS = "istio-system"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


@pytest.fixture
def api(kube_api):
    c = config.new_client_from_config(config_file=kube_api.kubeconfig_path)
    yield c
    c.close()


@pytest.fixture
def core(api):
    return client.CoreV1Api(api)


@pytest.fixture
def apps(api):
    return client.AppsV1Api(api)


@pytest.fixture
def custom(api):
    return client.CustomObjectsApi(api)


@pytest.fixture
def coord(api):
    return client.CoordinationV1Api(api)


def err(excinfo) -> tuple[int, dict]:
    e = excinfo.value
    return e.status, json.loads(e.body)


def secret(name: str, data: dict | None = None, type_: str | None = None, **meta) -> dict:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, **meta}}
    if data is not None:
        body["data"] = {k: b64(v) for k, v in data.items()}
    if type_:
        body["type"] = type_
    return body


def deployment(name: str, ns: str = NS) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{
                        "name": "istio-proxy", "image": "istio/proxyv2:1.22.0",
                        "args": ["proxy", "router"],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        "volumeMounts": [{"name": "certs", "mountPath": "/etc/certs"},
                                         {"name": "other", "mountPath": "/etc/other"}],
                    }],
                    "volumes": [{"name": "certs", "secret": {"secretName": "kim-credential"}},
                                {"name": "other", "emptyDir": {}}],
                },
            },
        },
    }


def gateway(name: str, version: str = "v1") -> dict:
    return {
        "apiVersion": f"networking.istio.io/{version}", "kind": "Gateway",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"istio": "ingressgateway"},
                 "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                              "hosts": ["a.example.com"],
                              "tls": {"mode": "SIMPLE", "credentialName": "kim-credential"}}]},
    }


INVALID_PATCH = {
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
    "message": "the server rejected our request due to an error in our request",
    "reason": "Invalid", "details": {}, "code": 422,
}


# =========================================================================== transport
def test_kubeconfig_serves_https_with_its_ca_and_bearer_token(kube_api):
    cfg = yaml.safe_load(open(kube_api.kubeconfig_path))
    cluster = cfg["clusters"][0]["cluster"]
    assert cluster["server"] == kube_api.url and kube_api.url.startswith("https://127.0.0.1:")
    ca = base64.b64decode(cluster["certificate-authority-data"])
    token = cfg["users"][0]["user"]["token"]
    assert cfg["current-context"] == cfg["contexts"][0]["name"]

    ctx = ssl.create_default_context(cadata=ca.decode())
    for host in ("127.0.0.1", "localhost"):
        url = f"https://{host}:{kube_api.port}/api/v1/namespaces"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, context=ctx) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/json"
            body = json.load(r)
    assert body["kind"] == "NamespaceList"
    assert [n["metadata"]["name"] for n in body["items"]] == ["default", "istio-system", "kube-system"]


@pytest.mark.parametrize("token", ["wrong", None])
def test_wrong_or_missing_token_is_401_unauthorized(kube_api, token):
    ctx = ssl.create_default_context(cafile=kube_api.ca_path)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(kube_api.url + "/api/v1/namespaces/default/secrets", headers=headers)
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, context=ctx)
    assert ei.value.code == 401
    assert ei.value.headers["Content-Type"] == "application/json"
    assert json.load(ei.value) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                   "message": "Unauthorized", "reason": "Unauthorized", "code": 401}


def test_server_starts_and_stop_closes_port():
    srv = KubeApiServer().start()
    port = srv.port
    srv.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/version", timeout=2,
                               context=ssl._create_unverified_context())
    with KubeApiServer() as srv2:
        assert os.path.exists(srv2.kubeconfig_path)
    assert not os.path.exists(srv2.kubeconfig_path)


# =========================================================================== create / read
def test_create_sets_server_fields_and_merges_string_data(kube_api, core):
    s = core.create_namespaced_secret(NS, {"metadata": {"name": "a"}, "data": {"x": b64("1")},
                                           "stringData": {"y": "2", "x": "override"}})
    assert s.metadata.uid and re.fullmatch(r"[0-9a-f-]{36}", s.metadata.uid)
    assert s.metadata.resource_version.isdigit()
    assert s.type == "Opaque"
    assert s.data == {"x": b64("override"), "y": b64("2")}
    assert s.string_data is None
    raw = kube_api.get_object("secrets", NS, "a")
    assert "stringData" not in raw
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", raw["metadata"]["creationTimestamp"])
    assert s.metadata.generation is None  # secrets have no generation

    s2 = core.create_namespaced_secret(NS, {"metadata": {"name": "b"}})
    assert int(s2.metadata.resource_version) > int(s.metadata.resource_version)
    s.data["z"] = b64("3")
    s3 = core.replace_namespaced_secret("a", NS, s)
    assert int(s3.metadata.resource_version) > int(s2.metadata.resource_version)
    assert s3.metadata.uid == s.metadata.uid
    assert s3.metadata.creation_timestamp == s.metadata.creation_timestamp
    got = core.read_namespaced_secret("a", NS)
    assert got.data["z"] == b64("3") and got.metadata.resource_version == s3.metadata.resource_version


def test_create_existing_is_409_already_exists(core, apps):
    core.create_namespaced_secret(NS, secret("x"))
    with pytest.raises(ApiException) as ei:
        core.create_namespaced_secret(NS, secret("x"))
    assert err(ei) == (409, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'secrets "x" already exists', "reason": "AlreadyExists",
        "details": {"name": "x", "kind": "secrets"}, "code": 409})

    apps.create_namespaced_deployment(NS, deployment("gw"))
    with pytest.raises(ApiException) as ei:
        apps.create_namespaced_deployment(NS, deployment("gw"))
    code, body = err(ei)
    assert code == 409 and body["reason"] == "AlreadyExists"
    assert body["message"] == 'deployments.apps "gw" already exists'
    assert body["details"] == {"name": "gw", "group": "apps", "kind": "deployments"}


def test_create_in_missing_namespace_is_404(core):
    with pytest.raises(ApiException) as ei:
        core.create_namespaced_secret("nope", secret("x"))
    assert err(ei) == (404, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'namespaces "nope" not found', "reason": "NotFound",
        "details": {"name": "nope", "kind": "namespaces"}, "code": 404})


@pytest.mark.parametrize("verb", ["get", "put", "patch", "delete"])
def test_missing_object_is_404_not_found(core, verb):
    calls = {
        "get": lambda: core.read_namespaced_secret("x", NS),
        "put": lambda: core.replace_namespaced_secret("x", NS, secret("x")),
        "patch": lambda: core.patch_namespaced_secret("x", NS, {"metadata": {"labels": {"a": "b"}}}),
        "delete": lambda: core.delete_namespaced_secret("x", NS),
    }
    with pytest.raises(ApiException) as ei:
        calls[verb]()
    assert err(ei) == (404, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'secrets "x" not found', "reason": "NotFound",
        "details": {"name": "x", "kind": "secrets"}, "code": 404})


def test_missing_deployment_and_custom_object_404_carry_group(apps, custom):
    with pytest.raises(ApiException) as ei:
        apps.read_namespaced_deployment("nope", NS)
    assert err(ei)[1]["message"] == 'deployments.apps "nope" not found'
    assert err(ei)[1]["details"] == {"name": "nope", "group": "apps", "kind": "deployments"}
    with pytest.raises(ApiException) as ei:
        custom.get_namespaced_custom_object("networking.istio.io", "v1", NS, "gateways", "nope")
    assert err(ei)[1]["message"] == 'gateways.networking.istio.io "nope" not found'


# =========================================================================== update semantics
def test_put_with_stale_resource_version_is_409_conflict(core, apps):
    s = core.create_namespaced_secret(NS, secret("x", {"a": "1"}))
    stale = s.metadata.resource_version
    s.metadata.labels = {"v": "1"}
    core.replace_namespaced_secret("x", NS, s)  # still current: succeeds, bumps rv
    s.data = {"a": b64("2")}
    with pytest.raises(ApiException) as ei:
        core.replace_namespaced_secret("x", NS, s)
    assert s.metadata.resource_version == stale
    assert err(ei) == (409, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'Operation cannot be fulfilled on secrets "x": the object has been modified; '
                   "please apply your changes to the latest version and try again",
        "reason": "Conflict", "details": {"name": "x", "kind": "secrets"}, "code": 409})

    d = apps.create_namespaced_deployment(NS, deployment("gw"))
    d.spec.replicas = 2
    apps.replace_namespaced_deployment("gw", NS, d)
    d.spec.replicas = 3  # d still carries the pre-update resourceVersion
    with pytest.raises(ApiException) as ei:
        apps.replace_namespaced_deployment("gw", NS, d)
    code, body = err(ei)
    assert code == 409 and body["reason"] == "Conflict"
    assert body["message"] == ('Operation cannot be fulfilled on deployments.apps "gw": the object has been '
                               "modified; please apply your changes to the latest version and try again")
    assert body["details"] == {"name": "gw", "group": "apps", "kind": "deployments"}


def test_put_without_resource_version_is_unconditional_for_secrets_and_deployments_only(kube_api, core, apps, custom):
    core.create_namespaced_secret(NS, secret("x", {"a": "1"}))
    out = core.replace_namespaced_secret("x", NS, secret("x", {"a": "2"}))
    assert out.data == {"a": b64("2")}
    apps.create_namespaced_deployment(NS, deployment("gw"))
    d = deployment("gw")
    d["spec"]["replicas"] = 2
    assert apps.replace_namespaced_deployment("gw", NS, d).spec.replicas == 2
    # custom resources do not allow unconditional update (customResourceStrategy)
    custom.create_namespaced_custom_object("networking.istio.io", "v1", NS, "gateways", gateway("g"))
    with pytest.raises(ApiException) as ei:
        custom.replace_namespaced_custom_object("networking.istio.io", "v1", NS, "gateways", "g", gateway("g"))
    code, body = err(ei)
    assert code == 422 and body["reason"] == "Invalid"
    assert body["message"] == ('Gateway.networking.istio.io "g" is invalid: metadata.resourceVersion: '
                               "Invalid value: 0x0: must be specified for an update")
    # nor do Leases (leaseStrategy.AllowUnconditionalUpdate is false): a lock must be guarded
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
             "spec": {"holderIdentity": "a"}}
    client.CoordinationV1Api(apps.api_client).create_namespaced_lease(NS, lease)
    with pytest.raises(ApiException) as ei:
        client.CoordinationV1Api(apps.api_client).replace_namespaced_lease("l", NS, lease)
    code, body = err(ei)
    assert (code, body["reason"]) == (422, "Invalid")
    assert body["message"] == ('Lease.coordination.k8s.io "l" is invalid: metadata.resourceVersion: '
                               "Invalid value: 0x0: must be specified for an update")
    assert body["details"]["causes"] == [{"reason": "FieldValueInvalid", "message": "Invalid value: 0x0: must be "
                                          "specified for an update", "field": "metadata.resourceVersion"}]
    assert kube_api.get_object("leases", NS, "l")["spec"]["holderIdentity"] == "a"


def test_noop_update_does_not_bump_resource_version(core):
    s = core.create_namespaced_secret(NS, secret("x", {"a": "1"}, labels={"l": "v"}))
    again = core.replace_namespaced_secret("x", NS, s)
    assert again.metadata.resource_version == s.metadata.resource_version
    patched = core.patch_namespaced_secret("x", NS, {"metadata": {"labels": {"l": "v"}}})
    assert patched.metadata.resource_version == s.metadata.resource_version


def test_changing_secret_type_is_422_field_is_immutable(core):
    core.create_namespaced_secret(NS, secret("x", {"tls.crt": "c", "tls.key": "k"}, "kubernetes.io/tls"))
    with pytest.raises(ApiException) as ei:
        core.replace_namespaced_secret("x", NS, secret("x", {"tls.crt": "c", "tls.key": "k"}, "Opaque"))
    assert err(ei) == (422, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'Secret "x" is invalid: type: Invalid value: "Opaque": field is immutable',
        "reason": "Invalid",
        "details": {"name": "x", "kind": "Secret", "causes": [{
            "reason": "FieldValueInvalid", "message": 'Invalid value: "Opaque": field is immutable',
            "field": "type"}]},
        "code": 422})
    # via patch too
    with pytest.raises(ApiException) as ei:
        core.patch_namespaced_secret("x", NS, {"type": "Opaque"})
    assert err(ei)[1]["message"] == 'Secret "x" is invalid: type: Invalid value: "Opaque": field is immutable'


def test_secret_data_key_validation(core):
    with pytest.raises(ApiException) as ei:
        core.create_namespaced_secret(NS, secret("x", {"bad/key": "v"}))
    code, body = err(ei)
    msg = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
           "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")
    assert code == 422 and body["reason"] == "Invalid"
    assert body["message"] == f'Secret "x" is invalid: data[bad/key]: Invalid value: "bad/key": {msg}'
    assert body["details"] == {"name": "x", "kind": "Secret", "causes": [
        {"reason": "FieldValueInvalid", "message": f'Invalid value: "bad/key": {msg}', "field": "data[bad/key]"}]}


def test_tls_secret_requires_cert_and_key(core):
    with pytest.raises(ApiException) as ei:
        core.create_namespaced_secret(NS, secret("x", {"ca.crt": "c"}, "kubernetes.io/tls"))
    code, body = err(ei)
    assert code == 422
    assert body["message"] == 'Secret "x" is invalid: [data[tls.crt]: Required value, data[tls.key]: Required value]'
    assert body["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "data[tls.crt]"},
        {"reason": "FieldValueRequired", "message": "Required value", "field": "data[tls.key]"}]
    with pytest.raises(ApiException) as ei:
        core.create_namespaced_secret(NS, secret("x", {"tls.crt": "c"}, "kubernetes.io/tls"))
    assert err(ei)[1]["message"] == 'Secret "x" is invalid: data[tls.key]: Required value'
    ok = core.create_namespaced_secret(NS, secret("x", {"tls.crt": "c", "tls.key": "k"}, "kubernetes.io/tls"))
    assert ok.type == "kubernetes.io/tls"
    # removing a required key by patch is rejected too
    with pytest.raises(ApiException) as ei:
        core.patch_namespaced_secret("x", NS, [{"op": "remove", "path": "/data/tls.key"}])
    assert err(ei)[1]["message"] == 'Secret "x" is invalid: data[tls.key]: Required value'


def test_secret_total_size_limit(core):
    core.create_namespaced_secret(NS, secret("ok", {"a": "x" * (1024 * 1024)}))
    with pytest.raises(ApiException) as ei:
        core.create_namespaced_secret(NS, secret("big", {"a": "x" * (1024 * 1024), "b": "y"}))
    code, body = err(ei)
    assert code == 422
    assert body["message"] == 'Secret "big" is invalid: data: Too long: must have at most 1048576 bytes'
    assert body["details"]["causes"] == [{"reason": "FieldValueTooLong",
                                          "message": "Too long: must have at most 1048576 bytes", "field": "data"}]


def test_secret_data_must_be_base64(core):
    with pytest.raises(ApiException) as ei:
        core.create_namespaced_secret(NS, {"metadata": {"name": "x"}, "data": {"a": "not base64!"}})
    code, body = err(ei)
    assert code == 400 and body["reason"] == "BadRequest"
    assert body["message"] == ('Secret in version "v1" cannot be handled as a Secret: '
                               "illegal base64 data at input byte 3")


def test_deployment_generation(apps):
    d = apps.create_namespaced_deployment(NS, deployment("gw"))
    assert d.metadata.generation == 1
    assert d.spec.replicas == 1  # defaulted
    d2 = apps.patch_namespaced_deployment("gw", NS, {"metadata": {"labels": {"x": "y"}}})
    assert d2.metadata.generation == 1  # labels are not spec
    d3 = apps.patch_namespaced_deployment(
        "gw", NS, {"spec": {"template": {"metadata": {"annotations": {"kimpki.io/restartedAt": "now"}}}}})
    assert d3.metadata.generation == 2
    d4 = apps.patch_namespaced_deployment("gw", NS, {"metadata": {"annotations": {"a": "b"}}})
    assert d4.metadata.generation == 3  # deployment strategy: annotation changes bump too
    # the simulated controller reports a finished rollout of the current generation
    assert d4.status.observed_generation == 3 and d4.status.updated_replicas == 1
    # status sent on the main resource is ignored
    d4.status.observed_generation = 99
    d5 = apps.replace_namespaced_deployment("gw", NS, d4)
    assert d5.status.observed_generation == 3


# =========================================================================== patch
def test_deployment_volumes_and_mounts_are_validated_like_validate_pod_spec(kube_api, apps):
    d = deployment("gw")
    pod = d["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "certs", "secret": {"secretName": "again"}})  # duplicate name
    mounts = pod["containers"][0]["volumeMounts"]
    mounts.append({"name": "missing", "mountPath": "/etc/missing"})  # names no volume
    mounts.append({"name": "other", "mountPath": "/etc/certs"})  # a mountPath twice
    with pytest.raises(ApiException) as ei:
        apps.create_namespaced_deployment(NS, d)
    code, body = err(ei)
    assert (code, body["reason"]) == (422, "Invalid")
    assert body["message"] == (
        'Deployment.apps "gw" is invalid: [spec.template.spec.volumes[2].name: Duplicate value: "certs", '
        'spec.template.spec.containers[0].volumeMounts[2].name: Not found: "missing", '
        'spec.template.spec.containers[0].volumeMounts[3].mountPath: Invalid value: "/etc/certs": must be unique]')
    assert [c["reason"] for c in body["details"]["causes"]] == [
        "FieldValueDuplicate", "FieldValueNotFound", "FieldValueInvalid"]
    assert body["details"]["causes"][0] == {"reason": "FieldValueDuplicate", "message": 'Duplicate value: "certs"',
                                            "field": "spec.template.spec.volumes[2].name"}
    assert kube_api.get_object("deployments", NS, "gw") is None
    # the same rules on update: a JSON patch that adds the volume a second time is refused
    apps.create_namespaced_deployment(NS, deployment("gw"))
    ops = [{"op": "add", "path": "/spec/template/spec/volumes/-", "value": {"name": "other", "emptyDir": {}}}]
    with pytest.raises(ApiException) as ei:
        apps.patch_namespaced_deployment("gw", NS, ops)
    assert err(ei)[1]["message"] == ('Deployment.apps "gw" is invalid: spec.template.spec.volumes[2].name: '
                                     'Duplicate value: "other"')


def test_json_patch_failures_are_422_with_empty_details(core):
    core.create_namespaced_secret(NS, secret("x", {"a": "1"}, labels={"l": "v"}))
    bad_patches = [
        [{"op": "test", "path": "/metadata/labels/l", "value": "other"}],
        [{"op": "add", "path": "/metadata/missing/child", "value": "v"}],
        [{"op": "replace", "path": "/metadata/nolabel", "value": "v"}],
        [{"op": "remove", "path": "/data/nope"}],
        [{"op": "add", "path": "/metadata/finalizers", "value": []},
         {"op": "add", "path": "/metadata/finalizers/5", "value": "x"}],
    ]
    rv = core.read_namespaced_secret("x", NS).metadata.resource_version
    for p in bad_patches:
        with pytest.raises(ApiException) as ei:
            core.patch_namespaced_secret("x", NS, p)
        assert err(ei) == (422, INVALID_PATCH), p
    assert core.read_namespaced_secret("x", NS).metadata.resource_version == rv


def test_json_patch_applies_with_pointer_escaping(core):
    core.create_namespaced_secret(NS, secret("x", {"a": "1"}))
    out = core.patch_namespaced_secret("x", NS, [
        {"op": "add", "path": "/metadata/annotations", "value": {}},
        {"op": "add", "path": "/metadata/annotations/kimpki.io~1rotated-at", "value": "t1"},
        {"op": "add", "path": "/metadata/annotations/tilde~0key", "value": "t2"},
        {"op": "test", "path": "/data/a", "value": b64("1")},
        {"op": "replace", "path": "/data/a", "value": b64("2")},
        {"op": "copy", "from": "/data/a", "path": "/data/b"},
        {"op": "move", "from": "/data/b", "path": "/data/c"},
    ])
    assert out.metadata.annotations == {"kimpki.io/rotated-at": "t1", "tilde~key": "t2"}
    assert out.data == {"a": b64("2"), "c": b64("2")}


def test_merge_patch_replaces_lists_and_null_deletes(apps):
    apps.create_namespaced_deployment(NS, deployment("gw"))
    out = apps.patch_namespaced_deployment("gw", NS, {"spec": {"template": {"spec": {"containers": [
        {"name": "istio-proxy", "image": "istio/proxyv2:1.23.0"}]}}}}, _content_type="application/merge-patch+json")
    c = out.spec.template.spec.containers
    assert len(c) == 1 and c[0].image == "istio/proxyv2:1.23.0" and c[0].env is None and c[0].volume_mounts is None
    out = apps.patch_namespaced_deployment("gw", NS, {"metadata": {"labels": {"a": "b"}}},
                                           _content_type="application/merge-patch+json")
    out = apps.patch_namespaced_deployment("gw", NS, {"metadata": {"labels": {"a": None}}},
                                           _content_type="application/merge-patch+json")
    assert not out.metadata.labels


def test_strategic_merge_patch_merges_by_keys(apps):
    apps.create_namespaced_deployment(NS, deployment("gw"))
    out = apps.patch_namespaced_deployment("gw", NS, {"spec": {"template": {"spec": {
        "volumes": [{"name": "certs", "secret": {"secretName": "kim-credential-v2"}},
                    {"name": "new", "emptyDir": {}},
                    {"name": "other", "$patch": "delete"}],
        "containers": [{
            "name": "istio-proxy",
            "args": ["proxy"],
            "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}, {"name": "A", "$patch": "delete"}],
            "volumeMounts": [{"mountPath": "/etc/certs", "name": "certs", "readOnly": True},
                             {"mountPath": "/etc/other", "$patch": "delete"}],
        }],
    }}}})  # a dict body is sent as application/strategic-merge-patch+json
    spec = out.spec.template.spec
    assert [(v.name, v.secret.secret_name if v.secret else None) for v in spec.volumes] == [
        ("certs", "kim-credential-v2"), ("new", None)]
    (c,) = spec.containers
    assert c.image == "istio/proxyv2:1.22.0"  # untouched field kept
    assert c.args == ["proxy"]  # lists without a merge key are replaced
    assert [(e.name, e.value) for e in c.env] == [("B", "20"), ("C", "3")]
    assert [(m.mount_path, m.read_only) for m in c.volume_mounts] == [("/etc/certs", True)]


def test_strategic_merge_patch_is_415_for_custom_resources(custom, api):
    custom.create_namespaced_custom_object("networking.istio.io", "v1", NS, "gateways", gateway("g"))
    with pytest.raises(ApiException) as ei:
        custom.patch_namespaced_custom_object("networking.istio.io", "v1", NS, "gateways", "g",
                                              {"spec": {"selector": {"istio": "x"}}},
                                              _content_type="application/strategic-merge-patch+json")
    code, body = err(ei)
    assert code == 415 and body["reason"] == "UnsupportedMediaType"
    assert body["message"] == ("the body of the request was in an unknown format - accepted media types include: "
                               "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
    out = custom.patch_namespaced_custom_object("networking.istio.io", "v1", NS, "gateways", "g",
                                                {"spec": {"selector": {"istio": "x"}}})  # merge patch
    assert out["spec"]["selector"] == {"istio": "x"} and out["metadata"]["generation"] == 2


def test_dry_run_persists_nothing(kube_api, core):
    created = core.create_namespaced_secret(NS, secret("x", {"a": "1"}), dry_run="All")
    assert created.metadata.uid and created.metadata.resource_version is None
    assert kube_api.get_object("secrets", NS, "x") is None
    s = core.create_namespaced_secret(NS, secret("x", {"a": "1"}))
    rv = s.metadata.resource_version
    s.data = {"a": b64("2")}
    out = core.replace_namespaced_secret("x", NS, s, dry_run="All")
    assert out.data == {"a": b64("2")} and out.metadata.resource_version == rv
    out = core.patch_namespaced_secret("x", NS, {"data": {"b": b64("3")}}, dry_run="All")
    assert out.data == {"a": b64("1"), "b": b64("3")}
    stored = kube_api.get_object("secrets", NS, "x")
    assert stored["data"] == {"a": b64("1")} and stored["metadata"]["resourceVersion"] == rv
    # dry-run still validates
    with pytest.raises(ApiException) as ei:
        core.patch_namespaced_secret("x", NS, {"type": "kubernetes.io/tls"}, dry_run="All")
    assert err(ei)[0] == 422


# =========================================================================== list
def test_list_label_and_field_selectors(kube_api, core):
    for i, labels in enumerate([{"kimpki.io/managed": "true", "tier": "a"},
                                {"kimpki.io/managed": "true", "tier": "b"},
                                {"kimpki.io/managed": "false"},
                                {}]):
        kube_api.put_object(secret(f"s{i}", {"k": "v"}, namespace=NS, labels=labels))

    def names(**kw):
        return [s.metadata.name for s in core.list_namespaced_secret(NS, **kw).items]

    assert names() == ["s0", "s1", "s2", "s3"]
    assert names(label_selector="kimpki.io/managed=true") == ["s0", "s1"]
    assert names(label_selector="kimpki.io/managed==true,tier!=a") == ["s1"]
    assert names(label_selector="kimpki.io/managed") == ["s0", "s1", "s2"]
    assert names(label_selector="!kimpki.io/managed") == ["s3"]
    assert names(label_selector="tier in (a, b)") == ["s0", "s1"]
    assert names(label_selector="tier notin (a)") == ["s1", "s2", "s3"]
    assert names(field_selector="metadata.name=s2") == ["s2"]
    lst = core.list_namespaced_secret(NS)
    assert lst.kind == "SecretList" and lst.api_version == "v1"
    assert int(lst.metadata.resource_version) == kube_api.resource_version
    assert lst.metadata.var_continue is None
    # all namespaces
    kube_api.put_object(secret("elsewhere", {"k": "v"}, namespace="default"))
    assert [(s.metadata.namespace, s.metadata.name) for s in core.list_secret_for_all_namespaces().items][:2] == [
        ("default", "elsewhere"), (NS, "s0")]


def test_list_pagination_limit_and_continue(kube_api, core):
    for i in range(7):
        kube_api.put_object(secret(f"s{i}", {"k": "v"}, namespace=NS))
    seen, cont, pages = [], None, []
    while True:
        lst = core.list_namespaced_secret(NS, limit=3, _continue=cont)
        seen += [s.metadata.name for s in lst.items]
        pages.append((len(lst.items), lst.metadata.remaining_item_count))
        cont = lst.metadata.var_continue
        if not cont:
            break
    assert seen == [f"s{i}" for i in range(7)]
    assert pages == [(3, 4), (3, 1), (1, None)]
    # selector + paging: no remainingItemCount (as the real server does)
    lst = core.list_namespaced_secret(NS, limit=2, label_selector="!nothing")
    assert lst.metadata.var_continue and lst.metadata.remaining_item_count is None
    with pytest.raises(ApiException) as ei:
        core.list_namespaced_secret(NS, limit=2, _continue="garbage")
    assert err(ei)[0] == 400 and err(ei)[1]["reason"] == "BadRequest"


def test_ten_thousand_secrets_seed_and_page(kube_api, api):
    """10,000 Secrets page through in 500s. How fast (seeding, LIST pages) is measured by
    ``scripts/bench renew sweep``, which loads and lists as many."""
    data = {"tls.crt": b64("c" * 1200), "tls.key": b64("k" * 250)}
    for i in range(10_000):
        kube_api.put_object({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                             "metadata": {"name": f"cred-{i:05d}", "namespace": NS,
                                          "labels": {"kimpki.io/managed": "true"}},
                             "data": data})

    core = client.CoreV1Api(api)
    first = core.list_namespaced_secret(NS, limit=500, label_selector="kimpki.io/managed=true",
                                        _preload_content=False)
    body = json.loads(first.data)
    assert len(body["items"]) == 500 and body["metadata"]["continue"]
    total, cont = len(body["items"]), body["metadata"]["continue"]
    while cont:
        r = json.loads(core.list_namespaced_secret(NS, limit=500, _continue=cont, _preload_content=False).data)
        total += len(r["items"])
        cont = r["metadata"].get("continue")
    assert total == 10_000
    assert sum(1 for m, p, q in kube_api.requests if p == f"/api/v1/namespaces/{NS}/secrets") == 20


# =========================================================================== other resources
def test_istio_resources_served_at_all_versions(kube_api, custom):
    g = custom.create_namespaced_custom_object("networking.istio.io", "v1beta1", NS, "gateways",
                                               gateway("g", "v1beta1"))
    assert g["apiVersion"] == "networking.istio.io/v1beta1" and g["metadata"]["generation"] == 1
    for v in ("v1", "v1beta1", "v1alpha3"):
        got = custom.get_namespaced_custom_object("networking.istio.io", v, NS, "gateways", "g")
        assert got["apiVersion"] == f"networking.istio.io/{v}" and got["kind"] == "Gateway"
        lst = custom.list_namespaced_custom_object("networking.istio.io", v, NS, "gateways")
        assert lst["kind"] == "GatewayList" and lst["items"][0]["apiVersion"] == f"networking.istio.io/{v}"
    vs = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
          "metadata": {"name": "r"}, "spec": {"hosts": ["a"], "gateways": ["g"]}}
    out = custom.create_namespaced_custom_object("networking.istio.io", "v1alpha3", NS, "virtualservices", vs)
    assert out["kind"] == "VirtualService" and out["spec"] == {"hosts": ["a"], "gateways": ["g"]}
    # DestinationRule has no schema here: every field is kept (preserve-unknown-fields)
    dr = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "DestinationRule",
          "metadata": {"name": "r"}, "spec": {"host": "a"}}
    custom.create_namespaced_custom_object("networking.istio.io", "v1alpha3", NS, "destinationrules", dr)
    assert kube_api.get_object("destinationrules", NS, "r")["spec"] == {"host": "a"}
    # body apiVersion must match the URL's for custom resources
    with pytest.raises(ApiException) as ei:
        custom.create_namespaced_custom_object("networking.istio.io", "v1", NS, "gateways", gateway("h", "v1beta1"))
    assert err(ei)[1]["message"] == ("the API version in the data (networking.istio.io/v1beta1) does not match "
                                     "the expected API version (networking.istio.io/v1)")


# =========================================================================== fieldValidation
def raw(api, method, path, body, query="", content_type="application/json"):
    """One request through the client's own pool (its TLS and token); returns (status, headers,
    decoded body): the client's typed methods hide response headers."""
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    api.update_params_for_auth(headers, [], ["BearerToken"], None, None, None)
    resp = api.rest_client.pool_manager.request(
        method, api.configuration.host + path + (("?" + query) if query else ""),
        body=json.dumps(body).encode(), headers=headers)
    return resp.status, resp.headers, json.loads(resp.data)


VS_PATH = f"/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices"
VS_TYPO = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "vs"},
           "spec": {"host": "a", "hosts": ["a"], "http": [{"route": [{"destination": {"host": "b"}}],
                                                            "timout": "5s"}]}}


def test_field_validation_strict_refuses_unknown_fields_with_the_decoders_message(kube_api, api):
    code, _, body = raw(api, "POST", VS_PATH, VS_TYPO, "fieldValidation=Strict")
    assert (code, body["reason"]) == (400, "BadRequest")
    assert body["message"] == ('VirtualService in version "v1" cannot be handled as a VirtualService: strict '
                               'decoding error: unknown field "spec.host", unknown field "spec.http[0].timout"')
    assert kube_api.get_object("virtualservices", NS, "vs") is None
    dep = deployment("d")
    dep["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    dep["spec"]["replica"] = 3
    code, _, body = raw(api, "POST", f"/apis/apps/v1/namespaces/{NS}/deployments", dep, "fieldValidation=Strict")
    assert code == 400 and body["message"] == (  # in the order the decoder meets them in the document
        'Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: unknown field '
        '"spec.template.spec.containers[0].imagee", unknown field "spec.replica"')
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "foo": 1},
             "spec": {"holderIdentity": "a", "holder": "b"}}
    code, _, body = raw(api, "POST", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", lease,
                        "fieldValidation=Strict")
    assert code == 400 and body["message"].endswith(
        'strict decoding error: unknown field "metadata.foo", unknown field "spec.holder"')


def test_field_validation_default_is_warn_and_drops_the_fields(kube_api, api):
    """No parameter (what the Python client sends) is Warn: stored without the unknown fields,
    one Warning header per field."""
    code, headers, body = raw(api, "POST", VS_PATH, VS_TYPO)
    assert code == 201
    assert headers["Warning"] == ('299 - "unknown field \\"spec.host\\"", '
                                  '299 - "unknown field \\"spec.http[0].timout\\""')
    stored = kube_api.get_object("virtualservices", NS, "vs")
    assert stored["spec"] == {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "b"}}]}]}
    assert body["spec"] == stored["spec"]
    s = secret("s", {"k": "v"})
    s["extra"] = True
    code, headers, _ = raw(api, "POST", f"/api/v1/namespaces/{NS}/secrets", s, "fieldValidation=Ignore")
    assert code == 201 and "Warning" not in headers
    assert "extra" not in kube_api.get_object("secrets", NS, "s")
    code, _, body = raw(api, "POST", f"/api/v1/namespaces/{NS}/secrets", secret("t"), "fieldValidation=strict")
    assert code == 422 and body["message"] == (
        'CreateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: "strict": '
        'supported values: "Ignore", "Strict", "Warn"')


def test_field_validation_on_patches_is_422_on_the_patch_field(kube_api, api):
    kube_api.put_object({**gateway("g"), "metadata": {"name": "g", "namespace": NS}})
    path = f"/apis/networking.istio.io/v1/namespaces/{NS}/gateways/g"
    ops = [{"op": "add", "path": "/spec/servers/0/tls/credentialname", "value": "x"}]
    code, _, body = raw(api, "PATCH", path, ops, "fieldValidation=Strict", "application/json-patch+json")
    assert (code, body["reason"]) == (422, "Invalid")
    assert body["message"].startswith(' "" is invalid: patch: Invalid value: "{\\"kind\\":\\"Gateway\\"')
    assert body["message"].endswith(': strict decoding error: unknown field "spec.servers[0].tls.credentialname"')
    code, headers, body = raw(api, "PATCH", path, ops, "", "application/json-patch+json")
    assert code == 200 and "credentialname" in headers["Warning"]
    assert "credentialname" not in kube_api.get_object("gateways", NS, "g")["spec"]["servers"][0]["tls"]
    smp = {"spec": {"template": {"spec": {"containers": [{"name": "istio-proxy", "imagee": "x"}]}}}}
    kube_api.put_object(deployment("d"))
    code, _, body = raw(api, "PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/d", smp,
                        "fieldValidation=Strict", "application/strategic-merge-patch+json")
    assert code == 422 and body["message"] == (
        ' "" is invalid: patch: Invalid value: "map[spec:map[template:map[spec:map[containers:[map[imagee:x '
        'name:istio-proxy]]]]]]": strict decoding error: unknown field "spec.template.spec.containers[0].imagee"')


def test_leases_and_configmaps(coord, core):
    lease = coord.create_namespaced_lease(NS, {"metadata": {"name": "kimpki-renew"},
                                               "spec": {"holderIdentity": "a", "leaseDurationSeconds": 30}})
    lease.spec.holder_identity = "b"
    updated = coord.replace_namespaced_lease("kimpki-renew", NS, lease)
    assert updated.spec.holder_identity == "b"
    lease.spec.holder_identity = "c"  # stale resourceVersion
    with pytest.raises(ApiException) as ei:
        coord.replace_namespaced_lease("kimpki-renew", NS, lease)
    assert err(ei)[1]["message"].startswith('Operation cannot be fulfilled on leases.coordination.k8s.io "kimpki-renew"')
    cm = core.create_namespaced_config_map(NS, {"metadata": {"name": "c"}, "data": {"k": "v"}})
    assert cm.data == {"k": "v"}
    with pytest.raises(ApiException) as ei:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "d"}, "data": {"a b": "v"}})
    assert err(ei)[1]["message"].startswith('ConfigMap "d" is invalid: data[a b]: Invalid value: "a b"')


def test_namespaces(kube_api, core):
    assert [n.metadata.name for n in core.list_namespace().items] == ["default", "istio-system", "kube-system"]
    ns = core.create_namespace({"metadata": {"name": "kimpki"}})
    assert ns.status.phase == "Active" and ns.metadata.labels == {"kubernetes.io/metadata.name": "kimpki"}
    assert core.read_namespace("kimpki").metadata.uid == ns.metadata.uid
    with pytest.raises(ApiException) as ei:
        core.create_namespace({"metadata": {"name": "kimpki"}})
    assert err(ei)[1]["message"] == 'namespaces "kimpki" already exists'
    core.create_namespaced_secret("kimpki", secret("x"))


def test_delete_returns_success_status(kube_api, core, apps):
    s = core.create_namespaced_secret(NS, secret("x"))
    st = core.delete_namespaced_secret("x", NS)  # the client returns the decoded body
    assert st == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                  "details": {"name": "x", "kind": "secrets", "uid": s.metadata.uid}}
    assert kube_api.get_object("secrets", NS, "x") is None
    d = apps.create_namespaced_deployment(NS, deployment("gw"))
    st = apps.delete_namespaced_deployment("gw", NS)
    assert st["details"] == {"name": "gw", "group": "apps", "kind": "deployments", "uid": d.metadata.uid}
    # preconditions
    s = core.create_namespaced_secret(NS, secret("y"))
    with pytest.raises(ApiException) as ei:
        core.delete_namespaced_secret("y", NS, body={"preconditions": {"resourceVersion": "1"}})
    assert err(ei)[0] == 409 and "Precondition failed" in err(ei)[1]["message"]


def test_create_edge_cases(kube_api, core):
    # generateName
    s = core.create_namespaced_secret(NS, {"metadata": {"generateName": "kim-"}})
    assert re.fullmatch(r"kim-[a-z0-9]{5}", s.metadata.name)
    # a resourceVersion on create: etcd3 store.Create's plain error -> 500, no reason/details
    with pytest.raises(ApiException) as ei:
        core.create_namespaced_secret(NS, secret("x", resourceVersion="42"))
    assert err(ei) == (500, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                             "message": "resourceVersion should not be set on objects to be created",
                             "code": 500})
    # invalid name
    with pytest.raises(ApiException) as ei:
        core.create_namespaced_secret(NS, secret("Bad_Name"))
    assert err(ei)[1]["message"].startswith(
        'Secret "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain')
    # body namespace must match the URL
    with pytest.raises(ApiException) as ei:
        core.create_namespaced_secret(NS, secret("x", namespace="default"))
    assert err(ei)[1]["message"] == "the namespace of the provided object does not match the namespace sent on the request"
    # unknown API paths: the plain-text mux 404
    ctx = ssl.create_default_context(cafile=kube_api.ca_path)
    req = urllib.request.Request(kube_api.url + "/apis/example.com/v1/widgets",
                                 headers={"Authorization": f"Bearer {kube_api.token}"})
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, context=ctx)
    assert ei.value.code == 404 and ei.value.read() == b"404 page not found\n"


def test_deployment_status_subresource(apps):
    apps.create_namespaced_deployment(NS, deployment("gw"))
    out = apps.patch_namespaced_deployment_status("gw", NS, {"status": {"observedGeneration": 1, "replicas": 5,
                                                                       "readyReplicas": 0}})
    assert out.status.replicas == 5 and out.status.ready_replicas == 0 and out.metadata.generation == 1
    out = apps.patch_namespaced_deployment_status("gw", NS, {"spec": {"replicas": 9}})
    assert out.spec.replicas == 1  # status writes change nothing else
    assert apps.read_namespaced_deployment_status("gw", NS).status.replicas == 5


def test_server_side_apply_approximation(kube_api, core):
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS}, "data": {"a": "1"}}
    apply = "application/apply-patch+yaml"  # the client sends the dict as JSON, which is YAML
    with pytest.raises(ApiException) as ei:
        core.patch_namespaced_config_map("c", NS, body, _content_type=apply)
    assert err(ei)[1]["message"] == ('PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                                     "is required for apply patch")
    created = core.patch_namespaced_config_map("c", NS, body, field_manager="kimpki", _content_type=apply)
    assert created.data == {"a": "1"}
    body["data"] = {"a": "2"}
    out = core.patch_namespaced_config_map("c", NS, body, field_manager="kimpki", _content_type=apply)
    assert out.data == {"a": "2"} and out.metadata.uid == created.metadata.uid


def test_kube_env_fixture_points_clients_at_the_server(kube_env):
    assert os.environ["KUBECONFIG"] == kube_env.kubeconfig_path
    c = config.new_client_from_config()  # default location == $KUBECONFIG
    try:
        assert client.CoreV1Api(c).read_namespace("istio-system").metadata.name == "istio-system"
    finally:
        c.close()
    r = subprocess.run([KUBECTL, "get", "ns", "default", "-o", "name"], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "namespace/default", r.stderr
    assert os.path.isdir(os.environ["KUBECACHEDIR"])


# =========================================================================== fault injection
def test_deny_is_403_with_rbac_wording(kube_api, core):
    core.create_namespaced_secret(NS, secret("x", {"a": "1"}))
    kube_api.deny(verb="update", resource="secrets", namespace=NS, user="system:serviceaccount:kimpki:renewer")
    with pytest.raises(ApiException) as ei:
        core.replace_namespaced_secret("x", NS, secret("x", {"a": "2"}))
    assert err(ei) == (403, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'secrets "x" is forbidden: User "system:serviceaccount:kimpki:renewer" cannot update '
                   'resource "secrets" in API group "" in the namespace "istio-system"',
        "reason": "Forbidden", "details": {"name": "x", "kind": "secrets"}, "code": 403})
    # other verbs and namespaces unaffected
    core.patch_namespaced_secret("x", NS, {"data": {"b": b64("2")}})
    core.create_namespaced_secret("default", secret("x"))
    core.replace_namespaced_secret("x", "default", secret("x", {"a": "2"}))

    kube_api.deny(verb="list", resource="secrets", namespace=NS, user="system:serviceaccount:kimpki:renewer")
    with pytest.raises(ApiException) as ei:
        core.list_namespaced_secret(NS)
    assert err(ei)[1]["message"] == ('secrets is forbidden: User "system:serviceaccount:kimpki:renewer" cannot list '
                                     'resource "secrets" in API group "" in the namespace "istio-system"')
    assert err(ei)[1]["details"] == {"kind": "secrets"}
    kube_api.clear_faults()
    assert core.list_namespaced_secret(NS).items


def test_rbac_authorizes_a_service_account_by_its_bindings(kube_api):
    sa = "system:serviceaccount:istio-system:renewer"
    kube_api.put_objects([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "renewer", "namespace": NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r", "namespace": NS},
         "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "update"]},
                   {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["kimpki-renew"],
                    "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "r", "namespace": NS},
         "subjects": [{"kind": "ServiceAccount", "name": "renewer", "namespace": NS}],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": NS}, "data": {"k": b64("v")}},
    ])
    api = config.new_client_from_config(config_file=kube_api.service_account_kubeconfig(NS, "renewer"))
    try:
        core, coord = client.CoreV1Api(api), client.CoordinationV1Api(api)
        assert [s.metadata.name for s in core.list_namespaced_secret(NS).items] == ["s"]
        with pytest.raises(ApiException) as ei:
            core.read_namespaced_secret("s", NS)
        code, body = err(ei)
        assert (code, body["reason"]) == (403, "Forbidden")
        assert body["message"] == (f'secrets "s" is forbidden: User "{sa}" cannot get resource "secrets" '
                                   'in API group "" in the namespace "istio-system"')
        assert body["details"] == {"name": "s", "kind": "secrets"}
        with pytest.raises(ApiException) as ei:  # another namespace: the RoleBinding does not reach it
            core.list_namespaced_secret("default")
        assert err(ei)[1]["message"] == (f'secrets is forbidden: User "{sa}" cannot list resource "secrets" '
                                         'in API group "" in the namespace "default"')
        with pytest.raises(ApiException) as ei:  # resourceNames: only that lease, and never create (no name)
            coord.read_namespaced_lease("other", NS)
        assert err(ei)[1]["message"].startswith(f'leases.coordination.k8s.io "other" is forbidden: User "{sa}" '
                                                'cannot get resource "leases" in API group "coordination.k8s.io"')
        with pytest.raises(ApiException) as ei:
            coord.read_namespaced_lease("kimpki-renew", NS)
        assert err(ei)[0] == 404  # allowed, then not found
        # a ClusterRoleBinding to a ClusterRole reaches every namespace; a binding to a missing
        # role is the RBAC authorizer's reason on the denial
        kube_api.put_objects([
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "read"},
             "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "read"},
             "subjects": [{"kind": "Group", "name": "system:serviceaccounts"}],
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "read"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "gone", "namespace": NS},
             "subjects": [{"kind": "User", "name": sa}],
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gone"}},
        ])
        assert core.read_namespaced_secret("s", NS).metadata.name == "s"
        with pytest.raises(ApiException) as ei:
            core.delete_namespaced_secret("s", NS)
        assert err(ei)[1]["message"] == (
            f'secrets "s" is forbidden: User "{sa}" cannot delete resource "secrets" in API group "" in the '
            'namespace "istio-system": RBAC: role.rbac.authorization.k8s.io "gone" not found')
        assert client.VersionApi(api).get_code().git_version  # non-resource paths: any authenticated user
    finally:
        api.close()
    # the kubeconfig's own user is in system:masters: RBAC does not apply to it
    assert kube_api.delete_object("secrets", NS, "s") is True


def test_fail_nth_request_with_500_is_one_shot(kube_api, core):
    core.create_namespaced_secret(NS, secret("x", {"a": "1"}))
    h = kube_api.fail(method="PUT", resource="secrets", nth=2, status=500)
    core.replace_namespaced_secret("x", NS, secret("x", {"a": "2"}))  # 1st PUT passes
    with pytest.raises(ApiException) as ei:
        core.replace_namespaced_secret("x", NS, secret("x", {"a": "3"}))
    code, body = err(ei)
    assert code == 500 and body["reason"] == "InternalError" and body["status"] == "Failure"
    assert h.fired == 1
    assert kube_api.get_object("secrets", NS, "x")["data"] == {"a": b64("2")}  # nothing applied
    core.replace_namespaced_secret("x", NS, secret("x", {"a": "4"}))  # one-shot
    assert kube_api.get_object("secrets", NS, "x")["data"] == {"a": b64("4")}


def test_fail_410_429_503_answer_as_the_real_layers_do(kube_api, api, core):
    for i in range(3):
        kube_api.put_object(secret(f"s{i}", {"k": "v"}) | {"metadata": {"name": f"s{i}", "namespace": NS}})
    kube_api.fail("GET", "secrets", status=410, query="continue")
    first = json.loads(core.list_namespaced_secret(NS, limit=1, _preload_content=False).data)
    assert first["metadata"]["continue"]  # the first page has no continue token: not hit
    with pytest.raises(ApiException) as ei:
        core.list_namespaced_secret(NS, limit=1, _continue=first["metadata"]["continue"])
    code, body = err(ei)
    assert (code, body["reason"], body["status"]) == (410, "Expired", "Failure")
    assert body["message"].startswith("The provided continue parameter is too old to display a consistent list "
                                      "result. You can start a new list without the continue parameter, or use "
                                      "the continue token in this response")
    assert "details" not in body  # NewResourceExpired sets none
    token = json.loads(base64.urlsafe_b64decode(body["metadata"]["continue"] + "=="))
    assert token["rv"] == -1 and token["start"] == f"{NS}/s0\x00"  # carry on at the latest revision
    headers = {}
    api.update_params_for_auth(headers, [], ["BearerToken"], None, None, None)

    def get():  # retries=False: urllib3 itself would wait out a 429/503 Retry-After and resend a GET
        return api.rest_client.pool_manager.request("GET", f"{kube_api.url}/api/v1/namespaces/{NS}/secrets",
                                                    headers=headers, retries=False)

    kube_api.fail("GET", "secrets", status=429, retry_after=2)
    r = get()
    assert (r.status, r.headers["Retry-After"], r.headers["Content-Type"]) == (429, "2", "text/plain; charset=utf-8")
    assert r.data == b"Too many requests, please try again later.\n"  # APF's http.Error, not a Status
    kube_api.fail("GET", "secrets", status=503, retry_after=1)
    r = get()
    assert (r.status, r.headers["Retry-After"]) == (503, "1")
    assert json.loads(r.data) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": "the server is currently unable to handle the request",
                                  "reason": "ServiceUnavailable", "details": {"retryAfterSeconds": 1}, "code": 503}
    assert [c["code"] for c in kube_api.calls("GET", "secrets")] == [200, 410, 429, 503]


def test_fail_drop_closes_connection_without_response(kube_api, core):
    kube_api.fail(method="POST", resource="secrets", status="drop")
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.create_namespaced_secret(NS, secret("x"))
    assert kube_api.get_object("secrets", NS, "x") is None
    core.create_namespaced_secret(NS, secret("x"))  # next one is served


def test_fail_drop_after_applies_then_loses_the_response(kube_api, core):
    s = core.create_namespaced_secret(NS, secret("x", {"a": "1"}))
    kube_api.fail(method="PUT", resource="secrets", name="x", status="drop-after")
    s.data = {"a": b64("2")}
    # urllib3 retries the idempotent PUT on the dropped connection; the retry carries the
    # now-stale resourceVersion, exactly what a client sees when a response is lost.
    with pytest.raises(ApiException) as ei:
        core.replace_namespaced_secret("x", NS, s)
    assert err(ei)[1]["reason"] == "Conflict"
    assert kube_api.get_object("secrets", NS, "x")["data"] == {"a": b64("2")}
    assert [m for m, p, q in kube_api.requests if p.endswith("/secrets/x")] == ["PUT", "PUT"]


def test_requests_are_recorded(kube_api, core):
    core.create_namespaced_secret(NS, secret("x"))
    core.read_namespaced_secret("x", NS)
    core.list_namespaced_secret(NS, limit=5)
    assert kube_api.requests == [
        ("POST", f"/api/v1/namespaces/{NS}/secrets", ""),
        ("GET", f"/api/v1/namespaces/{NS}/secrets/x", ""),
        ("GET", f"/api/v1/namespaces/{NS}/secrets", "limit=5"),
    ]
    assert [c["verb"] for c in kube_api.calls(resource="secrets")] == ["create", "get", "list"]


def test_put_object_and_get_object(kube_api):
    out = kube_api.put_object(deployment("gw"))
    assert out["metadata"]["generation"] == 1 and out["metadata"]["resourceVersion"].isdigit()
    got = kube_api.get_object("deployments", NS, "gw")
    assert got["kind"] == "Deployment" and got["apiVersion"] == "apps/v1"
    got["spec"]["replicas"] = 7  # a copy
    assert kube_api.get_object("deployments", NS, "gw")["spec"]["replicas"] == 1
    kube_api.put_object(secret("s", {"a": "1"}, namespace="brand-new"))  # namespace auto-created
    assert kube_api.get_object("namespaces", None, "brand-new")["status"]["phase"] == "Active"
    assert kube_api.get_object("secrets", "brand-new", "s")["type"] == "Opaque"


# =========================================================================== kubectl
@pytest.fixture(scope="module")
def kserver(tmp_path_factory):
    srv = KubeApiServer().start()
    srv.cache_dir = str(tmp_path_factory.mktemp("kubectl-cache"))
    yield srv
    srv.stop()


def kubectl(srv, *args, input=None, check=True):
    r = subprocess.run([KUBECTL, "--kubeconfig", srv.kubeconfig_path, "--cache-dir", srv.cache_dir, *args],
                       capture_output=True, text=True, input=input, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


pytestmark_kubectl = pytest.mark.skipif(not os.path.exists(KUBECTL), reason="kubectl not installed")


@pytestmark_kubectl
def test_kubectl_create_get_delete_secrets(kserver, tmp_path):
    from tests.kubeapi.tls import material

    assert kubectl(kserver, "create", "secret", "generic", "gen", "-n", NS,
                   "--from-literal=user=admin").stdout.strip() == "secret/gen created"
    (tmp_path / "tls.crt").write_bytes(material().cert_pem)
    (tmp_path / "tls.key").write_bytes(material().key_pem)
    kubectl(kserver, "create", "secret", "tls", "kim-credential", "-n", NS,
            "--cert", str(tmp_path / "tls.crt"), "--key", str(tmp_path / "tls.key"))
    obj = json.loads(kubectl(kserver, "get", "secret", "kim-credential", "-n", NS, "-o", "json").stdout)
    assert obj["type"] == "kubernetes.io/tls" and set(obj["data"]) == {"tls.crt", "tls.key"}
    assert base64.b64decode(obj["data"]["tls.crt"]) == material().cert_pem
    table = kubectl(kserver, "get", "secrets", "-n", NS).stdout.splitlines()
    assert re.split(r"\s+", table[0].strip()) == ["NAME", "TYPE", "DATA", "AGE"]
    assert [re.split(r"\s+", line)[:3] for line in table[1:]] == [
        ["gen", "Opaque", "1"], ["kim-credential", "kubernetes.io/tls", "2"]]
    r = kubectl(kserver, "create", "secret", "generic", "gen", "-n", NS, "--from-literal=a=b", check=False)
    assert r.returncode == 1 and 'secrets "gen" already exists' in r.stderr
    assert kubectl(kserver, "delete", "secret", "gen", "-n", NS).stdout.strip() == 'secret "gen" deleted'
    r = kubectl(kserver, "get", "secret", "gen", "-n", NS, check=False)
    assert r.returncode == 1 and 'Error from server (NotFound): secrets "gen" not found' in r.stderr


@pytestmark_kubectl
def test_kubectl_apply_and_patch(kserver, tmp_path):
    manifest = tmp_path / "m.yaml"
    docs = [deployment("ingress"), gateway("gw"),
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": NS},
             "data": {"k": "v"}}]
    manifest.write_text(yaml.safe_dump_all(docs))
    out = kubectl(kserver, "apply", "-f", str(manifest)).stdout.splitlines()
    assert out == ["deployment.apps/ingress created", "gateway.networking.istio.io/gw created",
                   "configmap/cfg created"]
    out = kubectl(kserver, "apply", "-f", str(manifest)).stdout.splitlines()
    assert out == ["deployment.apps/ingress unchanged", "gateway.networking.istio.io/gw unchanged",
                   "configmap/cfg unchanged"]
    docs[0]["spec"]["template"]["spec"]["containers"][0]["image"] = "istio/proxyv2:1.23.0"
    manifest.write_text(yaml.safe_dump_all(docs))
    assert "deployment.apps/ingress configured" in kubectl(kserver, "apply", "-f", str(manifest)).stdout
    d = kserver.get_object("deployments", NS, "ingress")
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "istio/proxyv2:1.23.0"
    assert d["metadata"]["generation"] == 2

    kubectl(kserver, "patch", "deploy", "ingress", "-n", NS, "--type=json", "-p",
            json.dumps([{"op": "replace", "path": "/spec/template/spec/volumes/0/secret/secretName",
                         "value": "kim-credential-2"}]))
    kubectl(kserver, "patch", "deploy", "ingress", "-n", NS, "--type=strategic", "-p",
            json.dumps({"spec": {"template": {"spec": {"containers": [
                {"name": "istio-proxy", "env": [{"name": "A", "value": "10"}]}]}}}}))
    d = kserver.get_object("deployments", NS, "ingress")
    spec = d["spec"]["template"]["spec"]
    assert spec["volumes"][0]["secret"]["secretName"] == "kim-credential-2"
    assert spec["containers"][0]["env"] == [{"name": "A", "value": "10"}, {"name": "B", "value": "2"}]
    assert d["metadata"]["generation"] == 4
    r = kubectl(kserver, "patch", "deploy", "ingress", "-n", NS, "--type=json", "-p",
                '[{"op":"test","path":"/spec/replicas","value":9}]', check=False)
    assert r.returncode == 1
    assert "the server rejected our request due to an error in our request" in r.stderr


@pytestmark_kubectl
def test_kubectl_reports_validation_errors(kserver):
    bad = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": "bad", "namespace": NS}, "data": {"tls.crt": b64("c")}}
    r = kubectl(kserver, "create", "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode == 1
    assert 'The Secret "bad" is invalid: data[tls.key]: Required value' in r.stderr
