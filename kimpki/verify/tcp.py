"""A TCP connection whose name resolution is bounded by the same deadline as the connection.

``socket.create_connection(name, timeout=T)`` bounds the connect, not the lookup: glibc's
resolver has its own timeouts (5 s per nameserver and attempt by default), so a gateway name
whose DNS server does not answer held ``verify --timeout 1`` for ten seconds or more. The lookup
runs in a daemon thread and is abandoned at the deadline (getaddrinfo cannot be cancelled; the
thread ends when the resolver gives up). An IP address needs no lookup and gets no thread, which
matters for ``verify --all --connect 127.0.0.1`` over thousands of hosts.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time


class ResolveTimeout(TimeoutError):
    """No answer from the name resolution within the deadline."""

    def __init__(self, host: str, seconds: float):
        super().__init__(f"no answer resolving {host} within {seconds:g} s")
        self.host = host
        self.seconds = seconds


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve(host: str, port: int, deadline: float) -> list[tuple]:
    """``getaddrinfo(host, port)`` for TCP, raising :class:`ResolveTimeout` at ``deadline``
    (a ``time.monotonic()`` value) and ``socket.gaierror`` when the name does not resolve."""
    if _is_ip(host):
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    answer: dict[str, object] = {}

    def look_up() -> None:
        try:
            answer["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            answer["error"] = e

    started = time.monotonic()
    lookup = threading.Thread(target=look_up, name=f"resolve {host}", daemon=True)
    lookup.start()
    lookup.join(max(0.0, deadline - started))
    if lookup.is_alive():
        raise ResolveTimeout(host, round(deadline - started, 3))
    if "error" in answer:
        raise answer["error"]  # type: ignore[misc]
    return answer["infos"]  # type: ignore[return-value]


def open_tcp(host: str, port: int, deadline: float) -> socket.socket:
    """A connected TCP socket to ``host:port``, trying each resolved address in turn (as
    ``socket.create_connection`` does), all within ``deadline``."""
    last: OSError | None = None
    for family, kind, proto, _, address in resolve(host, port, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline")
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(address)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise last or OSError(f"{host} resolved to no address")
