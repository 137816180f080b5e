"""kimpki.kube against real peers: the stand-in API server over HTTPS (tests/kubeapi), the real
``kubernetes`` client underneath, the real ``kubectl`` to look at what was written."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.conftest import wait_until
from tests.kubeapi.fixtures import *  # noqa: F401,F403  (kube_api, kube_env, kube_client)

from kimpki.errors import NotFoundError, OperationError
from kimpki.istio import contract as c
from kimpki.kube import Cluster, UpsertResult
from kimpki.kube import errors as kerr

NS = "istio-system"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def secret(name="kim-credential", ns=NS, cert="CERT-1", key="KEY-1", type_="Opaque", labels=None, **extra) -> dict:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE} if labels is None else labels,
                         **extra},
            "type": type_, "data": {"cert": b64(cert), "key": b64(key)}}


def writes(srv) -> list:
    return [r for r in srv.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]


def one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text and text.strip() == text and text, repr(text)
    assert "Traceback" not in text and "HTTPResponse" not in text and "urllib3" not in text, text
    return text


@pytest.fixture
def cluster(kube_api):
    cl = Cluster.connect(kubeconfig=kube_api.kubeconfig_path)
    yield cl
    cl.close()


def kubeconfig_variant(srv, tmp_path, name="kubeconfig", *, token=None, server=None, drop_ca=False) -> str:
    cfg = yaml.safe_load(Path(srv.kubeconfig_path).read_text())
    if token is not None:
        cfg["users"][0]["user"]["token"] = token
    if server is not None:
        cfg["clusters"][0]["cluster"]["server"] = server
    if drop_ca:
        del cfg["clusters"][0]["cluster"]["certificate-authority-data"]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- start-up cost
def test_importing_kimpki_kube_does_not_import_kubernetes():
    code = ("import sys, kimpki.kube\n"
            "from kimpki.kube import Cluster, UpsertResult\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3', 'yaml', 'logging'))\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-c", "import kimpki.kube, sys; assert 'kubernetes' not in sys.modules"])
    assert r.returncode == 0


# --------------------------------------------------------------------------- upsert_secret
def test_upsert_creates_then_unchanged_then_updates_in_place(cluster, kube_api):
    r1 = cluster.upsert_secret(secret())
    assert isinstance(r1, UpsertResult) and r1.action == "created" and r1.previous is None
    assert r1.object["metadata"]["labels"][c.MANAGED_BY_LABEL] == "kimpki"
    assert r1.object["data"]["cert"] == b64("CERT-1")  # base64 string, API shape
    assert r1.object["kind"] == "Secret" and r1.object["apiVersion"] == "v1"
    uid, rv1 = r1.object["metadata"]["uid"], r1.object["metadata"]["resourceVersion"]

    kube_api.clear_requests()
    r2 = cluster.upsert_secret(secret())
    assert r2.action == "unchanged" and not r2.changed
    assert [r.method for r in kube_api.requests] == ["GET"]  # no PUT at all
    assert r2.object["metadata"]["resourceVersion"] == rv1

    kube_api.clear_requests()
    r3 = cluster.upsert_secret(secret(cert="CERT-2"))
    assert r3.action == "updated"
    assert [r.method for r in kube_api.requests] == ["GET", "PUT"]  # in place: no DELETE, no POST
    assert r3.object["metadata"]["uid"] == uid
    assert r3.object["metadata"]["resourceVersion"] != rv1
    assert r3.previous["data"]["cert"] == b64("CERT-1")
    stored = kube_api.get_object("secrets", NS, "kim-credential")
    assert stored["data"]["cert"] == b64("CERT-2") and stored["metadata"]["uid"] == uid


def test_upsert_adds_the_managed_by_label_and_accepts_string_data(cluster, kube_api):
    s = secret(labels={})
    s.pop("data")
    s["stringData"] = {"cert": "PEM", "key": "KEY"}
    r = cluster.upsert_secret(s)
    assert r.action == "created"
    stored = kube_api.get_object("secrets", NS, "kim-credential")
    assert stored["metadata"]["labels"] == {c.MANAGED_BY_LABEL: c.MANAGED_BY_VALUE}
    assert stored["data"] == {"cert": b64("PEM"), "key": b64("KEY")}
    # the same content given as base64 data is "unchanged"
    assert cluster.upsert_secret(secret(cert="PEM", key="KEY")).action == "unchanged"


def test_kubectl_sees_what_upsert_wrote(cluster, kube_env, tmp_path):
    cluster.upsert_secret(secret(annotations={"kimpki.io/serial": "abc"}))
    env = {**os.environ, "KUBECACHEDIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    r = subprocess.run([KUBECTL, "--kubeconfig", kube_env.kubeconfig_path, "get", "secrets", "-n", NS, "-o", "json"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    items = {i["metadata"]["name"]: i for i in json.loads(r.stdout)["items"]}
    got = items["kim-credential"]
    assert base64.b64decode(got["data"]["cert"]) == b"CERT-1"
    assert got["metadata"]["labels"][c.MANAGED_BY_LABEL] == "kimpki"
    assert got["metadata"]["annotations"]["kimpki.io/serial"] == "abc"
    r = subprocess.run([KUBECTL, "--kubeconfig", kube_env.kubeconfig_path, "get", "secrets", "-n", NS],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "kim-credential" in r.stdout and "Opaque" in r.stdout, r.stdout + r.stderr


def test_conflict_between_read_and_write_is_retried_with_a_fresh_read(cluster, kube_api):
    cluster.upsert_secret(secret())
    real_get = cluster.get
    bumped = []

    def get_then_someone_writes(kind, ns, name, **kw):
        obj = real_get(kind, ns, name, **kw)
        if kind == "Secret" and not bumped:  # another writer lands between our GET and our PUT
            other = kube_api.get_object("secrets", ns, name)
            other["metadata"].setdefault("annotations", {})["other-writer"] = "was here"
            kube_api.put_object(other)
            bumped.append(other["metadata"]["resourceVersion"])
        return obj

    cluster.get = get_then_someone_writes
    kube_api.clear_requests()
    r = cluster.upsert_secret(secret(cert="CERT-2"))
    assert r.action == "updated" and r.attempts == 2
    puts = kube_api.calls("PUT", "secrets")
    assert [p["code"] for p in puts] == [409, 200]  # the stand-in's real optimistic-lock conflict
    stored = kube_api.get_object("secrets", NS, "kim-credential")
    assert stored["data"]["cert"] == b64("CERT-2")
    assert stored["metadata"]["annotations"]["other-writer"] == "was here"  # re-read: their change kept


def test_conflict_from_a_concurrent_writer_during_the_put(cluster, kube_api):
    """A real race: the PUT is held by the stand-in (a "delay" fault) while another client
    writes the Secret; the held PUT then meets a genuine 409 and kimpki re-reads and retries."""
    cluster.upsert_secret(secret())
    # The other writer must land while the PUT is held: a hold long enough for a loaded machine.
    fault = kube_api.fail("PUT", "secrets", status="delay", delay=3)

    def other_writer():
        wait_until(lambda: fault.fired, "the PUT to reach the stand-in", interval=0.005)
        other = kube_api.get_object("secrets", NS, "kim-credential")
        other["metadata"]["labels"]["team"] = "payments"
        kube_api.put_object(other)

    t = threading.Thread(target=other_writer)
    t.start()
    r = cluster.upsert_secret(secret(cert="CERT-2"))
    t.join()
    assert r.action == "updated" and r.attempts == 2
    assert [p["code"] for p in kube_api.calls("PUT", "secrets")] == [409, 200]
    stored = kube_api.get_object("secrets", NS, "kim-credential")
    assert stored["data"]["cert"] == b64("CERT-2") and stored["metadata"]["labels"]["team"] == "payments"


def test_conflict_retries_are_bounded(cluster, kube_api):
    cluster.upsert_secret(secret())
    real_get = cluster.get

    def always_raced(kind, ns, name, **kw):
        obj = real_get(kind, ns, name, **kw)
        kube_api.put_object(kube_api.get_object("secrets", ns, name))  # bumps resourceVersion
        return obj

    cluster.get = always_raced
    with pytest.raises(kerr.Conflict) as ei:
        cluster.upsert_secret(secret(cert="CERT-2"), retries=3)
    msg = one_line(ei.value)
    assert "gave up after 4 attempts" in msg and "istio-system/kim-credential" in msg
    assert len(kube_api.calls("PUT", "secrets")) == 4


def test_unmanaged_secret_is_refused_unless_forced(cluster, kube_api):
    kube_api.put_object(secret(labels={}, cert="THEIRS"))
    uid = kube_api.get_object("secrets", NS, "kim-credential")["metadata"]["uid"]
    kube_api.clear_requests()
    with pytest.raises(kerr.Unmanaged) as ei:
        cluster.upsert_secret(secret())
    msg = one_line(ei.value)
    assert "Secret istio-system/kim-credential" in msg and "--force" in msg and c.MANAGED_BY_LABEL in msg
    assert isinstance(ei.value, OperationError)
    assert writes(kube_api) == []
    r = cluster.upsert_secret(secret(), force=True)
    assert r.action == "updated" and r.object["metadata"]["uid"] == uid
    assert r.object["metadata"]["labels"][c.MANAGED_BY_LABEL] == "kimpki"  # managed from now on
    assert cluster.upsert_secret(secret()).action == "unchanged"


def test_dry_run_persists_nothing(cluster, kube_api):
    r = cluster.upsert_secret(secret(), dry_run=True)
    assert r.action == "created" and r.object["metadata"]["name"] == "kim-credential"
    assert kube_api.get_object("secrets", NS, "kim-credential") is None
    assert any(req.method == "POST" and "dryRun=All" in req.query for req in kube_api.requests)

    cluster.upsert_secret(secret())
    before = kube_api.get_object("secrets", NS, "kim-credential")
    r = cluster.upsert_secret(secret(cert="CERT-2"), dry_run=True)
    assert r.action == "updated" and r.object["data"]["cert"] == b64("CERT-2")
    assert kube_api.get_object("secrets", NS, "kim-credential") == before


def test_secret_type_cannot_change_in_place(cluster, kube_api):
    tls = secret(type_="kubernetes.io/tls")
    tls["data"] = {"tls.crt": b64("C"), "tls.key": b64("K")}
    cluster.upsert_secret(tls)
    kube_api.clear_requests()
    with pytest.raises(kerr.ImmutableSecretType) as ei:
        cluster.upsert_secret(secret())  # Opaque now
    msg = one_line(ei.value)
    assert "type can't change in place" in msg and "--format tls" in msg
    assert writes(kube_api) == []
    # and when the PUT does reach the API server, its 422 reads the same way
    current = cluster.get("Secret", NS, "kim-credential")
    current["type"] = "Opaque"
    with pytest.raises(kerr.ImmutableSecretType) as ei:
        cluster.replace(current)
    msg = one_line(ei.value)
    assert "type can't change in place" in msg and "field is immutable" in msg and "--format" in msg
    assert ei.value.code == 422


def test_injected_500_leaves_the_old_secret_intact(cluster, kube_api):
    cluster.upsert_secret(secret())
    before = kube_api.get_object("secrets", NS, "kim-credential")
    kube_api.fail("PUT", "secrets", status=500)
    with pytest.raises(kerr.ServerError) as ei:
        cluster.upsert_secret(secret(cert="CERT-2"))
    msg = one_line(ei.value)
    assert "500" in msg and "injected fault" in msg and 'secrets "kim-credential"' in msg
    assert kube_api.get_object("secrets", NS, "kim-credential") == before


def test_dropped_connection_is_one_line_and_not_retried(cluster, kube_api):
    cluster.upsert_secret(secret())
    kube_api.fail("PUT", "secrets", status="drop")
    kube_api.clear_requests()
    with pytest.raises(kerr.ConnectionLost) as ei:
        cluster.upsert_secret(secret(cert="CERT-2"))
    msg = one_line(ei.value)
    assert "closed before it answered update secrets" in msg and "may or may not have been applied" in msg
    assert [r.method for r in kube_api.requests] == ["GET", "PUT"]  # the client did not resend the PUT


def test_forbidden_names_verb_resource_namespace_and_rule(cluster, kube_api):
    cluster.upsert_secret(secret())
    kube_api.deny("update", "secrets", user="system:serviceaccount:kimpki:renewer")
    with pytest.raises(kerr.Forbidden) as ei:
        cluster.upsert_secret(secret(cert="CERT-2"))
    assert one_line(ei.value) == (
        'forbidden: User "system:serviceaccount:kimpki:renewer" cannot update secrets in namespace '
        '"istio-system"; the Role needs: apiGroups [""], resources ["secrets"], verbs ["update"]')
    assert ei.value.rule["verbs"] == ["update"]
    kube_api.clear_faults()
    kube_api.deny("list", "gateways")
    with pytest.raises(kerr.Forbidden) as ei:
        list(cluster.list("Gateway", None))
    assert one_line(ei.value) == (
        'forbidden: User "kubernetes-admin" cannot list gateways at the cluster scope; the ClusterRole needs: '
        'apiGroups ["networking.istio.io"], resources ["gateways"], verbs ["list"]')


def test_missing_namespace_is_one_line(cluster, kube_api):
    assert cluster.get("Secret", "nope", "kim-credential") is None
    with pytest.raises(kerr.NamespaceNotFound) as ei:
        cluster.upsert_secret(secret(ns="nope"))
    assert one_line(ei.value) == 'namespace "nope" not found'
    assert isinstance(ei.value, NotFoundError)


def test_stopped_server_is_unreachable(kube_api):
    cl = Cluster.connect(kubeconfig=kube_api.kubeconfig_path)
    server = cl.server
    kube_api.stop()
    with pytest.raises(kerr.Unreachable) as ei:
        cl.get("Secret", NS, "kim-credential")
    assert one_line(ei.value) == f"cannot reach the Kubernetes API at {server}: connection refused"


def test_closed_port_and_unknown_host_and_untrusted_tls(kube_api, tmp_path):
    port = free_port()
    cl = Cluster.connect(kubeconfig=kubeconfig_variant(kube_api, tmp_path, server=f"https://127.0.0.1:{port}"))
    with pytest.raises(kerr.Unreachable) as ei:
        cl.upsert_secret(secret())
    assert one_line(ei.value) == f"cannot reach the Kubernetes API at https://127.0.0.1:{port}: connection refused"

    cl = Cluster.connect(kubeconfig=kubeconfig_variant(kube_api, tmp_path, "k2", server="https://kube.invalid:6443"))
    with pytest.raises(kerr.Unreachable) as ei:
        cl.get("Secret", NS, "x")
    assert "host name kube.invalid not found" in one_line(ei.value)

    cl = Cluster.connect(kubeconfig=kubeconfig_variant(kube_api, tmp_path, "k3", drop_ca=True))
    with pytest.raises(kerr.Unreachable) as ei:
        cl.get("Secret", NS, "x")
    assert "TLS handshake failed (certificate verify failed" in one_line(ei.value)


def test_wrong_token_is_401(kube_api, tmp_path):
    cl = Cluster.connect(kubeconfig=kubeconfig_variant(kube_api, tmp_path, token="not-the-token"))
    with pytest.raises(kerr.Unauthorized) as ei:
        cl.get("Secret", NS, "kim-credential")
    assert one_line(ei.value) == ("the Kubernetes API rejected the credentials (401 Unauthorized): "
                                  "check --kubeconfig/--context")


def test_slow_answer_times_out(kube_api):
    cl = Cluster.connect(kubeconfig=kube_api.kubeconfig_path, timeout=0.3)
    # The answer would come after a minute, and then be a success: Timeout proves the client gave up first.
    kube_api.fail("GET", "secrets", status="delay", delay=60)
    with pytest.raises(kerr.Timeout) as ei:
        cl.get("Secret", NS, "kim-credential")
    assert "did not answer get secrets \"kim-credential\" in namespace \"istio-system\" within 0.3 s" \
        in one_line(ei.value)


def test_timeout_comes_from_the_environment(kube_api, monkeypatch):
    monkeypatch.setenv("KIMPKI_KUBE_TIMEOUT", "2.5")
    assert Cluster.connect(kubeconfig=kube_api.kubeconfig_path).timeout == 2.5
    monkeypatch.setenv("KIMPKI_KUBE_TIMEOUT", "soon")
    with pytest.raises(kerr.ConfigError):
        Cluster.connect(kubeconfig=kube_api.kubeconfig_path)


# --------------------------------------------------------------------------- configuration
def test_no_configuration_anywhere(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(kerr.ConfigError) as ei:
        Cluster.connect()
    assert one_line(ei.value) == "no Kubernetes configuration found: give --kubeconfig or set KUBECONFIG"
    with pytest.raises(kerr.ConfigError) as ei:
        Cluster.connect(kubeconfig=str(tmp_path / "nope"))
    assert one_line(ei.value) == f"kubeconfig file {tmp_path / 'nope'} not found"


def test_kubeconfig_from_environment_and_unknown_context(kube_env):
    cl = Cluster.connect()  # $KUBECONFIG
    assert cl.server == kube_env.url and cl.get("Namespace", None, NS)["metadata"]["name"] == NS
    with pytest.raises(kerr.ConfigError) as ei:
        Cluster.connect(context="prod")
    assert one_line(ei.value).startswith("context 'prod' not found in kubeconfig ")


def test_in_cluster_service_account(kube_api, monkeypatch, tmp_path):
    from kubernetes.config import incluster_config

    token = tmp_path / "token"
    token.write_text(kube_api.token)
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", kube_api.ca_path)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube_api.port))
    cl = Cluster.connect()
    assert cl.source == "in-cluster service account"
    assert cl.upsert_secret(secret()).action == "created"


def test_an_exec_plugin_token_that_expired_is_fetched_again_for_every_request(kube_api, tmp_path):
    """kimpki sends its requests straight to the client's connection pool, but through the
    client's auth: the configuration's refresh hook runs the exec plugin again once its token
    has expired (here: at once), so a token the plugin starts handing out is the one sent."""
    token_file, runs = tmp_path / "token", tmp_path / "runs"
    token_file.write_text(kube_api.token)
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, sys\n"
        "open(sys.argv[2], 'a').write('run\\n')\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1', 'kind': 'ExecCredential',\n"
        "                  'status': {'token': open(sys.argv[1]).read().strip(),\n"
        "                             'expirationTimestamp': '2000-01-01T00:00:00Z'}}))\n")
    cfg = yaml.safe_load(Path(kube_api.kubeconfig_path).read_text())
    cfg["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                        "command": sys.executable,
                                        "args": [str(plugin), str(token_file), str(runs)],
                                        "interactiveMode": "Never"}}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    cl = Cluster.connect(kubeconfig=str(path))
    assert cl.upsert_secret(secret()).action == "created"  # a GET and a POST
    assert cl.get("Secret", NS, "kim-credential") is not None
    assert len(runs.read_text().splitlines()) == 1 + 3  # loading the kubeconfig, then once per request
    token_file.write_text("a-token-the-server-does-not-know")
    with pytest.raises(kerr.Unauthorized):
        cl.get("Secret", NS, "kim-credential")
    token_file.write_text(kube_api.token)
    assert cl.get("Secret", NS, "kim-credential") is not None
    cl.close()


class ConnectProxy:
    """An HTTP proxy that tunnels (CONNECT), as a corporate proxy does for HTTPS; it records
    the CONNECT lines it served."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connects: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return client.close()
            head += chunk
        line = head.split(b"\r\n")[0].decode()
        self.connects.append(line)
        host, port = line.split(" ")[1].rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                dst.close()

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self):
        self.sock.close()


