"""``--context``, as kubectl spells it: one kubeconfig naming two clusters (two stand-in API
servers), and every command that talks to a cluster writes where ``--context`` says and sends
not one request to the other."""

from __future__ import annotations

import base64
import shlex
import subprocess

import pytest
import yaml
from cryptography import x509

from tests.kubeapi import KubeApiServer

NS = "istio-system"


def two_context_kubeconfig(path, clusters: dict[str, KubeApiServer], current: str) -> str:
    """One kubeconfig with a cluster, a user and a context per stand-in, named by its key."""
    cfg = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": [],
           "current-context": current, "preferences": {}}
    for name, srv in clusters.items():
        own = yaml.safe_load(open(srv.kubeconfig_path))
        cfg["clusters"].append({"name": f"cluster-{name}", "cluster": own["clusters"][0]["cluster"]})
        cfg["users"].append({"name": f"user-{name}", "user": own["users"][0]["user"]})
        cfg["contexts"].append({"name": name, "context": {"cluster": f"cluster-{name}", "user": f"user-{name}"}})
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return str(path)


def gateway_deployment() -> dict:
    """A gateway Deployment whose proxy is not the first container and not named istio-proxy."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "edge-gateway", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "edge"}},
                     "template": {"metadata": {"labels": {"app": "edge"}},
                                  "spec": {"containers": [{"name": "sidecar", "image": "busybox"},
                                                          {"name": "proxy", "image": "istio/proxyv2"}]}}}}


@pytest.fixture
def clusters(tmp_path):
    with KubeApiServer() as a, KubeApiServer() as b:
        for srv in (a, b):
            srv.put_object(gateway_deployment())
        yield a, b


def cacert_subjects(secret: dict) -> list[str]:
    pem = base64.b64decode(secret["data"]["cacert"])
    return [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(pem)]


def serial_of(secret: dict) -> str:
    return secret["metadata"]["annotations"]["kimpki.io/serial"]


def test_every_cluster_command_writes_where_context_says_and_nowhere_else(kimpki, clusters, tmp_path):
    a, b = clusters
    # The current context is "a": everything below names "b", so only --context can take it there.
    config = two_context_kubeconfig(tmp_path / "kubeconfig", {"a": a, "b": b}, current="a")
    # Most commands get the file by --kubeconfig, with $KUBECONFIG naming no file; a few by $KUBECONFIG.
    env = {"KUBECONFIG": str(tmp_path / "absent"), "KUBECACHEDIR": str(tmp_path / "kube-cache")}
    env_config = {**env, "KUBECONFIG": config}
    in_b = ["--kubeconfig", config, "--context", "b"]
    k = kimpki
    k.ok("ca", "init", "example.com", "--org", "example Inc.")
    k.ok("issue", "kim.example.com")
    k.ok("issue", "kim-new.example.com")
    a.clear_requests()
    b.clear_requests()

    # secret create: --kubeconfig FILE --context, and --context alone with $KUBECONFIG.
    k.ok("secret", "create", "kim-credential", "--cert", "kim.example.com", *in_b, "-n", NS, env=env)
    k.ok("secret", "create", "kim-new-credential", "--cert", "kim-new.example.com", "--mutual",
         "--context", "b", "--namespace", NS, env=env_config)
    assert b.get_object("secrets", NS, "kim-credential") and b.get_object("secrets", NS, "kim-new-credential")

    # gateway apply
    gateway = k.ok("gateway", "render", "--host", "kim.example.com", "--credential", "kim-credential",
                   "--name", "kim-gateway").out
    k.ok("gateway", "apply", "-f", "-", *in_b, "-n", NS, input=gateway, env=env)
    assert b.get_object("gateways", NS, "kim-gateway")["spec"]["servers"][0]["hosts"] == ["kim.example.com"]

    # gateway mount / unmount, on a Deployment and container named by option
    mount = ["--secret", "istio-ingressgateway-bookinfo-certs", "--mount-path", "/etc/istio/bookinfo-certs",
             "--deployment", "edge-gateway", "--container", "proxy", "--namespace", NS, *in_b]
    d = k.json("gateway", "mount", *mount, "--volume-name", "bookinfo-tls", env=env)
    assert d["action"] == "mounted"
    spec = b.get_object("deployments", NS, "edge-gateway")["spec"]["template"]["spec"]
    assert [(v["name"], v["secret"]["secretName"]) for v in spec["volumes"]] == \
        [("bookinfo-tls", "istio-ingressgateway-bookinfo-certs")]
    sidecar, proxy = spec["containers"]
    assert "volumeMounts" not in sidecar
    assert [(m["name"], m["mountPath"]) for m in proxy["volumeMounts"]] == [("bookinfo-tls", "/etc/istio/bookinfo-certs")]
    assert k.json("gateway", "unmount", *mount, env=env)["action"] == "unmounted"
    spec = b.get_object("deployments", NS, "edge-gateway")["spec"]["template"]["spec"]
    assert not spec["containers"][1].get("volumeMounts") and not spec.get("volumes")

    # check and status read b
    report = k.json("check", *in_b, "-n", NS, env=env)
    assert report["summary"]["gateways"] == 1 and report["summary"]["servers"] == 1 and report["ok"], report
    elsewhere = k("check", *in_b, "--namespace", "default", "--json", env=env)  # credentials looked up there
    assert elsewhere.code == 1 and "kim-credential" in str(elsewhere.json["findings"]), elsewhere.out
    rows = k.json("status", "-A", "--context", "b", env=env_config)
    assert "kim-new-credential" in str(rows) and "kim-credential" in str(rows)

    # rotate and renew write b
    before = serial_of(b.get_object("secrets", NS, "kim-credential"))
    k.ok("rotate", "kim-credential", *in_b, "--namespace", NS, "--days", "1", env=env)
    rotated = serial_of(b.get_object("secrets", NS, "kim-credential"))
    assert rotated != before
    k.ok("renew", "-A", *in_b, "--renew-before", "1d", env=env)  # the one-day certificate is due
    assert serial_of(b.get_object("secrets", NS, "kim-credential")) != rotated
    assert b.get_object("leases", NS, "kimpki-renew") or b.calls(resource="leases")

    # ca rotate / retire: a folder of manifests and, with --cluster, b too
    deploy = k.cwd / "deploy"
    deploy.mkdir()
    (deploy / "kim-new.yaml").write_text(k.ok("secret", "create", "kim-new-credential", "--cert",
                                              "kim-new.example.com", "--mutual", "--dry-run", "-o", "yaml").out)

    old, new = "CN=example.com,O=example Inc.", "CN=example.com G2,O=example Inc."

    def bundles() -> list[list[str]]:
        return [cacert_subjects(yaml.safe_load((deploy / "kim-new.yaml").read_text())),
                cacert_subjects(b.get_object("secrets", NS, "kim-new-credential"))]

    rotate = ["ca", "rotate", "example.com", "--manifests", deploy, "--cluster", *in_b]
    k.ok(*rotate, "--namespace", NS, "--dry-run", env=env)
    assert bundles() == [[old], [old]] and "example.com-g2" not in {c["name"] for c in k.json("ca", "list")["items"]}
    rep = k.json(*rotate, "-n", NS, "--days", "400", "--key-type", "ec-p384", env=env)
    assert len(rep["places"]) == 2 and rep["ready_to_retire"] is True, rep
    assert bundles() == [[old, new], [old, new]]
    g2 = {c["name"]: c for c in k.json("ca", "list")["items"]}["example.com-g2"]
    assert g2["key_type"] == "EC P-384" and 399 <= g2["days_left"] <= 400, g2
    retire = ["ca", "retire", "example.com", "--manifests", deploy, "--cluster", *in_b]
    dry = k.json(*retire, "-n", NS, "--dry-run", env=env)
    assert dry["retired_at"] is None and len(dry["rewritten"]) == 2, dry
    assert bundles() == [[old, new], [old, new]]  # the dry run wrote nothing
    assert k.json(*retire, "--namespace", NS, env=env)["action"] == "retired"
    assert bundles() == [[new], [new]]

    # cron render: the crontab line keeps the context, so cron's renew reaches b too
    line = k.ok("cron", "render", "--kubeconfig", config, "--context", "b").out.splitlines()[-1]
    command = line.split(None, 5)[5]  # after the five schedule fields
    words = shlex.split(command)
    assert words[words.index("--context") + 1] == "b" and words[words.index("--kubeconfig") + 1] == config
    b.clear_requests()
    ran = subprocess.run(["/bin/sh", "-c", command], env=k.env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, (ran.stderr, (k.home / "renew.log").read_text())
    assert b.calls(resource="secrets")

    # Not one request reached a, the current context.
    assert a.requests == []
    # Without --context, the current context is used: a is read, b is not.
    b.clear_requests()
    k.ok("status", "--kubeconfig", config, "--all-namespaces", env=env)
    assert a.requests and b.requests == []
