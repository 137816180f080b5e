"""CA-only ConfigMaps (``secret create --ca-only --config-map``, a policy ``caOnly`` Credential with
``configMap: true``) widened by ``ca rotate`` and narrowed by ``ca retire`` like CA-only Secrets,
in a folder of manifests and through the API stand-in."""

from __future__ import annotations

import base64

import yaml

from tests.conftest import Kimpki, assert_one_line_error
from tests.kubeapi.fixtures import *  # noqa: F401,F403  (kube_api, kube_env)


def _count(pem: str) -> int:
    return pem.count("BEGIN CERTIFICATE")


def test_ca_rotate_widens_and_retire_narrows_a_ca_only_config_map_in_a_folder(tmp_path):
    k = Kimpki(tmp_path / "home", tmp_path)
    k.ok("ca", "init", "rot.example")
    folder = tmp_path / "m"
    folder.mkdir()
    for name, args in (("cm", ("rot-clients", "--config-map", "--format", "tls")), ("sec", ("rot-cacert",))):
        (folder / f"{name}.yaml").write_text(k.ok("secret", "create", *args, "--ca-only", "--ca", "rot.example",
                                                  "--dry-run", "-o", "yaml").out)

    def bundles() -> dict:
        cm = yaml.safe_load((folder / "cm.yaml").read_text())
        sec = yaml.safe_load((folder / "sec.yaml").read_text())
        assert cm["kind"] == "ConfigMap"
        return {"cm": (cm["metadata"]["annotations"]["kimpki.io/ca"], _count(cm["data"]["ca.crt"])),
                "sec": (sec["metadata"]["annotations"]["kimpki.io/ca"],
                        _count(base64.b64decode(sec["data"]["cacert"]).decode()))}

    assert bundles() == {"cm": ("rot.example", 1), "sec": ("rot.example", 1)}
    plan = k.json("ca", "rotate", "rot.example", "--manifests", folder, "--dry-run")
    assert {(w.get("kind", "Secret"), w["secret"], w["action"]) for w in plan["widened"]} == \
        {("ConfigMap", "rot-clients", "would update"), ("Secret", "rot-cacert", "would update")}
    d = k.json("ca", "rotate", "rot.example", "--manifests", folder)
    assert {(w.get("kind", "Secret"), w["secret"], w["action"]) for w in d["widened"]} == \
        {("ConfigMap", "rot-clients", "updated"), ("Secret", "rot-cacert", "updated")}
    assert bundles() == {"cm": ("rot.example", 2), "sec": ("rot.example", 2)}
    text = k.ok("ca", "rotate", "rot.example", "--manifests", folder).out  # again: nothing to widen
    assert "configmap/rot-clients" in text and "unchanged" in text
    k.ok("ca", "retire", "rot.example", "--manifests", folder)
    assert bundles() == {"cm": (d["successor"], 1), "sec": (d["successor"], 1)}


def test_a_config_map_changed_since_it_was_read_is_not_overwritten(tmp_path):
    """The folder's resourceVersion: what managed() returned must still be in the file."""
    k = Kimpki(tmp_path / "home", tmp_path)
    k.ok("ca", "init", "rv.example")
    folder = tmp_path / "m"
    folder.mkdir()
    text = k.ok("secret", "create", "rv-clients", "--ca-only", "--config-map", "--ca", "rv.example",
                "--dry-run", "-o", "yaml").out
    (folder / "cm.yaml").write_text(text)
    from kimpki.ops.places import ManifestsPlace

    place = ManifestsPlace(folder)
    [current] = list(place.managed_config_maps())
    (folder / "cm.yaml").write_text(text.replace("kimpki.io/format: generic", "kimpki.io/format: tls"))
    desired = {**current, "data": {"cacert": "x"}}
    try:
        place.write(desired, current=current)
    except Exception as e:  # noqa: BLE001 - the message is what is checked
        assert "ConfigMap rv-clients" in str(e) and "changed since kimpki read it" in str(e)
    else:
        raise AssertionError("a changed ConfigMap was overwritten")


