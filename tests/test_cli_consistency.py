"""One consistent CLI: the same option means the same thing, and says the same things, in every
command. Each test runs the real ``kimpki`` as a user would; the rules that must hold for every
command find those commands by walking the click tree, so a new command is held to them too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from tests.conftest import ROOT, Kimpki, assert_one_line_error, openssl
from tests.istio_helpers import DEPLOYMENT_FILE as DEPLOYMENT  # the ingress gateway Deployment
from tests.kubeapi.fixtures import kube_api  # noqa: F401 (a fixture)
from tests.tlspeers import Issued, TLSServer, free_port


# ------------------------------------------------------------------------------------- helpers
def commands() -> dict[tuple[str, ...], click.Command]:
    """Every leaf command of ``kimpki``, by its words: ``("ca", "init")``."""
    from kimpki.cli.main import cli

    found: dict[tuple[str, ...], click.Command] = {}

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), path + (name,))
        else:
            found[path] = cmd

    walk(cli, ())
    return found


def option(cmd: click.Command, name: str) -> click.Option | None:
    return next((p for p in cmd.params if isinstance(p, click.Option) and name in p.opts), None)


def with_option(name: str) -> set[tuple[str, ...]]:
    return {path for path, cmd in commands().items() if option(cmd, name) is not None}


def make_site(k: Kimpki, deploy: Path) -> None:
    """CA example.com, a server and a client certificate, and a folder of manifests."""
    k.ok("ca", "init", "example.com")
    k.ok("issue", "kim.example.com")
    k.ok("issue", "--client", "kim-client.example.com")
    deploy.mkdir()
    (deploy / "kim-credential.yaml").write_text(
        k.ok("secret", "create", "kim-credential", "--cert", "kim.example.com", "--dry-run", "-o", "yaml").out)
    (deploy / "gateway.yaml").write_text(
        k.ok("gateway", "render", "--host", "kim.example.com", "--credential", "kim-credential").out)


def make_csr(where: Path) -> Path:
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", "/CN=csr.example.com", "-keyout", where / "csr.key", "-out", where / "csr.pem")
    return where / "csr.pem"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Kimpki:
    """A home with example.com, kim.example.com, kim-client.example.com; ``site.cwd / "deploy"``
    holds its credential Secret and Gateway. Tests using it only read."""
    base = tmp_path_factory.mktemp("site")
    (base / "work").mkdir()
    k = Kimpki(base / "home", base / "work")
    make_site(k, base / "work" / "deploy")
    return k


# ------------------------------------------------------------------------------------- words (§2)
def test_no_help_text_says_seed():
    """Users never saw "the seed": no --help of any command, group or the root says it."""
    from kimpki.cli.main import cli

    def helps(cmd: click.Command, path: tuple[str, ...], parent: click.Context | None = None):
        # Contexts as click makes them (the root's -h/--help inherited): click caches a command's
        # help option at its first use, and a bare context would leave later `kimpki X -h` refused.
        ctx = click.Context(cmd, parent=parent, info_name=path[-1] if path else "kimpki", **cmd.context_settings)
        yield path, cmd.get_help(ctx)
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                yield from helps(cmd.get_command(ctx, name), path + (name,), ctx)

    said = [" ".join(p) or "kimpki" for p, text in helps(cli, ()) if re.search(r"\bseed", text, re.I)]
    assert said == []


def test_no_product_file_says_seed():
    """The product's own files (code, README, policies, scripts) say "the manual steps"."""
    files = [p for d in ("kimpki", "policies", "scripts") for p in (ROOT / d).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".json")]
    said = [f"{p.relative_to(ROOT)}:{n}" for p in files + [ROOT / "README.md"]
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if re.search(r"\bseed\b", line, re.I)]
    assert said == []


# ------------------------------------------------------------------------------------- no kubeconfig
@pytest.mark.parametrize("args", [["rotate", "kim-credential"], ["renew"], ["status", "--cluster"],
                                  ["ca", "rotate", "example.com"]], ids=" ".join)
def test_without_a_kubeconfig_the_error_names_the_manifests_folder(kimpki, tmp_path, args):
    for var in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        kimpki.env.pop(var, None)
    kimpki.env["HOME"] = str(tmp_path)  # no ~/.kube/config
    kimpki.ok("ca", "init", "example.com")
    res = kimpki(*args)
    assert_one_line_error(res, 1, "no Kubernetes configuration found", "--manifests DIR")
    assert res.out == ""


