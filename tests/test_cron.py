"""``kimpki cron render``: the crontab line runs as cron would run it (a bare environment, ``sh``)
against the stand-in API server; the Kubernetes objects pass ``kubernetes-validate`` (strict); the
pod's steps replayed as the CronJob's ServiceAccount pass the stand-in's RBAC authorizer with the
rendered Role (and fail, worded as the real authorizer words it, without one of its rules); the CA
Secret passes ``kubectl apply --dry-run=server``. The stand-in does not serve batch/v1, so the
CronJob is checked by schema only."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import Kimpki, assert_one_line_error
from tests.kubeapi.fixtures import *  # noqa: F401,F403  (kube_api, kube_env, kube_client)

from kimpki.errors import UsageError
from kimpki.ops import cron

NS = "istio-system"
IMAGE = "registry.example.com/kimpki:0.1.0"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def ca_home(tmp_path_factory) -> Path:
    """One home with a root CA for the module: rendering only reads it."""
    root = tmp_path_factory.mktemp("cron")
    runner = Kimpki(root / "home", root)
    runner.ok("ca", "init", "example.com", "--org", "example Inc.")
    return runner.home


@pytest.fixture
def home_with_ca(ca_home, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    return Kimpki(ca_home, work)


def render_k8s(kimpki, *args, env: dict | None = None) -> list[dict]:
    res = kimpki.ok("cron", "render", "--kubernetes", "--image", IMAGE, "-o", "json", *args, env=env)
    doc = json.loads(res.out)
    return doc["items"] if doc.get("kind") == "List" else [doc]


def by_kind(objs: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objs}


def pod_spec(objs) -> dict:
    return by_kind(objs)["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# ------------------------------------------------------------------------------------- crontab
def test_the_crontab_line_names_everything_cron_lacks(home_with_ca, tmp_path):
    kimpki = home_with_ca
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    res = kimpki.ok("cron", "render", env={"KUBECONFIG": str(kubeconfig)})
    comment, line = res.out.strip().splitlines()
    home = str(kimpki.home)
    assert comment == f"# kimpki renew, home {home}"
    schedule, command = line[:10], line[11:]
    assert schedule == "17 3 * * *"
    words = shlex.split(command)
    exe = Path(words[0])
    assert exe.is_absolute() and os.access(exe, os.X_OK)
    if exe.name.startswith("python"):
        assert words[1:3] == ["-m", "kimpki"]
        words = [words[0]] + words[3:]
    assert words[1:] == ["--home", home, "renew", "--namespace", NS, "--kubeconfig", str(kubeconfig),
                         "--log-file", f"{home}/renew.log"]
    data = kimpki.json("cron", "render", "--schedule", "@daily", env={"KUBECONFIG": str(kubeconfig)})
    assert data["schedule"] == "@daily" and data["line"].startswith("@daily ")
    assert data["log"] == f"{home}/renew.log" and data["home"] == home and "renew" in data["argv"]


def test_crontab_options_reach_renew(home_with_ca, tmp_path):
    kimpki = home_with_ca
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE)
    data = kimpki.json("cron", "render", "--manifests", "../deploy", "--log", "-", "--log-format", "json",
                       "--renew-before", "30d", "--jitter", "2h", "--passphrase-file", str(pw),
                       "--schedule", "0   4 * *   mon")
    argv = data["argv"]
    assert argv[argv.index("renew") + 1:] == ["--renew-before", "30d", "--jitter", "2h", "--manifests", str(deploy),
                                              "--log-format", "json", "--passphrase-file", str(pw)]
    assert data["log"] is None and "--log-file" not in data["line"]  # output left to cron's mail
    assert data["schedule"] == "0 4 * * mon"
    # a % would end the command in a crontab: escaped
    line = kimpki.json("cron", "render", "--manifests", str(deploy), "--log", str(tmp_path / "renew-%Y.log"))["line"]
    assert "renew-\\%Y.log" in line and re.search(r"(?<!\\)%", line) is None


def test_the_crontab_line_runs_as_cron_runs_it(kimpki, kube_env, tmp_path):
    """sh -c with cron's environment (PATH=/usr/bin:/bin, no KIMPKI_HOME, no KUBECONFIG)."""
    kimpki.ok("issue", "kim.example.com")  # makes the home's default CA too
    kimpki.ok("secret", "create", "kim-credential", "--cert", "kim.example.com",
              env={"KUBECONFIG": kube_env.kubeconfig_path})
    line = kimpki.json("cron", "render", env={"KUBECONFIG": kube_env.kubeconfig_path})["line"]
    command = line.split(" ", 5)[5].replace("\\%", "%")  # what cron hands to the shell
    cron_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh", "LOGNAME": "cron"}
    proc = subprocess.run(["/bin/sh", "-c", command], env=cron_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == proc.stderr == "", proc
    log = (kimpki.home / "renew.log").read_text()
    assert "nothing due; next renewal" in log and f"{NS}/kim-credential" in log
    assert [r["verb"] for r in kube_env.calls(resource="leases")] == ["get", "create", "update"]


@pytest.mark.parametrize("schedule, needle", [
    ("17 3 * *", "it has 4 field(s), a schedule has 5 (minute hour day-of-month month day-of-week)"),
    ("17 3 * * * *", "it has 6 field(s)"),
    ("", "the cron schedule is empty"),
    ("60 3 * * *", "minute 60 is out of range 0-59"),
    ("17 24 * * *", "hour 24 is out of range 0-23"),
    ("17 3 0 * *", "day-of-month 0 is out of range 1-31"),
    ("17 3 * 13 *", "month 13 is out of range 1-12"),
    ("17 3 * * 8", "day-of-week 8 is out of range 0-7"),
    ("17 3 * * banana", "day-of-week 'banana' is not *, N, N-M, */S or N-M/S (or a name: sun, mon"),
    ("*/0 3 * * *", "minute step in '*/0' must be at least 1"),
    ("5/10 3 * * *", "a step needs * or a range"),
    ("17 9-5 * * *", "hour range '9-5' runs backwards"),
    ("17 3 ? * *", "day-of-month '?' is not"),
    ("@reboot", "macros are @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"),
    ("CRON_TZ=UTC 17 3 * * *", "no TZ= in the schedule"),
])
def test_bad_schedules_are_refused_saying_why(schedule, needle):
    with pytest.raises(UsageError) as ei:
        cron.check_schedule(schedule)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("schedule", ["17 3 * * *", "*/15 * * * *", "0 0-23/6 1,15 * 1-5", "0 4 * jan sun",
                                      "0 4 * * 7", "@weekly", "@DAILY", "59 23 31 12 6", " 1  2 3 4 5 "])
def test_good_schedules_pass(schedule):
    expected = schedule.lower() if schedule.startswith("@") else " ".join(schedule.split())
    assert cron.check_schedule(schedule) == expected


@pytest.mark.parametrize("schedule, needle", [("17 3 * *", "it has 4 field(s)"),
                                              ("17 24 * * *", "hour 24 is out of range 0-23")])
def test_a_bad_schedule_exits_2_with_one_line(kimpki, schedule, needle):
    res = kimpki("cron", "render", "--schedule", schedule)
    assert_one_line_error(res, 2, f"invalid cron schedule '{schedule}': {needle}")
    assert res.out == ""


def test_rendering_a_crontab_line_stays_light_and_writes_nothing(kimpki):
    code = ("import sys, runpy\n"
            "sys.argv = ['kimpki', 'cron', 'render', '--manifests', '.']\n"
            "try:\n    runpy.run_module('kimpki', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3', 'yaml')))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=kimpki.env, capture_output=True, text=True,
                          cwd=kimpki.cwd)
    assert proc.returncode == 0 and "IMPORTED []" in proc.stdout, proc
    assert not kimpki.home.exists()  # rendering never creates a home


# ------------------------------------------------------------------------------------- usage
@pytest.mark.parametrize("args, needle", [
    (["--image", IMAGE], "--image only applies with --kubernetes"),
    (["--with-ca-secret"], "--with-ca-secret only applies with --kubernetes"),
    (["--kubernetes", "--image", IMAGE, "--kubeconfig", "k"], "--kubeconfig is for the crontab line"),
    (["--kubernetes", "--image", IMAGE, "--manifests", "."], "--manifests is for the crontab line"),
    (["--kubernetes"], "--kubernetes needs --image IMAGE: kimpki publishes no container image"),
    (["--kubernetes", "--image", "has space"], "invalid --image 'has space'"),
    (["--kubernetes", "--image", IMAGE, "--schedule", "0 4 * * 7"], "day-of-week 7 is out of range 0-6 (write 0 "
                                                                   "for Sunday)"),
    (["--kubernetes", "--image", IMAGE, "--time-zone", "Mars/Olympus"], "unknown --time-zone 'Mars/Olympus'"),
    (["--kubernetes", "--image", IMAGE, "-o", "json", "--json"], "either -o/--output"),
    (["--renew-before", "banana"], "invalid --renew-before 'banana'"),
    (["--jitter", "200%"], "invalid --jitter '200%'"),
    (["--manifests", ".", "--context", "c"], "--manifests sweeps folders only"),
])
def test_usage_errors(home_with_ca, args, needle):
    assert_one_line_error(home_with_ca("cron", "render", *args), 2, needle)


def test_kubernetes_needs_a_home_with_a_root_ca(kimpki):
    assert_one_line_error(kimpki("cron", "render", "--kubernetes", "--image", IMAGE), 2, "no kimpki home at")
    kimpki.ok("ca", "init", "root")
    kimpki.ok("ca", "init", "issuing", "--parent", "root")
    assert_one_line_error(kimpki("cron", "render", "--kubernetes", "--image", IMAGE), 2,
                          "CA issuing is an intermediate", "choose root CAs with --ca")
    assert [o["kind"] for o in render_k8s(kimpki, "--ca", "root")][-1] == "CronJob"


# ------------------------------------------------------------------------------------- Kubernetes
@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_the_objects_are_valid_kubernetes(home_with_ca, version):
    objs = render_k8s(home_with_ca, "--with-ca-secret")
    assert [o["kind"] for o in objs] == ["ServiceAccount", "Role", "RoleBinding", "Secret", "CronJob"]
    for o in objs:
        kubernetes_validate.validate(o, version, strict=True)  # raises on any error or unknown field
    # and the YAML form holds the same objects, without anchors or aliases
    text = home_with_ca.ok("cron", "render", "--kubernetes", "--image", IMAGE).out
    assert "&id" not in text and "*id" not in text
    assert list(yaml.safe_load_all(text)) == [o for o in objs if o["kind"] != "Secret"]


def test_the_role_grants_exactly_what_renew_needs_and_no_wildcard(home_with_ca):
    objs = by_kind(render_k8s(home_with_ca, "-n", "gateways"))
    role = objs["Role"]
    assert role["metadata"]["namespace"] == "gateways"
    assert "*" not in json.dumps(role["rules"])
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["kimpki-renew"],
         "verbs": ["get", "update"]},
        # RBAC cannot limit create to a name: the name is unknown when create is authorised
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        # the revocation state: read into the pod's home, a CRL number reserved there; never created
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kimpki-revocations"],
         "verbs": ["get", "update"]},
    ]
    from kimpki.ops.cluster_revocations import CONFIGMAP

    assert cron.REVOCATIONS == CONFIGMAP  # cron.py names it without importing (it stays light)
    rb = objs["RoleBinding"]
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "kimpki-renew", "namespace": "gateways"}]
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kimpki-renew"}
    assert all(o["metadata"]["namespace"] == "gateways" for o in objs.values())
    pod = pod_spec(list(objs.values()))
    assert pod["serviceAccountName"] == "kimpki-renew"
    assert pod["containers"][0]["args"] == ["renew", "--namespace", "gateways", "--log-format", "json"]


