"""Options of ``gateway render``, ``apply``, ``mount``/``unmount`` and ``serve`` that the
walk-through tests leave at their defaults: each checked by what it changes."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys

import pytest
import yaml

from tests.conftest import assert_one_line_error
from tests.kubeapi.fixtures import *  # noqa: F401,F403
from tests.tlspeers import free_port

NS = "istio-system"


def render(kimpki, *args) -> list[dict]:
    out = kimpki.ok("gateway", "render", "--host", "kim.example.com", "--credential", "kim-credential", *args).out
    return list(yaml.safe_load_all(out)) if not out.lstrip().startswith("{") else [json.loads(out)]


# -- render -----------------------------------------------------------------------------------------

def test_render_routes_to_a_service_in_its_namespace_or_prints_the_gateway_alone(kimpki):
    gw, vs = render(kimpki, "--namespace", "edge", "--to-service", "productpage:9080",
                    "--service-namespace", "bookinfo")
    assert gw["metadata"]["namespace"] == vs["metadata"]["namespace"] == "edge"
    route = vs["spec"]["http"][0]["route"][0]["destination"]
    assert route == {"host": "productpage.bookinfo.svc.cluster.local", "port": {"number": 9080}}
    (only,) = render(kimpki, "--no-virtual-service", "--output", "json")
    assert only["kind"] == "Gateway" and only["metadata"]["name"] == "kim-gateway"


def run_render_without_jsonschema(kimpki, *args):
    """``gateway render`` in a Python where jsonschema cannot be imported."""
    code = ("import sys, runpy\nsys.modules['jsonschema'] = None\n"
            f"sys.argv = ['kimpki', 'gateway', 'render', '--host', 'a.com', '--credential', 'x', *{list(args)!r}]\n"
            "runpy.run_module('kimpki', run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=kimpki.env,
                          cwd=kimpki.cwd)


def test_render_no_validate_does_not_reach_for_the_schema(kimpki):
    checked = run_render_without_jsonschema(kimpki)
    assert checked.returncode == 0 and "schema validation skipped" in checked.stderr
    skipped = run_render_without_jsonschema(kimpki, "--no-validate")
    assert skipped.returncode == 0 and skipped.stderr == "", skipped.stderr
    assert skipped.stdout == checked.stdout


def test_file_mounted_mutual_ca_file_name_agrees_between_secret_and_gateway(kimpki):
    """--ca-file-name: the key of the CA file in istio-ingressgateway-ca-certs, and the path the Gateway reads."""
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("issue", "kim.example.com")
    out = json.loads(kimpki.ok("secret", "create", "--file-mounted", "--cert", "kim.example.com", "--mutual",
                               "--ca-file-name", "root.crt", "--dry-run", "--output", "json").out)
    secrets = {o["metadata"]["name"]: o for o in out["items"]}
    assert list(secrets["istio-ingressgateway-ca-certs"]["data"]) == ["root.crt"]
    gw, _ = yaml.safe_load_all(kimpki.ok("gateway", "render", "--host", "kim.example.com", "--file-mounted",
                                         "--mode", "MUTUAL", "--ca-file-name", "root.crt", "-o", "yaml").out)
    assert gw["spec"]["servers"][0]["tls"]["caCertificates"] == "/etc/istio/ingressgateway-ca-certs/root.crt"


# -- apply ------------------------------------------------------------------------------------------

def test_apply_no_validate_leaves_the_checks_to_the_api_server(kimpki, kube_env):
    gw, _ = render(kimpki, "--name", "kim-gateway")
    gw["spec"]["servers"][0]["port"]["number"] = 0  # Istio refuses port 0
    del gw["metadata"]["namespace"]
    bad = kimpki.cwd / "bad.yaml"
    bad.write_text(yaml.safe_dump(gw))
    env = {"KUBECONFIG": kube_env.kubeconfig_path}
    assert_one_line_error(kimpki("gateway", "apply", "--filename", bad, "--validate", env=env), 2, "port number")
    assert kube_env.calls(resource="gateways") == []
    kimpki("gateway", "apply", "--filename", bad, "--no-validate", "-n", NS, env=env)
    assert [c["method"] for c in kube_env.calls(resource="gateways")][-1:] in (["POST"], ["PUT"])


def test_apply_namespace_fills_in_objects_without_one(kimpki, kube_env):
    gw, vs = render(kimpki)
    for o in (gw, vs):
        del o["metadata"]["namespace"]
    (kimpki.cwd / "gw.yaml").write_text(yaml.safe_dump_all([gw, vs]))
    d = kimpki.json("gateway", "apply", "-f", kimpki.cwd / "gw.yaml", "--namespace", "default",
                    env={"KUBECONFIG": kube_env.kubeconfig_path})
    assert [(o["kind"], o["namespace"]) for o in d["objects"]] == [("Gateway", "default"), ("VirtualService", "default")]
    assert kube_env.get_object("gateways", "default", "kim-gateway") is not None


# -- mount / unmount on a local file ------------------------------------------------------------------

def deployment() -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "edge-gateway", "namespace": "edge"},
            "spec": {"selector": {"matchLabels": {"app": "edge"}},
                     "template": {"metadata": {"labels": {"app": "edge"}},
                                  "spec": {"containers": [{"name": "sidecar", "image": "busybox"},
                                                          {"name": "proxy", "image": "istio/proxyv2"}]}}}}


def test_mount_and_unmount_a_local_file_by_deployment_container_and_volume_name(kimpki):
    original = kimpki.cwd / "deploy.yaml"
    original.write_text(yaml.safe_dump(deployment()))
    where = ["--deployment", "edge-gateway", "--container", "proxy", "-n", "edge", "--local"]
    path = "/etc/istio/bookinfo-certs"
    mounted = json.loads(kimpki.ok("gateway", "mount", "--secret", "bookinfo-certs", "--mount-path", path,
                                   "--volume-name", "bookinfo-tls", *where, "--filename", original,
                                   "--output", "json").out)
    spec = mounted["spec"]["template"]["spec"]
    assert spec["volumes"] == [{"name": "bookinfo-tls", "secret": {"secretName": "bookinfo-certs", "optional": True}}]
    assert "volumeMounts" not in spec["containers"][0]
    assert spec["containers"][1]["volumeMounts"] == [{"name": "bookinfo-tls", "mountPath": path, "readOnly": True}]
    patched = kimpki.cwd / "patched.json"
    patched.write_text(json.dumps(mounted))

    ops = json.loads(kimpki.ok("gateway", "unmount", "--mount-path", path, *where, "--filename", patched,
                               "--dry-run").out)
    assert {op["op"] for op in ops} >= {"remove"}
    back = kimpki.ok("gateway", "unmount", "--mount-path", path, *where, "--filename", patched,
                     "--output", "yaml").out
    spec = yaml.safe_load(back)["spec"]["template"]["spec"]
    assert not spec["volumes"] and not spec["containers"][1]["volumeMounts"]
    assert [c["name"] for c in spec["containers"]] == ["sidecar", "proxy"]


# -- serve --------------------------------------------------------------------------------------------

def test_serve_maps_a_second_gateway_port_on_the_address_given(kimpki):
    kimpki.ok("ca", "init", "example.com")
    ca = kimpki.json("issue", "kim.example.com")["ca"]
    folder = kimpki.cwd / "manifests"
    folder.mkdir()
    (folder / "secret.yaml").write_text(kimpki.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
                                                  "--dry-run", "-o", "yaml").out)
    (gw,) = render(kimpki, "--no-virtual-service")  # one server on port 443 ...
    extra = json.loads(json.dumps(gw["spec"]["servers"][0]))
    extra["port"] = {"number": 9443, "name": "https-9443", "protocol": "HTTPS"}  # ... and one on 9443
    gw["spec"]["servers"].append(extra)
    gw["spec"]["servers"][0]["port"]["name"] = "https-443"
    (folder / "gateway.yaml").write_text(yaml.safe_dump(gw))

    address = "127.0.0.2"
    mapped, admin = free_port(address), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kimpki", "gateway", "serve", "--filename", folder, "--port", "0",
                             "--map", f"9443:{mapped}", "--address", address, "--admin-port", str(admin)],
                            cwd=kimpki.cwd, env=kimpki.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        serving = [proc.stdout.readline() for _ in range(2)]
        while "ready in" not in (line := proc.stderr.readline()):
            assert line, "gateway serve ended before it was ready:\n" + "".join(serving) + proc.stderr.read()
        assert any(line.endswith(f" on https://{address}:{mapped}\n") for line in serving), serving
        assert f"admin http://127.0.0.1:{admin}" in line, line  # --admin-port: Envoy's admin listener
        # The mapped port answers on --address with the credential's certificate ...
        ctx = ssl.create_default_context(cafile=ca)
        with socket.create_connection((address, mapped), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="kim.example.com") as tls:
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: kim.example.com\r\nConnection: close\r\n\r\n")
            assert tls.recv(100).startswith(b"HTTP/1.1 200")
        # ... and nothing listens on the same port of 127.0.0.1.
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", mapped), timeout=5):
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