# ------------------------------------------------------------------------------------- --json
def test_every_json_option_prints_one_object(kimpki, tmp_path, kube_api):
    """--json is one JSON object for every command that has it; a list is {"items": [...]}."""
    deploy = kimpki.cwd / "deploy"
    make_site(kimpki, deploy)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
            "-subj", "/CN=imported", "-keyout", tmp_path / "imported.key", "-out", tmp_path / "imported.crt")
    csr = make_csr(tmp_path)
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies, ignore=shutil.ignore_patterns("out"))
    declared = Kimpki(tmp_path / "policy-home", kimpki.cwd)  # policies/ declares its own example.com
    kube = ["--kubeconfig", kube_api.kubeconfig_path]
    gateway_file = deploy / "gateway.yaml"
    recipes = {  # run in this order; the lists are what a user would type
        ("ca", "init"): ["ca", "init", "second"],
        ("ca", "import"): ["ca", "import", "imported", "--cert", tmp_path / "imported.crt",
                           "--key", tmp_path / "imported.key"],
        ("ca", "rotate"): ["ca", "rotate", "example.com", "--manifests", deploy],
        ("ca", "retire"): ["ca", "retire", "example.com", "--manifests", deploy, "--dry-run"],
        ("issue",): ["issue", "json.example.com"],
        ("sign",): ["sign", csr, "--name", "from-csr"],
        ("ca", "list"): ["ca", "list"],
        ("list",): ["list"],
        ("inspect",): ["inspect", "kim.example.com"],
        ("secret", "create"): ["secret", "create", "kim-credential", "--cert", "kim.example.com", "--dry-run"],
        ("gateway", "render"): ["gateway", "render", "--host", "kim.example.com", "--credential", "kim-credential"],
        ("gateway", "apply"): ["gateway", "apply", "-f", gateway_file, *kube],
        ("gateway", "mount"): ["gateway", "mount", "--secret", "s", "--mount-path", "/etc/istio/s", "--local",
                               "-f", DEPLOYMENT],
        ("gateway", "unmount"): ["gateway", "unmount", "--secret", "s", "--local", "-f", DEPLOYMENT],
        ("check",): ["check", "-f", deploy],
        ("verify",): ["verify", "kim.example.com", "--connect", f"127.0.0.1:{free_port()}", "--ca", "example.com"],
        ("rotate",): ["rotate", "kim-credential", "--manifests", deploy],
        ("renew",): ["renew", "--manifests", deploy, "--dry-run"],
        ("status",): ["status"],
        ("cron", "render"): ["cron", "render", "--manifests", deploy],
        ("revoke",): ["revoke", "from-csr", "--reason", "superseded"],
        ("crl",): ["crl", "example.com-g2"],
        ("gc",): ["gc", "--dry-run"],
        ("plan",): ["plan", "-f", policies],
        ("apply",): ["apply", "-f", policies],
    }
    assert set(recipes) == with_option("--json"), "every command with --json needs a recipe here"
    lists = {("ca", "list"), ("list",)}
    for path, args in recipes.items():
        k = declared if path in {("plan",), ("apply",)} else kimpki
        res = k(*args, "--json")
        assert "Traceback" not in res.err and res.out, (path, res.code, res.err)
        doc = json.loads(res.out)
        assert isinstance(doc, dict), (path, type(doc))
        if path in lists:
            assert set(doc) == {"items"} and doc["items"], path
    # verify --all is a list too (its failures still print the whole report)
    res = kimpki("verify", "--all", "--connect", f"127.0.0.1:{free_port()}", "--json")
    hosts = [r["host"] for r in json.loads(res.out)["items"]]
    assert res.code == 1 and hosts == ["csr.example.com", "json.example.com", "kim.example.com"]


# ------------------------------------------------------------------------------------- -o and --json
def test_every_command_that_prints_objects_takes_the_same_output_options():
    """Kubernetes objects are printed with -o yaml|json, as kubectl does, and --json is the summary
    object; other output formats (status -o prometheus) keep -o's spelling and also take --json."""
    with_o = with_option("-o")
    printing = {p for p in with_o if "yaml" in option(commands()[p], "-o").type.choices}
    assert {("secret", "create"), ("gateway", "render"), ("gateway", "mount"), ("gateway", "unmount"),
            ("cron", "render")} <= printing
    for path in with_o:
        cmd = commands()[path]
        out = option(cmd, "-o")
        assert out.opts == ["-o", "--output"], path
        assert option(cmd, "--json") is not None, f"kimpki {' '.join(path)} has -o but no --json"
        if path in printing:
            assert list(out.type.choices) == ["yaml", "json"], path


