"""The local store: permissions, atomic versions, locking, passphrases, nothing lost."""

import fnmatch
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
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


# -- a store batch (apply, renew): a new version's files are written in place ----------------------

def _policy(folder: Path, names: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "p.yaml").write_text("---\n".join(
        ["apiVersion: kimpki.io/v1alpha1\nkind: CertificateAuthority\nmetadata: {name: root}\nspec: {}\n"] + [
            f"apiVersion: kimpki.io/v1alpha1\nkind: Certificate\nmetadata: {{name: {n}}}\n"
            f"spec: {{hosts: [{n}], ca: root}}\n" for n in names]))
    return folder


def _versions_on_disk(home: Path) -> set[tuple[str, str]]:
    return {(d.name, v.name) for d in (home / "certs").iterdir() for v in (d / "versions").iterdir()}


def _assert_whole_store(kimpki) -> dict[str, str]:
    """Every version folder on disk is one the inventory names, nothing is left for gc, each
    name's `current` link points at the version the inventory calls current, and the modes
    hold; returns {name: current serial}."""
    rows = kimpki.json("list", "--all")["items"]
    assert _versions_on_disk(kimpki.home) == {(r["name"], r["serial"]) for r in rows}
    left = kimpki.json("gc", "--dry-run")
    assert (left["orphans"], left["temporary_files"], left["repaired_links"]) == ([], [], []), left
    current = {r["name"]: r["serial"] for r in rows if r["version"] == "current"}
    for name, serial in current.items():
        version = kimpki.home / "certs" / name / "versions" / serial
        assert os.readlink(kimpki.home / "certs" / name / "current") == f"versions/{serial}"
        assert mode(version) == 0o700 and mode(version.parent) == 0o700 and mode(version.parent.parent) == 0o700
        assert mode(version / "cert.key") == 0o600 and (version / "cert.key").read_bytes().startswith(b"-----BEGIN")
        assert mode(version / "cert.crt") == 0o644 and mode(version / "ca.crt") == 0o644
    return current


# (KIMPKI_TEST_KILL_AT pattern, KIMPKI_TEST_KILL_NTH: which match, whether the batch committed).
# The batch issues three new names; the kill lands in the second one's write (or, for ca.crt
# written rather than linked, in the first one's), or after the commit, at the second `current` link.
BATCH_KILL_STEPS = [
    ("mkdir versions/*", 2, False),
    ("opened */cert.key", 2, False),  # the key file exists, empty: written in place, no temporary
    ("placed */cert.key", 2, False),
    ("opened */cert.crt", 2, False),
    ("placed */cert.crt", 2, False),
    ("opened */ca.crt", 1, False),  # the batch's one written ca.crt
    ("placed */ca.crt", 2, False),  # a hard link to it
    ("placed */current", 2, True),  # a new name's link, made with one symlink() after the commit
]


@pytest.mark.parametrize("kill_at,nth,committed", BATCH_KILL_STEPS, ids=[f"{s[0]}#{s[1]}" for s in BATCH_KILL_STEPS])
def test_a_kill_mid_batch_leaves_no_orphan_after_the_next_run_and_loses_nothing(kimpki, kill_at, nth, committed):
    kimpki.ok("ca", "init", "root")
    old_names, new_names = ["a0.example.com", "a1.example.com"], ["a2.example.com", "a3.example.com", "a4.example.com"]
    kimpki.ok("apply", "-f", _policy(kimpki.cwd / "pol", old_names))
    before = _assert_whole_store(kimpki)
    old_keys = {n: (kimpki.home / "certs" / n / "current/cert.key").read_bytes() for n in old_names}

    marker = kimpki.cwd / "killed-at"
    pol = _policy(kimpki.cwd / "pol", old_names + new_names)
    res = kimpki("apply", "-f", pol, env={"KIMPKI_TEST_KILL_AT": kill_at, "KIMPKI_TEST_KILL_NTH": str(nth),
                                          "KIMPKI_TEST_KILL_MARKER": str(marker)})
    assert res.code == -signal.SIGKILL, (res.code, res.err)
    (landed,) = marker.read_text().splitlines()
    assert fnmatch.fnmatchcase(landed, kill_at), landed
    rows = kimpki.json("list", "--all")["items"]
    if committed:  # all three recorded; the links of the first two made, the third's not yet
        assert sorted(r["name"] for r in rows) == old_names + new_names
        assert [os.path.lexists(kimpki.home / "certs" / n / "current") for n in new_names] == [True, True, False]
    else:  # nothing recorded, and no `current` link shows a reader the unrecorded files
        assert {r["name"]: r["serial"] for r in rows} == before
        assert not any(os.path.lexists(kimpki.home / "certs" / n / "current") for n in new_names)
        orphans = _versions_on_disk(kimpki.home) - {(r["name"], r["serial"]) for r in rows}
        assert sorted(n for n, _ in orphans) == new_names[:nth]  # killed in the nth version's write

    kimpki.ok("apply", "-f", pol)  # the next run collects what the killed one left and finishes
    after = _assert_whole_store(kimpki)
    assert sorted(after) == old_names + new_names
    assert {n: after[n] for n in old_names} == before  # nothing lost
    assert {n: (kimpki.home / "certs" / n / "current/cert.key").read_bytes() for n in old_names} == old_keys


