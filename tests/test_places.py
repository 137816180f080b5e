"""SecretPlace units: ManifestsPlace (a folder of YAML/JSON manifests, one document rewritten in
place) and ClusterPlace (the stand-in API server, in-place updates, paged listing)."""

from __future__ import annotations

import base64
import json
import stat

import pytest
import yaml

from kimpki.errors import OperationError, UsageError
from kimpki.ops.places import ClusterPlace, ManifestsPlace, open_place
from tests.kubeapi.fixtures import *  # noqa: F401,F403

NS = "istio-system"
LABEL = "app.kubernetes.io/managed-by"


def secret(name: str, namespace: str | None = NS, *, cert: bytes = b"cert-1", managed: bool = True,
           **meta) -> dict:
    m = {"name": name, **meta}
    if namespace:
        m["namespace"] = namespace
    if managed:
        m.setdefault("labels", {})[LABEL] = "kimpki"
        m.setdefault("annotations", {})["kimpki.io/serial"] = "01"
    return {"apiVersion": "v1", "kind": "Secret", "metadata": m, "type": "Opaque",
            "data": {"cert": base64.b64encode(cert).decode(), "key": base64.b64encode(b"key").decode()}}


def as_yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


def data_of(obj: dict) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in obj["data"].items()}


GATEWAY = """\
# The gateway of the seed.
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: kim-gateway   # keep this comment
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: kim-credential}
    hosts: [kim.example.com]
"""
CONFIGMAP = """\
# A ConfigMap with an anchor, after the Secret.
apiVersion: v1
kind: ConfigMap
metadata: {name: other, namespace: istio-system}
data:
  a: &shared value
  b: *shared
"""


def kim_yaml(extra: str = "", ns: bool = True) -> str:
    """A kimpki-managed Secret as hand-edited YAML: comments, and ``extra`` as its last lines."""
    return ("apiVersion: v1\n"
            "kind: Secret\n"
            "metadata:\n"
            "  name: kim-credential\n"
            + ("  namespace: istio-system\n" if ns else "") +
            "  labels: {app.kubernetes.io/managed-by: kimpki}  # kimpki's label\n"
            "  annotations:\n"
            "    kimpki.io/serial: '01'\n"
            "type: Opaque\n"
            f"data:\n  cert: {base64.b64encode(b'cert-1').decode()}\n  key: a2V5\n" + extra)


