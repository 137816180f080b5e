"""Monitoring: the metrics kimpki leaves for Prometheus, read by Prometheus' own tools.

Real consumers: `promtool check metrics` on every exposition, node_exporter's textfile collector
serving kimpki's file (`node_textfile_scrape_error 0`), a Pushgateway receiving renew's push, and
`promtool test rules` evaluating the shipped alert rules, both on their own unit tests and on
series taken from a real store with an expiring certificate.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, assert_one_line_error
from tests.tlspeers import free_port

RULES = ROOT / "deploy" / "prometheus" / "kimpki-alerts.yaml"
NODE_EXPORTER = shutil.which("prometheus-node-exporter")
PUSHGATEWAY = shutil.which("prometheus-pushgateway")
PROMTOOL = shutil.which("promtool")
# A user's machine may lack them (skipped); CI installs them (.ci/run), so there they are required.
needs = pytest.mark.skipif(not (NODE_EXPORTER and PUSHGATEWAY and PROMTOOL) and os.environ.get("CI") != "true",
                           reason="Debian's prometheus, prometheus-node-exporter and prometheus-pushgateway "
                                  "(.ci/run installs them)")
pytestmark = needs


def samples(text: str) -> list:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def by_name(text: str, name: str) -> list:
    return [s for s in samples(text) if s.name == name]


def promtool_check(text: str) -> None:
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def scrape(url: str) -> str:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as resp:
        return resp.read().decode()


def wait_until(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.1)


class Server:
    """A Prometheus program on a free loopback port, stopped at the end of the test."""

    def __init__(self, argv: list[str], port: int, log: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        wait_until(f"{argv[0]} listening", lambda: self.alive() and scrape(self.url + "/metrics"))

    def alive(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        return True

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def store(kimpki):
    """A root, an intermediate under it, a server certificate from each and a client certificate."""
    kimpki.ok("ca", "init", "example.com")
    kimpki.ok("ca", "init", "example-issuing", "--parent", "example.com")
    kimpki.ok("issue", "kim.example.com", "--ca", "example-issuing")
    kimpki.ok("issue", "soon.example.com", "--ca", "example.com", "--days", "3")
    kimpki.ok("issue", "--client", "kim-client.example.com", "--ca", "example.com")
    return kimpki


def test_status_prometheus_has_every_certificate_with_cas(store):
    out = store.ok("status", "-o", "prometheus").out
    promtool_check(out)
    not_after = {(s.labels["kind"], s.labels["name"]): s for s in
                 by_name(out, "kimpki_certificate_not_after_timestamp_seconds")}
    assert set(not_after) == {("ca", "example.com"), ("ca", "example-issuing"), ("server", "kim.example.com"),
                              ("server", "soon.example.com"), ("client", "kim-client.example.com")}
    listed = {r["name"]: r for r in store.json("list")["items"]}
    kim = not_after[("server", "kim.example.com")]
    assert kim.labels["ca"] == "example-issuing" and kim.labels["serial"] == listed["kim.example.com"]["serial"]
    assert not_after[("ca", "example-issuing")].labels["ca"] == "example.com"  # the issuer of the intermediate
    renewal = {s.labels["name"] for s in by_name(out, "kimpki_certificate_renewal_timestamp_seconds")}
    assert renewal == {"kim.example.com", "soon.example.com", "kim-client.example.com"}  # leaves only
    assert {s.value for s in by_name(out, "kimpki_certificate_expired")} == {0.0}
    longest = {s.labels["name"]: s.value for s in by_name(out, "kimpki_ca_longest_leaf_lifetime_seconds")}
    assert set(longest) == {"example.com", "example-issuing"} and longest["example.com"] > 3 * 86400
    assert "# TYPE kimpki_certificate_not_after_timestamp_seconds gauge" in out
    # No timestamps on samples: the textfile collector refuses them.
    assert all(s.timestamp is None for s in samples(out))


def test_status_textfile_from_manifests_served_by_node_exporter(store, tmp_path):
    deploy = store.cwd / "deploy"
    deploy.mkdir()
    for name, cert, extra in (("kim-credential", "kim.example.com", ["--mutual"]),
                              ("soon-credential", "soon.example.com", [])):
        yaml_text = store.ok("secret", "create", name, "--cert", cert, *extra, "--dry-run", "-o", "yaml").out
        (deploy / f"{name}.yaml").write_text(yaml_text)
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    prom = textdir / "kimpki.prom"
    store.ok("status", "--manifests", deploy, "--textfile", prom)
    text = prom.read_text()
    promtool_check(text)
    secrets = {s.labels["secret"] for s in by_name(text, "kimpki_certificate_not_after_timestamp_seconds")}
    assert secrets == {"kim-credential", "soon-credential"}
    kinds = sorted(s.labels["kind"] for s in by_name(text, "kimpki_certificate_not_after_timestamp_seconds"))
    assert kinds == ["ca", "ca", "server", "server"]  # the MUTUAL bundle's root and the intermediate of kim's chain
    cas = {s.labels["name"]: s.labels["ca"] for s in by_name(text, "kimpki_certificate_not_after_timestamp_seconds")
           if s.labels["kind"] == "ca"}
    assert cas == {"example.com": "example.com", "example-issuing": "example.com"}  # named as the store names them
    assert not list(textdir.glob("*.prom.*"))  # the temporary file was renamed, not left behind
    port = free_port()
    srv = Server([NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                  "--collector.textfile", f"--collector.textfile.directory={textdir}"], port, tmp_path / "ne.log")
    try:
        scraped = scrape(srv.url + "/metrics")
    finally:
        srv.stop()
    assert by_name(scraped, "node_textfile_scrape_error")[0].value == 0.0
    served = {(s.labels["secret"], s.labels["serial"]) for s in
              by_name(scraped, "kimpki_certificate_not_after_timestamp_seconds")}
    assert served == {(s.labels["secret"], s.labels["serial"]) for s in
                      by_name(text, "kimpki_certificate_not_after_timestamp_seconds")}


def test_status_metric_options_refuse_what_prometheus_would_ignore(store):
    assert_one_line_error(store("status", "--textfile", "kimpki.txt"), 2, "must end in .prom")
    assert_one_line_error(store("status", "--json", "-o", "prometheus"), 2, "contradict")


def renew_metrics(text: str) -> dict:
    return {s.name + (f"{{{s.labels['result']}}}" if "result" in s.labels else ""): s.value for s in samples(text)
            if s.name.startswith("kimpki_renew_")}


def test_renew_textfile_keeps_the_last_success_when_a_run_fails(store, tmp_path):
    deploy = store.cwd / "deploy"
    deploy.mkdir()
    (deploy / "soon.yaml").write_text(store.ok("secret", "create", "soon-credential", "--cert", "soon.example.com",
                                                "--dry-run", "-o", "yaml").out)
    prom = tmp_path / "renew.prom"
    store.ok("renew", "--manifests", deploy, "--renew-before", "4322m", "--textfile", prom)  # 72h02m: due now
    first = renew_metrics(prom.read_text())
    promtool_check(prom.read_text())
    assert first["kimpki_renew_success"] == 1.0
    assert first["kimpki_renew_certificates{renewed}"] == 1.0 and first["kimpki_renew_certificates{due}"] == 1.0
    assert first["kimpki_renew_last_success_timestamp_seconds"] == first["kimpki_renew_last_run_timestamp_seconds"]
    # A run that fails (the folder is gone) still writes, with success 0 and the earlier success kept.
    shutil.rmtree(deploy)
    res = store("renew", "--manifests", deploy, "--textfile", prom)
    assert_one_line_error(res, 2, f"no such manifests folder: {deploy}")
    second = renew_metrics(prom.read_text())
    assert second["kimpki_renew_success"] == 0.0
    assert second["kimpki_renew_last_success_timestamp_seconds"] == first["kimpki_renew_last_success_timestamp_seconds"]
    assert second["kimpki_renew_last_run_timestamp_seconds"] > first["kimpki_renew_last_run_timestamp_seconds"]


def test_renew_interrupted_by_sigterm_writes_its_metrics(store, tmp_path):
    """A run stopped while it waits (here for the renewal lock another process holds) reports
    success 0 and exits 143, as cron's or the kubelet's SIGTERM would leave it."""
    import fcntl

    deploy = store.cwd / "deploy"
    deploy.mkdir()
    prom = tmp_path / "renew.prom"
    lock = open(store.home / "renew.lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        env = {**store.env, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "kimpki", "renew", "--manifests", str(deploy), "--lock-wait",
                                 "120", "--textfile", str(prom)], cwd=store.cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Waiting for the lock = blocked in flock on the lock file: seen in /proc as the lock's owner list.
        wait_until("renew waiting for the lock", lambda: _blocked_on_lock(proc.pid, store.home / "renew.lock"))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        lock.close()
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    m = renew_metrics(prom.read_text())
    assert m["kimpki_renew_success"] == 0.0 and "kimpki_renew_last_success_timestamp_seconds" not in m


def _blocked_on_lock(pid: int, lock_file: Path) -> bool:
    """The process has the lock file open (it got as far as trying to take the lock)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(lock_file):
                return True
        except OSError:
            continue
    return False