def test_requests_go_through_the_kubeconfig_proxy(kube_api, tmp_path, monkeypatch):
    """kimpki sends through the client's own connection pools: a cluster's proxy-url is honoured."""
    for var in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    proxy = ConnectProxy()
    try:
        cfg = yaml.safe_load(Path(kube_api.kubeconfig_path).read_text())
        cfg["clusters"][0]["cluster"]["proxy-url"] = proxy.url
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(cfg))
        cl = Cluster.connect(kubeconfig=str(path))
        assert cl.upsert_secret(secret()).action == "created"
        assert cl.get("Secret", NS, "kim-credential")["data"]["cert"] == b64("CERT-1")
        cl.close()
        host = cl.server.split("//")[1]
        assert proxy.connects and all(c.startswith(f"CONNECT {host} HTTP/") for c in proxy.connects), proxy.connects
    finally:
        proxy.close()


def test_requests_go_through_the_environment_proxy_for_https(kube_api, monkeypatch):
    """$HTTPS_PROXY is chosen for the server's scheme when the kubeconfig is loaded, and every
    request (each one refreshes the token, which sets the host again) goes through it."""
    for var in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    proxy = ConnectProxy()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    try:
        cl = Cluster.connect(kubeconfig=kube_api.kubeconfig_path)
        assert cl.upsert_secret(secret()).action == "created"
        assert cl.get("Secret", NS, "kim-credential") is not None
        cl.close()
        assert proxy.connects, "the requests did not go through $HTTPS_PROXY"
    finally:
        proxy.close()