def test_gateway_render_takes_json_and_refuses_both(site):
    d = site.json("gateway", "render", "--host", "kim.example.com", "--credential", "kim-credential")
    assert d["gateway"] == "kim-gateway" and [o["kind"] for o in d["objects"]] == ["Gateway", "VirtualService"]
    assert d["servers"] == [{"hosts": ["kim.example.com"], "port": "https", "mode": "SIMPLE",
                             "credential": "kim-credential"}]
    as_json = yaml.safe_load(site.ok("gateway", "render", "--host", "kim.example.com", "--credential",
                                     "kim-credential", "-o", "json").out)
    assert as_json["items"] == d["objects"]
    for args in (["gateway", "render", "--host", "kim.example.com", "--credential", "kim-credential"],
                 ["secret", "create", "kim-credential", "--cert", "kim.example.com", "--dry-run"]):
        assert_one_line_error(site(*args, "-o", "json", "--json"), 2, "give either -o/--output", "or --json")


# ------------------------------------------------------------------------------------- --manifests and -f
def test_f_and_manifests_each_have_one_meaning():
    """-f/--filename is always files to read; --manifests is always the folder of manifests that
    stands in for a cluster. Where a command reads that folder with -f, --manifests is its alias."""
    for path, cmd in commands().items():
        f, manifests = option(cmd, "-f"), option(cmd, "--manifests")
        if f is not None:
            assert "--filename" in f.opts, path
        if f is not None and manifests is not None:
            assert f is manifests, f"kimpki {' '.join(path)}: -f and --manifests are different options"
    assert option(commands()[("check",)], "--manifests") is not None
    assert option(commands()[("gateway", "serve")], "--manifests") is not None


def test_check_and_gateway_serve_read_the_folder_under_either_spelling(site, tmp_path):
    by_f = site("check", "-f", "deploy", "--json")
    by_manifests = site("check", "--manifests", "deploy", "--json")
    assert by_f.code == by_manifests.code == 0
    assert json.loads(by_f.out)["findings"] == json.loads(by_manifests.out)["findings"]
    # A folder with a Secret but no Gateway: both spellings read it, and say so before any Envoy starts.
    shutil.copy(site.cwd / "deploy" / "kim-credential.yaml", tmp_path)
    for spelling in ("-f", "--manifests"):
        assert_one_line_error(site("gateway", "serve", spelling, tmp_path, timeout=60), 1,
                              "no Gateway server can be served")


# ------------------------------------------------------------------------------------- --days
def test_every_days_option_takes_the_same_values(kimpki, tmp_path):
    deploy = kimpki.cwd / "deploy"
    make_site(kimpki, deploy)
    csr = make_csr(tmp_path)
    recipes = {
        ("ca", "init"): lambda n: ["ca", "init", f"short-{n}"],
        ("ca", "rotate"): lambda n: ["ca", "rotate", "example.com", "--manifests", deploy, "--dry-run"],
        ("issue",): lambda n: ["issue", f"d{n}.example.com"],
        ("sign",): lambda n: ["sign", csr, "--name", f"csr-{n}"],
        ("rotate",): lambda n: ["rotate", "kim-credential", "--manifests", deploy, "--dry-run"],
    }
    assert set(recipes) == with_option("--days")
    for n, (path, args) in enumerate(recipes.items()):
        kimpki.ok(*args(n), "--days", "0.5")
        kimpki.ok(*args(f"{n}h"), "--days", "12h")
        for bad, why in (("0", "the validity must be positive"), ("banana", "use a positive number of days"),
                         ("-1", "use a positive number of days")):
            assert_one_line_error(kimpki(*args(n), "--days", bad), 2, f"invalid --days '{bad}': {why}")
    half = kimpki.json("ca", "init", "half", "--days", "0.5")
    assert half["not_after"] < kimpki.json("issue", "h.example.com", "--days", "1")["not_after"]


