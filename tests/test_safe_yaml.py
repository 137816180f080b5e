"""Every YAML reader in kimpki goes through kimpki.safe_yaml: an alias bomb, deep nesting, a
recursive alias or an oversized file is one line ``FILE:LINE: message`` (exit 2), at once."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest

from kimpki import safe_yaml
from kimpki.errors import KimpkiError
from tests.conftest import assert_one_line_error

BOMB_LEVELS = 10


def list_bomb(levels: int = BOMB_LEVELS) -> str:
    """The issue's attack: nested anchors under ``kind: List``, nine aliases of the previous level
    per level (9**10 ≈ 3.5e9 Secrets once flattened), under 1 KB."""
    lines = ["apiVersion: v1", "kind: List", "items:",
             "- &l0 {apiVersion: v1, kind: Secret, metadata: {name: x}, data: {}}"]
    for i in range(1, levels + 1):
        lines.append(f"- &l{i} {{kind: List, items: [{', '.join([f'*l{i - 1}'] * 9)}]}}")
    return "\n".join(lines) + "\n"


def laughs(levels: int = BOMB_LEVELS) -> str:
    """The classic "billion laughs" as a mapping: loads in no time (aliases share one object),
    explodes in whatever walks it (a compare, a dump, a flattener)."""
    lines = ["apiVersion: v1", "kind: ConfigMap", "metadata: {name: lol}", "l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_the_alias_bomb_is_small():
    assert len(list_bomb().encode()) < 1000


# -- every reader ---------------------------------------------------------------------------------

def _localgw(path: Path):
    from kimpki.localgw.manifests import load_manifests
    return load_manifests([path])


def _gateway_objects(path: Path):
    from kimpki.cli.gateway import load_objects
    return load_objects([str(path)])


def _manifest_folder(path: Path):
    from kimpki.ops.manifest_objects import ManifestFolder
    return ManifestFolder(path.parent).read(path)


def _policy(path: Path):
    from kimpki.policy.source import read_documents
    return read_documents([path])


def _kubeconfig(path: Path):
    from kimpki.kube.config import Source, _check_kubeconfig_files, _current_cluster_keys
    _check_kubeconfig_files(Source("kubeconfig", str(path)))
    return _current_cluster_keys(Source("kubeconfig", str(path)), None)


READERS = {"localgw manifests": _localgw, "gateway apply/mount objects": _gateway_objects,
           "manifests folder (rotate, apply)": _manifest_folder, "policy files": _policy, "kubeconfig": _kubeconfig}


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_alias_bomb_is_refused_by_every_yaml_reader(reader, tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(laughs())
    with pytest.raises(KimpkiError) as e:
        reader(f)
    assert str(e.value).startswith(f"{f}:4: YAML aliases expand to over ")
    assert str(e.value).endswith("(an alias bomb?); refused") and "\n" not in str(e.value)


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_recursive_alias_is_refused_by_every_yaml_reader(reader, tmp_path):
    f = tmp_path / "loop.yaml"
    f.write_text("apiVersion: v1\nkind: List\nitems: &items\n- kind: List\n  items: *items\n")
    with pytest.raises(KimpkiError, match=rf"^{f}:3: a recursive YAML alias \(a node inside itself\); refused$"):
        reader(f)


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_deep_nesting_is_refused_by_every_yaml_reader(reader, tmp_path):
    f = tmp_path / "deep.yaml"
    f.write_text("apiVersion: v1\nkind: ConfigMap\ndata: " + "[" * 300 + "]" * 300 + "\n")
    with pytest.raises(KimpkiError, match=rf"^{f}:3: nested deeper than 200 levels; refused$"):
        reader(f)


def test_the_garbage_collector_is_paused_while_reading_and_back_after(monkeypatch):
    """Reading pauses Python's cyclic collector (a large file's nodes form no cycle); it is on
    again afterwards, after a refusal too, and left off when it was off."""
    assert gc.isenabled()
    assert safe_yaml.load_all("a: 1\n---\nb: [2]\n", "ok.yaml") == [{"a": 1}, {"b": [2]}]
    assert gc.isenabled()
    for bad in (laughs(), "a: [1\n"):
        with pytest.raises(KimpkiError):
            safe_yaml.compose_all(bad, "bad.yaml")
        assert gc.isenabled()
    gc.disable()
    try:
        safe_yaml.compose_all("a: 1\n", "ok.yaml")
        assert not gc.isenabled()
    finally:
        gc.enable()
    # Off indeed while the documents are composed and measured.
    seen = []
    measure = safe_yaml._measure
    monkeypatch.setattr(safe_yaml, "_measure", lambda node, source: (seen.append(gc.isenabled()), measure(node, source)))
    assert len(safe_yaml.compose_all("a: 1\n---\nb: 2\n", "ok.yaml")) == 2 and seen == [False, False]
    assert gc.isenabled()


def test_nesting_in_a_mapping_key_counts_too():
    """A key is a node like any other (``{[[...]]: v}``): measured before anything is built."""
    deep = "data: {" + "[" * 300 + "]" * 300 + ": v}\n"
    with pytest.raises(KimpkiError, match=r"^deep.yaml:1: nested deeper than 200 levels; refused$"):
        safe_yaml.compose_all(deep, "deep.yaml")


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_oversized_file_is_refused_by_every_yaml_reader(reader, tmp_path, monkeypatch):
    monkeypatch.setattr(safe_yaml, "MAX_FILE_BYTES", 1024 * 1024)
    f = tmp_path / "big.yaml"
    f.write_bytes(b"apiVersion: v1\nkind: ConfigMap\ndata:\n" + b"  k: v\n" * 200_000)
    with pytest.raises(KimpkiError, match=rf"^{f}: larger than 1 MiB; refused$"):
        reader(f)


def test_a_scalar_that_looks_like_a_number_or_date_but_is_none_is_its_text():
    """What Kubernetes' YAML reader (go-yaml) does; PyYAML raised ValueError from its constructor
    (an invalid date; an integer past Python's 4,300-digit int() limit): an internal error."""
    import datetime

    text = "a: 2024-13-45\nb: " + "9" * 5000 + "\nc: 2024-01-02\nd: 12\ne: 1.5\nf: 0x1F\n"
    assert safe_yaml.load_all(text, "t.yaml") == [{"a": "2024-13-45", "b": "9" * 5000, "c": datetime.date(2024, 1, 2),
                                                    "d": 12, "e": 1.5, "f": 31}]


def test_a_json_number_past_the_int_limit_is_refused_at_its_line():
    text = '{"kind": "Secret",\n "data": {"a": ' + "9" * 5000 + "}}\n"
    with pytest.raises(KimpkiError, match=r"^x.json:2: a number of 5,000 digits; refused$"):
        safe_yaml.load_json(text, "x.json")
    assert safe_yaml.load_json('{"a": 12}', "x.json") == {"a": 12}


@pytest.mark.parametrize("command", [["check", "-f"], ["gateway", "serve", "--port", "0", "-f"]])
def test_a_manifest_with_an_impossible_date_is_read(kimpki, command):
    (kimpki.cwd / "s.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n"
                                       "  labels: {since: 2024-13-45}\ndata: {}\n")
    res = kimpki(*command, "s.yaml", timeout=60)
    assert "internal error" not in res.err and "Traceback" not in res.err, res.err


def test_a_policy_value_that_looks_like_an_impossible_date_is_its_text(kimpki):
    (kimpki.cwd / "p.yaml").write_text("apiVersion: kimpki.io/v1alpha1\nkind: Certificate\nmetadata: {name: x}\n"
                                       "spec:\n  hosts: [kim.example.com]\n  ca: 2024-13-45\n")
    assert_one_line_error(kimpki("plan", "-f", "p.yaml"), 2,
                          "p.yaml:6: Certificate x: spec.ca '2024-13-45' is not a CertificateAuthority in the policy")


def test_ordinary_anchors_still_load(tmp_path):
    """A CA bundle written once and aliased in a few Secrets is well within the bound."""
    bundle = "LS0t" * 2000
    text = (f"apiVersion: v1\nkind: List\nitems:\n- {{kind: Secret, metadata: {{name: a}}, data: {{cacert: &ca {bundle}}}}}\n"
            + "".join(f"- {{kind: Secret, metadata: {{name: s{i}}}, data: {{cacert: *ca}}}}\n" for i in range(50)))
    (doc,) = safe_yaml.load_all(text, "ok.yaml")
    assert len(doc["items"]) == 51 and all(d["data"]["cacert"] == bundle for d in doc["items"])


def test_deep_json_in_a_manifests_folder_is_one_line(tmp_path):
    from kimpki.ops.manifest_objects import ManifestFolder
    f = tmp_path / "deep.json"
    f.write_text('{"kind": "ConfigMap", "data": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(KimpkiError, match=rf"^{f}: JSON nested too deeply; refused$"):
        ManifestFolder(tmp_path).read(f)
    f.write_text(json.dumps({"kind": "ConfigMap", "data": json.loads("[" * 300 + "]" * 300)}))
    with pytest.raises(KimpkiError, match=rf"^{f}: nested deeper than 200 levels; refused$"):
        ManifestFolder(tmp_path).read(f)


# -- the real CLI ----------------------------------------------------------------------------------

def test_alias_bomb_under_kind_list_is_one_line_for_check(kimpki, tmp_path):
    """The issue's ~900-byte file: ``kimpki check -f`` hung in the flattener (memory growing);
    now exit 2 and one line naming FILE:LINE. The timeout turns a hang back into a failure."""
    f = tmp_path / "bomb.yaml"
    f.write_text(list_bomb())
    res = kimpki("check", "-f", f, timeout=30)
    assert_one_line_error(res, 2, f"{f}:4: YAML aliases expand to over ")
    res = kimpki("gateway", "mount", "-f", f, "--secret", "s", "--mount-path", "/etc/x", "--local", timeout=30)
    assert_one_line_error(res, 2, f"{f}:4: YAML aliases expand to over ")


@pytest.mark.parametrize("opening,closing", [("[", "]"), ("{a: ", "}")])
def test_flow_nesting_of_thousands_of_levels_is_one_line_naming_the_file(kimpki, tmp_path, opening, closing):
    """Was a RecursionError traceback in the pure-Python loader."""
    f = tmp_path / "deep.yaml"
    f.write_text("kind: ConfigMap\ndata: " + opening * 5000 + "1" * (opening == "{a: ") + closing * 5000 + "\n")
    res = kimpki("check", "-f", f, timeout=30)
    assert_one_line_error(res, 2, f"{f}:2: ")
    assert "RecursionError" not in res.err and "nest" in res.err
    policy = tmp_path / "policy"
    policy.mkdir()
    os.link(f, policy / "deep.yaml")
    res = kimpki("plan", "-f", policy, timeout=30)
    assert_one_line_error(res, 2, f"{policy / 'deep.yaml'}:2: ")
