"""CA name constraints: the pure rules (table tests), and their enforcement on every issuance."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kimpki.errors import UsageError
from kimpki.ops import constraints as stored
from kimpki.pki.constraints import NameConstraints, format_duration, violations
from kimpki.pki.names import parse_hosts
from kimpki.store import Store
from tests.conftest import assert_one_line_error

SEED = NameConstraints(allowed_domains=("example.com", "bookinfo.com"), max_duration=timedelta(days=365))


def check(c: NameConstraints, *hosts: str, days: float | None = None) -> list[str]:
    return violations(c, parse_hosts(list(hosts)), timedelta(days=days) if days is not None else None)


@pytest.mark.parametrize("constraints,hosts,days,expected", [
    # allowed: bare domains and subdomains of allowed domains (the defaults), within maxDuration
    (SEED, ["example.com"], 90, []),
    (SEED, ["kim.example.com", "kim-new.example.com", "bookinfo.com"], 365, []),
    (SEED, ["a.b.c.example.com"], None, []),
    (SEED, ["KIM.Example.COM"], None, []),  # compared in canonical (lower-case) form
    # refused names
    (SEED, ["evil.com"], None, ["evil.com is not in allowedDomains (example.com, bookinfo.com)"]),
    (SEED, ["notexample.com"], None, ["notexample.com is not in allowedDomains (example.com, bookinfo.com)"]),
    (SEED, ["example.com.evil.com"], None,
     ["example.com.evil.com is not in allowedDomains (example.com, bookinfo.com)"]),
    (SEED, ["kim.example.com", "evil.com", "x.evil.org"], None,
     ["evil.com is not in allowedDomains (example.com, bookinfo.com)",
      "x.evil.org is not in allowedDomains (example.com, bookinfo.com)"]),
    (NameConstraints(("example.com",), allow_bare_domains=False), ["example.com"], None,
     ["example.com is an allowed domain itself, and allowBareDomains is false"]),
    (NameConstraints(("example.com",), allow_subdomains=False), ["kim.example.com"], None,
     ["kim.example.com is a subdomain of example.com, and allowSubdomains is false"]),
    (NameConstraints(("example.com",), allow_subdomains=False), ["example.com"], None, []),
    # wildcards: off by default; when on, the name they stand for must be an allowed subdomain
    (SEED, ["*.example.com"], None, ["wildcard *.example.com is not allowed (allowWildcards is false)"]),
    (NameConstraints(("example.com",), allow_wildcards=True), ["*.example.com", "*.kim.example.com"], None, []),
    (NameConstraints(("example.com",), allow_wildcards=True), ["*.evil.com"], None,
     ["wildcard *.evil.com is not in allowedDomains (example.com)"]),
    (NameConstraints(("example.com",), allow_wildcards=True, allow_subdomains=False), ["*.example.com"], None,
     ["wildcard *.example.com covers subdomains, and allowSubdomains is false"]),
    # IPs: off by default
    (SEED, ["10.0.0.7"], None, ["IP address 10.0.0.7 is not allowed (allowIPs is false)"]),
    (SEED, ["::1"], None, ["IP address ::1 is not allowed (allowIPs is false)"]),
    (NameConstraints(("example.com",), allow_ips=True), ["10.0.0.7"], None, []),
    # no allowedDomains: any DNS name, the other rules still apply
    (NameConstraints(), ["anything.org"], 10000, []),
    (NameConstraints(), ["*.anything.org"], None, ["wildcard *.anything.org is not allowed (allowWildcards is false)"]),
    # maxDuration
    (SEED, ["kim.example.com"], 366, ["a validity of 366d exceeds maxDuration 365d"]),
    (SEED, ["kim.example.com"], 365.5, ["a validity of 365.5d exceeds maxDuration 365d"]),
    (NameConstraints(max_duration=timedelta(hours=12)), ["a.org"], 1, ["a validity of 1d exceeds maxDuration 12h"]),
    (SEED, ["evil.com"], 400, ["evil.com is not in allowedDomains (example.com, bookinfo.com)",
                               "a validity of 400d exceeds maxDuration 365d"]),
])
def test_violations(constraints, hosts, days, expected):
    assert check(constraints, *hosts, days=days) == expected


@pytest.mark.parametrize("bad", ["*.example.com", "10.0.0.1", "Example.com", "bad..name", ""])
def test_allowed_domains_must_be_plain_canonical_dns_names(bad):
    with pytest.raises(UsageError):
        NameConstraints(allowed_domains=(bad,))


def test_max_duration_must_be_positive():
    with pytest.raises(UsageError, match="maxDuration must be positive"):
        NameConstraints(max_duration=timedelta(0))


def test_json_round_trip_and_description():
    c = NameConstraints(("example.com", "bookinfo.com"), allow_bare_domains=False, allow_wildcards=True,
                        allow_ips=True, max_duration=timedelta(hours=36))
    assert NameConstraints.from_json(c.to_json()) == c
    assert NameConstraints.from_json(NameConstraints().to_json()) == NameConstraints()
    assert c.describe() == "domains example.com, bookinfo.com (subdomains); wildcards; IPs; at most 36h"
    assert SEED.describe() == ("domains example.com, bookinfo.com (bare, subdomains); no wildcards; no IPs; "
                               "at most 365d")


@pytest.mark.parametrize("seconds,text", [(86400 * 365, "365d"), (3600 * 36, "36h"), (90 * 60, "90m"), (61, "61s")])
def test_format_duration(seconds, text):
    assert format_duration(timedelta(seconds=seconds)) == text


# -- enforcement through the real CLI --------------------------------------------------------------

def constrain(home, ca: str, c: NameConstraints | None) -> None:
    store = Store.open(home)
    with store.locked():
        stored.save(store, ca, c)
    store.close()


@pytest.fixture
def constrained(kimpki):
    kimpki.ok("ca", "init", "example.com", "--org", "example Inc.")
    constrain(kimpki.home, "example.com", SEED)
    return kimpki


def test_issue_outside_the_constraints_is_refused_with_one_line(constrained):
    res = constrained("issue", "evil.com", "--ca", "example.com")
    assert_one_line_error(res, 1, "kimpki: error: CA 'example.com' refuses this certificate: "
                                  "evil.com is not in allowedDomains (example.com, bookinfo.com)")
    assert constrained.json("list")["items"] == []  # nothing was issued
    res = constrained("issue", "kim.example.com", "*.example.com", "10.0.0.7")
    assert_one_line_error(res, 1, "wildcard *.example.com is not allowed (allowWildcards is false) (and 1 more)")
    res = constrained("issue", "kim.example.com", "--days", "400")
    assert_one_line_error(res, 1, "a validity of 400d exceeds maxDuration 365d")
    res = constrained("issue", "--client", "kim-client.evil.org")
    assert_one_line_error(res, 1, "kim-client.evil.org is not in allowedDomains")


def test_issue_inside_the_constraints_works(constrained):
    d = constrained.json("issue", "kim.example.com", "--days", "365")
    assert d["dns_names"] == ["kim.example.com"]
    assert constrained.json("issue", "bookinfo.com", "--ca", "example.com")["ca_name"] == "example.com"


def test_sign_csr_outside_the_constraints_is_refused(constrained, tmp_path):
    from tests.conftest import openssl

    key, csr = tmp_path / "evil.key", tmp_path / "evil.csr"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
            "-out", csr, "-subj", "/CN=evil.com")
    res = constrained("sign", csr, "--ca", "example.com")
    assert_one_line_error(res, 1, "evil.com is not in allowedDomains")


def test_constraints_are_refused_before_the_passphrase_is_asked(kimpki, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    kimpki.ok("ca", "init", "example.com", "--passphrase-file", pw)
    constrain(kimpki.home, "example.com", SEED)
    # No passphrase given at all: the refusal names the rule, not the missing passphrase.
    res = kimpki("issue", "evil.com", "--ca", "example.com")
    assert_one_line_error(res, 1, "evil.com is not in allowedDomains")


def test_an_intermediate_cannot_step_around_its_roots_constraints(constrained):
    constrained.ok("ca", "init", "issuing", "--parent", "example.com")
    res = constrained("issue", "evil.com", "--ca", "issuing")
    assert_one_line_error(res, 1, "CA 'example.com' (above CA 'issuing') refuses this certificate: "
                                  "evil.com is not in allowedDomains")
    assert constrained.json("issue", "kim.example.com", "--ca", "issuing")["ca_name"] == "issuing"


def test_cleared_constraints_no_longer_apply(constrained):
    constrain(constrained.home, "example.com", None)
    assert constrained.json("issue", "evil.com", "--ca", "example.com")["dns_names"] == ["evil.com"]


def test_unconstrained_cas_are_unaffected(kimpki):
    kimpki.ok("ca", "init", "example.com")
    assert kimpki.json("issue", "evil.com", "10.0.0.7", "*.evil.com", "--days", "3000")["ip_addresses"] == ["10.0.0.7"]
