"""verify's name resolution is bounded by --timeout (kimpki/verify/tcp.py).

The real peer is a DNS server that never answers: inside a user, mount and network namespace
(`unshare -rmn`, no root on the host needed) /etc/resolv.conf is bind-mounted to name
127.0.0.1, where a UDP socket is bound and never read. glibc's resolver then waits its own
5 s per attempt; kimpki must give up at --timeout and say so.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from kimpki.verify import tcp

HOST = "gw.kimpki-blackhole.test"

# Runs inside the namespaces: lo up, resolv.conf replaced, a silent DNS socket, then the command.
INSIDE = textwrap.dedent("""\
    import socket, subprocess, sys
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "--bind", sys.argv[1], "/etc/resolv.conf"], check=True)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 53))  # bound, never read: queries get no answer and no ICMP refusal
    sys.exit(subprocess.run(sys.argv[2:]).returncode)
    """)


def _namespaces_available() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-rmn", "true"], capture_output=True).returncode == 0


def _verify_with_silent_dns(kimpki, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """``kimpki verify ARGS`` in namespaces where the only DNS server never answers."""
    if not _namespaces_available():
        pytest.skip("needs unshare -rmn (user namespaces) and ip to stand up a silent DNS server")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:2\n")
    inside = tmp_path / "inside.py"
    inside.write_text(INSIDE)
    return subprocess.run(["unshare", "-rmn", sys.executable, str(inside), str(resolv),
                           sys.executable, "-m", "kimpki", "verify", *args],
                          capture_output=True, text=True, cwd=kimpki.cwd, env=kimpki.env, timeout=120)


def test_verify_gives_up_resolving_at_the_timeout(kimpki, tmp_path):
    proc = _verify_with_silent_dns(kimpki, tmp_path, HOST, "--timeout", "1", "--json")
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    report = json.loads(proc.stdout)
    assert report["reason"] == "name_resolution"
    # Without the bound, glibc answers "Temporary failure in name resolution" after 10 s instead.
    assert f"cannot resolve {HOST}: no answer within 1 s" in report["message"]
    assert "Temporary failure" not in report["message"]


def test_verify_text_names_the_unanswered_lookup_in_one_line(kimpki, tmp_path):
    proc = _verify_with_silent_dns(kimpki, tmp_path, HOST, "--timeout", "0.5")
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1
    assert "no answer within 0.5 s" in proc.stdout + proc.stderr
    assert "--connect ADDR[:PORT]" in proc.stdout + proc.stderr


def test_an_ip_address_is_not_looked_up_in_a_thread():
    before = threading.active_count()
    infos = tcp.resolve("127.0.0.1", 443, deadline=time.monotonic() + 30)
    assert [i[4] for i in infos] == [("127.0.0.1", 443)]
    assert threading.active_count() == before
    assert tcp.resolve("::1", 443, deadline=time.monotonic() + 30)[0][4][:2] == ("::1", 443)


def test_a_name_that_does_not_exist_is_a_resolution_error_not_a_timeout():
    with pytest.raises(socket.gaierror):
        tcp.resolve("no-such-gateway.invalid", 443, deadline=time.monotonic() + 30)


def test_open_tcp_connects_to_a_listening_port():
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        sock = tcp.open_tcp("localhost", port, time.monotonic() + 30)
        with sock:
            assert sock.getpeername()[1] == port
    finally:
        server.close()