# --------------------------------------------------------------------------- list, apply, patch
def test_list_follows_continue_tokens(cluster, kube_api):
    for i in range(1234):
        kube_api.put_object(secret(name=f"s-{i:04d}", labels={"batch": "yes"}))
    kube_api.put_object(secret(name="other", labels={"batch": "no"}))
    kube_api.clear_requests()
    items = list(cluster.list("Secret", NS, label_selector="batch=yes", page_size=500))
    assert len(items) == 1234 and len({i["metadata"]["name"] for i in items}) == 1234
    assert all(i["kind"] == "Secret" and i["apiVersion"] == "v1" for i in items)
    gets = [r for r in kube_api.requests if r.method == "GET"]
    assert len(gets) == 3 and all("limit=500" in r.query and "labelSelector=batch" in r.query for r in gets)
    assert "continue=" not in gets[0].query and all("continue=" in r.query for r in gets[1:])
    assert cluster.requests == 3


def test_apply_gateway_created_unchanged_updated(cluster, kube_api):
    gw = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
          "metadata": {"name": "kim-gateway", "namespace": "default"},
          "spec": {"selector": {"istio": "ingressgateway"},
                   "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                                "tls": {"mode": "SIMPLE", "credentialName": "kim-credential"},
                                "hosts": ["kim.example.com"]}]}}
    r = cluster.apply(gw)
    assert r.action == "created" and r.object["apiVersion"] == "networking.istio.io/v1alpha3"
    kube_api.clear_requests()
    assert cluster.apply(gw).action == "unchanged"
    assert writes(kube_api) == []
    gw["spec"]["servers"][0]["hosts"] = ["kim.example.com", "kim-new.example.com"]
    r = cluster.apply(gw)
    assert r.action == "updated" and r.object["metadata"]["generation"] == 2
    assert cluster.get("Gateway", "default", "kim-gateway")["spec"]["servers"][0]["hosts"][1] == "kim-new.example.com"
    assert cluster.apply(gw, dry_run=True).action == "unchanged"


