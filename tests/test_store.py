"""The local store: permissions, atomic versions, locking, passphrases, nothing lost."""

import fnmatch
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_keys_are_0600_and_directories_0700(kimpki):
    kimpki.ok("ca", "init", "root")
    d = kimpki.json("issue", "kim.example.com")
    for root, dirs, files in os.walk(kimpki.home):
        for name in dirs:
            if (Path(root) / name).is_symlink():  # the `current` link; its target is checked itself
                continue
            assert mode(Path(root) / name) == 0o700, Path(root) / name
        for name in files:
            if name.endswith(".key") or name in ("inventory.db", ".lock"):
                assert mode(Path(root) / name) == 0o600, Path(root) / name
    assert mode(d["key"]) == 0o600
    assert mode(kimpki.home / "cas/root/ca.key") == 0o600


def test_out_dir_uses_the_seeds_file_names(kimpki):
    out = kimpki.cwd / "certs"
    d = kimpki.json("issue", "kim.example.com", "--out", out)
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "kim.example.com.crt", "kim.example.com.key"]
    assert mode(out / "kim.example.com.key") == 0o600
    assert (out / "kim.example.com.crt").read_bytes() == Path(d["cert"]).read_bytes()


def test_reissue_keeps_the_previous_version_and_its_key(kimpki):
    first = kimpki.json("issue", "kim.example.com")
    key_before = Path(first["key"]).read_bytes()
    res = kimpki("issue", "kim.example.com", "--json")
    second = res.json
    assert "re-issued" in res.err and first["serial"] in res.err
    assert second["previous_serial"] == first["serial"]
    assert Path(first["key"]).read_bytes() == key_before  # the old key is untouched
    assert Path(second["key"]).read_bytes() != key_before
    current = kimpki.home / "certs/kim.example.com/current"
    assert os.readlink(current) == f"versions/{second['serial']}"
    rows = kimpki.json("list", "--all")["items"]
    assert [r["version"] for r in rows] == ["previous", "current"]
    assert [r["serial"] for r in kimpki.json("list")["items"]] == [second["serial"]]


