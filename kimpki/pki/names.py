"""Host names as they may appear in a certificate: DNS names (IDNA → A-labels), wildcards, IPs.

Rules (each pinned by a test): labels 1-63 characters of letters, digits and hyphens, no hyphen
at either end; a name at most 253 characters; a wildcard only as the whole left-most label and
never as the only label before a single remaining label (``*.com``); IPv4/IPv6 literals become
IP SANs.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

from kimpki.errors import UsageError

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SPACE = re.compile(r"\s")  # the characters str.isspace() accepts, found in one scan
# What an IP literal can look like: IPv4 is digits and dots, IPv6 always holds ':'. Anything else
# skips ipaddress, whose two failed parses (IPv4, then IPv6) cost more than the rest of a DNS name.
_MAYBE_IPV4 = re.compile(r"[0-9.]+")


@dataclass(frozen=True)
class HostName:
    """One validated name: ``value`` is the canonical form written into the certificate."""

    value: str
    is_ip: bool

    def __str__(self) -> str:
        return self.value


def _bad(raw: str, why: str) -> UsageError:
    return UsageError(f"invalid host name {raw!r}: {why}")


def _ascii_label(raw: str, label: str) -> str:
    if label == "":
        raise _bad(raw, "empty label")
    if label.isascii():
        out = label.lower()
    else:
        try:
            out = idna.alabel(label).decode("ascii")
        except idna.IDNAError as e:
            raise _bad(raw, f"not a valid internationalised label ({e})") from None
    if len(out) > 63:
        raise _bad(raw, f"label {out[:20]}... is longer than 63 characters")
    if out.startswith("-") or out.endswith("-"):
        raise _bad(raw, f"label {out!r} starts or ends with a hyphen")
    if not _LABEL.match(out):
        raise _bad(raw, f"label {out!r} may hold only letters, digits and hyphens")
    return out


def parse_host(raw: str | HostName) -> HostName:
    """Validate and canonicalise one host (DNS name, wildcard or IP literal). A :class:`HostName`
    is parsed already (a policy's hosts are parsed once, when it is loaded): returned as it is."""
    if isinstance(raw, HostName):
        return raw
    if raw is None or raw.strip() == "":
        raise UsageError("invalid host name '': empty name")
    if _SPACE.search(raw):
        raise _bad(raw, "contains white space")
    text = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    if ":" in text or _MAYBE_IPV4.fullmatch(text):
        try:
            return HostName(str(ipaddress.ip_address(text)), True)
        except ValueError:
            pass
    if "/" in raw:
        raise _bad(raw, "contains '/'")
    name = raw[:-1] if raw.endswith(".") else raw  # a fully qualified trailing dot is fine
    labels = name.split(".")
    wildcard = False
    if labels[0] == "*":
        wildcard = True
        labels = labels[1:]
        if not labels or labels == [""]:
            raise _bad(raw, "a bare '*' matches nothing")
        if len(labels) < 2:
            raise _bad(raw, "a wildcard needs at least two labels after '*.'")
    for label in labels:
        if "*" in label:
            raise _bad(raw, "a wildcard may only be the whole left-most label ('*.example.com')")
    ascii_labels = [_ascii_label(raw, label) for label in labels]
    if ascii_labels[-1].isdigit():
        raise _bad(raw, "the last label is all digits (not an IP address nor a DNS name)")
    value = ".".join((["*"] if wildcard else []) + ascii_labels)
    if len(value) > 253:
        raise _bad(raw, "longer than 253 characters")
    return HostName(value, False)


# Let's Encrypt's limit, and far more than a gateway credential needs (20,000 names made a 527 KB
# certificate that every TLS handshake would carry); more names belong under a wildcard or in
# several certificates.
MAX_SANS = 100


MAX_ORG_LENGTH = 64  # ub-organization-name in RFC 5280


def check_org(org: str) -> None:
    """A subject's organisation (O) as RFC 5280 bounds it, and on one line (every report of the
    subject shows it): refused with a UsageError otherwise."""
    if len(org) > MAX_ORG_LENGTH:
        raise UsageError(f"organisation {org[:20]!r}... is longer than {MAX_ORG_LENGTH} characters "
                         f"(RFC 5280's upper bound for O)")
    if not org.isprintable():
        raise UsageError(f"organisation {org!r} holds a control character")


def check_san_count(n: int) -> None:
    if n > MAX_SANS:
        raise UsageError(f"{n} host names: a certificate holds at most {MAX_SANS} (use a wildcard "
                         f"'*.example.com' or several certificates)")


def parse_hosts(raws: list[str] | tuple[str, ...] | list[HostName] | tuple[HostName, ...]) -> list[HostName]:
    """Validate many hosts; keep order, drop duplicates; at most :data:`MAX_SANS`."""
    distinct = list(dict.fromkeys(raws))
    if len(distinct) > 2 * MAX_SANS:  # far too many, however they are spelt: refused before any parsing
        check_san_count(len(distinct))
    out = list(dict.fromkeys(parse_host(raw) for raw in distinct))  # linear: 20,000 names took 15 s as a list scan
    check_san_count(len(out))
    return out


# A store name becomes a directory and, with --out, the file names NAME.crt and NAME.key: those
# must fit in a 255-byte file name.
MAX_STORE_NAME = 251
_STORE_NAME = re.compile(r"[A-Za-z0-9*_.-]+")


def safe_store_name(raw: str) -> str:
    """A name used as a directory in the store: never escapes it, never hidden. Any host name
    fits, IPv6 literals included (their ':' is harmless in a file name)."""
    if not raw or raw in (".", "..") or raw.startswith(".") or ".." in raw or not (
            _STORE_NAME.fullmatch(raw) or _is_ipv6(raw)):
        raise UsageError(f"invalid name {raw!r}: use letters, digits, '.', '-', '_' and '*'")
    stored = raw.replace("*", "_wildcard_") if raw.startswith("*") else raw
    if len(stored) > MAX_STORE_NAME:
        raise UsageError(f"invalid name {raw[:20]!r}...: {len(stored)} characters, and a store name has at most "
                         f"{MAX_STORE_NAME} (NAME.key must fit in a file name): choose a shorter one "
                         f"(issue and sign: --name NAME)")
    return stored


def _is_ipv6(raw: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(raw), ipaddress.IPv6Address) and str(ipaddress.ip_address(raw)) == raw
    except ValueError:
        return False
