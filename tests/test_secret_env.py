"""Passphrases in environment variables reach no child: a kubeconfig ``exec`` credential plugin
(started by the kubernetes client with a copy of the environment) sees neither
``KIMPKI_CA_PASSPHRASE`` nor a policy's ``spec.passphrase.env`` variable."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import yaml

from tests.conftest import ROOT, Kimpki
from tests.kubeapi.fixtures import *  # noqa: F401,F403  (kube_api)

PASSPHRASE = "correct horse battery staple"


def exec_plugin_kubeconfig(kube_api, tmp_path: Path) -> tuple[Path, Path]:
    """The stand-in's kubeconfig with its token handed out by an exec plugin that records the
    environment it was started with."""
    seen = tmp_path / "plugin-environ"
    plugin = tmp_path / "credential-plugin"
    credential = json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                             "status": {"token": kube_api.token}})
    plugin.write_text(f"#!/bin/sh\nenv > '{seen}'\ncat <<'EOF'\n{credential}\nEOF\n")
    plugin.chmod(stat.S_IRWXU)
    cfg = yaml.safe_load(Path(kube_api.kubeconfig_path).read_text())
    cfg["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                        "command": str(plugin), "interactiveMode": "Never"}}
    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump(cfg))
    kc.chmod(0o600)
    return kc, seen


def test_kubeconfig_exec_plugin_never_sees_the_ca_passphrase(kube_api, tmp_path):
    kc, seen = exec_plugin_kubeconfig(kube_api, tmp_path)
    k = Kimpki(tmp_path / "home", tmp_path)
    res = k("check", "--kubeconfig", kc, env={"KIMPKI_CA_PASSPHRASE": PASSPHRASE})
    assert "Traceback" not in res.err
    environ = seen.read_text()  # the plugin ran, with kimpki's environment minus the secret
    assert "KUBERNETES_EXEC_INFO=" in environ and "KIMPKI_HOME=" in environ
    assert PASSPHRASE not in environ and "KIMPKI_CA_PASSPHRASE" not in environ


def test_kubeconfig_exec_plugin_never_sees_a_policy_passphrase_variable(kube_api, tmp_path):
    kc, seen = exec_plugin_kubeconfig(kube_api, tmp_path)
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies, ignore=shutil.ignore_patterns("out"))
    (policies / "target.yaml").write_text(
        "apiVersion: kimpki.io/v1alpha1\nkind: Target\nmetadata: {name: cluster}\nspec:\n  cluster: {}\n")
    authority = policies / "authority.yaml"
    authority.write_text(authority.read_text().replace(
        "  # passphrase: {file: example.com.passphrase}", "  passphrase: {env: MY_CA_PASSPHRASE}\n  #"))
    k = Kimpki(tmp_path / "home", tmp_path)
    # renew reads a passphrase only for a due credential, after listing the cluster's Secrets.
    res = k("renew", "--policy", policies, env={"KUBECONFIG": str(kc), "MY_CA_PASSPHRASE": PASSPHRASE})
    assert res.code == 0 and "Traceback" not in res.err, res.err
    environ = seen.read_text()
    assert "KUBERNETES_EXEC_INFO=" in environ
    assert PASSPHRASE not in environ and "MY_CA_PASSPHRASE" not in environ