def test_apply_reports_a_server_side_no_op_as_unchanged(cluster, kube_api):
    # stringData differs from the stored data on the client's side, so apply() PUTs; the server
    # folds it into the same data, finds nothing to change and keeps the resourceVersion.
    cluster.upsert_secret(secret(cert="PEM", key="KEY"))
    again = secret()
    again.pop("data")
    again["stringData"] = {"cert": "PEM", "key": "KEY"}
    kube_api.clear_requests()
    r = cluster.apply(again)
    assert [x.method for x in kube_api.requests] == ["GET", "PUT"]
    assert r.action == "unchanged"
    assert r.object["metadata"]["resourceVersion"] == r.previous["metadata"]["resourceVersion"]


def test_apply_deployment(cluster, kube_api):
    dep = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "istio-ingressgateway", "namespace": NS},
           "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}},
                    "template": {"metadata": {"labels": {"istio": "ingressgateway"}},
                                 "spec": {"containers": [{"name": "istio-proxy", "image": "istio/proxyv2"}]}}}}
    assert cluster.apply(dep).action == "created"
    current = cluster.get("Deployment", NS, "istio-ingressgateway")
    kube_api.clear_requests()
    assert cluster.apply(current).action == "unchanged"  # exactly what the server holds: no write
    assert writes(kube_api) == []
    current["spec"]["replicas"] = 2
    r = cluster.apply(current)
    assert r.action == "updated" and r.object["spec"]["replicas"] == 2