def test_renew_pushes_to_a_pushgateway(store, tmp_path):
    port = free_port()
    srv = Server([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}",
                  f"--persistence.file={tmp_path / 'pgw.data'}"], port, tmp_path / "pgw.log")
    try:
        deploy = store.cwd / "deploy"
        deploy.mkdir()
        store.ok("renew", "--manifests", deploy, "--pushgateway", srv.url, "--job", "kimpki-test")
        first = [s for s in samples(scrape(srv.url + "/metrics")) if s.name.startswith("kimpki_renew_")]
        assert {s.labels["job"] for s in first} == {"kimpki-test"}
        ok = {s.name: s.value for s in first}
        assert ok["kimpki_renew_success"] == 1.0
        # A failing run pushes success 0 without erasing the Pushgateway's last success.
        shutil.rmtree(deploy)
        failed = store("renew", "--manifests", deploy, "--pushgateway", srv.url, "--job", "kimpki-test")
        assert_one_line_error(failed, 2, f"no such manifests folder: {deploy}")
        after = {s.name: s.value for s in samples(scrape(srv.url + "/metrics"))
                 if s.name.startswith("kimpki_renew_") and s.labels.get("job") == "kimpki-test"}
        assert after["kimpki_renew_success"] == 0.0
        assert after["kimpki_renew_last_success_timestamp_seconds"] == ok["kimpki_renew_last_success_timestamp_seconds"]
    finally:
        srv.stop()
    closed = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(store("renew", "--manifests", store.cwd, "--pushgateway", closed), 1,
                          "cannot push metrics to the Pushgateway")