# ------------------------------------------------------------------------------------- unknown CA
@pytest.mark.parametrize("args", [
    ["issue", "x.example.com", "--ca", "nosuch"],
    ["verify", "kim.example.com", "--connect", "127.0.0.1:1", "--ca", "nosuch"],
    ["inspect", "kim.example.com", "--ca", "nosuch"],
    ["secret", "create", "c", "--cert", "kim.example.com", "--mutual", "--ca", "nosuch", "--dry-run"],
    ["rotate", "kim-credential", "--manifests", "deploy", "--new-ca", "nosuch", "--dry-run"],
    ["ca", "init", "child", "--parent", "nosuch"],
    ["ca", "rotate", "nosuch", "--manifests", "deploy", "--dry-run"],
    ["ca", "retire", "nosuch", "--manifests", "deploy", "--dry-run"],
    ["cron", "render", "--kubernetes", "--image", "registry.example.com/kimpki:1", "--ca", "nosuch"],
    ["crl", "nosuch"],
    ["revoke", "kim.example.com", "--ca", "nosuch"],
], ids=lambda a: " ".join(a[:2]))
def test_an_unknown_ca_exits_1_everywhere(site, args):
    assert_one_line_error(site(*args), 1, "no CA named 'nosuch'", "known: example.com")


def test_sign_with_an_unknown_ca_exits_1(site, tmp_path):
    assert_one_line_error(site("sign", make_csr(tmp_path), "--ca", "nosuch"), 1, "no CA named 'nosuch'")


# ------------------------------------------------------------------------------------- inspect NAME
def test_inspect_takes_a_name_from_list(site):
    listed = {r["name"]: r for r in site.json("list")["items"]}
    d = site.json("inspect", "kim.example.com", "--ca", "example.com")
    assert d["file"] == listed["kim.example.com"]["cert"]
    assert d["certificates"][0]["serial"] == listed["kim.example.com"]["serial"] and d["chain"]["ok"]
    assert "chain: OK against CA example.com" in site.ok("inspect", "kim-client.example.com", "--ca",
                                                          "example.com").out
    assert_one_line_error(site("inspect", "nosuch.example.com"), 2, "no such file, and no certificate of that name")


def test_inspect_of_a_name_creates_no_home(kimpki):
    assert_one_line_error(kimpki("inspect", "kim.example.com"), 2, "no such file")
    assert not kimpki.home.exists()


# ------------------------------------------------------------------------------------- verify
def test_verify_help_lists_every_reason_the_readme_lists(site):
    from kimpki.verify.report import Reason

    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"1 with a\s+one-line reason \(([^)]*)\)", readme).group(1)
    in_readme = set(re.findall(r"`([a-z_]+)`", listed))
    help_text = site.ok("verify", "--help").out
    in_help = set(re.search(r"Failure reasons[^:]*:\s*(.*?)\.\n", help_text, re.S).group(1).replace(",", " ").split())
    assert in_readme == in_help == {r.value for r in Reason} - {"bad_input"}


def test_verify_client_option_presents_a_certificate(site):
    text = " ".join(site.ok("verify", "--help").out.split())
    assert "--client NAME Present this client certificate" in text


def test_a_refused_client_certificate_is_said_as_client_certificate_refused(kimpki):
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("ca", "init", "other.test")
    server = kimpki.json("issue", "kim.example.com")
    kimpki.ok("issue", "--client", "outsider.example.com", "--ca", "other.test")
    with TLSServer(Issued(Path(server["cert"]), Path(server["key"])), client_ca=Path(server["ca"])) as srv:
        args = ["verify", "kim.example.com", "--connect", f"127.0.0.1:{srv.port}", "--ca", "example.com"]
        res = kimpki(*args, "--client", "outsider.example.com")
        assert_one_line_error(res, 1, "kimpki: error: client_certificate_refused: the server refused client "
                                      "certificate outsider.example.com")
        assert res.out.splitlines()[-1] == "FAIL (client_certificate_refused)"
        # Without a certificate, a MUTUAL gateway's refusal says how to present one.
        res = kimpki(*args)
        assert_one_line_error(res, 1, "client_certificate_refused: the server refused a client without a "
                                      "certificate", "--client NAME", "--cert FILE --key FILE")
    assert_one_line_error(kimpki(*args, "--mode", "mutual"), 2, "--client NAME", "--cert FILE --key FILE")