def test_json_patch_and_create_conflict(cluster, kube_api):
    cluster.upsert_secret(secret())
    out = cluster.json_patch("Secret", NS, "kim-credential",
                             [{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}])
    assert out["metadata"]["annotations"] == {"a": "b"}
    patches = [r for r in kube_api.request_log if r["method"] == "PATCH"]
    assert len(patches) == 1
    dry = cluster.json_patch("Secret", NS, "kim-credential",
                             [{"op": "replace", "path": "/metadata/annotations/a", "value": "c"}], dry_run=True)
    assert dry["metadata"]["annotations"] == {"a": "c"}
    assert kube_api.get_object("secrets", NS, "kim-credential")["metadata"]["annotations"] == {"a": "b"}
    with pytest.raises(kerr.Invalid) as ei:
        cluster.json_patch("Secret", NS, "kim-credential", [{"op": "test", "path": "/metadata/annotations/a",
                                                             "value": "zzz"}])
    one_line(ei.value)
    with pytest.raises(kerr.AlreadyExists) as ei:
        cluster.create(secret())
    assert one_line(ei.value) == 'secrets "kim-credential" already exists in namespace "istio-system"'


def test_get_missing_object_and_unserved_version(cluster):
    assert cluster.get("Gateway", NS, "nope") is None
    with pytest.raises(kerr.NotServed) as ei:
        cluster.get("Gateway", NS, "nope", api_version="networking.istio.io/v2")
    assert "does not serve gateways in networking.istio.io/v2" in one_line(ei.value)


