"""What to check: a host name, where to connect, what to trust, which client certificate to show.

``Target`` is plain data; ``make_target`` turns what a user typed (``HOST[:PORT]``,
``--connect ADDR[:PORT]``) into one, raising ``UsageError`` for anything malformed.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from kimpki.errors import UsageError

DEFAULT_PORT = 443
DEFAULT_TIMEOUT = 5.0
# A TLS check (connect, handshakes, a GET) that needs more than 5 minutes is broken, not slow;
# and ``socket`` refuses values it cannot turn into a timestamp (1e300, inf, nan).
MAX_TIMEOUT = 300.0
MAX_WAIT = 3600.0  # an hour: longer than any gateway takes to pick up a new certificate


def check_seconds(value: float, option: str, maximum: float, *, zero_ok: bool = False) -> float:
    """A number of seconds typed by a user: finite, positive (or 0 when ``zero_ok``), at most ``maximum``."""
    low_ok = value >= 0 if zero_ok else value > 0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low_ok and value <= maximum):
        what = f"a number of seconds from 0 to {maximum:g}" if zero_ok else \
            f"a positive number of seconds, at most {maximum:g}"
        raise UsageError(f"{option} must be {what}, not {value!r}")
    return float(value)


class Mode(str, Enum):
    """Istio's server TLS modes that ``verify`` can prove."""

    SIMPLE = "simple"  # server certificate only
    MUTUAL = "mutual"  # the server must also demand and accept a client certificate
    OPTIONAL_MUTUAL = "optional-mutual"  # it must ask for one, check one presented, admit a client without

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Target:
    """One endpoint to check.

    ``host`` is both the SNI sent and the name checked against the served certificate's
    subjectAltNames. ``address`` (default: ``host``) and ``port`` say where to connect, like
    curl's ``--resolve host:port:address``. ``ca_file`` is a PEM file with one or more trusted
    certificates (``None``: the system trust store). ``timeout`` bounds the whole check of this
    target, every connection included.

    ``ca_label``/``client_label`` name the CA and client certificate in messages (for example a
    store name); they default to the files' names.
    """

    host: str
    ca_file: str | None = None
    address: str | None = None
    port: int = DEFAULT_PORT
    mode: Mode = Mode.SIMPLE
    client_cert: str | None = None
    client_key: str | None = None
    http_path: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    ca_label: str | None = None
    client_label: str | None = None
    tls_version: str | None = None  # "1.2"/"1.3": offer only this version (default: TLS 1.2 and 1.3)
    min_tls: str | None = None  # "1.2"/"1.3": also prove that a client offering only the version below is refused
    key_algorithm: str | None = None  # "rsa" | "ecdsa": offer only that algorithm's TLS 1.2 cipher suites

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))

    @property
    def connect_address(self) -> str:
        return self.address or self.host

    @property
    def endpoint(self) -> str:
        """``address:port`` as typed, IPv6 in brackets."""
        a = self.connect_address
        return f"[{a}]:{self.port}" if ":" in a else f"{a}:{self.port}"

    @property
    def trust_name(self) -> str:
        if self.ca_label:
            return self.ca_label
        return Path(self.ca_file).name if self.ca_file else "the system trust store"

    @property
    def client_name(self) -> str | None:
        if self.client_label:
            return self.client_label
        return Path(self.client_cert).name if self.client_cert else None