# How the Secret's document can sit in a file: (before, the Secret's document, after).
LAYOUTS = {
    "middle": (GATEWAY + "---\n", kim_yaml(), "# trailing comment of the Secret's document\n---\n" + CONFIGMAP),
    "first, explicit start": ("---\n", kim_yaml(), "---\n" + GATEWAY),
    "last, no final newline": (GATEWAY + "---\n", kim_yaml().rstrip("\n"), ""),
    "flow data, inline comment": (GATEWAY + "---\n", kim_yaml().replace(
        "data:\n  cert: Y2VydC0x\n  key: a2V5\n", "data: {cert: Y2VydC0x, key: a2V5}  # its last line\n"),
        "...\n---\n" + CONFIGMAP),
    "block scalar ending in '#'": ("", kim_yaml("stringNote: |\n  text\n  # not a comment\n"),
                                   "\n# a real comment\n---\n" + CONFIGMAP),
    "alias in the last value": ("", kim_yaml("x: &a 1\ny: *a  # alias\n"), "---\n" + CONFIGMAP),
    "CRLF line ends": ((GATEWAY + "---\n").replace("\n", "\r\n"), kim_yaml().replace("\n", "\r\n"),
                       ("# after\r\n---\n" + CONFIGMAP).replace("\n", "\r\n").replace("\r\r", "\r")),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_write_rewrites_only_the_secrets_document(tmp_path, layout):
    before, doc, after = LAYOUTS[layout]
    f = tmp_path / "all.yaml"
    f.write_bytes((before + doc + after).encode())
    f.chmod(0o640)
    place = ManifestsPlace(tmp_path)
    current = place.get(NS, "kim-credential")
    assert data_of(current)["cert"] == b"cert-1"

    res = place.write(secret("kim-credential", cert=b"cert-2"))
    assert res.action == "updated" and data_of(res.previous)["cert"] == b"cert-1"
    text = f.read_bytes().decode()
    assert text.startswith(before) and text.endswith(after), text
    middle = text[len(before):len(text) - len(after)]
    (new,) = [d for d in yaml.safe_load_all(middle) if d]
    # Nothing of the old document is left behind (its comments went with it).
    assert middle.replace("\r\n", "\n") == yaml.safe_dump(new, sort_keys=False, width=1 << 16)
    assert data_of(new) == {"cert": b"cert-2", "key": b"key"}
    assert new["metadata"]["labels"] == {LABEL: "kimpki"}
    assert new["metadata"]["namespace"] == NS
    if "\r\n" in before:
        assert "\n" not in middle.replace("\r\n", "")  # the new document has the file's line ends
    # Every document still parses, and the others are the same objects.
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [d["kind"] for d in docs] == [d["kind"] for d in yaml.safe_load_all(before + doc + after) if d]
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["all.yaml"]  # no temporary file left
    # Written again with the same content: nothing changes on disk.
    inode = f.stat().st_ino
    assert place.write(secret("kim-credential", cert=b"cert-2")).action == "unchanged"
    assert f.stat().st_ino == inode


def test_a_kubectl_style_secret_without_namespace_keeps_its_form(tmp_path):
    f = tmp_path / "kim.yaml"
    # kubectl create secret ... --dry-run=client -o yaml: no namespace, creationTimestamp null.
    kubectl_form = kim_yaml(ns=False).replace("metadata:\n", "metadata:\n  creationTimestamp: null\n")
    f.write_text(kubectl_form)
    place = ManifestsPlace(tmp_path)
    assert place.get(None, "kim-credential")["metadata"]["name"] == "kim-credential"
    assert place.get("bookinfo", "kim-credential") is not None  # no namespace: any namespace matches
    assert place.write(secret("kim-credential", cert=b"cert-2")).action == "updated"
    doc = yaml.safe_load(f.read_text())
    assert "namespace" not in doc["metadata"]
    assert doc["metadata"]["creationTimestamp"] is None
    assert data_of(doc)["cert"] == b"cert-2"


def test_get_and_managed_search_every_manifest_file(tmp_path):
    (tmp_path / "gateway.yaml").write_text(GATEWAY)
    (tmp_path / "multi.yml").write_text(as_yaml(secret("a")) + "---\n" + CONFIGMAP + "---\n"
                                        + as_yaml(secret("foreign", managed=False)))
    (tmp_path / "b.json").write_text(json.dumps(secret("b", "other")))
    (tmp_path / "list.yaml").write_text(as_yaml({"apiVersion": "v1", "kind": "List",
                                                 "items": [secret("c"), secret("d", None)]}))
    (tmp_path / ".hidden.yaml").write_text(as_yaml(secret("hidden")))
    (tmp_path / "notes.txt").write_text(as_yaml(secret("text")))
    place = ManifestsPlace(tmp_path)
    assert place.description == f"manifests {tmp_path}"
    for name, ns in [("a", NS), ("b", "other"), ("c", NS), ("d", NS), ("foreign", NS)]:
        assert place.get(ns, name)["metadata"]["name"] == name
    assert place.get(NS, "b") is None and place.get(NS, "hidden") is None and place.get(NS, "text") is None
    assert sorted(s["metadata"]["name"] for s in place.managed()) == ["a", "b", "c", "d"]
    assert sorted(s["metadata"]["name"] for s in place.managed(NS)) == ["a", "c", "d"]
    assert place.requests == 0

    # Writes into a JSON file and into a List item keep them what they are.
    assert place.write(secret("b", "other", cert=b"new-b")).action == "updated"
    assert data_of(json.loads((tmp_path / "b.json").read_text()))["cert"] == b"new-b"
    assert place.write(secret("d", cert=b"new-d")).action == "updated"
    items = yaml.safe_load((tmp_path / "list.yaml").read_text())["items"]
    assert [i["metadata"]["name"] for i in items] == ["c", "d"]
    assert data_of(items[1])["cert"] == b"new-d" and data_of(items[0])["cert"] == b"cert-1"
    assert "namespace" not in items[1]["metadata"]


def test_duplicates_are_refused_unless_the_namespace_picks_one(tmp_path):
    (tmp_path / "a.yaml").write_text(as_yaml(secret("kim-credential")))
    (tmp_path / "b.yaml").write_text(as_yaml(secret("kim-credential", "staging")))
    place = ManifestsPlace(tmp_path)
    with pytest.raises(UsageError) as e:
        place.get(None, "kim-credential")
    assert str(e.value) == (f"Secret kim-credential appears 2 times in {tmp_path} (a.yaml#1, b.yaml#1); "
                            f"give its namespace (-n) or remove the copies")
    assert place.get("staging", "kim-credential")["metadata"]["namespace"] == "staging"
    assert place.write(secret("kim-credential", "staging", cert=b"s2")).action == "updated"
    assert data_of(yaml.safe_load((tmp_path / "a.yaml").read_text()))["cert"] == b"cert-1"

    # A namespace-less copy matches every namespace: without -n, that is ambiguous too.
    (tmp_path / "b.yaml").write_text(as_yaml(secret("kim-credential", None)))
    with pytest.raises(UsageError, match="appears 2 times"):
        place.get(None, "kim-credential")
    # With -n, the copy that names the namespace is the one read and written.
    assert place.get(NS, "kim-credential")["metadata"]["namespace"] == NS
    assert place.write(secret("kim-credential", cert=b"c2")).action == "updated"
    assert data_of(yaml.safe_load((tmp_path / "a.yaml").read_text()))["cert"] == b"c2"
    assert data_of(yaml.safe_load((tmp_path / "b.yaml").read_text()))["cert"] == b"cert-1"


def test_a_secret_edited_between_read_and_write_is_not_overwritten(tmp_path):
    f = tmp_path / "all.yaml"
    f.write_text(GATEWAY + "---\n" + kim_yaml())
    place = ManifestsPlace(tmp_path)
    place.get(NS, "kim-credential")
    # Someone else changes the Secret after kimpki read it (another kimpki, an editor, kubectl).
    edited = f.read_text().replace("Y2VydC0x", base64.b64encode(b"theirs").decode())
    f.write_text(edited)
    with pytest.raises(OperationError) as e:
        place.write(secret("kim-credential", cert=b"ours"))
    assert str(e.value) == f"Secret kim-credential in {f} changed since kimpki read it; nothing written, run again"
    assert f.read_text() == edited
    # Read again, then the write goes through.
    place.get(NS, "kim-credential")
    assert place.write(secret("kim-credential", cert=b"ours")).action == "updated"

    # An edit of another document of the same file is no conflict, and it is kept.
    place.get(NS, "kim-credential")
    f.write_text(f.read_text().replace("name: kim-gateway", "name: kim-gateway-2"))
    assert place.write(secret("kim-credential", cert=b"again")).action == "updated"
    docs = list(yaml.safe_load_all(f.read_text()))
    assert docs[0]["metadata"]["name"] == "kim-gateway-2" and data_of(docs[1])["cert"] == b"again"


def test_unmanaged_created_dry_run_and_bad_files(tmp_path):
    f = tmp_path / "kim.yaml"
    f.write_text(as_yaml(secret("kim-credential", managed=False, labels={"team": "mesh"})))
    place = ManifestsPlace(tmp_path)
    with pytest.raises(OperationError, match="is not managed by kimpki .* give --force"):
        place.write(secret("kim-credential", cert=b"x"))
    res = place.write(secret("kim-credential", cert=b"x"), force=True)
    assert res.action == "updated"
    assert yaml.safe_load(f.read_text())["metadata"]["labels"] == {"team": "mesh", LABEL: "kimpki"}

    before = f.read_text()
    res = place.write(secret("kim-credential", cert=b"dry"), dry_run=True)
    assert res.action == "updated" and data_of(res.object)["cert"] == b"dry"
    assert f.read_text() == before

    res = place.write(secret("new-credential"))
    assert res.action == "created" and res.previous is None
    created = tmp_path / "new-credential.yaml"
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    assert yaml.safe_load(created.read_text())["metadata"]["name"] == "new-credential"
    (tmp_path / "other-credential.yaml").write_text(GATEWAY)
    with pytest.raises(OperationError, match="holds no Secret other-credential; refusing to overwrite it"):
        place.write(secret("other-credential"))

    (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(UsageError, match=r"broken.yaml:1: not valid YAML: "):
        place.get(NS, "kim-credential")
    with pytest.raises(UsageError, match="no such manifests folder"):
        ManifestsPlace(tmp_path / "missing")
    assert isinstance(open_place(manifests=tmp_path), ManifestsPlace)


# -- ClusterPlace against the stand-in API server -------------------------------------------------

def test_cluster_place_reads_writes_in_place_and_pages_the_managed_list(kube_api):
    with ClusterPlace.connect(kubeconfig=kube_api.kubeconfig_path) as place:
        assert place.description == f"cluster {kube_api.url}"
        assert place.get(NS, "kim-credential") is None
        assert place.write(secret("kim-credential")).action == "created"
        first = kube_api.get_object("secrets", NS, "kim-credential")
        assert place.get(None, "kim-credential")["metadata"]["uid"] == first["metadata"]["uid"]  # default namespace

        res = place.write(secret("kim-credential", cert=b"cert-2"))
        assert res.action == "updated" and data_of(res.previous)["cert"] == b"cert-1"
        now = kube_api.get_object("secrets", NS, "kim-credential")
        assert now["metadata"]["uid"] == first["metadata"]["uid"]
        assert int(now["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
        puts = len(kube_api.calls("PUT"))
        assert place.write(secret("kim-credential", cert=b"cert-2")).action == "unchanged"
        assert len(kube_api.calls("PUT")) == puts

        kube_api.put_object(secret("foreign", managed=False))
        with pytest.raises(OperationError, match="kimpki does not manage it"):
            place.write(secret("foreign"))
        assert kube_api.calls("DELETE") == [] and len(kube_api.calls("POST")) == 1

        kube_api.put_objects(secret(f"s-{i:04d}", managed=i % 100 != 0) for i in range(1200))
        kube_api.clear_requests()
        sent = place.requests
        names = [s["metadata"]["name"] for s in place.managed(NS)]
        assert len(names) == 1 + 1200 - 12 and "foreign" not in names
        pages = kube_api.calls("GET", "secrets")
        assert len(pages) == 3 == place.requests - sent
        assert all("limit=500" in p["query"] and "labelSelector=app.kubernetes.io" in p["query"] for p in pages)
    assert isinstance(open_place(kubeconfig=kube_api.kubeconfig_path), ClusterPlace)