def test_cluster_ca_rotate_and_retire_rewrite_the_ca_only_config_map(kube_env, kimpki):
    kimpki.ok("ca", "init", "cl.example")
    kimpki.ok("secret", "create", "cl-clients", "--ca-only", "--config-map")

    def bundle() -> tuple[str, int]:
        cm = kube_env.get_object("configmaps", "istio-system", "cl-clients")
        return cm["metadata"]["annotations"]["kimpki.io/ca"], _count(cm["data"]["cacert"])

    assert bundle() == ("cl.example", 1)
    # Someone else writes between kimpki's list and its update: the guarded PUT gets 409, re-reads, retries.
    kube_env.clear_requests()
    kube_env.fail("PUT", "configmaps", name="cl-clients", status=409)
    d = kimpki.json("ca", "rotate", "cl.example")
    assert [(w.get("kind"), w["secret"], w["action"]) for w in d["widened"]] == [("ConfigMap", "cl-clients", "updated")]
    assert bundle() == ("cl.example", 2)
    assert len(kube_env.calls("PUT", "configmaps", "cl-clients")) == 2
    # The first PUT carried the resourceVersion of the list; only the retry read the ConfigMap again.
    assert len(kube_env.calls("GET", "configmaps", "cl-clients")) == 1
    kimpki.ok("ca", "retire", "cl.example")
    assert bundle() == (d["successor"], 1)


POLICY = """\
apiVersion: kimpki.io/v1alpha1
kind: CertificateAuthority
metadata: {name: pol.example}
spec: {}
---
apiVersion: kimpki.io/v1alpha1
kind: Target
metadata: {name: %(target)s}
spec: %(where)s
---
apiVersion: kimpki.io/v1alpha1
kind: Credential
metadata: {name: %(name)s}
spec: {caOnly: true, clientCA: pol.example, target: %(target)s, configMap: %(config_map)s}
"""
LOCAL = {"target": "out", "where": "{manifests: out}"}


def test_policy_ca_only_config_map(kimpki, tmp_path):
    (tmp_path / "out").mkdir()
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY % {"name": "pol-clients", "config_map": "true", **LOCAL})
    d = kimpki.json("apply", "-f", policy)
    assert ("create", "ConfigMap", "pol-clients") in {(a["action"], a["kind"], a["name"]) for a in d["actions"]}
    cm = yaml.safe_load((tmp_path / "out" / "pol-clients.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and "BEGIN CERTIFICATE" in cm["data"]["cacert"]
    assert cm["metadata"]["annotations"]["kimpki.io/role"] == "ca-only"
    assert kimpki.json("apply", "-f", policy)["actions"] == []


def test_policy_ca_only_config_map_refusals(kimpki, tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY % {"name": "pol-clients", "config_map": "maybe", **LOCAL})
    assert_one_line_error(kimpki("plan", "-f", policy), 2, f"{policy}:14: Credential pol-clients: spec.configMap must be true or false")
    policy.write_text(POLICY % {"name": "pol-clients", "config_map": "false", **LOCAL})
    assert_one_line_error(kimpki("plan", "-f", policy), 2, "-cacert")
    policy.write_text(POLICY.replace("caOnly: true, ", "certificate: x, ") % {"name": "pol-credential",
                                                                               "config_map": "true", **LOCAL})
    assert_one_line_error(kimpki("plan", "-f", policy), 2, "spec.configMap")


CLUSTER_POLICY = POLICY % {"name": "pol-clients", "config_map": "true", "target": "prod", "where": "{cluster: {}}"}


def test_policy_ca_only_config_map_in_a_cluster(kube_env, kimpki, tmp_path):
    """Written in place through the API stand-in; one kimpki does not manage is left alone."""
    policy = tmp_path / "p.yaml"
    policy.write_text(CLUSTER_POLICY)
    kube_env.put_object({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "pol-clients", "namespace": "istio-system"}, "data": {"mine": "x"}})
    assert_one_line_error(kimpki("apply", "-f", policy), 1, "ConfigMap istio-system/pol-clients exists and kimpki "
                                                            "does not manage it")
    assert kube_env.get_object("configmaps", "istio-system", "pol-clients")["data"] == {"mine": "x"}
    res = kimpki("secret", "create", "pol-clients", "--ca-only", "--config-map", "--ca", "pol.example")
    assert_one_line_error(res, 1, "does not manage it", "--force")
    assert kimpki.json("secret", "create", "pol-clients", "--ca-only", "--config-map", "--ca", "pol.example",
                       "--force")["action"] == "updated"
    kube_env.delete_object("configmaps", "istio-system", "pol-clients")
    d = kimpki.json("apply", "-f", policy)
    assert ("create", "ConfigMap", "pol-clients") in {(a["action"], a["kind"], a["name"]) for a in d["actions"]}
    cm = kube_env.get_object("configmaps", "istio-system", "pol-clients")
    assert "BEGIN CERTIFICATE" in cm["data"]["cacert"]
    assert kimpki.json("apply", "-f", policy)["actions"] == []