# --------------------------------------------------------------------------- API server pushback
@pytest.fixture
def noticed(kube_api):
    """A Cluster whose pushback notices are collected (and whose waits are real but short)."""
    lines: list[str] = []
    cl = Cluster.connect(kubeconfig=kube_api.kubeconfig_path, notice=lines.append)
    cl.lines = lines
    yield cl
    cl.close()


def codes(srv, method="GET", resource="secrets") -> list:
    return [c["code"] for c in srv.calls(method=method, resource=resource)]


def test_an_expired_continue_token_falls_back_to_one_full_list(noticed, kube_api):
    for i in range(1234):
        kube_api.put_object(secret(name=f"s-{i:04d}"))
    kube_api.clear_requests()
    kube_api.fail("GET", "secrets", status=410, query="continue")  # the second page's token expired
    items = list(noticed.list("Secret", NS, page_size=500))
    names = [i["metadata"]["name"] for i in items]
    assert len(names) == 1234 == len(set(names))  # none lost, none handed out twice
    gets = kube_api.calls(method="GET", resource="secrets")
    assert [c["code"] for c in gets] == [200, 410, 200]
    assert "limit=500" in gets[0]["query"] and "continue=" in gets[1]["query"]
    assert "limit=" not in gets[2]["query"] and "continue=" not in gets[2]["query"]  # client-go's full list
    assert len(noticed.lines) == 1 and "410 Expired" in noticed.lines[0] and "after 500 items" in noticed.lines[0]