def test_verify_all_textfile_against_openssl_s_server(store, tmp_path):
    rec = store.home / "certs" / "kim.example.com" / "current"
    port = free_port()
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(rec / "cert.crt"),
                               "-key", str(rec / "cert.key"), "-cert_chain", str(store.home / "cas" / "example-issuing" / "ca.crt"),
                               "-quiet", "-naccept", "1000"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket

        def listening():
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        wait_until("openssl s_server listening", listening)
        prom = tmp_path / "verify.prom"
        res = store("verify", "--all", "--connect", f"127.0.0.1:{port}", "--textfile", prom)
    finally:
        server.kill()
        server.wait()
    # soon.example.com is refused by name (the server serves kim's certificate): one pass, one fail.
    assert res.code == 1, res.err
    text = prom.read_text()
    promtool_check(text)
    ok = {s.labels["host"]: s.value for s in by_name(text, "kimpki_verify_handshake_ok")}
    assert ok == {"kim.example.com": 1.0, "soon.example.com": 0.0}
    current = {s.labels["host"]: s.value for s in by_name(text, "kimpki_verify_serving_current")}
    assert current == {"kim.example.com": 1.0}
    assert_one_line_error(store("verify", "kim.example.com", "--textfile", prom), 2, "--textfile goes with --all")


def test_cron_render_passes_the_metrics_options(store, tmp_path):
    line = store.ok("cron", "render", "--manifests", store.cwd, "--textfile", tmp_path / "k.prom",
                    "--pushgateway", "http://127.0.0.1:9091", "--job", "gw").out
    assert f"renew --textfile {tmp_path / 'k.prom'} --pushgateway http://127.0.0.1:9091 --job gw" in line
    objs = list(yaml.safe_load_all(store.ok("cron", "render", "--kubernetes", "--image", "kimpki:1", "--ca", "example.com",
                                            "--pushgateway", "http://pushgateway.monitoring:9091").out))
    job = next(o for o in objs if o["kind"] == "CronJob")
    renew = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert renew["args"][:1] == ["renew"] and "--pushgateway" in renew["args"]
    assert renew["args"][renew["args"].index("--pushgateway") + 1] == "http://pushgateway.monitoring:9091"
    assert_one_line_error(store("cron", "render", "--kubernetes", "--image", "kimpki:1", "--ca", "example.com",
                                "--textfile", "a.prom"),
                          2, "use --pushgateway URL")
    assert_one_line_error(store("cron", "render", "--job", "x"), 2, "give --pushgateway URL too")
    assert_one_line_error(store("cron", "render", "--pushgateway", "ftp://x"), 2, "expected http(s)://")