def run_python(kimpki, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python with the test's kimpki environment."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=kimpki.env, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)


# A link planted in a batch's new version folder the moment it is made (as another process of the
# user could): the write in place must refuse it and never follow it. (The file, which version of
# the batch: the first writes ca.crt, the second links it.)
PLANTED = [(f, nth) for f in ("cert.key", "cert.crt", "ca.crt") for nth in (1, 2)]


@pytest.mark.parametrize("planted,nth", PLANTED, ids=[f"{f}#{n}" for f, n in PLANTED])
def test_a_link_planted_at_a_version_file_of_a_batch_is_refused_not_followed(kimpki, planted, nth):
    kimpki.ok("ca", "init", "root")
    names = ["b0.example.com", "b1.example.com"]
    pol = _policy(kimpki.cwd / "pol", names)
    victim = kimpki.cwd / "victim"  # where the link points: nothing there, nothing may appear
    proc = run_python(kimpki, f"""
        import os
        from kimpki.store import store as s
        real = s.kill_point
        def plant(step, path):
            real(step, path)
            if step == "mkdir" and {names[nth - 1]!r} in str(path):
                os.symlink({str(victim)!r}, os.path.join(path, {planted!r}))
        s.kill_point = plant
        from kimpki.cli.main import main
        main(["apply", "-f", {str(pol)!r}])
    """)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to overwrite" in lines[0] and planted in lines[0], proc.stderr
    assert not os.path.lexists(victim)
    # What was issued before the refusal is kept; the refused version's folder is collected.
    assert [r["name"] for r in kimpki.json("list")["items"]] == names[:nth - 1]
    kimpki.ok("apply", "-f", pol)
    assert sorted(_assert_whole_store(kimpki)) == names
    assert not os.path.lexists(victim)


def test_a_link_planted_at_current_of_a_new_name_in_a_batch_is_replaced_not_followed(kimpki):
    kimpki.ok("ca", "init", "root")
    names = ["c0.example.com", "c1.example.com"]
    elsewhere = kimpki.cwd / "elsewhere"
    elsewhere.mkdir()
    proc = run_python(kimpki, f"""
        import os
        from kimpki.store import store as s
        real = s.kill_point
        def plant(step, path):
            real(step, path)
            if step == "mkdir" and "c1.example.com" in str(path):
                os.symlink({str(elsewhere)!r}, os.path.join(os.path.dirname(os.path.dirname(path)), "current"))
        s.kill_point = plant
        from kimpki.cli.main import main
        main(["apply", "-f", {str(_policy(kimpki.cwd / "pol", names))!r}])
    """)
    assert proc.returncode == 0, proc.stderr
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    current = _assert_whole_store(kimpki)  # c1's link points at its version, as the inventory says
    assert sorted(current) == names


OTHER_UID = 65534  # "another user" (tests run as root)
# A folder of a batch's second name that existed before it: (which level, what it is).
FOREIGN = [("name", "owned by uid 65534"), ("versions", "owned by uid 65534"), ("name", "is a symbolic link"),
           ("versions", "is a symbolic link")]


@pytest.mark.parametrize("level,problem", FOREIGN, ids=[f"{lv}-{p.split()[-1]}" for lv, p in FOREIGN])
def test_a_batch_checks_the_folders_that_existed_and_refuses_another_users(kimpki, level, problem):
    kimpki.ok("ca", "init", "root")
    names = ["e0.example.com", "e1.example.com"]
    (kimpki.home / "certs").mkdir(mode=0o700)
    folder = kimpki.home / "certs" / names[1] / ("versions" if level == "versions" else "")
    folder.parent.mkdir(mode=0o700, exist_ok=True)
    elsewhere = kimpki.cwd / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if problem.endswith("link"):
        folder.rmdir() if folder.exists() else None
        folder.symlink_to(elsewhere)
    else:
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chown(folder, OTHER_UID, OTHER_UID)
    res = kimpki("apply", "-f", _policy(kimpki.cwd / "pol", names))
    assert_one_line_error(res, 1, problem, str(folder).rstrip("/"))
    assert list(elsewhere.iterdir()) == []
    assert [r["name"] for r in kimpki.json("list")["items"]] == names[:1]  # the first, issued before, is kept


@pytest.mark.parametrize("umask", ["077", "277"])
def test_a_batch_sets_the_modes_whatever_the_umask(kimpki, umask):
    """A batch skips chmod when the umask cannot have taken a bit the mode needs; under 077 the
    certificates still end up 0644 and under 277 (no owner write) the folders 0700 and keys 0600."""
    kimpki.ok("ca", "init", "root")
    names = ["u0.example.com", "u1.example.com"]
    pol = _policy(kimpki.cwd / "pol", names)
    proc = subprocess.run(["sh", "-c", f'umask {umask} && exec "$0" -m kimpki apply -f "$1"', sys.executable, pol],
                          env=kimpki.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # Looked at before any other kimpki command (which would tighten a folder's mode it finds).
    certs = kimpki.home / "certs"
    folders = [certs, *certs.iterdir(), *certs.glob("*/versions"), *certs.glob("*/versions/*")]
    assert len(folders) == 1 + 3 * len(names) and {mode(f) for f in folders} == {0o700}, folders
    files = {f.name: mode(f) for f in certs.glob("*/versions/*/*")}
    assert files == {"cert.key": 0o600, "cert.crt": 0o644, "ca.crt": 0o644}
    assert sorted(_assert_whole_store(kimpki)) == names
