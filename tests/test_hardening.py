"""Issue 10, hardening: each test is an attack (or a crash) and what kimpki does about it.

Tests run as root; "another user" is uid 65534 (nobody), set with os.chown.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.chain_table import chains, pem
from tests.conftest import assert_one_line_error, openssl

OTHER_UID = 65534


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def run_python(kimpki, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python with the test's kimpki environment (for a SIGKILL at an exact point)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=kimpki.env, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)


# ------------------------------------------------------------- 1. a passphrase reaches every CA key
def test_attack_default_ca_made_by_issue_is_encrypted_with_the_passphrase(kimpki):
    res = kimpki.ok("issue", "kim.example.com", env={"KIMPKI_CA_PASSPHRASE": "s3cret"})
    assert "created the default CA" in res.err
    key = (kimpki.home / "cas/kimpki-ca/ca.key").read_bytes()
    assert key.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert kimpki.json("ca", "list")["items"][0]["encrypted"] is True
    assert_one_line_error(kimpki("issue", "b.example.com"), 1, "encrypted")
    kimpki.ok("issue", "b.example.com", env={"KIMPKI_CA_PASSPHRASE": "s3cret"})


def _self_signed(tmp_path, key_name: str, passin: str | None = None) -> Path:
    args = ["req", "-x509", "-key", tmp_path / key_name, "-subj", "/O=example Inc./CN=example.com", "-days", "365",
            "-out", tmp_path / "ca.crt"]
    openssl(*args, *(["-passin", f"pass:{passin}"] if passin else []))
    return tmp_path / "ca.crt"


def test_attack_import_keeps_an_encrypted_key_encrypted(kimpki, tmp_path):
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes256", "-pass", "pass:imp0rt",
            "-out", tmp_path / "ca.key")
    cert = _self_signed(tmp_path, "ca.key", "imp0rt")
    (tmp_path / "pw").write_text("imp0rt\n")
    d = kimpki.json("ca", "import", "example.com", "--cert", cert, "--key", tmp_path / "ca.key",
                    "--key-passphrase-file", tmp_path / "pw")
    assert d["encrypted"] is True
    assert b"ENCRYPTED" in (kimpki.home / "cas/example.com/ca.key").read_bytes()
    assert_one_line_error(kimpki("issue", "kim.example.com", "--ca", "example.com"), 1, "encrypted")
    kimpki.ok("issue", "kim.example.com", "--ca", "example.com", "--passphrase-file", tmp_path / "pw")
    # In the clear only when asked for.
    d = kimpki.json("ca", "import", "clear", "--cert", cert, "--key", tmp_path / "ca.key",
                    "--key-passphrase-file", tmp_path / "pw", "--unencrypted-key")
    assert d["encrypted"] is False
    assert (kimpki.home / "cas/clear/ca.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_attack_import_reads_traditional_encrypted_pem_with_leading_blank_lines(kimpki, tmp_path):
    openssl("genrsa", "-out", tmp_path / "plain.key", "2048")
    openssl("rsa", "-in", tmp_path / "plain.key", "-traditional", "-aes256", "-passout", "pass:trad",
            "-out", tmp_path / "trad.key")
    text = (tmp_path / "trad.key").read_bytes()
    assert b"Proc-Type: 4,ENCRYPTED" in text
    (tmp_path / "blank.key").write_bytes(b"\n\n" + text)
    cert = _self_signed(tmp_path, "trad.key", "trad")
    (tmp_path / "pw").write_text("trad\n")
    for name, key in (("trad", "trad.key"), ("blank", "blank.key")):
        d = kimpki.json("ca", "import", name, "--cert", cert, "--key", tmp_path / key,
                        "--key-passphrase-file", tmp_path / "pw")
        assert d["encrypted"] is True, name
    # Without the passphrase: it says the key is encrypted (not "cannot read ... Password was not given").
    assert_one_line_error(kimpki("ca", "import", "x", "--cert", cert, "--key", tmp_path / "blank.key"), 1,
                          "is encrypted: give")


def test_attack_intermediate_under_an_encrypted_root_is_not_silently_clear(kimpki, tmp_path):
    (tmp_path / "pw").write_text("r00t\n")
    kimpki.ok("ca", "init", "root", "--passphrase-file", tmp_path / "pw")
    res = kimpki("ca", "init", "sub", "--parent", "root", "--parent-passphrase-file", tmp_path / "pw")
    assert_one_line_error(res, 2, "--unencrypted-key", "'root' is encrypted")
    assert not (kimpki.home / "cas/sub").exists()
    d = kimpki.json("ca", "init", "sub", "--parent", "root", "--parent-passphrase-file", tmp_path / "pw",
                    "--passphrase-file", tmp_path / "pw")
    assert d["encrypted"] is True
    d = kimpki.json("ca", "init", "sub-clear", "--parent", "root", "--parent-passphrase-file", tmp_path / "pw",
                    "--unencrypted-key")
    assert d["encrypted"] is False
    # KIMPKI_CA_PASSPHRASE unlocks the parent and encrypts the child.
    d = kimpki.json("ca", "init", "sub-env", "--parent", "root", env={"KIMPKI_CA_PASSPHRASE": "r00t"})
    assert d["encrypted"] is True


# ----------------------------------------------------------- 2. writes through planted symlinks
def _victim(tmp_path) -> Path:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    return victim


def test_attack_sign_out_symlink_does_not_follow(kimpki, tmp_path):
    kimpki.ok("ca", "init", "root")
    openssl("req", "-out", tmp_path / "b.csr", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", tmp_path / "b.key", "-subj", "/CN=bookinfo.com")
    victim = _victim(tmp_path)
    out = kimpki.cwd / "b.crt"
    out.symlink_to(victim)  # planted by another user
    d = kimpki.json("sign", tmp_path / "b.csr", "--out", out)
    assert victim.read_text() == "precious\n" and mode(victim) == 0o600
    assert not out.is_symlink() and out.read_bytes() == Path(d["cert"]).read_bytes()
    assert d["out_files"] == [str(out)]


def test_attack_issue_out_symlink_does_not_follow(kimpki, tmp_path):
    victim = _victim(tmp_path)
    out = kimpki.cwd / "certs"
    out.mkdir()
    (out / "kim.example.com.key").symlink_to(victim)
    kimpki.ok("issue", "kim.example.com", "--out", out)
    assert victim.read_text() == "precious\n"
    key = out / "kim.example.com.key"
    assert not key.is_symlink() and mode(key) == 0o600 and b"PRIVATE KEY" in key.read_bytes()


def test_attack_status_textfile_symlink_does_not_follow(kimpki, tmp_path):
    kimpki.ok("issue", "kim.example.com")
    victim = _victim(tmp_path)
    textdir = kimpki.cwd / "textfile"  # node_exporter's folder, which other users may write
    textdir.mkdir()
    prom = textdir / "kimpki.prom"
    prom.symlink_to(victim)
    kimpki.ok("status", "--textfile", prom)
    assert victim.read_text() == "precious\n"
    assert not prom.is_symlink() and "kimpki_" in prom.read_text()
    assert sorted(p.name for p in textdir.iterdir()) == ["kimpki.prom"]  # no temporary file left


def test_attack_crl_out_symlink_does_not_follow(kimpki, tmp_path):
    kimpki.ok("ca", "init", "root")
    victim = _victim(tmp_path)
    out = kimpki.cwd / "root.crl"
    out.symlink_to(victim)
    kimpki.ok("crl", "root", "--out", out)
    assert victim.read_text() == "precious\n"
    assert not out.is_symlink() and out.read_bytes().startswith(b"-----BEGIN X509 CRL-----")


# ------------------------------------------------------------------------- 3. path length constraints
def test_attack_ca_under_a_pathlen0_intermediate_is_refused(kimpki):
    kimpki.ok("ca", "init", "root")
    kimpki.ok("ca", "init", "sub", "--parent", "root")
    assert_one_line_error(kimpki("ca", "init", "sub2", "--parent", "sub"), 1, "pathLen:0", "'sub'")
    assert "sub2" not in [c["name"] for c in kimpki.json("ca", "list")["items"]]
    assert not (kimpki.home / "cas/sub2").exists()


EXPECTED_OK = {"good", "leaf_outlives_issuer"}  # what openssl verify accepts; every other row is broken
CHAINS = chains()


@pytest.mark.parametrize("row", sorted(CHAINS))
def test_attack_broken_chain_kimpki_agrees_with_openssl_verify(kimpki, tmp_path, row):
    leaf, intermediates, root = CHAINS[row]
    (tmp_path / "root.pem").write_bytes(pem(root))
    (tmp_path / "inter.pem").write_bytes(pem(*intermediates))
    (tmp_path / "leaf.pem").write_bytes(pem(leaf))
    (tmp_path / "served.pem").write_bytes(pem(leaf, *intermediates))  # what a server presents
    verdict = openssl("verify", "-CAfile", tmp_path / "root.pem", "-untrusted", tmp_path / "inter.pem",
                      tmp_path / "leaf.pem", check=False)
    openssl_ok = verdict.returncode == 0
    assert openssl_ok == (row in EXPECTED_OK), verdict.stderr  # the table is what it claims to be
    res = kimpki("inspect", tmp_path / "served.pem", "--ca", tmp_path / "root.pem", "--json")
    chain = json.loads(res.out)["chain"]
    assert chain["ok"] == openssl_ok, (row, chain["error"], verdict.stdout + verdict.stderr)


# ----------------------------------------------------------------------- 7. private keys left readable
def test_attack_secret_yaml_redirected_under_umask_022_becomes_0600(kimpki):
    kimpki.ok("issue", "kim.example.com")
    target = kimpki.cwd / "kim-credential.yaml"
    target.touch(mode=0o644)
    os.chmod(target, 0o644)  # as the shell's "> file" under umask 022 makes it
    with open(target, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "kimpki", "secret", "create", "kim-credential", "--cert",
                               "kim.example.com", "--dry-run", "-o", "yaml"], env=kimpki.env, stdout=out,
                              stderr=subprocess.PIPE, text=True, cwd=kimpki.cwd)
    assert proc.returncode == 0, proc.stderr
    assert mode(target) == 0o600
    assert "made it 0600" in proc.stderr and str(target) in proc.stderr
    assert "kind: Secret" in target.read_text()


def test_attack_rotate_into_a_world_readable_manifest_makes_it_0600(kimpki):
    kimpki.ok("issue", "kim.example.com")
    deploy = kimpki.cwd / "deploy"
    deploy.mkdir()
    manifest = deploy / "kim.yaml"
    manifest.write_text(kimpki.ok("secret", "create", "kim-credential", "--cert", "kim.example.com", "--dry-run",
                                  "-o", "yaml").out)
    os.chmod(manifest, 0o644)  # e.g. checked out by git, or made by someone else's shell
    res = kimpki.ok("rotate", "kim-credential", "--manifests", deploy)
    assert mode(manifest) == 0o600
    assert "made it 0600" in res.err and str(manifest) in res.err
    # Already private: nothing to say the next time.
    res = kimpki.ok("rotate", "kim-credential", "--manifests", deploy)
    assert "made it 0600" not in res.err and mode(manifest) == 0o600


# ---------------------------------------------------------------------- 8. a home owned by someone else
def test_attack_world_writable_home_is_refused(kimpki):
    kimpki.home.mkdir(mode=0o700)
    os.chmod(kimpki.home, 0o777)
    assert_one_line_error(kimpki("ca", "init", "root"), 1, "writable by other users", str(kimpki.home))
    assert not (kimpki.home / "cas").exists()


def test_attack_home_owned_by_another_user_is_refused(kimpki):
    kimpki.home.mkdir(mode=0o700)
    os.chown(kimpki.home, OTHER_UID, OTHER_UID)
    assert_one_line_error(kimpki("ca", "list"), 1, f"owned by uid {OTHER_UID}")


def test_attack_planted_cas_symlink_is_not_followed(kimpki, tmp_path):
    theirs = tmp_path / "attacker"
    theirs.mkdir()
    os.chown(theirs, OTHER_UID, OTHER_UID)
    kimpki.home.mkdir(mode=0o700)
    (theirs / "their-folder").mkdir()
    (kimpki.home / "cas").symlink_to(theirs)  # planted while the home was world-writable
    assert_one_line_error(kimpki("ca", "init", "root"), 1, "symbolic link")
    # Nor cleaned through: their folder is no CA of the inventory, but it is not kimpki's to remove.
    assert_one_line_error(kimpki("gc"), 1, "symbolic link")
    assert [p.name for p in theirs.iterdir()] == ["their-folder"]


def test_attack_substituted_ca_folder_is_not_used_to_sign(kimpki, tmp_path):
    kimpki.ok("ca", "init", "root")
    kimpki.ok("ca", "init", "evil")  # stands in for the attacker's own CA
    theirs = tmp_path / "attacker-ca"
    (kimpki.home / "cas/evil").rename(theirs)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    (kimpki.home / "cas/root").rename(tmp_path / "root-moved")
    (kimpki.home / "cas/root").symlink_to(theirs)
    assert_one_line_error(kimpki("issue", "kim.example.com", "--ca", "root"), 1, "symbolic link")
    # A real folder, but someone else's: refused too.
    (kimpki.home / "cas/root").unlink()
    (tmp_path / "root-moved").rename(kimpki.home / "cas/root")
    os.chown(kimpki.home / "cas/root", OTHER_UID, OTHER_UID)
    assert_one_line_error(kimpki("issue", "kim.example.com", "--ca", "root"), 1, f"owned by uid {OTHER_UID}")


def test_attack_current_link_pointed_outside_the_store_is_repaired(kimpki, tmp_path):
    d = kimpki.json("issue", "kim.example.com")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = kimpki.home / "certs/kim.example.com/current"
    link.unlink()
    link.symlink_to(elsewhere)
    kimpki.ok("issue", "other.example.com")  # any change to the store repairs it first
    assert os.readlink(link) == f"versions/{d['serial']}"


# ----------------------------------------------------------------------- 12. what a SIGKILL leaves
def test_attack_kill_between_key_and_inventory_is_collected_by_the_next_run(kimpki):
    kimpki.ok("issue", "kim.example.com")
    # SIGKILL after the version's files are written, before the inventory commits.
    proc = run_python(kimpki, """
        import os, signal
        from kimpki.store import store as s
        real = s.Store.add_cert
        def add_then_die(self, *a, **kw):
            real(self, *a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        s.Store.add_cert = add_then_die
        from kimpki.cli.main import main
        main(["issue", "kim.example.com"])
    """)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    versions = kimpki.home / "certs/kim.example.com/versions"
    rows = kimpki.json("list", "--all")["items"]
    orphans = [v for v in versions.iterdir() if v.name not in {r["serial"] for r in rows}]
    assert len(orphans) == 1 and (orphans[0] / "cert.key").exists()  # a key and no inventory row
    listed = kimpki.json("gc", "--dry-run")
    assert listed["orphans"] == [str(orphans[0])] and orphans[0].exists()
    kimpki.ok("issue", "other.example.com")  # the next run collects it
    assert not orphans[0].exists()
    assert sorted(v.name for v in versions.iterdir()) == [r["serial"] for r in rows]


def test_attack_kill_during_ca_init_is_collected_by_gc_only(kimpki):
    proc = run_python(kimpki, """
        import os, signal
        from kimpki.store import store as s
        real = s.Store.add_ca
        def add_then_die(self, *a, **kw):
            real(self, *a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        s.Store.add_ca = add_then_die
        from kimpki.cli.main import main
        main(["ca", "init", "root"])
    """)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = kimpki.home / "cas/root"
    assert (left / "ca.key").exists() and kimpki.json("ca", "list")["items"] == []
    kimpki.ok("ca", "init", "other")  # other runs leave a CA key alone ...
    assert (left / "ca.key").exists()
    assert_one_line_error(kimpki("ca", "init", "root"), 1, "kimpki gc")
    assert kimpki.json("gc")["orphans"] == [str(left)]  # ... until asked
    kimpki.ok("ca", "init", "root")


def test_attack_kill_between_inventory_and_current_link_is_repaired(kimpki):
    first = kimpki.json("issue", "kim.example.com")
    proc = run_python(kimpki, """
        import os, signal
        from kimpki.store import store as s
        def die(link, target, **kw):
            os.kill(os.getpid(), signal.SIGKILL)
        s.point_symlink = die
        from kimpki.cli.main import main
        main(["issue", "kim.example.com"])
    """)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    current = kimpki.json("list")["items"][0]["serial"]
    # The inventory committed first: it names the new version, which exists in full.
    assert current != first["serial"]
    link = kimpki.home / "certs/kim.example.com/current"
    assert os.readlink(link) == f"versions/{first['serial']}"
    assert kimpki.json("gc", "--dry-run")["repaired_links"] == [str(link)]
    kimpki.ok("gc")
    assert os.readlink(link) == f"versions/{current}"
    assert (link / "cert.key").exists()


def test_attack_gc_collects_temp_files_and_abandoned_pending_versions(kimpki):
    kimpki.ok("ca", "init", "root")
    code = """
        from datetime import datetime, timedelta, timezone
        from kimpki.ops.authority import no_passphrase
        from kimpki.ops.issuing import issue
        import os
        from kimpki.store import Store
        now = datetime.now(timezone.utc)
        store = Store.open(os.environ["KIMPKI_HOME"])
        issue(store, ["old.example.com"], now=now - timedelta(days=8), days=5, passphrase=no_passphrase,
              state="pending")
        issue(store, ["new.example.com"], now=now - timedelta(hours=1), passphrase=no_passphrase, state="pending")
        # Eight days old but valid: a Secret may serve it (a run killed before promoting it).
        issue(store, ["valid.example.com"], now=now - timedelta(days=8), passphrase=no_passphrase, state="pending")
    """
    assert run_python(kimpki, code).returncode == 0
    tmp = kimpki.home / "cas/root/.tmp-abc123"
    tmp.write_bytes(b"half a key")
    dry = kimpki.json("gc", "--dry-run")
    assert [p["name"] for p in dry["stale_pending"]] == ["old.example.com"]
    assert dry["temporary_files"] == [str(tmp)] and tmp.exists()
    assert kimpki.json("gc", "--pending-older-than", "30d")["stale_pending"] == []
    done = kimpki.json("gc")
    assert [p["name"] for p in done["stale_pending"]] == ["old.example.com"]
    assert not tmp.exists()
    left = {r["name"]: r["version"] for r in kimpki.json("list", "--all")["items"]}
    # an hour old: a run may still finish it; valid: a Secret may serve it (gc cannot see Secrets)
    assert left == {"new.example.com": "pending", "valid.example.com": "pending"}
    assert not (kimpki.home / "certs/old.example.com/versions").exists() or \
        list((kimpki.home / "certs/old.example.com/versions").iterdir()) == []
    assert kimpki.ok("gc").out.strip() == "nothing to collect"
    assert_one_line_error(kimpki("gc", "--pending-older-than", "soon"), 2, "invalid duration")


def _has_open(pid: int, path: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                return True
        except OSError:
            continue
    return False


def test_gc_waits_for_the_store_lock(kimpki):
    kimpki.ok("issue", "kim.example.com")
    code = """
        import sys, time
        import os
        from kimpki.store import Store
        store = Store.open(os.environ["KIMPKI_HOME"])
        with store.locked():
            print("locked", flush=True)
            sys.stdin.readline()
    """
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=kimpki.env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert holder.stdout.readline().strip() == "locked"
        orphan = kimpki.home / "certs/kim.example.com/versions/0badc0de"
        orphan.mkdir()  # "being written" by the lock holder
        gc = subprocess.Popen([sys.executable, "-m", "kimpki", "gc", "--json"], env=kimpki.env,
                              stdout=subprocess.PIPE, text=True)
        lock = os.path.realpath(kimpki.home / ".lock")
        while gc.poll() is None and not _has_open(gc.pid, lock):
            time.sleep(0.01)  # until gc is waiting for the lock (or, wrongly, done)
        assert gc.poll() is None, "gc ran while another process held the store lock"
        assert orphan.exists()
        holder.stdin.write("\n")
        holder.stdin.flush()
        out, _ = gc.communicate(timeout=60)
        assert json.loads(out)["orphans"] == [str(orphan)]
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------- renew's log file
def test_attack_renew_log_file_symlink_is_refused(kimpki, tmp_path):
    """The crontab line used to say '>> LOG 2>&1', which the shell opens through a planted link."""
    kimpki.ok("ca", "init", "root")
    deploy = kimpki.cwd / "deploy"
    deploy.mkdir()
    victim = _victim(tmp_path)
    log = kimpki.cwd / "renew.log"  # say in a folder other users can write
    log.symlink_to(victim)
    assert_one_line_error(kimpki("renew", "--manifests", deploy, "--log-file", log), 1,
                          "is a symbolic link: kimpki does not append its log through one")
    assert victim.read_text() == "precious\n" and log.is_symlink()
    fifo = kimpki.cwd / "renew.fifo"
    os.mkfifo(fifo)
    assert_one_line_error(kimpki("renew", "--manifests", deploy, "--log-file", fifo), 1, "is not a regular file")


def test_renew_log_file_is_private_and_appended(kimpki):
    kimpki.ok("ca", "init", "root")
    deploy = kimpki.cwd / "deploy"
    deploy.mkdir()
    log = kimpki.cwd / "renew.log"
    for _ in range(2):
        res = kimpki.ok("renew", "--manifests", deploy, "--log-file", log, "--json")
        assert res.out == res.err == ""  # everything went to the log
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert text.count("checked 0, due 0") == 2 and text.count('"renewed": 0') == 2, text