def test_a_list_that_expires_again_fails_clearly_once(noticed, kube_api):
    for i in range(600):
        kube_api.put_object(secret(name=f"s-{i:04d}"))
    kube_api.clear_requests()
    kube_api.fail("GET", "secrets", status=410, query="continue")
    kube_api.fail("GET", "secrets", status=410, nth=2)  # the fresh full list (the first page is the 1st)
    with pytest.raises(kerr.Expired) as ei:
        list(noticed.list("Secret", NS, page_size=500))
    msg = one_line(ei.value)
    assert "expired the list of secrets" in msg and "and again when it was listed in one request" in msg
    assert "run the command again" in msg
    assert codes(kube_api) == [200, 410, 410]  # one fallback, no more


def test_429_retry_after_is_honoured_for_a_read_and_a_guarded_write(noticed, kube_api):
    noticed.upsert_secret(secret())
    kube_api.clear_requests()
    kube_api.fail("GET", "secrets", status=429, retry_after=1)
    kube_api.fail("PUT", "secrets", status=429, retry_after=1)
    res = noticed.upsert_secret(secret(cert="CERT-2"))
    assert res.action == "updated"
    assert codes(kube_api, "GET") == [429, 200] and codes(kube_api, "PUT") == [429, 200]
    assert len(noticed.lines) == 2
    assert all("answered 429" in l and "retry after 1 s: waiting" in l for l in noticed.lines)
    assert "get secrets" in noticed.lines[0] and "update secrets" in noticed.lines[1]
    # The stand-in answers 429 as APF does: plain text, not a Status.
    assert b64("CERT-2") == kube_api.get_object("secrets", NS, "kim-credential")["data"]["cert"]


@pytest.mark.parametrize("write", ["unguarded PUT", "patch without test"])
def test_an_unguarded_write_is_never_resent(noticed, kube_api, write):
    noticed.upsert_secret(secret())
    kube_api.clear_requests()
    if write == "unguarded PUT":
        kube_api.fail("PUT", "secrets", status=429, retry_after=1)
        obj = secret(cert="CERT-2")  # no resourceVersion: the write would apply whatever is there
        with pytest.raises(kerr.ServerError) as ei:
            noticed.replace(obj)
        method = "PUT"
    else:
        kube_api.fail("PATCH", "secrets", status=429, retry_after=1)
        with pytest.raises(kerr.ServerError) as ei:
            noticed.json_patch("Secret", NS, "kim-credential", [{"op": "add", "path": "/data/x", "value": b64("x")}])
        method = "PATCH"
    msg = one_line(ei.value)
    assert "429 Too Many Requests, Retry-After 1 s" in msg and "not resent" in msg
    assert codes(kube_api, method) == [429] and noticed.lines == []


def test_a_test_guarded_patch_is_resent_after_retry_after(noticed, kube_api):
    noticed.upsert_secret(secret())
    kube_api.clear_requests()
    kube_api.fail("PATCH", "secrets", status=503, retry_after=1)
    ops = [{"op": "test", "path": "/type", "value": "Opaque"}, {"op": "add", "path": "/data/x", "value": b64("x")}]
    noticed.json_patch("Secret", NS, "kim-credential", ops)
    assert codes(kube_api, "PATCH") == [503, 200] and "answered 503" in noticed.lines[0]