def split_host_port(text: str, what: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``1.2.3.4:port``, ``[::1]``, ``[::1]:port``, bare ``::1``, ``:port``."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"{what}: missing ']' in {text!r} (write IPv6 as [::1]:8443)")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise UsageError(f"{what}: unexpected {rest!r} after ']' in {text!r}")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:  # no colon, or a bare IPv6 literal (no port possible)
        host, port = text, None
    return host, (None if port is None else _port(port, what, text))


def _port(value: str, what: str, text: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise UsageError(f"{what}: bad port {value!r} in {text!r} (1-65535)")
    return int(value)


_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def normalize_host(host: str) -> str:
    """A DNS name (IDNA → A-labels, lower case, no trailing dot) or an IP address."""
    host = host.strip().rstrip(".")
    if not host:
        raise UsageError("HOST is empty: give the name the gateway serves, e.g. kim.example.com")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if "*" in host:
        raise UsageError(f"HOST {host!r} is a wildcard: verify a concrete name it covers, "
                         f"e.g. {host.replace('*', 'www', 1)}")
    if not host.isascii():
        import idna

        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as e:
            raise UsageError(f"HOST {host!r} is not a valid international domain name: {e}") from None
    host = host.lower()
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        raise UsageError(f"HOST {host!r} is not a valid DNS name")
    return host


TLS_VERSIONS = ("1.2", "1.3")  # what --tls-version and --min-tls take
VERSION_BELOW = {"1.2": "1.1", "1.3": "1.2"}  # the version a floor must refuse


def make_target(host: str, *, connect: str | None = None, ca_file: str | None = None,
                client_cert: str | None = None, client_key: str | None = None,
                mode: Mode | str | None = None, http_path: str | None = None,
                timeout: float = DEFAULT_TIMEOUT, ca_label: str | None = None,
                client_label: str | None = None, tls_version: str | None = None,
                min_tls: str | None = None) -> Target:
    """Validate user input into a ``Target``.

    ``host`` may carry a port (``kim.example.com:8443``); ``connect`` is ``ADDR[:PORT]``, ``:PORT``
    or ``[v6]:PORT`` and its port wins. ``mode`` defaults to MUTUAL when a client certificate is
    given, else SIMPLE.
    """
    name, host_port = split_host_port(host, "HOST")
    name = normalize_host(name)
    address, port = None, host_port
    if connect:
        addr, connect_port = split_host_port(connect, "--connect")
        address = addr.strip() or None
        if address is not None:
            try:
                address = str(ipaddress.ip_address(address))
            except ValueError:
                address = normalize_host(address)
        port = connect_port or port
    if (client_cert is None) != (client_key is None):
        given, missing = ("--cert", "--key") if client_key is None else ("--key", "--cert")
        raise UsageError(f"{given} needs {missing}: a client certificate is shown together with its private key")
    if mode is None:
        mode = Mode.MUTUAL if client_cert else Mode.SIMPLE
    try:
        mode = Mode(str(mode).lower().replace("_", "-"))
    except ValueError:
        raise UsageError(f"unknown mode {mode!r}: use {', '.join(m.value for m in Mode)}") from None
    for option, value in (("--tls-version", tls_version), ("--min-tls", min_tls)):
        if value is not None and value not in TLS_VERSIONS:
            raise UsageError(f"{option} must be one of {', '.join(TLS_VERSIONS)}, not {value!r}")
    if tls_version and min_tls and tls_version < min_tls:
        raise UsageError(f"--tls-version {tls_version} is below --min-tls {min_tls}: a gateway with that floor "
                         f"refuses every connection offering only TLS {tls_version}")
    if mode is Mode.MUTUAL and not client_cert:
        raise UsageError("mode mutual needs a client certificate to prove the gateway accepts it: "
                         "--client NAME (from the store) or --cert FILE --key FILE")
    if http_path is not None and (not http_path.startswith("/") or any(c in http_path for c in " \r\n")):
        raise UsageError(f"--http-path {http_path!r} must start with '/' and contain no spaces, e.g. /health")
    check_seconds(timeout, "--timeout", MAX_TIMEOUT)
    return Target(host=name, ca_file=ca_file, address=address, port=port or DEFAULT_PORT, mode=mode,
                  client_cert=client_cert, client_key=client_key, http_path=http_path,
                  timeout=float(timeout), ca_label=ca_label, client_label=client_label,
                  tls_version=tls_version, min_tls=min_tls)
