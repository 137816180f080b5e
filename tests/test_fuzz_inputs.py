"""Mutated input through the real CLI: whatever a user or an attacker hands kimpki, it answers with
exit 0, or one clear error line and exit 1 or 2; never a traceback, never "internal error", never
a hang. Deterministic: every table row draws its cases from ``random.Random(SEED)``.

The cases run in this process (``kimpki.cli.main.main``, as tests/test_renew.py does), so a few
hundred cost seconds; a handful run the installed command too. A failure names the row, the case
number and the input file kept in pytest's tmp_path, so it can be replayed by hand.
"""

from __future__ import annotations

import base64
import copy
import datetime
import random
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from tests.conftest import ROOT, Result

SEED = 20261129
HANG_GUARD = 30  # seconds one in-process case may take before it counts as a hang (never reached)
CLEAN_EXITS = {0, 1, 2}


# --------------------------------------------------------------------------- running the CLI

def run_in_process(capsys, home: Path, *args) -> Result:
    """The real entry point in this process, its exit code and output; a case that runs longer
    than HANG_GUARD is stopped and reported as a hang."""
    from kimpki.cli.main import main

    def hang(*_):
        raise TimeoutError(f"kimpki {' '.join(map(str, args))} still running after {HANG_GUARD} s")

    capsys.readouterr()
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_GUARD)
    try:
        with pytest.raises(SystemExit) as e:
            main(["--home", str(home), *map(str, args)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    return Result(e.value.code or 0, out, err)


def problem(res: Result, reports: bool = False) -> str | None:
    """What breaks the promise in ``res``, else None. An error is one line, the last on stderr
    (the definition of tests/conftest.py's assert_one_line_error: our own "kimpki: error:" line or
    click's "Error:" line under its usage hint). ``reports``: exit 1 is the command's verdict
    (check's findings, renew's log of failed renewals), not an error line."""
    if res.code not in CLEAN_EXITS:
        return f"exit code {res.code!r}"
    if "Traceback" in res.err or "internal error" in res.err:
        return "a traceback or internal error"
    if res.code == 0 or (res.code == 1 and reports):
        return None
    lines = [line for line in res.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("kimpki: error:", "Error:"))]
    if len(errors) != 1 or lines[-1] is not errors[0]:
        return "not exactly one error line, last on stderr"
    return None


# --------------------------------------------------------------------------- a home to start from

@dataclass
class Material:
    home: Path  # a CA (example.com) with a server certificate, a revoked client and its CRL
    files: dict[str, bytes]  # valid inputs to mutate: certificates, CRLs, a staple, a CSR, a key
    manifests: dict[str, list[dict]]  # a folder of credential Secrets and a Gateway, as documents
    policies: list[dict]  # the shipped policies/, as documents


def _cli(home: Path, *args) -> str:
    proc = subprocess.run([sys.executable, "-m", "kimpki", "--home", str(home), *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> Material:
    base = tmp_path_factory.mktemp("material")
    home, out = base / "home", base / "out"
    _cli(home, "ca", "init", "example.com")
    _cli(home, "issue", "kim.example.com", "--out", out)
    _cli(home, "issue", "--client", "c.example.com")
    _cli(home, "revoke", "c.example.com")
    _cli(home, "crl", "example.com", "--out", out / "ca.crl")
    _cli(home, "crl", "example.com", "--der", "--out", out / "ca-der.crl")
    manifests = {
        "kim.yaml": _cli(home, "secret", "create", "kim-credential", "--cert", "kim.example.com", "--dry-run", "-o", "yaml"),
        "mutual.yaml": _cli(home, "secret", "create", "m-credential", "--cert", "kim.example.com", "--mutual",
                            "--ca-secret", "--dry-run", "-o", "yaml"),
        "stapled.yaml": _cli(home, "secret", "create", "s-credential", "--cert", "kim.example.com", "--ocsp-staple",
                             "--dry-run", "-o", "yaml"),
        "gateway.yaml": _cli(home, "gateway", "render", "--host", "kim.example.com", "--credential", "kim-credential"),
    }
    docs = {name: [d for d in yaml.safe_load_all(text) if d] for name, text in manifests.items()}
    staple = base64.b64decode(next(d for d in docs["stapled.yaml"] if d["kind"] == "Secret")["data"]["tls.ocsp-staple"])
    key = base / "csr.key"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-subj", "/CN=csr.example.com", "-addext", "subjectAltName=DNS:csr.example.com",
                    "-out", base / "req.csr"], check=True, capture_output=True)
    leaf = (out / "kim.example.com.crt").read_bytes()
    files = {"leaf.pem": leaf, "chain.pem": leaf + (out / "ca.crt").read_bytes(), "ca.pem": (out / "ca.crt").read_bytes(),
             "leaf.der": subprocess.run(["openssl", "x509", "-in", out / "kim.example.com.crt", "-outform", "DER"],
                                        check=True, capture_output=True).stdout,
             "crl.pem": (out / "ca.crl").read_bytes(), "crl.der": (out / "ca-der.crl").read_bytes(),
             "staple.der": staple, "req.csr": (base / "req.csr").read_bytes(),
             "ca.key": (home / "cas" / "example.com" / "ca.key").read_bytes()}
    policies = [d for f in sorted((ROOT / "policies").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return Material(home, files, docs, policies)


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch, tmp_path):
    """No case may reach a real cluster, nor read the caller's passphrase."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KIMPKI_CA_PASSPHRASE", raising=False)


# --------------------------------------------------------------------------- mutations of bytes

def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """One random damage: cut short, bits flipped, junk inserted, a piece cut out, doubled,
    a byte set to a boundary value, the PEM label changed, replaced by junk, or empty."""
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    i = rng.randrange(len(data))
    damage = rng.randrange(10)
    if damage == 0:
        return data[:i]
    if damage == 1:
        flipped = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if damage == 2:
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) + data[i:]
    if damage == 3:
        return data[:i] + data[rng.randrange(i, len(data) + 1):]
    if damage == 4:
        return data * rng.randrange(2, 20)
    if damage == 5:
        return data[:i] + bytes([rng.choice([0x00, 0x7F, 0x80, 0xFF, 0x30, 0x0A])]) + data[i + 1:]
    if damage == 6:
        label = rng.choice([b"X509 CRL", b"CERTIFICATE REQUEST", b"PRIVATE KEY", b"EC PRIVATE KEY", b"FOO", b""])
        return data.replace(b"CERTIFICATE", label)
    if damage == 7:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
    if damage == 8:
        return b""
    return mutate_der_in_pem(rng, data)


_PEM_BLOCK = re.compile(rb"(-----BEGIN [A-Z0-9 ]+-----\n)(.*?)(-----END [A-Z0-9 ]+-----)", re.S)


def mutate_der_in_pem(rng: random.Random, data: bytes) -> bytes:
    """Damage the DER inside one PEM block and encode it again: the armour stays valid, so the
    damage reaches the ASN.1 parser (a key off its curve, a name that is not DER, ...)."""
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        return mutate_bytes(rng, data) if data else data
    m = rng.choice(blocks)
    try:
        der = base64.b64decode(m.group(2))
    except ValueError:
        return data
    if not der:
        return data
    flipped = bytearray(der)
    for _ in range(rng.randrange(1, 4)):
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    return data[:m.start()] + m.group(1) + base64.encodebytes(bytes(flipped)) + m.group(3) + data[m.end():]


# --------------------------------------------------------------------------- mutations of documents

ODD_VALUES = [0, -1, 2**63, 10**400, 1.5, float("nan"), float("inf"), True, None, "", " ", "x" * 5000,
              "é\u202e\u0000", "日本語.example.com", [], {}, [[[[[]]]]], {"a": {"b": {"c": 1}}},
              datetime.date(2024, 1, 1), datetime.datetime(2024, 1, 1, 2, 3), b"\x00\xff", "90d", "-5d", "1e999d",
              "33.3333%", "200%", "nan%", "*", "*.*.example.com", "::1", "a" * 64 + ".com", "MUTUAL", "tls",
              "file-mounted", "rsa-1024", "25:00", "Mars/Olympus", "../../etc", "/", "0x10", ".inf", "36501d",
              "configmap://a/b", "kim.example.com,*.*", "9999-12-31T23:59:59Z", "zz"]


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def _at(node, path):
    for p in path:
        node = node[p]
    return node


def mutate_documents(rng: random.Random, docs: list[dict], leaf_value: Callable | None = None) -> list[dict]:
    """One to three changes anywhere in ``docs``: a value replaced (by an odd value, or by
    ``leaf_value(rng, old)``), a field dropped, or another subtree copied in."""
    docs = copy.deepcopy(docs)
    for _ in range(rng.randrange(1, 4)):
        doc = rng.choice(docs)
        path = rng.choice([p for p in _paths(doc) if p])
        parent, key = _at(doc, path[:-1]), path[-1]
        r = rng.random()
        if r < 0.6:
            old = parent[key]
            parent[key] = leaf_value(rng, old) if leaf_value else copy.deepcopy(rng.choice(ODD_VALUES))
        elif r < 0.8:
            del parent[key]
        else:
            other = rng.choice(docs)
            parent[key] = copy.deepcopy(_at(other, rng.choice(list(_paths(other)))))
    return docs


def secret_value(rng: random.Random, old):
    """A Secret's base64 value damaged inside (the certificate, key, CRL or staple it holds), or
    an odd value in its place."""
    if isinstance(old, str) and len(old) > 40 and rng.random() < 0.8:
        try:
            raw = base64.b64decode(old, validate=True)
        except ValueError:
            raw = old.encode()
        damaged = mutate_der_in_pem(rng, raw) if raw.startswith(b"-----") else mutate_bytes(rng, raw)
        return base64.b64encode(damaged).decode()
    return copy.deepcopy(rng.choice(ODD_VALUES))


def policy_text(rng: random.Random, material: Material) -> bytes:
    """The shipped policies with a structural change (70%), or damaged as text: bytes, a line
    duplicated (a duplicate key), a tab for indentation, cut short, or a recursive alias first."""
    if rng.random() < 0.7:
        return yaml.dump_all(mutate_documents(rng, material.policies), allow_unicode=rng.random() < 0.5,
                             default_flow_style=rng.choice([None, True, False])).encode()
    text = yaml.dump_all(material.policies)
    lines = text.splitlines(True)
    i = rng.randrange(len(lines))
    damage = rng.randrange(5)
    if damage == 0:
        return mutate_bytes(rng, text.encode())
    if damage == 1:
        return "".join(lines[:i] + [lines[rng.randrange(len(lines))]] + lines[i:]).encode()
    if damage == 2:
        return "".join(lines[:i] + [lines[i].replace("  ", "\t", 1)] + lines[i + 1:]).encode()
    if damage == 3:
        return text[:rng.randrange(len(text))].encode()
    return ("x: &a [" + "*a, " * 3 + "]\n---\n" + text).encode()


# --------------------------------------------------------------------------- option values

HOSTS = ["kim.example.com", "*.example.com", "a.*.example.com", "*", "foo*.example.com", "example.com.", ".example.com",
         "a..b", "a" * 64 + ".com", ".".join(["a" * 63] * 4), "xn--", "xn--zz.com", "bücher.de", "ß.de", "\u200d.com",
         "ｅｘａｍｐｌｅ.com", "💩.la", "::1", "[::1]", "::ffff:1.2.3.4", "fe80::1%eth0", "1.2.3", "256.1.1.1", "0x7f.1",
         "1.2.3.4/24", "a b.com", "a\tb.com", "a\nb.com", "a\x00b.com", "a/b", "-a.com", "a-.com", "_a.com", "", " ",
         "2001:db8::1::2", "localhost", "*.com", "*.1.2.3.4"]
DURATIONS = ["90", "0", "-1", "0.5", "1e3", "1e999", "nan", "inf", "12h", "2w", "90x", "d", "1.5.5", "9" * 30,
             "0x10", "1_000", "١٢", "１２", " 90", "", "1h30m", "3600s", "36500.0001", "12H", "-0", "1 d"]
WINDOWS = ["30d", "25%", "0%", "100%", "101%", "-1%", "%", "nan%", "inf%", "1e999%", "33.333333333333333333%", "0",
           "99999999999d", "abc", "", "5%%", "50 %", "1e999d"]
SCHEDULES = ["17 3 * * *", "@daily", "@reboot", "* * * * * *", "60 * * * *", "*/0 * * * *", "1-100 * * * *", "",
             "5-1 * * * *", "*/99999999999999999999 * * * *", "0 0 31 2 *", "0\t0 * * *", "9" * 400 + " * * * *"]


def pick(rng: random.Random, values: list[str]) -> str:
    """A value from ``values``, now and then with a byte damaged (kept as valid UTF-8 text)."""
    value = rng.choice(values)
    if rng.random() < 0.15:
        value = mutate_bytes(rng, value.encode()).decode("utf-8", "replace")
    return value.replace("\x00", "")  # an argument cannot hold NUL (execve): only the in-process path could


# --------------------------------------------------------------------------- the table

@dataclass
class Row:
    """``cases`` inputs for one command: ``make(rng, material, folder)`` writes the input into
    ``folder`` and returns the command's arguments."""

    make: Callable[[random.Random, Material, Path], list]
    cases: int
    reports: bool = False  # exit 1 is the command's verdict (a report), not an error line


def file_input(source: str, *command: str) -> Callable:
    """``command`` with ``{}`` replaced by a damaged copy of material file ``source``."""
    def make(rng, material, folder):
        f = folder / "input"
        f.write_bytes(mutate_bytes(rng, material.files[source]))
        return [str(f) if a == "{}" else a for a in command]
    return make


def manifests_input(*command: str) -> Callable:
    """``command`` on a folder of the material's manifests, one to three values changed (mostly
    inside the Secrets' data)."""
    def make(rng, material, folder):
        deploy = folder / "deploy"
        deploy.mkdir(mode=0o700)
        for name, docs in material.manifests.items():
            changed = mutate_documents(rng, docs, secret_value) if rng.random() < 0.6 else docs
            (deploy / name).write_text(yaml.safe_dump_all(changed))
            (deploy / name).chmod(0o600)
        return [str(deploy) if a == "{}" else a for a in command]
    return make


def policy_input(*command: str) -> Callable:
    def make(rng, material, folder):
        policies = folder / "policies"
        policies.mkdir()
        (policies / "policy.yaml").write_bytes(policy_text(rng, material))
        return [str(policies) if a == "{}" else a for a in command]
    return make


def options(build: Callable[[random.Random], list]) -> Callable:
    return lambda rng, material, folder: build(rng)


ROWS = {
    # certificates, CRLs, OCSP responses, CSRs and keys, damaged
    "inspect leaf": Row(file_input("leaf.pem", "inspect", "{}"), 25),
    "inspect chain": Row(file_input("chain.pem", "inspect", "{}"), 15),
    "inspect DER": Row(file_input("leaf.der", "inspect", "{}", "--ca", "example.com"), 25),
    "inspect CRL": Row(file_input("crl.pem", "inspect", "{}", "--ca", "example.com"), 15),
    "inspect DER CRL": Row(file_input("crl.der", "inspect", "{}"), 15),
    "inspect staple": Row(file_input("staple.der", "inspect", "{}", "--ca", "example.com"), 15),
    "inspect --ca file": Row(file_input("ca.pem", "inspect", "kim.example.com", "--ca", "{}", "--json"), 10),
    "sign": Row(file_input("req.csr", "sign", "{}", "--ca", "example.com"), 20),
    "ca import --cert": Row(lambda rng, m, folder: _import(rng, m, folder, damaged="ca.pem"), 10),
    "ca import --key": Row(lambda rng, m, folder: _import(rng, m, folder, damaged="ca.key"), 10),
    # documents
    "plan": Row(policy_input("plan", "-f", "{}"), 30),
    "apply --dry-run": Row(policy_input("apply", "-f", "{}", "--dry-run", "--json"), 15),
    "status --manifests": Row(manifests_input("status", "--manifests", "{}"), 15),
    "status -o prometheus": Row(manifests_input("status", "-o", "prometheus", "--manifests", "{}"), 10),
    "renew --dry-run": Row(manifests_input("renew", "--dry-run", "--manifests", "{}"), 15, reports=True),
    "check": Row(manifests_input("check", "-f", "{}"), 15, reports=True),
    "gateway mount --local": Row(lambda rng, m, folder: _deployment(rng, folder, "mount", "--secret", "s",
                                                                    "--mount-path", "/etc/s"), 40),
    "gateway unmount --local": Row(lambda rng, m, folder: _deployment(rng, folder, "unmount", "--secret", "a"), 20),
    "gateway apply (checks only)": Row(lambda rng, m, folder: _gateway_apply(rng, m, folder), 15),
    # option values
    "issue HOST...": Row(options(lambda rng: ["issue", *[pick(rng, HOSTS) for _ in range(rng.randrange(1, 4))]]), 20),
    "issue --days": Row(options(lambda rng: ["issue", "kim.example.com", "--days", pick(rng, DURATIONS)]), 10),
    "issue --client --name": Row(options(lambda rng: ["issue", "--client", pick(rng, HOSTS), "--name",
                                                      pick(rng, HOSTS)]), 10),
    "ca init": Row(options(lambda rng: ["ca", "init", pick(rng, HOSTS), "--days", pick(rng, DURATIONS),
                                        "--common-name", pick(rng, HOSTS + ["x" * 65])]), 10),
    "status --renew-before --jitter": Row(options(lambda rng: ["status", "--renew-before", pick(rng, WINDOWS),
                                                               "--jitter", pick(rng, WINDOWS)]), 10),
    "renew windows": Row(lambda rng, m, folder: ["renew", "--manifests", folder, "--dry-run", "--renew-before",
                                                 pick(rng, WINDOWS), "--jitter", pick(rng, WINDOWS)], 10,
                         reports=True),
    "cron render": Row(options(lambda rng: ["cron", "render", "--schedule", pick(rng, SCHEDULES),
                                            "--renew-before", pick(rng, WINDOWS)]), 10),
    "crl --next-update": Row(options(lambda rng: ["crl", "example.com", "--next-update", pick(rng, DURATIONS)]), 8),
    "revoke --serial": Row(options(lambda rng: ["revoke", "--serial", pick(rng, ["0", "-1", "zz", "f" * 100, "",
                                                                              "0x1", "1" * 5000])]), 8),
    "gateway render": Row(options(lambda rng: ["gateway", "render", "--host", pick(rng, HOSTS), "--credential",
                                               pick(rng, HOSTS)]), 10),
    "secret create": Row(options(lambda rng: ["secret", "create", pick(rng, HOSTS), "--cert", "kim.example.com",
                                              "--dry-run", "-n", pick(rng, HOSTS)]), 8),
}


DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
              "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}},
                       "template": {"metadata": {"labels": {"istio": "ingressgateway"}},
                                    "spec": {"containers": [{"name": "istio-proxy", "image": "proxyv2",
                                                             "volumeMounts": [{"name": "a", "mountPath": "/a"}]}],
                                             "volumes": [{"name": "a", "secret": {"secretName": "a"}}]}}}}