def test_retry_after_waits_are_bounded(noticed, kube_api):
    noticed.pushback.max_wait = 1  # one wait of 1 s fits, a second does not
    kube_api.fail("GET", "secrets", status=429, retry_after=1, times=5)
    with pytest.raises(kerr.ServerError) as ei:
        noticed.get("Secret", NS, "kim-credential")
    msg = one_line(ei.value)
    assert "429" in msg and "gave up" in msg and "the 1 s limit after 1 s of waiting" in msg
    assert codes(kube_api) == [429, 429] and len(noticed.lines) == 1


def test_5xx_on_a_read_is_retried_with_backoff_and_on_a_write_is_not(noticed, kube_api):
    noticed.upsert_secret(secret())
    kube_api.clear_requests()
    kube_api.fail("GET", "secrets", status=503, times=2)
    assert noticed.get("Secret", NS, "kim-credential") is not None
    assert codes(kube_api) == [503, 503, 200]
    assert [l.split(": ", 1)[1] for l in noticed.lines][0].startswith("reading again in")
    kube_api.fail("GET", "secrets", status=500, times=10)
    with pytest.raises(kerr.ServerError) as ei:
        noticed.get("Secret", NS, "kim-credential")
    assert "after 4 attempts" in one_line(ei.value)
    kube_api.clear_faults()
    kube_api.clear_requests()
    kube_api.fail("PUT", "secrets", status=503)  # no Retry-After: the write may or may not be safe to repeat
    with pytest.raises(kerr.ServerError):
        noticed.upsert_secret(secret(cert="CERT-3"))
    assert codes(kube_api, "PUT") == [503]


def test_client_side_rate_limit_is_a_token_bucket():
    from kimpki.kube.pushback import RateLimiter

    now = [100.0]
    slept: list[float] = []

    def sleep(s):
        slept.append(round(s, 6))
        now[0] += s

    rl = RateLimiter(qps=20, burst=50, clock=lambda: now[0], sleep=sleep)
    for _ in range(50):
        rl.wait()
    assert slept == []  # the burst goes out at once
    rl.wait()
    rl.wait()
    assert slept == [0.05, 0.05]  # then one every 1/qps seconds
    now[0] += 1.0  # a quiet second refills 20 tokens
    for _ in range(20):
        rl.wait()
    assert slept == [0.05, 0.05]
    off = RateLimiter(qps=0, clock=lambda: now[0], sleep=sleep)
    for _ in range(1000):
        off.wait()
    assert len(slept) == 2  # off by default


def test_server_warnings_are_said(noticed, kube_api):
    """The server drops fields its schema lacks and, with no fieldValidation parameter (kimpki
    sends none), says so in Warning headers: kimpki passes them on, as kubectl does."""
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "vs", "namespace": NS}, "spec": {"hosts": ["a"], "host": "typo"}}
    res = noticed.apply(vs)
    assert res.action == "created" and "host" not in kube_api.get_object("virtualservices", NS, "vs")["spec"]
    assert noticed.lines == ['the Kubernetes API warned on create virtualservices "vs" in namespace "istio-system": '
                             'unknown field "spec.host"']
    from kimpki.kube.pushback import warnings_of

    assert warnings_of('299 - "a \\"b\\"", 299 - "c"') == ['a "b"', "c"] and warnings_of(None) == []


@pytest.mark.parametrize("method,body,content_type,guarded", [
    ("PUT", {"metadata": {"name": "a", "resourceVersion": "7"}}, "application/json", True),
    ("PUT", {"metadata": {"name": "a"}}, "application/json", False),
    ("POST", {"metadata": {"name": "a"}}, "application/json", True),
    ("POST", {"metadata": {"generateName": "a-"}}, "application/json", False),
    ("PATCH", [{"op": "test", "path": "/a", "value": 1}, {"op": "add", "path": "/b", "value": 2}],
     "application/json-patch+json", True),
    ("PATCH", [{"op": "add", "path": "/b", "value": 2}], "application/json-patch+json", False),
    ("PATCH", {"spec": {}}, "application/merge-patch+json", False),
    ("DELETE", None, "application/json", False),
])
def test_which_writes_may_be_resent(method, body, content_type, guarded):
    from kimpki.kube.pushback import write_is_guarded

    assert write_is_guarded(method, body, content_type) is guarded
