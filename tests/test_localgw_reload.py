"""What a reload of the local gateway costs: a rotated Secret reaches a real Envoy without the
listeners being rebuilt, and manifest changes are found by stat, reading only the files that
changed (kimpki.localgw.watch). Speed itself is measured by scripts/bench gateway, not here."""

from __future__ import annotations

import os
import socket
import ssl
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509

from kimpki import safe_yaml
from kimpki.errors import UsageError
from kimpki.localgw import envoy_process as ep
from kimpki.localgw import watch
from kimpki.localgw.runner import LocalGateway
from kimpki.localgw.watch import ManifestFiles
from tests.conftest import wait_until
from tests.localgw_pki import gateway_yaml, generic_secret_yaml, https_server, make_ca, make_leaf


def served_serial(port: int, host: str, cafile: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def lds_updates(gw: LocalGateway) -> int:
    """How many listener configurations Envoy has taken (its own counter)."""
    pattern = urllib.parse.quote(r"^listener_manager\.lds\.update_success$")
    text = ep.AdminClient(gw.admin_address).get(f"/stats?filter={pattern}", 2.0)
    return int(text.split(": ")[1])


def test_a_rotated_secret_reaches_envoy_without_the_listeners_being_rebuilt(tmp_path):
    pki = tmp_path / "pki"
    ca, clients = make_ca(pki, "example.com"), make_ca(pki, "clients.example.com")
    kim, mutual = make_leaf(pki, ca, "kim.example.com"), make_leaf(pki, ca, "mutual.example.com")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "kim.yaml").write_text(generic_secret_yaml("kim-credential", {"cert": kim.cert, "key": kim.key}))
    (folder / "mutual.yaml").write_text(generic_secret_yaml(
        "mutual-credential", {"cert": mutual.cert, "key": mutual.key, "cacert": clients.cert}))
    (folder / "gateway.yaml").write_text(gateway_yaml("gw", [
        https_server("kim.example.com", "https-kim", "SIMPLE", "kim-credential"),
        https_server("mutual.example.com", "https-mutual", "MUTUAL", "mutual-credential")]))
    with LocalGateway([folder], port_map={443: 0}) as gw:
        port, builds, taken = gw.ports[443], gw.listener_builds, lds_updates(gw)
        assert builds == 1 and served_serial(port, "kim.example.com", ca.cert) == kim.serial

        # A rotated Secret, rewritten in place (same inode): pushed over SDS, listeners untouched.
        fresh = make_leaf(pki, ca, "kim.example.com", tag="-2")
        (folder / "kim.yaml").write_text(generic_secret_yaml("kim-credential", {"cert": fresh.cert, "key": fresh.key}))
        result = gw.poll_once()
        assert result.secrets_updated == ("kubernetes://kim-credential",)
        assert not result.listeners_changed and gw.listener_builds == builds
        wait_until(lambda: served_serial(port, "kim.example.com", ca.cert) == fresh.serial,
                   "Envoy to serve the rotated certificate")
        assert lds_updates(gw) == taken
        assert gw.poll_once() is None  # nothing changed since

        # A Secret change that does change the listeners (the MUTUAL server loses its CA, so Istio
        # would not serve it) still rebuilds them.
        (folder / "mutual.yaml").write_text(generic_secret_yaml(
            "mutual-credential", {"cert": mutual.cert, "key": mutual.key}))
        result = gw.poll_once()
        assert result.listeners_changed and gw.listener_builds == builds + 1
        assert "kubernetes://mutual-credential" in result.secrets_removed
        wait_until(lambda: lds_updates(gw) == taken + 1, "Envoy to take the listeners without the MUTUAL server")
        assert served_serial(port, "kim.example.com", ca.cert) == fresh.serial

        # reload() called directly (no poll before it) looks at the files itself.
        third = make_leaf(pki, ca, "kim.example.com", tag="-3")
        (folder / "kim.yaml").write_text(generic_secret_yaml("kim-credential", {"cert": third.cert, "key": third.key}))
        assert gw.reload().secrets_updated == ("kubernetes://kim-credential",)
        assert gw.listener_builds == builds + 1


def _counting_reads(monkeypatch) -> list[str]:
    read: list[str] = []
    real = safe_yaml.read_text

    def counting(path, *args, **kwargs):
        read.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(watch.safe_yaml, "read_text", counting)
    return read


