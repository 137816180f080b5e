"""Host-name rules: what goes into a certificate, and the one-line errors for what must not."""

import pytest

from kimpki.errors import UsageError
from kimpki.pki.names import parse_host, parse_hosts, safe_store_name
from tests.conftest import assert_one_line_error

GOOD = [
    ("kim.example.com", "kim.example.com", False),
    ("KIM.Example.COM", "kim.example.com", False),
    ("kim.example.com.", "kim.example.com", False),
    ("*.example.com", "*.example.com", False),
    ("bücher.example", "xn--bcher-kva.example", False),
    ("*.bücher.example", "*.xn--bcher-kva.example", False),
    ("xn--bcher-kva.example", "xn--bcher-kva.example", False),
    ("a-b.c-d.example", "a-b.c-d.example", False),
    ("localhost", "localhost", False),
    ("10.0.0.7", "10.0.0.7", True),
    ("::1", "::1", True),
    ("[2001:db8::1]", "2001:db8::1", True),
    ("2001:DB8:0:0::1", "2001:db8::1", True),
    ("a" * 63 + ".example.com", "a" * 63 + ".example.com", False),
]

BAD = [
    ("kim..example.com", "empty label"),
    (".example.com", "empty label"),
    ("a" * 64 + ".example.com", "longer than 63"),
    (".".join(["a" * 60] * 5), "longer than 253"),
    ("*.*.example.com", "wildcard"),
    ("foo*.example.com", "wildcard"),
    ("*", "bare"),
    ("*.com", "wildcard needs at least two labels"),
    ("-kim.example.com", "hyphen"),
    ("kim-.example.com", "hyphen"),
    ("kim example.com", "white space"),
    (" kim.example.com", "white space"),
    ("kim\u2003example.com", "white space"),  # an em space: any character str.isspace() accepts
    ("kim.example.com\u00a0", "white space"),
    ("kim/example.com", "'/'"),
    ("kim_1.example.com", "letters, digits and hyphens"),
    ("", "empty name"),
    ("1.2.3.999", "all digits"),
]


@pytest.mark.parametrize("raw,value,is_ip", GOOD)
def test_good_names(raw, value, is_ip):
    h = parse_host(raw)
    assert (h.value, h.is_ip) == (value, is_ip)


def test_a_parsed_name_is_taken_as_it_is():
    """A policy's hosts are parsed once, when it is loaded; issuing takes them as they are."""
    h = parse_host("KIM.Example.COM")
    assert parse_host(h) is h
    assert parse_hosts([h, "kim.example.com", parse_host("10.0.0.7")]) == [h, parse_host("10.0.0.7")]


@pytest.mark.parametrize("raw,why", BAD)
def test_bad_names_raise_usage_error(raw, why):
    with pytest.raises(UsageError) as e:
        parse_host(raw)
    assert why in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("raw", ["../x", "..", ".hidden", "a/b", "x" * 252, "*." + "x" * 242, "a:b", ""])
def test_store_names_never_escape_the_home(raw):
    with pytest.raises(UsageError):
        safe_store_name(raw)


@pytest.mark.parametrize("raw,why", [b for b in BAD if b[0] != ""] + [("", "empty name")])
def test_cli_rejects_bad_names_with_exit_2_and_one_line(kimpki, raw, why):
    res = kimpki("issue", "--", raw)
    assert_one_line_error(res, 2, why)
    # A rejected name must not leave a half-made store entry behind.
    assert not (kimpki.home / "certs").exists() or not any((kimpki.home / "certs").iterdir())


def test_cli_refuses_a_store_name_that_escapes_the_home(kimpki, tmp_path):
    res = kimpki("issue", "kim.example.com", "--name", "../x")
    assert_one_line_error(res, 2, "invalid name")
    assert not (kimpki.home.parent / "x").exists()