def test_alert_rules_unit_tests_pass():
    r = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([PROMTOOL, "test", "rules", "kimpki-alerts_test.yaml"], cwd=RULES.parent,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_alert_rules_fire_on_a_real_store_with_an_expiring_certificate(store, tmp_path):
    """The store's own series (3-day and 90-day certificates) fed to promtool: only the 3-day one
    raises KimpkiCertificateExpiresSoon; nothing fires on a store without it."""
    out = store.ok("status", "-o", "prometheus").out
    now = time.time()
    (tmp_path / "rules.yaml").write_text(RULES.read_text())

    def case(text: str, expected: list[str]) -> dict:
        series = []
        for s in samples(text):
            value = s.value - now if s.name.endswith("_timestamp_seconds") else s.value  # promtool's clock starts at 0
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            series.append({"series": f"{s.name}{{{labels}}}", "values": f"{value:.0f}x30"})
        return {"interval": "1m", "input_series": series,
                "alert_rule_test": [{"eval_time": "15m", "alertname": "KimpkiCertificateExpiresSoon",
                                     "exp_alerts": [{"exp_labels": {"severity": "warning", **lab},
                                                     "exp_annotations": annotations(lab)}
                                                    for lab in expected_labels(text, expected)]},
                                    {"eval_time": "15m", "alertname": "KimpkiCertificateExpired", "exp_alerts": []},
                                    {"eval_time": "15m", "alertname": "KimpkiCAExpiresBeforeItsLeaves",
                                     "exp_alerts": []}]}

    def annotations(lab: dict) -> dict:
        return {"summary": f"{lab['kind']} certificate {lab['name']} (serial {lab['serial']}) expires within 7 days",
                "description": f"In the kimpki store, CA {lab['ca']}. Run 'kimpki renew' or 'kimpki rotate'; "
                               "a CA needs 'kimpki ca rotate'."}

    def expected_labels(text: str, names: list[str]) -> list[dict]:
        return [{k: v for k, v in s.labels.items() if v} for s in
                by_name(text, "kimpki_certificate_not_after_timestamp_seconds") if s.labels["name"] in names]

    healthy = "".join(line + "\n" for line in out.splitlines() if 'name="soon.example.com"' not in line)
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
             "tests": [case(out, ["soon.example.com"]), case(healthy, [])]}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(tests))
    r = subprocess.run([PROMTOOL, "test", "rules", "t.yaml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_crl_and_ocsp_staple_next_updates(store, tmp_path):
    """The store's CRL per CA, and the CRLs and staple a Secret carries (Istio's `crl` and
    `tls.ocsp-staple` keys), each with its nextUpdate."""
    import base64
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from kimpki.pki import revocation as rv

    store.ok("revoke", "kim-client.example.com")
    crl = store.json("crl", "example.com")
    out = store.ok("status", "-o", "prometheus").out
    promtool_check(out)
    got = {(s.labels["ca"], s.labels["crl_number"]): s.value for s in
           by_name(out, "kimpki_crl_next_update_timestamp_seconds")}
    nxt = datetime.fromisoformat(crl["next_update"].replace("Z", "+00:00")).timestamp()
    # revoke signs a CRL for every CA of the client trust (root and intermediate), as Envoy needs
    issuing = store.json("crl", "example-issuing")
    assert got == {("example.com", "1"): nxt, ("example-issuing", str(issuing["crl_number"])):
                   datetime.fromisoformat(issuing["next_update"].replace("Z", "+00:00")).timestamp()}
    # A tls-form Secret holding a CRL and a staple.
    doc = yaml.safe_load(store.ok("secret", "create", "soon-credential", "--cert", "soon.example.com", "--format",
                                  "tls", "--dry-run", "-o", "yaml").out)
    ca_dir = store.home / "cas" / "example.com"
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((store.home / "certs" / "soon.example.com" / "current" / "cert.crt")
                                          .read_bytes())
    key = load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    staple = rv.build_ocsp_response(leaf, ca_cert, key, revoked=None, this_update=now,
                                    next_update=now + timedelta(hours=30))
    doc["data"]["ca.crl"] = base64.b64encode((ca_dir / "crl.pem").read_bytes()).decode()
    doc["data"]["tls.ocsp-staple"] = base64.b64encode(staple).decode()
    deploy = store.cwd / "deploy"
    deploy.mkdir()
    (deploy / "soon.yaml").write_text(yaml.safe_dump(doc))
    text = store.ok("status", "--manifests", deploy, "-o", "prometheus").out
    promtool_check(text)
    crls = [(s.labels["ca"], s.labels["crl_number"], s.labels["secret"]) for s in
            by_name(text, "kimpki_crl_next_update_timestamp_seconds")]
    assert crls == [("example.com", "1", "soon-credential")]
    staples = {(s.labels["name"], s.labels["serial"]): s.value for s in
               by_name(text, "kimpki_ocsp_staple_next_update_timestamp_seconds")}
    assert staples == {("soon.example.com", format(leaf.serial_number, "x")): (now + timedelta(hours=30)).timestamp()}