def _deployment(rng, folder, *command):
    """gateway (un)mount --local of a changed ingress gateway Deployment manifest."""
    f = folder / "deployment.yaml"
    f.write_text(yaml.safe_dump_all(mutate_documents(rng, [DEPLOYMENT])))
    return ["gateway", *command, "--local", "-f", f]


def _gateway_apply(rng, material, folder):
    """gateway apply of a changed Gateway: refused or checked before the (absent) cluster is asked."""
    f = folder / "gateway.yaml"
    f.write_text(yaml.safe_dump_all(mutate_documents(rng, material.manifests["gateway.yaml"])))
    return ["gateway", "apply", "-f", f, "--kubeconfig", folder / "no-kubeconfig"]


def _import(rng, material, folder, damaged: str):
    """ca import of the material's CA certificate and key, one of them damaged."""
    for name in ("ca.pem", "ca.key"):
        data = material.files[name]
        (folder / name).write_bytes(mutate_bytes(rng, data) if name == damaged else data)
    return ["ca", "import", "imported", "--cert", folder / "ca.pem", "--key", folder / "ca.key"]


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_mutated_input_is_answered_cleanly(capsys, material, tmp_path, row):
    rng = random.Random(f"{SEED}:{list(ROWS.values()).index(row)}")
    broken = []
    for case in range(row.cases):
        folder = tmp_path / f"case-{case}"
        folder.mkdir()
        home = folder / "home"  # each case its own copy: one case's certificates are not the next one's
        shutil.copytree(material.home, home)
        args = row.make(rng, material, folder)
        res = run_in_process(capsys, home, *args)
        why = problem(res, row.reports)
        if why:
            shown = " ".join(map(str, args))[:300]
            broken.append(f"case {case}: kimpki {shown}\n  {why}\n  stderr: {res.err[-600:]}")
    assert not broken, f"{len(broken)} of {row.cases} cases broke the promise:\n" + "\n".join(broken)