def test_the_cronjob_is_locked_down(home_with_ca):
    objs = render_k8s(home_with_ca, "--schedule", "45 2 * * 1-5", "--time-zone", "Europe/Berlin")
    spec = by_kind(objs)["CronJob"]["spec"]
    assert spec["schedule"] == "45 2 * * 1-5" and spec["timeZone"] == "Europe/Berlin"
    assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] > 0
    job = spec["jobTemplate"]["spec"]
    assert 0 < job["backoffLimit"] <= 3 and job["activeDeadlineSeconds"] > 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0 and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    containers = pod["initContainers"] + pod["containers"]
    for ctr in containers:
        sc = ctr["securityContext"]
        assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                      "capabilities": {"drop": ["ALL"]}}
        assert ctr["resources"]["requests"]["cpu"] and ctr["resources"]["limits"]["memory"]
        assert ctr["image"] == IMAGE
    # the CA Secret is mounted read-only, and only where the CA is imported
    for ctr in pod["initContainers"]:
        assert {"name": "ca", "mountPath": "/etc/kimpki/ca", "readOnly": True} in ctr["volumeMounts"]
    assert all(m["name"] != "ca" for m in pod["containers"][0]["volumeMounts"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["ca"]["secret"] == {"secretName": "kimpki-ca", "defaultMode": 0o440}
    assert volumes["home"]["emptyDir"]["medium"] == "Memory"  # the imported CA key never touches the node's disk


def test_the_ca_private_key_is_printed_only_when_asked(home_with_ca):
    kimpki = home_with_ca
    key_file = kimpki.home / "cas" / "example.com" / "ca.key"
    key_b64 = base64.b64encode(key_file.read_bytes()).decode()
    for args in (["-o", "yaml"], ["-o", "json"], ["--json"]):
        res = kimpki.ok("cron", "render", "--kubernetes", "--image", IMAGE, *args)
        assert "PRIVATE KEY" not in res.out + res.err and key_b64 not in res.out + res.err
        assert f"--from-file=example.com.key={key_file}" in res.err  # how to make the Secret instead
    summary = kimpki.json("cron", "render", "--kubernetes", "--image", IMAGE)
    assert summary["ca_secret_included"] is False and summary["create_ca_secret"].startswith(
        "kubectl -n istio-system create secret generic kimpki-ca ")
    secret = by_kind(render_k8s(kimpki, "--with-ca-secret"))["Secret"]
    assert base64.b64decode(secret["data"]["example.com.key"]) == key_file.read_bytes()
    assert "app.kubernetes.io/managed-by" not in secret["metadata"]["labels"]  # renew must never sweep it


def apply_rbac(objs: dict, srv, tmp_path) -> str:
    """kubectl apply the rendered ServiceAccount, Role and RoleBinding to the stand-in (as the
    cluster admin), and return a kubeconfig that authenticates as that ServiceAccount: its
    requests go through the stand-in's RBAC authorizer."""
    docs = yaml.safe_dump_all([objs[k] for k in ("ServiceAccount", "Role", "RoleBinding")])
    proc = subprocess.run([KUBECTL, "apply", "-f", "-"], input=docs, capture_output=True, text=True,
                          env={**os.environ, "KUBECONFIG": srv.kubeconfig_path,
                               "KUBECACHEDIR": str(tmp_path / "kube-cache")}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    sa = objs["ServiceAccount"]["metadata"]
    return srv.service_account_kubeconfig(sa["namespace"], sa["name"])


def replay_pod(kimpki, objs: dict, kubeconfig: str, tmp_path):
    """The pod's steps: the CA Secret as files (as the kubelet mounts it), each init container's
    command into an empty home, then the renew container. Returns the last step's result."""
    ca_dir = tmp_path / "etc-kimpki-ca"
    ca_dir.mkdir(exist_ok=True)
    for key, value in objs["Secret"]["data"].items():
        (ca_dir / key).write_bytes(base64.b64decode(value))
    pod = objs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod_env = {"KUBECONFIG": kubeconfig, "KIMPKI_HOME": str(tmp_path / "var-lib-kimpki" / "home")}
    res = None
    for ctr in pod["initContainers"] + pod["containers"]:
        assert ctr["command"] == ["kimpki"]
        args = [a.replace("/etc/kimpki/ca", str(ca_dir)) for a in ctr["args"]]
        res = kimpki(*args, env=pod_env)
        if ctr in pod["initContainers"]:
            assert res.code == 0, (ctr["name"], res.err)
    return res


@pytest.fixture
def renewal_setup(kimpki, kube_env):
    env = {"KUBECONFIG": kube_env.kubeconfig_path, "KIMPKI_CA_PASSPHRASE": PASSPHRASE}
    kimpki.ok("ca", "init", "example.com", env=env)  # an encrypted CA key
    kimpki.ok("issue", "kim.example.com", "--days", "1", env=env)
    kimpki.ok("secret", "create", "kim-credential", "--cert", "kim.example.com", env=env)
    objs = by_kind(render_k8s(kimpki, "--with-ca-secret", "--renew-before", "99.9%", env=env))
    # the CA Secret is one the API server accepts
    proc = subprocess.run([KUBECTL, "apply", "--dry-run=server", "-f", "-"], input=json.dumps(objs["Secret"]),
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert proc.returncode == 0 and "secret/kimpki-ca created (server dry run)" in proc.stdout, proc.stderr
    assert sorted(objs["Secret"]["data"]) == ["example.com.crt", "example.com.key", "example.com.passphrase"]
    return objs


def test_the_pod_steps_renew_as_the_service_account_with_exactly_the_roles_permissions(
        kimpki, kube_env, renewal_setup, tmp_path):
    """Replays the pod as its ServiceAccount against the stand-in, whose RBAC authorizer judges
    every request by the rendered Role and RoleBinding; and the Role grants nothing renew did
    not use."""
    objs = renewal_setup
    sa_kubeconfig = apply_rbac(objs, kube_env, tmp_path)
    kube_env.clear_requests()
    res = replay_pod(kimpki, objs, sa_kubeconfig, tmp_path)
    assert res.code == 0, res.err
    events = [json.loads(line) for line in res.err.splitlines()]  # --log-format json
    assert [e["event"] for e in events] == ["renewed", "summary"] and events[-1]["renewed"] == 1
    calls = kube_env.calls()
    assert calls and all(r["namespace"] == NS for r in calls)
    assert [r for r in calls if r["code"] == 403] == []  # the authorizer allowed every request
    sent = {(r["verb"], r["resource"]) for r in calls}
    rules = objs["Role"]["rules"]
    granted = {(v, res_) for r in rules for res_ in r["resources"] for v in r["verbs"]}
    # Nothing granted that renew did not use, except reading one Secret by name: this SIMPLE
    # renewal is guarded by the LIST's resourceVersion, but a 409 makes renew re-read the Secret,
    # and a MUTUAL credential's NAME-cacert Secret is looked up by name; and updating the
    # revocation state, which only a run that re-signs a CRL does (the next test).
    assert sent <= granted and granted - sent <= {("get", "secrets"), ("update", "configmaps")}, (sent, granted)
    assert ("update", "secrets") in sent  # the first run renewed the credential
    assert ("get", "configmaps") in sent  # it looked for the revocation state (there is none)


def test_the_pod_renews_a_crl_carrying_credential_with_the_clusters_revocation_state(
        kimpki, kube_env, renewal_setup, tmp_path):
    """A client was revoked against the cluster (its state is in kimpki-revocations) and the
    credential carries the CRL: the pod, whose home holds only the imported CA, loads the state,
    re-signs the CRL when due (a number reserved there first) and renews the credential with
    the CRL, all within the rendered Role."""
    from datetime import datetime, timedelta, timezone

    from cryptography import x509

    from kimpki.kube import Cluster
    from kimpki.ops import revoking
    from kimpki.ops.cluster_revocations import ClusterRevocations
    from kimpki.store import Store

    objs = renewal_setup
    env = {"KUBECONFIG": kube_env.kubeconfig_path, "KIMPKI_CA_PASSPHRASE": PASSPHRASE}
    kimpki.ok("issue", "--client", "lost.example.com", env=env)
    kimpki.ok("secret", "create", "kim-credential", "--cert", "kim.example.com", "--mutual", env=env)
    revoked = kimpki.json("revoke", "lost.example.com", "-n", NS, env=env)["serial"]
    store = Store.open(kimpki.home)
    try:  # the CRL signed 5 days ago (valid 7): due for re-signing when the pod runs
        with Cluster.connect(kubeconfig=kube_env.kubeconfig_path) as cluster:
            old = revoking.current_crl(store, "example.com", now=datetime.now(timezone.utc) - timedelta(days=5),
                                       passphrase=lambda ca: PASSPHRASE.encode(), refresh=True,
                                       mirror=ClusterRevocations(cluster, NS))
    finally:
        store.close()
    sa_kubeconfig = apply_rbac(objs, kube_env, tmp_path)
    kube_env.clear_requests()
    res = replay_pod(kimpki, objs, sa_kubeconfig, tmp_path)
    assert res.code == 0, res.err
    events = [json.loads(line) for line in res.err.splitlines()]
    assert sorted(e["event"] for e in events) == ["crl_republished", "crl_signed", "crl_state_loaded", "renewed",
                                                  "summary"], events
    assert [r for r in kube_env.calls() if r["code"] == 403] == []
    assert {(r["verb"], r["resource"]) for r in kube_env.calls()} >= {("get", "configmaps"), ("update", "configmaps")}
    secret = kube_env.get_object("secrets", NS, "kim-credential")
    crl = x509.load_pem_x509_crl(base64.b64decode(secret["data"]["crl"]))
    assert crl.get_revoked_certificate_by_serial_number(int(revoked, 16)) is not None
    import gzip

    cm = kube_env.get_object("configmaps", NS, "kimpki-revocations")
    state = json.loads(gzip.decompress(base64.b64decode(cm["binaryData"]["example.com.json.gz"])))
    assert state["crl_number"] == state["reserved"] == old.number + 1
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == old.number + 1


@pytest.mark.parametrize("verb,resource,needle", [
    ("update", "secrets", 'cannot update secrets in namespace "istio-system"; the Role needs: apiGroups [""], '
                          'resources ["secrets"], verbs ["update"]'),
    ("create", "leases", 'cannot create leases in namespace "istio-system"; the Role needs: apiGroups '
                         '["coordination.k8s.io"], resources ["leases"], verbs ["create"]'),
])
def test_a_role_without_a_rule_renew_needs_is_refused_by_the_authorizer(
        kimpki, kube_env, renewal_setup, tmp_path, verb, resource, needle):
    """The same pod with one verb taken out of the Role: the stand-in answers 403 worded as the
    RBAC authorizer does, and renew says which rule the Role lacks."""
    objs = renewal_setup
    for rule in objs["Role"]["rules"]:
        if resource in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    sa_kubeconfig = apply_rbac(objs, kube_env, tmp_path)
    kube_env.clear_requests()
    res = replay_pod(kimpki, objs, sa_kubeconfig, tmp_path)
    assert res.code == 1 and "Traceback" not in res.err
    denied = [r for r in kube_env.calls() if r["code"] == 403]
    assert [(r["verb"], r["resource"]) for r in denied] == [(verb, resource)]
    said = " ".join(json.loads(line).get("reason") or json.loads(line)["message"] for line in res.err.splitlines())
    assert 'User "system:serviceaccount:istio-system:kimpki-renew" ' + needle in said, said


def test_the_printed_kubectl_line_makes_the_ca_secret_the_job_expects(home_with_ca, kube_env):
    summary = home_with_ca.json("cron", "render", "--kubernetes", "--image", IMAGE)
    words = shlex.split(summary["create_ca_secret"])
    assert words[0] == "kubectl"
    proc = subprocess.run([KUBECTL, *words[1:]], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "KUBECONFIG": kube_env.kubeconfig_path})
    assert proc.returncode == 0, proc.stderr
    made = kube_env.get_object("secrets", NS, "kimpki-ca")
    expected = by_kind(render_k8s(home_with_ca, "--with-ca-secret"))["Secret"]
    assert made["data"] == expected["data"]
    init = pod_spec(summary["objects"])["initContainers"][0]["args"]
    assert {a.rsplit("/", 1)[1] for a in init if a.startswith("/etc/kimpki/ca/")} == set(made["data"])