# ------------------------------------------------------------------------------------- renew-before
def test_a_renew_before_as_long_as_the_lifetime_is_said_once_per_run(site):
    deploy = site.cwd / "deploy"
    res = site("renew", "--manifests", deploy, "--dry-run", "--renew-before", "100d")
    assert res.code == 0
    said = [line for line in res.err.splitlines() if "renew-before 100d is not shorter than the lifetime" in line]
    assert len(said) == 1 and "last third" in said[0] and "cert-manager" in said[0], res.err
    d = json.loads(site("renew", "--manifests", deploy, "--dry-run", "--renew-before", "100d", "--json").out)
    assert len(d["warnings"]) == 1 and "renew-before 100d" in d["warnings"][0]
    assert d["results"][0]["renew_before_fallback"] is True
    res = site("status", "--manifests", deploy, "--renew-before", "100d", "--json")
    assert len(json.loads(res.out)["warnings"]) == 1 and res.err.count("renew-before 100d") == 1
    quiet = site("renew", "--manifests", deploy, "--dry-run", "--renew-before", "30d", "--json")
    assert json.loads(quiet.out)["warnings"] == [] and "not shorter" not in quiet.err


# ------------------------------------------------------------------------------------- demo, README
def test_the_demo_header_names_options_the_demo_takes():
    header = (ROOT / "scripts" / "demo").read_text().splitlines()[1]
    promised = re.findall(r"\[(--[a-z-]+)", header)
    assert promised, header
    helped = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--help"], capture_output=True,
                            text=True, check=True).stdout
    assert all(re.search(rf"^\s+{o}\b", helped, re.M) for o in promised), (promised, helped)


def test_the_quick_tour_issues_from_the_intermediate_it_makes(tmp_path):
    from tests.test_readme import block, run

    script = block("kimpki ca init example-issuing")
    assert "so the root can go offline" in script or "root can go offline" in script
    res = run(script, tmp_path, tmp_path / "home")
    assert res.returncode == 0, res.stderr + res.stdout
    k = Kimpki(tmp_path / "home", tmp_path)
    assert {r["ca"] for r in k.json("list")["items"]} == {"example-issuing"}


# ------------------------------------------------------------------------------------- damaged store
def test_a_garbage_inventory_is_a_damaged_store(kimpki):
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("issue", "kim.example.com")
    db = kimpki.home / "inventory.db"
    for extra in kimpki.home.glob("inventory.db-*"):
        extra.unlink()
    db.write_bytes(b"this is not SQLite " * 100)
    for args in (["list"], ["issue", "x.example.com"], ["ca", "list"], ["status"]):
        res = kimpki(*args)
        assert_one_line_error(res, 1, f"the kimpki store {kimpki.home} is damaged: {db} is not a readable SQLite "
                                      "inventory", "restore it from a backup", "kimpki ca import NAME")
        assert "internal error" not in res.err and "bug" not in res.err
    # What the message says to do works: a new home, the CA re-imported from the old one.
    damaged = kimpki.home.with_name("home.damaged")
    kimpki.home.rename(damaged)
    kimpki.ok("ca", "import", "example.com", "--cert", damaged / "cas/example.com/ca.crt",
              "--key", damaged / "cas/example.com/ca.key")
    kimpki.ok("issue", "kim.example.com")


def test_a_missing_ca_certificate_is_a_damaged_store_and_ca_import_restores_it(kimpki, tmp_path):
    ca = kimpki.json("ca", "init", "example.com")
    kept = tmp_path / "ca.crt"
    shutil.copy(ca["cert"], kept)
    Path(ca["cert"]).unlink()
    for args in (["issue", "kim.example.com"], ["ca", "list"],
                 ["verify", "kim.example.com", "--connect", "127.0.0.1:1", "--ca", "example.com"]):
        res = kimpki(*args)
        assert_one_line_error(res, 1, f"the kimpki store {kimpki.home} is damaged: {ca['cert']} is missing "
                                      "(CA 'example.com')", "from a backup",
                              "kimpki ca import example.com --cert FILE --key FILE")
    Path(ca["key"]).chmod(0o600)
    res = kimpki("ca", "import", "example.com", "--cert", kept, "--key", ca["key"])
    assert res.code == 0 and "restored its missing files" in res.err, res.err
    assert Path(ca["cert"]).read_bytes() == kept.read_bytes()
    assert kimpki.json("issue", "kim.example.com")["ca_name"] == "example.com"
    # Nothing missing: importing it again is the usual name clash.
    assert_one_line_error(kimpki("ca", "import", "example.com", "--cert", kept, "--key", ca["key"]), 1,
                          "already exists")