# --------------------------------------------------------------------------- the installed command

def _damaged(material: Material, name: str, seed: int) -> bytes:
    return mutate_der_in_pem(random.Random(seed), material.files[name])


SUBPROCESS_CASES = {
    "damaged leaf": lambda m, d: ["inspect", _write(d / "leaf.pem", _damaged(m, "leaf.pem", 1))],
    "damaged CSR": lambda m, d: ["sign", _write(d / "req.csr", _damaged(m, "req.csr", 2))],
    "damaged CRL": lambda m, d: ["inspect", _write(d / "crl.pem", _damaged(m, "crl.pem", 3)), "--ca", "example.com"],
    "a folder": lambda m, d: ["inspect", d],
    "a missing file": lambda m, d: ["sign", d / "missing.csr"],
    "a FIFO nobody writes to": lambda m, d: ["inspect", _fifo(d / "fifo")],
    "a FIFO as passphrase file": lambda m, d: ["issue", "kim.example.com", "--passphrase-file", _fifo(d / "pw")],
    "/dev/zero": lambda m, d: ["sign", "/dev/zero"],
    "a policy of junk": lambda m, d: ["plan", "-f", _write(d / "p.yaml", bytes(range(256)) * 4)],
    "a host with a newline": lambda m, d: ["issue", "kim.example.com\nevil.com"],
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fifo(path: Path) -> Path:
    import os

    os.mkfifo(path)
    return path


@pytest.mark.parametrize("make", SUBPROCESS_CASES.values(), ids=SUBPROCESS_CASES.keys())
def test_installed_command_answers_cleanly(kimpki, material, make):
    shutil.copytree(material.home, kimpki.home)
    args = make(material, kimpki.cwd)
    res = kimpki(*args, timeout=HANG_GUARD)  # subprocess.TimeoutExpired: a hang
    assert problem(res) is None, (problem(res), res.err)


def test_mutations_are_deterministic(material):
    """The same seed, the same cases: a failure reported once can be replayed."""
    def draw():
        rng = random.Random(f"{SEED}:0")
        return [mutate_bytes(rng, material.files["leaf.pem"]) for _ in range(20)]

    assert draw() == draw()