def test_four_concurrent_issues_all_succeed_with_distinct_serials(kimpki):
    kimpki.ok("ca", "init", "root")
    procs = [subprocess.Popen([sys.executable, "-m", "kimpki", "issue", f"h{i}.example.com", "--json"],
                              env=kimpki.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1] for o in outs]
    rows = kimpki.json("list")["items"]
    assert sorted(r["name"] for r in rows) == [f"h{i}.example.com" for i in range(4)]
    assert len({r["serial"] for r in rows}) == 4
    db = sqlite3.connect(kimpki.home / "inventory.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_concurrent_first_use_creates_exactly_one_default_ca(kimpki):
    procs = [subprocess.Popen([sys.executable, "-m", "kimpki", "issue", f"h{i}.example.com"],
                              env=kimpki.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    assert [c["name"] for c in kimpki.json("ca", "list")["items"]] == ["kimpki-ca"]


def test_passphrase_protected_ca(kimpki, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    d = kimpki.json("ca", "init", "locked", "--passphrase-file", pw)
    assert d["encrypted"] is True
    key_file = kimpki.home / "cas/locked/ca.key"
    assert b"ENCRYPTED" in key_file.read_bytes()
    before = key_file.read_bytes()
    # No passphrase and no terminal: a clear exit 1.
    assert_one_line_error(kimpki("issue", "kim.example.com"), 1, "encrypted")
    # Wrong passphrase: exit 1, key untouched, nothing issued.
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    assert_one_line_error(kimpki("issue", "kim.example.com", "--passphrase-file", bad), 1, "wrong passphrase")
    assert key_file.read_bytes() == before
    assert kimpki.json("list")["items"] == []
    # Right passphrase, from the file or from the environment.
    assert kimpki("issue", "kim.example.com", "--passphrase-file", pw).code == 0
    assert kimpki("issue", "b.example.com", env={"KIMPKI_CA_PASSPHRASE": "correct horse"}).code == 0
    assert key_file.read_bytes() == before


def test_a_ca_is_never_overwritten(kimpki):
    kimpki.ok("ca", "init", "root")
    key = (kimpki.home / "cas/root/ca.key").read_bytes()
    assert_one_line_error(kimpki("ca", "init", "root"), 1, "already exists")
    assert (kimpki.home / "cas/root/ca.key").read_bytes() == key


# The steps of one re-issue as the store's write functions name them (kimpki.store.fs.kill_point):
# (KIMPKI_TEST_KILL_AT pattern, whether the inventory committed the new version, where the
# `current` link points afterwards: "old" or "new").
ISSUE_KILL_STEPS = [
    ("mkdir versions/*", False, "old"),
    ("temp */cert.key", False, "old"),
    ("placed */cert.key", False, "old"),
    ("temp */cert.crt", False, "old"),
    ("placed */cert.crt", False, "old"),
    ("placed */ca.crt", False, "old"),
    # The link moves after the commit: killed before it moved, the next run repairs it.
    ("temp kim.example.com/current", True, "old"),
    ("placed kim.example.com/current", True, "new"),
]


@pytest.mark.parametrize("kill_at,committed,linked", ISSUE_KILL_STEPS, ids=[s[0] for s in ISSUE_KILL_STEPS])
def test_a_kill_during_issue_leaves_the_previous_version_intact(kimpki, kill_at, committed, linked):
    kimpki.ok("ca", "init", "root")
    first = kimpki.json("issue", "kim.example.com")
    versions = kimpki.home / "certs/kim.example.com/versions"
    marker = kimpki.cwd / "killed-at"
    # The store's own kill point: the process SIGKILLs itself at exactly this step of the write.
    res = kimpki("issue", "kim.example.com", env={"KIMPKI_TEST_KILL_AT": kill_at, "KIMPKI_TEST_KILL_MARKER": str(marker)})
    assert res.code == -signal.SIGKILL, (res.code, res.err)
    (landed,) = marker.read_text().splitlines()
    assert fnmatch.fnmatchcase(landed, kill_at), landed
    (new_serial,) = set(os.listdir(versions)) - {first["serial"]}  # killed while writing the new version
    # The inventory is all or nothing: the new version is current only once its row committed.
    rows = kimpki.json("list", "--all")["items"]
    assert [(r["serial"], r["version"]) for r in rows] == (
        [(first["serial"], "previous"), (new_serial, "current")] if committed else [(first["serial"], "current")])
    assert Path(first["key"]).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert mode(first["key"]) == 0o600
    target = (kimpki.home / "certs/kim.example.com/current").resolve()
    assert target.name == (first["serial"] if linked == "old" else new_serial)
    assert (target / "cert.crt").exists() and (target / "cert.key").exists()
    db = sqlite3.connect(kimpki.home / "inventory.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    # kimpki gc (the next mutation does the same): the uncommitted folder goes, the link follows
    # the inventory.
    gc = kimpki.json("gc")
    assert [Path(o).name for o in gc["orphans"]] == ([] if committed else [new_serial]), gc
    assert [Path(x).name for x in gc["repaired_links"]] == (["current"] if committed and linked == "old" else []), gc
    current = new_serial if committed else first["serial"]
    assert (kimpki.home / "certs/kim.example.com/current").resolve().name == current
    # And the store keeps working: the next issue is current and the link follows it.
    again = kimpki.json("issue", "kim.example.com")
    assert again["previous_serial"] == current
    assert (kimpki.home / "certs/kim.example.com/current").resolve().name == again["serial"]


def test_home_from_option_env_and_xdg(kimpki, tmp_path):
    explicit = tmp_path / "explicit"
    kimpki.ok("--home", explicit, "ca", "init", "root")
    assert (explicit / "cas/root/ca.crt").exists()
    env = {k: v for k, v in kimpki.env.items() if k != "KIMPKI_HOME"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    proc = subprocess.run([sys.executable, "-m", "kimpki", "ca", "init", "root"], env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "xdg/kimpki/cas/root/ca.crt").exists()


def test_a_batch_shares_one_ca_file_among_its_versions_and_a_single_issue_writes_its_own(kimpki, tmp_path):
    """apply issues its certificates in one store batch: the versions' ca.crt files (the same root's
    bytes) are hard links to the first one written, not a new file each; versions are never
    rewritten, so readers see no difference. A lone `kimpki issue` writes its own."""
    kimpki.ok("ca", "init", "root")
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "p.yaml").write_text("---\n".join(
        ["apiVersion: kimpki.io/v1alpha1\nkind: CertificateAuthority\nmetadata: {name: root}\nspec: {}\n"] + [
        f"apiVersion: kimpki.io/v1alpha1\nkind: Certificate\nmetadata: {{name: h{i}.example.com}}\n"
        f"spec: {{hosts: [h{i}.example.com], ca: root}}\n" for i in range(3)]))
    kimpki.ok("apply", "-f", pol)
    root_pem = (kimpki.home / "cas/root/ca.crt").read_bytes()
    cas = [kimpki.home / f"certs/h{i}.example.com/current/ca.crt" for i in range(3)]
    assert {os.stat(p).st_ino for p in cas} == {os.stat(cas[0]).st_ino}
    assert os.stat(cas[0]).st_nlink == 3 and mode(cas[0]) == 0o644
    assert all(p.read_bytes() == root_pem for p in cas)
    lone = Path(kimpki.json("issue", "lone.example.com")["cert"]).with_name("ca.crt")
    assert os.stat(lone).st_nlink == 1 and lone.read_bytes() == root_pem