def test_changed_added_and_removed_files_are_seen_and_only_changed_ones_read_again(tmp_path, monkeypatch):
    read = _counting_reads(monkeypatch)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.yaml").write_text("a: 1\n")
    (folder / "b.yaml").write_text("b: 1\n")
    (folder / "notes.txt").write_text("not a manifest\n")
    files = ManifestFiles([folder])
    assert files.changed() and [t for _, t in files.texts()] == ["a: 1\n", "b: 1\n"]
    assert sorted(read) == ["a.yaml", "b.yaml"]
    assert not files.changed() and not files.changed()
    assert [t for _, t in files.texts()] == ["a: 1\n", "b: 1\n"] and len(read) == 2  # nothing read again

    (folder / "a.yaml").write_text("a: 22\n")
    assert files.changed()
    assert [t for _, t in files.texts()] == ["a: 22\n", "b: 1\n"] and read[2:] == ["a.yaml"]
    (folder / "notes.txt").write_text("still not one\n")
    assert not files.changed()
    (folder / "c.yml").write_text("c: 1\n")
    assert files.changed() and [Path(f).name for f, _ in files.texts()] == ["a.yaml", "b.yaml", "c.yml"]
    (folder / "b.yaml").unlink()
    assert files.changed() and [Path(f).name for f, _ in files.texts()] == ["a.yaml", "c.yml"]
    assert read[3:] == ["c.yml"]

    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    assert files.changed()
    with pytest.raises(UsageError, match="no such manifest file or folder"):
        files.texts()


def test_a_rewrite_that_keeps_the_stat_is_caught_by_content_while_the_file_is_racy(tmp_path, monkeypatch):
    """A file system whose timestamps are coarser than the time between two writes (a tick of a
    few ms on many kernels; ext4 here has nanoseconds, so its stat is made coarse: the same
    times for every write, as when both writes land in one tick)."""
    tick = 1_000_000 * (os.stat(tmp_path).st_mtime_ns // 1_000_000) + 10 * 10**9  # fixed, 10 s ahead

    def coarse(cls, path):
        st = os.stat(path)
        return cls(st.st_ino, st.st_size, tick, tick)

    monkeypatch.setattr(watch._Stat, "of", classmethod(coarse))
    f = tmp_path / "kim.yaml"
    f.write_text("serial: 1\n")
    files = ManifestFiles([f])
    assert files.changed() and files.texts()[0][1] == "serial: 1\n"
    f.write_text("serial: 2\n")  # same inode, same size, same (coarse) times
    assert files.changed() and files.texts()[0][1] == "serial: 2\n"
    assert not files.changed()


def test_serve_forever_hears_of_a_rotated_secret_from_the_folder_without_polling(tmp_path):
    """The folder is watched (one inotify instance): with polling put off for an hour, a rewritten
    Secret is still served, through the watch alone."""
    import threading

    pki = tmp_path / "pki"
    ca = make_ca(pki, "example.com")
    kim = make_leaf(pki, ca, "kim.example.com")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "kim.yaml").write_text(generic_secret_yaml("kim-credential", {"cert": kim.cert, "key": kim.key}))
    (folder / "gateway.yaml").write_text(gateway_yaml("gw", [
        https_server("kim.example.com", "https-kim", "SIMPLE", "kim-credential")]))

    def inotify_instances() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if _link(fd) == "anon_inode:inotify")

    before = inotify_instances()
    gw = LocalGateway([folder], port_map={443: 0})
    stop = threading.Event()
    ready = threading.Event()
    loop = threading.Thread(target=gw.serve_forever, kwargs={"interval": 3600, "stop": stop,
                                                             "on_ready": lambda _: ready.set()})
    loop.start()
    try:
        wait_until(ready.is_set, "the gateway to serve")
        wait_until(lambda: inotify_instances() == before + 1, "the folder to be watched")
        port = gw.ports[443]
        assert served_serial(port, "kim.example.com", ca.cert) == kim.serial
        fresh = make_leaf(pki, ca, "kim.example.com", tag="-2")
        tmp = folder / ".kim.yaml.tmp"
        tmp.write_text(generic_secret_yaml("kim-credential", {"cert": fresh.cert, "key": fresh.key}))
        os.replace(tmp, folder / "kim.yaml")  # what kimpki rotate --manifests does
        wait_until(lambda: served_serial(port, "kim.example.com", ca.cert) == fresh.serial,
                   "the rotated certificate to be served")
        # An in-place rewrite (an editor, kubectl ... > file) is heard too.
        again = make_leaf(pki, ca, "kim.example.com", tag="-3")
        (folder / "kim.yaml").write_text(generic_secret_yaml("kim-credential", {"cert": again.cert, "key": again.key}))
        wait_until(lambda: served_serial(port, "kim.example.com", ca.cert) == again.serial,
                   "the rewritten certificate to be served")
    finally:
        stop.set()
        loop.join(30)
    assert not loop.is_alive() and gw.pid is None
    assert inotify_instances() == before


def _link(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:
        return ""
