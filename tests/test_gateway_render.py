"""Gateway and VirtualService rendering: the seed's four Gateways, Istio's CRD schemas for every
served version, Istio's Gateway rules, and `gateway apply` against the stand-in API server."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml

from kimpki.errors import UsageError
from kimpki.istio import gateway as g
from kimpki.istio import schema
from tests.conftest import ROOT, assert_one_line_error
from tests.istio_helpers import CRDS_FILE, SEED_SERVERS, SEED_VARIANTS, kubectl
from tests.kubeapi.fixtures import *  # noqa: F401,F403

VERSIONS = ("v1", "v1beta1", "v1alpha3")


def render(kimpki, *args) -> list[dict]:
    out = kimpki.ok("gateway", "render", *args, "-o", "json").json
    return out["items"] if out.get("kind") == "List" else [out]


# -- the seed's Gateways ----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(SEED_VARIANTS))
def test_seed_gateways_render_as_the_seed_wrote_them_and_match_every_served_schema(kimpki, variant):
    for version in VERSIONS:
        gw, vs = render(kimpki, *SEED_VARIANTS[variant], "--api-version", version)
        assert gw["apiVersion"] == vs["apiVersion"] == f"networking.istio.io/{version}"
        assert gw["metadata"] == {"name": "kim-gateway", "namespace": "istio-system"}
        assert gw["spec"] == {"selector": {"istio": "ingressgateway"}, "servers": SEED_SERVERS[variant]}
        hosts = [h for s in SEED_SERVERS[variant] for h in s["hosts"]]
        assert vs["metadata"]["name"] == "kim-gateway-service"
        assert vs["spec"] == {"hosts": hosts, "gateways": ["kim-gateway"], "http": [{"route": [{"destination": {
            "host": "kim-gateway-service.default.svc.cluster.local", "port": {"number": 8080}}}]}]}
        assert schema.validate(gw) == [] and schema.validate(vs) == []
        assert g.validate_gateway(gw) == []


def test_render_yaml_is_two_documents_and_names_follow_the_first_host(kimpki):
    out = kimpki.ok("gateway", "render", "--host", "bookinfo.com", "--file-mounted", "--mount-path",
                    "/etc/istio/ingressgateway-bookinfo-certs/", "--to-service", "productpage:9080",
                    "-n", "default", "--validate").out
    gw, vs = list(yaml.safe_load_all(out))
    assert gw["metadata"] == {"name": "bookinfo-gateway", "namespace": "default"}
    assert gw["spec"]["servers"][0]["tls"] == {
        "mode": "SIMPLE", "serverCertificate": "/etc/istio/ingressgateway-bookinfo-certs/tls.crt",
        "privateKey": "/etc/istio/ingressgateway-bookinfo-certs/tls.key"}
    # In the Service's own namespace a short name is right (the seed's bookinfo VirtualService).
    assert vs["metadata"]["name"] == "bookinfo-gateway-service"
    assert vs["spec"]["http"][0]["route"][0]["destination"] == {"host": "productpage", "port": {"number": 9080}}


def test_several_hosts_share_one_credential_and_port_names_stay_unique(kimpki):
    (gw, vs) = render(kimpki, "--host", "kim.example.com,www.kim.example.com", "--host", "*.kim.example.com",
                      "--credential", "kim-credential")
    assert [s["hosts"] for s in gw["spec"]["servers"]] == [["kim.example.com", "www.kim.example.com",
                                                            "*.kim.example.com"]]
    servers = [g.ServerSpec.sds([h], f"c{i}") for i, h in enumerate(["a.example.com", "a.example.org", "*.x.com"])]
    assert g.port_names(servers) == ["https-a", "https-a-2", "https-wildcard"]
    assert g.validate_gateway(g.render_gateway("x", servers)) == []


@pytest.mark.parametrize("args,needle", [
    (["--host", "a.com"], "--credential SECRET (SDS) or --file-mounted"),
    (["--host", "a.com", "--credential", "x", "--file-mounted"], "--credential SECRET (SDS) or --file-mounted"),
    (["--host", "a.com", "--host", "b.com", "--credential", "x", "--credential", "y", "--credential", "z"],
     "one --host per --credential"),
    (["--host", "a.com", "--credential", "x", "--mode", "SIMPLE", "--mode", "MUTUAL"], "--mode once"),
    (["--host", "a.com", "--file-mounted", "--mode", "MUTUAL"], "--ca-file-name"),
    (["--host", "a.com", "--credential", "x", "--ca-file-name", "a.crt"], "--ca-file-name is for --file-mounted"),
    (["--host", "a.com", "--credential", "x", "--to-service", "svc"], "SERVICE:PORT"),
    (["--host", "a.com", "--credential", "x", "--mount-path", "/p"], "--mount-path is for --file-mounted"),
])
def test_render_usage_errors_exit_2_with_one_line(kimpki, args, needle):
    assert_one_line_error(kimpki("gateway", "render", *args), 2, needle)


def test_render_validate_says_when_jsonschema_is_missing(kimpki):
    code = ("import sys, runpy\nsys.modules['jsonschema'] = None\n"
            "sys.argv = ['kimpki', 'gateway', 'render', '--host', 'a.com', '--credential', 'x', '--validate']\n"
            "runpy.run_module('kimpki', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=kimpki.env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "schema validation skipped: the jsonschema package is not installed" in proc.stderr
    # The manifests are printed all the same, unvalidated.
    gw, vs = yaml.safe_load_all(proc.stdout)
    assert (gw["kind"], gw["spec"]["servers"][0]["tls"]) == ("Gateway", {"mode": "SIMPLE", "credentialName": "x"})
    assert (vs["kind"], vs["spec"]["hosts"]) == ("VirtualService", ["a.com"])


# -- the schemas ------------------------------------------------------------------------------------

def _gw(version="v1"):
    return g.render_gateway("kim-gateway", [g.ServerSpec.sds(["kim.example.com"], "kim-credential")],
                            api_version=version)


def _bad(mutate):
    def make(version):
        o = _gw(version)
        mutate(o)
        return o
    return make


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("make,needle", [
    (_bad(lambda o: o["spec"]["servers"][0]["tls"].update(mode="SIMPEL")), "tls.mode: 'SIMPEL' is not one of"),
    (_bad(lambda o: o["spec"]["servers"][0]["port"].update(number="443")), "port.number: '443' is not of type"),
    (_bad(lambda o: o["spec"]["servers"][0]["tls"].update(credentialname="x")), "'credentialname' was unexpected"),
    (_bad(lambda o: o["spec"]["servers"][0].pop("hosts")), "'hosts' is a required property"),
    (_bad(lambda o: o["spec"]["servers"][0]["port"].pop("protocol")), "'protocol' is a required property"),
    (_bad(lambda o: o["spec"]["servers"][0]["tls"].update(minProtocolVersion="TLSV1_4")), "minProtocolVersion"),
    (_bad(lambda o: o["spec"]["servers"][0]["tls"].update(credentialNames=["a", "b", "c"])), "is too long"),
    (_bad(lambda o: o["spec"].update(selector={"istio": 1})), "selector.istio: 1 is not of type 'string'"),
    (_bad(lambda o: o.update(spce={})), "'spce' was unexpected"),
    (_bad(lambda o: o["metadata"].pop("name")), "'name' is a required property"),
])
def test_schema_rejects_what_the_api_server_would(make, needle, version):
    problems = schema.validate(make(version))
    assert problems and any(needle in p for p in problems), problems


def test_schema_keeps_status_open_and_allows_nullable(kimpki):
    o = _gw()
    o["status"] = {"anything": {"goes": 1}, "observedGeneration": "3"}
    o["spec"]["servers"][0]["tls"]["insecureSkipVerify"] = None  # nullable: true in the CRD
    assert schema.validate(o) == []
    vs = g.render_virtual_service("vs", ["a.com"], "gw")
    vs["spec"]["http"][0]["match"] = [{"uri": {"exact": "/a", "prefix": "/b"}}]
    assert any("must validate one and only one schema (oneOf): set at most one of exact, prefix, regex" in p
               for p in schema.validate(vs))
    vs["spec"]["http"][0]["match"] = [{"uri": {"prefix": "/b"}}]
    assert schema.validate(vs) == []


def test_schema_refuses_unknown_kinds_and_versions():
    with pytest.raises(UsageError, match="not served"):
        schema.validate({**_gw(), "apiVersion": "networking.istio.io/v2"})
    with pytest.raises(UsageError, match="not a networking.istio.io object"):
        schema.validate({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}})
    with pytest.raises(UsageError, match="no schema for kind 'Gateways'"):
        schema.validate({**_gw(), "kind": "Gateways"})
    assert schema.served_versions("Gateway") == sorted(VERSIONS)


def test_shipped_schemas_are_a_fresh_extraction_of_the_reference_crds(tmp_path):
    with open(CRDS_FILE, encoding="utf-8") as f:
        fresh = schema.extract(yaml.safe_load_all(f), json.loads(schema.SCHEMA_FILE.read_text())["source"])
    assert schema.dumps(fresh) == schema.SCHEMA_FILE.read_text()
    assert set(fresh["kinds"]) == {"Gateway", "VirtualService"}
    assert all(set(v) == set(VERSIONS) for v in fresh["kinds"].values())
    text = schema.SCHEMA_FILE.read_text()
    kinds = json.dumps(fresh["kinds"])
    assert "x-kubernetes-preserve-unknown-fields" in kinds
    # The CEL rules are kept, each with its message (the API server's error text): per version,
    # three on a Gateway server's tls and one on each of six VirtualService durations.
    assert kinds.count('"x-kubernetes-validations"') == 3 * (1 + 6)
    assert kinds.count('"rule": "') == kinds.count('"message": "') == 27  # (a property may be called message)
    assert "only one of credentialName or credentialNames can be set" in kinds
    assert '"description":"' not in kinds  # the keyword (strings) is gone; no property is called that
    # The script writes the same bytes.
    out = tmp_path / "s.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "extract-istio-schemas"), str(CRDS_FILE), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == text


# -- Istio's Gateway rules --------------------------------------------------------------------------

def _server(**kw):
    s = {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["a.com"],
         "tls": {"mode": "SIMPLE", "credentialName": "c"}}
    for k, v in kw.items():
        if v is None:
            s.pop(k)
        else:
            s[k] = v
    return s


def _gateway(*servers):
    return {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "g"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": list(servers)}}


@pytest.mark.parametrize("servers,needle", [
    ([_server(tls={"mode": "SIMPLE", "credentialName": "c", "serverCertificate": "/a", "privateKey": "/b"})],
     "one certificate source per server"),
    ([_server(tls={"mode": "MUTUAL", "serverCertificate": "/a", "privateKey": "/b"})], "needs caCertificates"),
    ([_server(tls={"mode": "SIMPLE", "serverCertificate": "/a"})], "needs privateKey"),
    ([_server(tls={"mode": "SIMPLE"})], "needs a certificate"),
    ([_server(tls=None)], "an HTTPS port needs a tls block"),
    ([_server(), _server(hosts=["b.com"])], "port name 'https' is already used by servers[0]"),
    ([_server(hosts=[])], "has no hosts"),
    ([_server(tls={"mode": "SIMPLE", "credentialName": "c", "credentialNames": ["d"]})], "only one of"),
    ([_server(port={"number": 443, "protocol": "HTTPS"})], "port has no name"),
    ([_server(tls={"mode": "FANCY", "credentialName": "c"})], "unknown tls.mode"),
    ([], "no servers"),
])
def test_gateway_rules(servers, needle):
    problems = g.validate_gateway(_gateway(*servers))
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize("servers", [
    [_server()],
    [_server(tls={"mode": "MUTUAL", "serverCertificate": "/a", "privateKey": "/b", "caCertificates": "/c"})],
    [_server(tls={"mode": "MUTUAL", "credentialName": "c"})],  # SDS: the CA comes from the Secret
    [_server(port={"number": 80, "name": "http", "protocol": "HTTP"}, tls=None)],
    [_server(tls={"mode": "PASSTHROUGH"}, port={"number": 443, "name": "tls", "protocol": "TLS"})],
    [_server(), _server(port={"number": 443, "name": "https-b", "protocol": "HTTPS"}, hosts=["b.com"])],
])
def test_gateway_rules_accept_good_servers(servers):
    assert g.validate_gateway(_gateway(*servers)) == []


# -- gateway apply against the stand-in API server ---------------------------------------------------

def test_apply_the_seed_gateways_creates_then_updates_in_place(kube_env, kimpki, tmp_path):
    env = {"KUBECONFIG": kube_env.kubeconfig_path}
    files = {}
    for variant, args in SEED_VARIANTS.items():
        extra = ["--name", f"kim-{variant}"] if "--name" not in args else []
        args = [a if a != "kim-gateway" else "kim-sds-mutual" for a in args]
        out = kimpki.ok("gateway", "render", *args, *extra, "--api-version", "v1alpha3").out
        files[variant] = tmp_path / f"{variant}.yaml"
        files[variant].write_text(out)
    first = kimpki.json("gateway", "apply", *[x for f in files.values() for x in ("-f", f)])
    assert [o["action"] for o in first["objects"]] == ["created"] * 8
    listed = kubectl("get", "gateways.networking.istio.io", "-n", "istio-system", "-o", "name", env=env).stdout.split()
    assert sorted(listed) == sorted(f"gateway.networking.istio.io/kim-{v}" for v in SEED_VARIANTS)
    vs = kubectl("get", "virtualservices.networking.istio.io", "-n", "istio-system", "-o", "name", env=env).stdout
    assert len(vs.split()) == 4
    # Again: nothing to do. Then a change: updated in place (same uid, new resourceVersion).
    again = kimpki.json("gateway", "apply", "-f", files["sds-simple"])
    assert [o["action"] for o in again["objects"]] == ["unchanged", "unchanged"]
    before = kube_env.get_object("gateways", "istio-system", "kim-sds-simple")
    changed = kimpki.ok("gateway", "render", "--host", "kim.example.com", "--credential", "kim-credential",
                        "--name", "kim-sds-simple", "--mode", "MUTUAL").out
    res = kimpki.ok("gateway", "apply", "-f", "-", input=changed)
    assert "gateway.networking.istio.io/kim-sds-simple updated in namespace istio-system" in res.out
    after = kube_env.get_object("gateways", "istio-system", "kim-sds-simple")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    assert after["spec"]["servers"][0]["tls"]["mode"] == "MUTUAL"
    assert kube_env.calls("DELETE") == []


def test_apply_checks_everything_before_writing_anything(kube_env, kimpki, tmp_path):
    good = kimpki.ok("gateway", "render", "--host", "a.example.com", "--credential", "a").out
    bad = copy.deepcopy(list(yaml.safe_load_all(good))[0])
    bad["metadata"]["name"] = "bad"
    bad["spec"]["servers"][0]["tls"]["serverCertificate"] = "/etc/x/tls.crt"
    f = tmp_path / "all.yaml"
    f.write_text(good + "\n---\n" + yaml.safe_dump(bad))
    assert_one_line_error(kimpki("gateway", "apply", "-f", f), 2, "Gateway bad", "one certificate source")
    bad["spec"]["servers"][0]["tls"] = {"mode": "SIMPLE", "credentialName": "a", "credentialname": "typo"}
    f.write_text(good + "\n---\n" + yaml.safe_dump(bad))
    assert_one_line_error(kimpki("gateway", "apply", "-f", f), 2, "does not match Istio's", "credentialname")
    secret = tmp_path / "secret.yaml"
    secret.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}))
    assert_one_line_error(kimpki("gateway", "apply", "-f", secret), 2, "kimpki secret create")
    assert kube_env.calls("POST") == [] and kube_env.calls("PUT") == []
    # A server-side dry run stores nothing.
    d = kimpki.json("gateway", "apply", "-f", "-", "--dry-run", input=good)
    assert [o["action"] for o in d["objects"]] == ["created", "created"] and d["dry_run"] is True
    assert kube_env.list_objects("gateways", "istio-system") == []
