"""The ingress gateway's Secret volumes: the seed's patch as the oracle, idempotence, conflicts, the
lost-update guard (offline, through kubectl's own JSON patch, and against the stand-in API server),
and RFC 6902 itself."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from kimpki.errors import OperationError, UsageError
from kimpki.istio.volumes import (JsonPatchError, PatchConflict, apply_json_patch, mount_ops, mounted_secrets,
                                  unmount_ops, volume_name_for)
from tests.conftest import assert_one_line_error
from tests.istio_helpers import DEPLOYMENT_FILE, SEED_PATCH, kubectl, kubectl_json
from tests.kubeapi.fixtures import *  # noqa: F401,F403

SECRET = "istio-ingressgateway-bookinfo-certs"
PATH = "/etc/istio/ingressgateway-bookinfo-certs"


@pytest.fixture
def deployment() -> dict:
    return yaml.safe_load(DEPLOYMENT_FILE.read_text())


def pod(d: dict) -> dict:
    return d["spec"]["template"]["spec"]


def proxy(d: dict) -> dict:
    return next(x for x in pod(d)["containers"] if x["name"] == "istio-proxy")


def as_set(items: list[dict]) -> set[str]:
    return {json.dumps(i, sort_keys=True) for i in items}


def kubectl_patch(path, ops) -> dict:
    return kubectl_json("patch", "--local", "--type=json", "-f", path, "-p", json.dumps(ops))


# -- the seed's patch as the oracle ------------------------------------------------------------------

def test_mount_local_matches_the_seed_patch_and_a_second_run_changes_nothing(kimpki, tmp_path, kube_api):
    seed = kubectl_patch(DEPLOYMENT_FILE, SEED_PATCH)
    args = ["gateway", "mount", "--secret", SECRET, "--mount-path", PATH, "--local", "-o", "json"]
    first = kimpki.ok(*args, "-f", DEPLOYMENT_FILE)
    ours = json.loads(first.out)
    assert as_set(pod(ours)["volumes"]) == as_set(pod(seed)["volumes"])
    assert as_set(proxy(ours)["volumeMounts"]) == as_set(proxy(seed)["volumeMounts"])
    # Everything else is untouched.
    for d in (ours, seed):
        pod(d).pop("volumes")
        proxy(d).pop("volumeMounts")
    assert ours == seed
    assert "mounted at " + PATH in first.err

    out1 = tmp_path / "patched.json"
    out1.write_text(first.out)
    second = kimpki.ok(*args, "-f", out1)
    assert second.out == first.out
    assert "already mounted; nothing to do" in second.err
    # Applying the seed's patch twice, by contrast, duplicates the volume (the API server would refuse it).
    once = tmp_path / "seed.json"
    once.write_text(json.dumps(kubectl_patch(DEPLOYMENT_FILE, SEED_PATCH)))
    twice = kubectl_patch(once, SEED_PATCH)
    names = [v["name"] for v in pod(twice)["volumes"]]
    assert names.count("ingressgateway-bookinfo-certs") == 2
    # ... and the API server (the stand-in, which validates pod volumes as ValidatePodSpec does) refuses it.
    f = tmp_path / "twice.json"
    twice["metadata"]["namespace"] = "istio-system"
    f.write_text(json.dumps(twice))
    env = {"KUBECONFIG": kube_api.kubeconfig_path, "KUBECACHEDIR": str(tmp_path / "kube-cache")}
    res = kubectl("create", "-f", f, env=env, check=False)
    assert res.returncode == 1
    i = names.index("ingressgateway-bookinfo-certs", names.index("ingressgateway-bookinfo-certs") + 1)
    assert f'spec.template.spec.volumes[{i}].name: Duplicate value: "ingressgateway-bookinfo-certs"' in res.stderr
    assert "mountPath: Invalid value: \"/etc/istio/ingressgateway-bookinfo-certs\": must be unique" in res.stderr
    assert kube_api.get_object("deployments", "istio-system", twice["metadata"]["name"]) is None


def test_kubectl_applies_our_ops_exactly_as_apply_json_patch_does(deployment, tmp_path):
    ops = mount_ops(deployment, secret_name=SECRET, mount_path=PATH)
    assert apply_json_patch(deployment, ops) == kubectl_patch(DEPLOYMENT_FILE, ops)
    patched = tmp_path / "patched.json"
    patched.write_text(json.dumps(apply_json_patch(deployment, ops)))
    back = unmount_ops(json.loads(patched.read_text()), secret_name=SECRET)
    assert kubectl_patch(patched, back) == apply_json_patch(json.loads(patched.read_text()), back) == deployment


def test_the_guard_fails_the_whole_patch_when_the_lists_changed_since_the_read(deployment, tmp_path):
    ops = mount_ops(deployment, secret_name=SECRET, mount_path=PATH)
    # Someone else adds a volume (and its mount) between our read and our patch.
    other = copy.deepcopy(deployment)
    pod(other)["volumes"].append({"name": "other", "secret": {"secretName": "other"}})
    proxy(other)["volumeMounts"].append({"name": "other", "mountPath": "/etc/other"})
    with pytest.raises(JsonPatchError, match="test failed"):
        apply_json_patch(other, ops)
    f = tmp_path / "other.json"
    f.write_text(json.dumps(other))
    res = kubectl("patch", "--local", "--type=json", "-f", f, "-p", json.dumps(ops), "-o", "json", check=False)
    assert res.returncode == 1 and "test" in res.stderr.lower(), res.stderr
    # Containers reordered: the container-name test catches a patch aimed at the wrong index.
    moved = copy.deepcopy(deployment)
    pod(moved)["containers"].insert(0, {"name": "sidecar", "image": "x"})
    with pytest.raises(JsonPatchError):
        apply_json_patch(moved, ops)


# -- mount_ops / unmount_ops ------------------------------------------------------------------------

def test_container_is_found_by_name_not_index(deployment):
    pod(deployment)["containers"].insert(0, {"name": "sidecar", "image": "x", "volumeMounts": []})
    patched = apply_json_patch(deployment, mount_ops(deployment, secret_name=SECRET, mount_path=PATH))
    assert pod(patched)["containers"][0]["volumeMounts"] == []
    assert {"mount_path": PATH, "volume": "ingressgateway-bookinfo-certs", "secret": SECRET} in mounted_secrets(patched)
    with pytest.raises(OperationError, match="no container named 'gateway'.*sidecar, istio-proxy"):
        mount_ops(deployment, secret_name=SECRET, mount_path=PATH, container="gateway")


def test_already_mounted_needs_no_ops_even_under_another_volume_name(deployment):
    assert mount_ops(deployment, secret_name="istio-ingressgateway-certs",
                     mount_path="/etc/istio/ingressgateway-certs/") == []
    pod(deployment)["volumes"][-1]["secret"]["defaultMode"] = 420  # what the API server adds
    assert mount_ops(deployment, secret_name="istio-ingressgateway-ca-certs",
                     mount_path="/etc/istio/ingressgateway-ca-certs", volume_name="custom") == []


def test_conflicts_are_refused(deployment):
    with pytest.raises(PatchConflict, match="already used by volume 'ingressgateway-certs' .Secret istio-ingressgateway-certs."):
        mount_ops(deployment, secret_name=SECRET, mount_path="/etc/istio/ingressgateway-certs")
    with pytest.raises(PatchConflict, match="already used by volume 'istio-envoy' .emptyDir."):
        mount_ops(deployment, secret_name=SECRET, mount_path="/etc/istio/proxy")
    with pytest.raises(PatchConflict, match="volume name 'istio-data' is already used for emptyDir"):
        mount_ops(deployment, secret_name=SECRET, mount_path=PATH, volume_name="istio-data")
    with pytest.raises(UsageError, match="absolute"):
        mount_ops(deployment, secret_name=SECRET, mount_path="relative/path")


def test_a_half_done_mount_is_completed(deployment):
    """The volume exists (an earlier, interrupted attempt) but no mount: only the mount is added."""
    pod(deployment)["volumes"].append({"name": "ingressgateway-bookinfo-certs", "secret": {"secretName": SECRET}})
    ops = mount_ops(deployment, secret_name=SECRET, mount_path=PATH)
    assert [o["path"] for o in ops if o["op"] == "add"] == ["/spec/template/spec/containers/0/volumeMounts/-"]


def test_missing_lists_are_created_with_a_guard_on_the_pod_spec():
    d = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gw"},
         "spec": {"template": {"spec": {"containers": [{"name": "istio-proxy", "image": "x"}]}}}}
    ops = mount_ops(d, secret_name=SECRET, mount_path=PATH)
    patched = apply_json_patch(d, ops)
    assert pod(patched)["volumes"] == [{"name": "ingressgateway-bookinfo-certs",
                                        "secret": {"secretName": SECRET, "optional": True}}]
    assert proxy(patched)["volumeMounts"] == [{"mountPath": PATH, "name": "ingressgateway-bookinfo-certs",
                                               "readOnly": True}]
    assert ops[0] == {"op": "test", "path": "/spec/template/spec", "value": pod(d)}


def test_unmount_keeps_a_volume_another_container_still_mounts(deployment):
    patched = apply_json_patch(deployment, mount_ops(deployment, secret_name=SECRET, mount_path=PATH))
    pod(patched)["containers"].append({"name": "helper", "image": "x",
                                       "volumeMounts": [{"name": "ingressgateway-bookinfo-certs", "mountPath": "/x"}]})
    after = apply_json_patch(patched, unmount_ops(patched, mount_path=PATH))
    assert PATH not in [m["mountPath"] for m in proxy(after)["volumeMounts"]]
    assert "ingressgateway-bookinfo-certs" in [v["name"] for v in pod(after)["volumes"]]
    assert unmount_ops(after, secret_name=SECRET) == []
    with pytest.raises(PatchConflict, match="not a Secret volume"):
        unmount_ops(deployment, mount_path="/etc/istio/proxy")
    with pytest.raises(PatchConflict, match="not Secret other"):
        unmount_ops(deployment, mount_path="/etc/istio/ingressgateway-certs", secret_name="other")


@pytest.mark.parametrize("secret,volume", [
    ("istio-ingressgateway-bookinfo-certs", "ingressgateway-bookinfo-certs"),
    ("istio-ingressgateway-certs", "ingressgateway-certs"),
    ("kim-credential", "kim-credential"),
    ("kim.example.com-tls", "kim-example-com-tls"),
])
def test_volume_names_follow_the_seed(secret, volume):
    assert volume_name_for(secret) == volume


def test_long_volume_names_are_shortened_to_a_dns_label():
    name = volume_name_for("x" * 200)
    assert len(name) == 63 and name != volume_name_for("x" * 199)


# -- RFC 6902 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc,ops,expected", [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"foo": "bar", "baz": "qux"}),
    ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc"]}], {"foo": ["bar", ["abc"]]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    ({"baz": "qux"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo"}),
    ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ({"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/c"}], {"a": {"b": 1}, "c": {"b": 1}}),
    ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}, {"op": "replace", "path": "/~1", "value": 1}],
     {"/": 1, "~1": 10}),
    ({"baz": "qux", "foo": ["a", 2, "c"]},
     [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2.0}],
     {"baz": "qux", "foo": ["a", 2, "c"]}),
    ({"q": {"bar": 2}}, [{"op": "add", "path": "", "value": {"x": 1}}], {"x": 1}),
])
def test_rfc6902_examples(doc, ops, expected):
    before = copy.deepcopy(doc)
    assert apply_json_patch(doc, ops) == expected
    assert doc == before  # the input is never modified


@pytest.mark.parametrize("doc,ops,needle", [
    ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}], "test failed"),
    ({"a": 1}, [{"op": "test", "path": "/a", "value": True}], "test failed"),
    ({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}], "no member 'baz'"),
    ({"foo": [1]}, [{"op": "add", "path": "/foo/5", "value": 2}], "out of range"),
    ({"foo": [1]}, [{"op": "remove", "path": "/foo/-"}], "not an array index"),
    ({"foo": [1]}, [{"op": "replace", "path": "/bar", "value": 2}], "no member 'bar'"),
    ({"foo": {"a": 1}}, [{"op": "move", "from": "/foo", "path": "/foo/b"}], "its own child"),
    ({"foo": 1}, [{"op": "frobnicate", "path": "/foo"}], "unknown op"),
    ({"foo": 1}, [{"op": "add", "path": "foo", "value": 1}], "does not start with"),
])
def test_rfc6902_errors(doc, ops, needle):
    with pytest.raises(JsonPatchError, match=needle):
        apply_json_patch(doc, ops)


# -- the CLI offline --------------------------------------------------------------------------------

def test_mount_and_unmount_cli_errors(kimpki, tmp_path):
    assert_one_line_error(kimpki("gateway", "mount", "--secret", SECRET, "--mount-path", PATH, "--local"), 2, "-f FILE")
    assert_one_line_error(kimpki("gateway", "mount", "--secret", SECRET, "--mount-path", PATH, "-f", DEPLOYMENT_FILE),
                          2, "goes with --local")
    assert_one_line_error(kimpki("gateway", "mount", "--secret", SECRET, "--mount-path", "/etc/istio/proxy",
                                 "--local", "-f", DEPLOYMENT_FILE), 1, "already used by volume 'istio-envoy'")
    assert_one_line_error(kimpki("gateway", "unmount", "--local", "-f", DEPLOYMENT_FILE), 2, "--secret, --mount-path")
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert_one_line_error(kimpki("gateway", "mount", "--secret", SECRET, "--mount-path", PATH, "--local",
                                 "-f", empty), 2, "holds no Deployment")


@pytest.mark.parametrize("change,needle", [
    (lambda d: d["spec"]["template"].update(spec="none"), "has no spec.template.spec"),
    (lambda d: pod(d).update(volumes={"name": "x"}), "spec.template.spec.volumes must be a list of mappings"),
    (lambda d: pod(d).update(containers=[{"name": {"a": 1}}]), "spec.template.spec.containers must be a list"),
    (lambda d: proxy(d).update(volumeMounts=7), "volumeMounts must be a list of mappings with a string name"),
    (lambda d: proxy(d).update(volumeMounts=[{"name": "x", "mountPath": ["/a"]}]), "string name and mountPath"),
], ids=["spec-string", "volumes-mapping", "container-name-mapping", "mounts-number", "mount-path-list"])
@pytest.mark.parametrize("command", [["mount", "--secret", SECRET, "--mount-path", PATH], ["unmount", "--secret", SECRET]])
def test_local_deployment_of_the_wrong_shape_is_one_line(kimpki, deployment, change, needle, command):
    """A manifest file can hold what the API server would refuse: the fields the patch is built
    from are checked first (they reached code that expects lists and mappings)."""
    change(deployment)
    f = kimpki.cwd / "deployment.yaml"
    f.write_text(yaml.safe_dump(deployment))
    assert_one_line_error(kimpki("gateway", *command, "--local", "-f", f), 1, "deployment/istio-ingressgateway", needle)


def test_dry_run_local_prints_the_ops_and_unmount_local_round_trips(kimpki, tmp_path):
    ops = json.loads(kimpki.ok("gateway", "mount", "--secret", SECRET, "--mount-path", PATH, "--local",
                               "-f", DEPLOYMENT_FILE, "--dry-run").out)
    assert ops == mount_ops(yaml.safe_load(DEPLOYMENT_FILE.read_text()), secret_name=SECRET, mount_path=PATH)
    patched = tmp_path / "p.yaml"
    patched.write_text(kimpki.ok("gateway", "mount", "--secret", SECRET, "--mount-path", PATH, "--local",
                                 "-f", DEPLOYMENT_FILE).out)
    back = kimpki.ok("gateway", "unmount", "--secret", SECRET, "--local", "-f", patched, "-o", "json")
    assert json.loads(back.out) == yaml.safe_load(DEPLOYMENT_FILE.read_text())
    d = kimpki.json("gateway", "unmount", "--secret", SECRET, "--local", "-f", DEPLOYMENT_FILE)
    assert d["action"] == "unchanged" and d["ops"] == []


# -- against the stand-in API server -----------------------------------------------------------------

def test_mount_against_the_cluster_is_idempotent_and_unmount_too(kube_env, kimpki):
    kube_env.put_object(yaml.safe_load(DEPLOYMENT_FILE.read_text()))
    env = {"KUBECONFIG": kube_env.kubeconfig_path}
    args = ["gateway", "mount", "--secret", SECRET, "--mount-path", PATH]
    dry = kimpki.ok(*args, "--dry-run")
    assert json.loads(dry.out)[1]["op"] == "add" and kube_env.calls("PATCH") == []
    first = kimpki.json(*args)
    assert first["action"] == "mounted" and first["volume"] == "ingressgateway-bookinfo-certs"
    live = kubectl_json("get", "deployment", "istio-ingressgateway", "-n", "istio-system", env=env)
    assert {"mountPath": PATH, "name": "ingressgateway-bookinfo-certs", "readOnly": True} in proxy(live)["volumeMounts"]
    vol = next(v for v in pod(live)["volumes"] if v["name"] == "ingressgateway-bookinfo-certs")
    assert vol["secret"]["secretName"] == SECRET and vol["secret"]["optional"] is True
    start = len(kube_env.request_log)
    second = kimpki.ok(*args)
    assert "already mounted; nothing to do" in second.out
    # "Nothing to do" means kimpki wrote nothing (on a real cluster the Deployment's resourceVersion
    # moves anyway, as its controller writes status): the request log has its reads only.
    assert [(r["method"], r["resource"]) for r in kube_env.request_log[start:]] == [("GET", "deployments")]
    assert len(kube_env.calls("PATCH")) == 1
    assert kimpki.json("gateway", "unmount", "--secret", SECRET)["action"] == "unmounted"
    assert "not mounted; nothing to do" in kimpki.ok("gateway", "unmount", "--secret", SECRET).out
    final = kube_env.get_object("deployments", "istio-system", "istio-ingressgateway")
    assert "ingressgateway-bookinfo-certs" not in [v["name"] for v in pod(final)["volumes"]]
    assert_one_line_error(kimpki(*args, "--deployment", "nope"), 1, "no Deployment nope in namespace istio-system")


def test_a_concurrent_change_makes_the_guarded_patch_fail_whole(kube_env):
    from kimpki.kube import Cluster

    kube_env.put_object(yaml.safe_load(DEPLOYMENT_FILE.read_text()))
    with Cluster.connect(kubeconfig=kube_env.kubeconfig_path) as cluster:
        read = cluster.get("Deployment", "istio-system", "istio-ingressgateway")
        ops = mount_ops(read, secret_name=SECRET, mount_path=PATH)
        # Another writer adds its own volume in between (a strategic merge or a plain update).
        theirs = copy.deepcopy(read)
        pod(theirs)["volumes"].append({"name": "theirs", "secret": {"secretName": "theirs"}})
        proxy(theirs)["volumeMounts"].append({"name": "theirs", "mountPath": "/etc/theirs"})
        cluster.replace(theirs)
        with pytest.raises(OperationError):
            cluster.json_patch("Deployment", "istio-system", "istio-ingressgateway", ops)
        now = cluster.get("Deployment", "istio-system", "istio-ingressgateway")
        assert "theirs" in [v["name"] for v in pod(now)["volumes"]]
        assert "ingressgateway-bookinfo-certs" not in [v["name"] for v in pod(now)["volumes"]]
        # Recomputed from a fresh read, the patch goes through and keeps their volume.
        patched = cluster.json_patch("Deployment", "istio-system", "istio-ingressgateway",
                                     mount_ops(now, secret_name=SECRET, mount_path=PATH))
        names = [v["name"] for v in pod(patched)["volumes"]]
        assert "theirs" in names and "ingressgateway-bookinfo-certs" in names
