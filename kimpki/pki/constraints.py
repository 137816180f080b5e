"""Name constraints of a CA, in the style of a Vault PKI role: which names and how long (pure).

A CA with constraints signs a leaf only when every host and the requested validity pass:

* ``allowed_domains`` (empty: any DNS name) with ``allow_bare_domains`` (the domain itself,
  ``example.com``) and ``allow_subdomains`` (any name below it, ``kim.example.com``,
  ``a.b.example.com``);
* ``allow_wildcards``: ``*.example.com`` at all; when allowed, the name the wildcard stands
  for (``x.example.com``) must itself be allowed as a subdomain;
* ``allow_ips``: IP address SANs;
* ``max_duration``: the validity from the moment of issuance (notAfter - now; the few minutes
  notBefore is backdated for clock skew do not count).

:func:`violations` returns one plain line per broken rule, naming the rule, so the caller can
refuse with the first one. The constraints are stored as JSON (:meth:`NameConstraints.to_json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

from kimpki.errors import UsageError
from kimpki.pki.names import HostName, parse_host


@dataclass(frozen=True)
class NameConstraints:
    allowed_domains: tuple[str, ...] = ()  # canonical DNS names (IDNA A-labels, lower case)
    allow_bare_domains: bool = True
    allow_subdomains: bool = True
    allow_wildcards: bool = False
    allow_ips: bool = False
    max_duration: timedelta | None = None

    def __post_init__(self) -> None:
        for d in self.allowed_domains:
            h = parse_host(d)
            if h.is_ip or h.value.startswith("*") or h.value != d:
                raise UsageError(f"allowed domain {d!r} must be a plain lower-case DNS name such as example.com")
        if self.max_duration is not None and self.max_duration <= timedelta(0):
            raise UsageError("maxDuration must be positive")

    # -- storage ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "allowed_domains": list(self.allowed_domains),
            "allow_bare_domains": self.allow_bare_domains,
            "allow_subdomains": self.allow_subdomains,
            "allow_wildcards": self.allow_wildcards,
            "allow_ips": self.allow_ips,
            "max_duration_seconds": int(self.max_duration.total_seconds()) if self.max_duration else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "NameConstraints":
        seconds = d.get("max_duration_seconds")
        return cls(allowed_domains=tuple(d.get("allowed_domains") or ()),
                   allow_bare_domains=bool(d.get("allow_bare_domains", True)),
                   allow_subdomains=bool(d.get("allow_subdomains", True)),
                   allow_wildcards=bool(d.get("allow_wildcards", False)),
                   allow_ips=bool(d.get("allow_ips", False)),
                   max_duration=timedelta(seconds=seconds) if seconds else None)

    @classmethod
    def from_json(cls, text: str) -> "NameConstraints":
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """One line for humans: ``domains example.com, bookinfo.com (bare, subdomains); no wildcards; ...``."""
        parts = []
        if self.allowed_domains:
            how = [w for w, on in (("bare", self.allow_bare_domains), ("subdomains", self.allow_subdomains)) if on]
            parts.append(f"domains {', '.join(self.allowed_domains)} ({', '.join(how) or 'none allowed'})")
        else:
            parts.append("any DNS name")
        parts.append("wildcards" if self.allow_wildcards else "no wildcards")
        parts.append("IPs" if self.allow_ips else "no IPs")
        if self.max_duration:
            parts.append(f"at most {format_duration(self.max_duration)}")
        return "; ".join(parts)


def format_duration(d: timedelta) -> str:
    """``timedelta(days=365)`` → ``365d``; ``12h``; ``90m``; ``45s`` (the largest exact unit)."""
    s = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _under(name: str, domain: str) -> bool:
    return name.endswith("." + domain)


def _dns_violation(c: NameConstraints, name: str, shown: str) -> str | None:
    """Why DNS name ``name`` (``shown`` in messages) is refused, or None."""
    if not c.allowed_domains:
        return None
    domains = ", ".join(c.allowed_domains)
    if name in c.allowed_domains:
        if c.allow_bare_domains:
            return None
        return f"{shown} is an allowed domain itself, and allowBareDomains is false"
    parents = [d for d in c.allowed_domains if _under(name, d)]
    if parents:
        if c.allow_subdomains:
            return None
        return f"{shown} is a subdomain of {parents[0]}, and allowSubdomains is false"
    return f"{shown} is not in allowedDomains ({domains})"


def violations(c: NameConstraints, hosts: list[HostName] | tuple[HostName, ...],
               lifetime: timedelta | None = None) -> list[str]:
    """Every rule the request breaks, one line each (``[]``: allowed)."""
    out: list[str] = []
    for h in hosts:
        if h.is_ip:
            if not c.allow_ips:
                out.append(f"IP address {h.value} is not allowed (allowIPs is false)")
            continue
        if h.value.startswith("*."):
            if not c.allow_wildcards:
                out.append(f"wildcard {h.value} is not allowed (allowWildcards is false)")
                continue
            base = h.value[2:]
            # The wildcard stands for one more label below ``base``: judge it as such a subdomain.
            if c.allowed_domains and not any(base == d or _under(base, d) for d in c.allowed_domains):
                out.append(f"wildcard {h.value} is not in allowedDomains ({', '.join(c.allowed_domains)})")
            elif c.allowed_domains and not c.allow_subdomains:
                out.append(f"wildcard {h.value} covers subdomains, and allowSubdomains is false")
            continue
        problem = _dns_violation(c, h.value, h.value)
        if problem:
            out.append(problem)
    if c.max_duration is not None and lifetime is not None and lifetime > c.max_duration:
        out.append(f"a validity of {_approx(lifetime)} exceeds maxDuration {format_duration(c.max_duration)}")
    return out


def _approx(d: timedelta) -> str:
    s = d.total_seconds()
    if s >= 86400:
        days = s / 86400
        return f"{days:g}d" if days == int(days) else f"{days:.1f}d"
    return format_duration(timedelta(seconds=round(s)))
