"""Revocation state in the cluster (issue 13): the ConfigMap ``kimpki-revocations`` beside the CA
Secret keeps the revoked list and each CA's CRL numbers, so a home that lives for one run (the
CronJob's memory home, made from the CA alone) renews CRL-carrying credentials and re-signs
CRLs; a CRL number is reserved there before signing, so no two runs, concurrent or killed,
sign two CRLs with one number.

Against the API stand-in over real HTTP; the interleavings are chosen with its ``hold`` fault
(a request held until the test releases it), never with sleeps.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509

from kimpki.pki.revocation import crl_number
from tests.conftest import Kimpki, wait_until
from tests.kubeapi.fixtures import kube_api  # noqa: F401  (a fixture)

NS = "istio-system"
CA = "solo.example"


@pytest.fixture
def setup(kimpki, kube_api, tmp_path):
    """An admin home with CA solo.example, a MUTUAL credential in the cluster, clients a..d; and a
    second home that holds only the imported CA (what the CronJob's pod builds from kimpki-ca)."""
    k = kimpki
    kc = ["--kubeconfig", kube_api.kubeconfig_path]
    k.ok("ca", "init", CA)
    k.ok("issue", "kim.example.com", "--ca", CA, "--days", "1")
    for c in "abcd":
        k.ok("issue", "--client", f"{c}.example.com", "--ca", CA)
    k.ok("secret", "create", "kim-credential", "--cert", "kim.example.com", "--mutual", *kc)
    other = Kimpki(tmp_path / "pod-home", k.cwd)
    shutil.copy(k.home / "cas" / CA / "ca.key", tmp_path / "ca.key")
    other.ok("ca", "import", CA, "--cert", k.home / "cas" / CA / "ca.crt", "--key", tmp_path / "ca.key")
    return k, other, kc


@pytest.fixture
def twin(setup, tmp_path):
    """A second admin home: a copy of the first, taken before anything was revoked (another
    machine's)."""
    k = setup[0]
    shutil.copytree(k.home, tmp_path / "twin-home", symlinks=True)
    return Kimpki(tmp_path / "twin-home", k.cwd)


def state(srv, ca: str = CA) -> tuple[dict, x509.CertificateRevocationList | None]:
    """The CA's state as the ConfigMap holds it: gzipped JSON, and the CRL as DER."""
    cm = srv.get_object("configmaps", NS, "kimpki-revocations")
    assert cm is not None, "no revocation state in the cluster"
    st = json.loads(gzip.decompress(base64.b64decode(cm["binaryData"][f"{ca}.json.gz"])))
    der = cm["binaryData"].get(f"{ca}.crl")
    return st, x509.load_der_x509_crl(base64.b64decode(der)) if der else None


def delivered(srv) -> x509.CertificateRevocationList:
    secret = srv.get_object("secrets", NS, "kim-credential")
    return x509.load_pem_x509_crl(base64.b64decode(secret["data"]["crl"]))


def serial(k, name: str) -> int:
    (row,) = [r for r in k.json("list")["items"] if r["name"] == name]
    return int(row["serial"], 16)


def listed(crl, *serials: int) -> bool:
    return all(crl.get_revoked_certificate_by_serial_number(s) is not None for s in serials)


def test_revoke_in_a_cluster_keeps_the_state_there(setup, kube_api):
    k, _, kc = setup
    d = k.json("revoke", "a.example.com", "-n", NS, *kc)
    st, crl = state(kube_api)
    assert [e[0] for e in st["revoked"]] == [d["serial"]]
    assert st["crl_number"] == st["reserved"] == d["crl"]["crl_number"] == crl_number(crl)
    assert listed(crl, int(d["serial"], 16)) and crl.is_signature_valid(
        x509.load_pem_x509_certificate((k.home / "cas" / CA / "ca.crt").read_bytes()).public_key())
    assert crl_number(delivered(kube_api)) == st["crl_number"]
    cm = kube_api.get_object("configmaps", NS, "kimpki-revocations")
    assert cm["metadata"]["labels"]["app.kubernetes.io/component"] == "revocations"
    # revoked locally first, then against the cluster: recorded there, and a CRL that lists it signed
    local = k.json("revoke", "b.example.com")
    again = k.json("revoke", "b.example.com", "-n", NS, *kc)
    assert again["already_revoked"] and again["crl"]["crl_number"] > local["crl"]["crl_number"]
    st, crl = state(kube_api)
    assert {e[0] for e in st["revoked"]} == {d["serial"], local["serial"]}
    assert listed(crl, int(d["serial"], 16), int(local["serial"], 16))
    assert listed(delivered(kube_api), int(local["serial"], 16))


def test_a_home_made_from_the_ca_alone_renews_with_the_clusters_state(setup, kube_api):
    """The CronJob's case: the existing guard (never drop a delivered CRL) passes, because the
    home loaded the revoked list and CRL from the cluster; the renewed credential still carries
    a CRL that lists the revoked client."""
    k, pod, kc = setup
    revoked = serial(k, "a.example.com")
    k.ok("revoke", "a.example.com", "-n", NS, *kc)
    number = crl_number(delivered(kube_api))
    before = kube_api.get_object("secrets", NS, "kim-credential")
    res = pod("renew", "-n", NS, *kc, "--renew-before", "99.9%", "--json")
    assert res.code == 0, res.err
    d = res.json
    assert d["renewed"] == 1 and d["crls_loaded"] == [CA] and d["crls_signed"] == []
    assert "revocation state of CA solo.example loaded from the cluster" in res.err
    after = kube_api.get_object("secrets", NS, "kim-credential")
    assert after["data"]["cert"] != before["data"]["cert"]
    crl = delivered(kube_api)
    assert listed(crl, revoked) and crl_number(crl) == number  # the same CRL: nothing re-signed


def test_a_due_crl_is_re_signed_with_a_number_reserved_in_the_cluster(setup, kube_api):
    from kimpki.kube import Cluster
    from kimpki.ops import revoking
    from kimpki.ops.authority import no_passphrase
    from kimpki.ops.cluster_revocations import ClusterRevocations
    from kimpki.store import Store

    k, pod, kc = setup
    revoked = serial(k, "a.example.com")
    k.ok("revoke", "a.example.com", "-n", NS, *kc)
    store = Store.open(k.home)
    try:  # a CRL signed 5 days ago, valid 7: inside its last third, published in the cluster
        with Cluster.connect(kubeconfig=kube_api.kubeconfig_path) as cluster:
            old = revoking.current_crl(store, CA, now=datetime.now(timezone.utc) - timedelta(days=5),
                                       passphrase=no_passphrase, refresh=True,
                                       mirror=ClusterRevocations(cluster, NS))
    finally:
        store.close()
    assert state(kube_api)[0]["crl_number"] == old.number
    kube_api.clear_requests()
    d = pod.json("renew", "-n", NS, *kc)
    assert d["crls_signed"] == [CA] and d["errors"] == []
    st, crl = state(kube_api)
    assert st["crl_number"] == st["reserved"] == old.number + 1 == crl_number(crl)
    assert crl.next_update_utc - datetime.now(timezone.utc) > timedelta(days=6)
    assert crl_number(delivered(kube_api)) == old.number + 1 and listed(delivered(kube_api), revoked)
    # reserved (a guarded update) before it was signed, published after
    puts = [c for c in kube_api.calls(resource="configmaps") if c["method"] == "PUT"]
    assert len(puts) == 2 and all(c["code"] == 200 for c in puts)


def _popen(k: Kimpki, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kimpki", *map(str, args)], cwd=k.cwd, env=k.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_at_once_never_share_a_crl_number(setup, twin, kube_api):
    """Two homes revoke at once: one's reservation is held at the API server while the other
    reserves, signs and publishes; the held one then meets a 409, reads again, and reserves the
    next number, merging the other's revocation first: the newest CRL lists both."""
    k, pod, kc = setup
    k.ok("revoke", "a.example.com", "-n", NS, *kc)
    base = state(kube_api)[0]["crl_number"]
    hold = kube_api.fail("PUT", "configmaps", status="hold")
    first = _popen(k, "revoke", "b.example.com", "-n", NS, *kc, "--json")
    wait_until(lambda: hold.fired, "the first run's reservation to reach the API server")
    second = twin.json("revoke", "c.example.com", "-n", NS, *kc)
    hold.release()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    one = json.loads(out)
    assert 409 in [c["code"] for c in kube_api.calls(method="PUT", resource="configmaps")]  # they did meet
    numbers = (second["crl"]["crl_number"], one["crl"]["crl_number"])
    assert numbers == (base + 1, base + 2)
    st, crl = state(kube_api)
    assert st["crl_number"] == st["reserved"] == base + 2 == crl_number(crl)
    both = (serial(k, "b.example.com"), serial(k, "c.example.com"))
    assert listed(crl, *both) and listed(delivered(kube_api), *both)


def test_a_run_killed_between_reservation_and_publication_leaves_a_gap_not_a_reuse(setup, twin, kube_api):
    """The run is killed while its publication is on the way (the state's read before the
    guarded update is held): its number stays reserved, its revocation is recorded; the next
    run, from another home, signs the number after it, listing both revocations."""
    k, pod, kc = setup
    k.ok("revoke", "a.example.com", "-n", NS, *kc)
    base = state(kube_api)[0]["crl_number"]
    # GETs of the run: the state merged in (1), read for the reservation (2), read to publish (3)
    hold = kube_api.fail("GET", "configmaps", nth=3, status="hold")
    victim = _popen(k, "revoke", "b.example.com", "-n", NS, *kc)
    wait_until(lambda: hold.fired, "the run to reach its publication")
    assert [c["method"] for c in kube_api.calls(resource="configmaps")][-2:] == ["PUT", "GET"]  # reserved
    victim.kill()
    victim.communicate(timeout=60)
    hold.release()
    st, crl = state(kube_api)
    assert (st["reserved"], st["crl_number"], crl_number(crl)) == (base + 1, base, base)
    assert serial(k, "b.example.com") in {int(e[0], 16) for e in st["revoked"]}  # recorded by the reservation
    d = twin.json("revoke", "c.example.com", "-n", NS, *kc)
    assert d["crl"]["crl_number"] == base + 2
    st, crl = state(kube_api)
    assert st["crl_number"] == st["reserved"] == base + 2
    revoked = [serial(k, f"{c}.example.com") for c in "abc"]
    assert listed(crl, *revoked) and listed(delivered(kube_api), *revoked)
    # the killed run's home: what it did not finish is in the cluster, so nothing is signed twice
    again = k.json("revoke", "b.example.com", "-n", NS, *kc)
    assert again["already_revoked"] and state(kube_api)[0]["reserved"] == base + 2


def test_a_state_kimpki_did_not_write_is_one_line(setup, kube_api):
    from tests.conftest import assert_one_line_error

    k, pod, kc = setup
    kube_api.put_object({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "kimpki-revocations", "namespace": NS},
                         "binaryData": {f"{CA}.json.gz": base64.b64encode(gzip.compress(b"{not json")).decode()}})
    assert_one_line_error(k("revoke", "a.example.com", "-n", NS, *kc), 1,
                          f"configmap {NS}/kimpki-revocations: key {CA}.json.gz is not the gzipped JSON kimpki writes")


def test_crls_signed_without_the_cluster_are_adopted_by_the_next_run_against_it(setup, kube_api):
    """Revoked before the cluster kept state (or from a home with no cluster option): the next
    renew against the cluster gives it the CA's state, so the CronJob's home can re-sign the CRL
    the Secrets carry before it expires; and ca rotate there reserves its successor's first number."""
    k, pod, kc = setup
    local = k.json("revoke", "a.example.com")
    k.ok("rotate", "kim-credential", "-n", NS, *kc)  # the credential now carries the CRL
    assert kube_api.get_object("configmaps", NS, "kimpki-revocations") is None
    d = k.json("renew", "-n", NS, *kc)
    assert d["errors"] == []
    st, crl = state(kube_api)
    assert st["crl_number"] == st["reserved"] == local["crl"]["crl_number"] == crl_number(crl)
    assert [e[0] for e in st["revoked"]] == [local["serial"]]
    assert pod.json("renew", "-n", NS, *kc, "--renew-before", "99.9%")["renewed"] == 1  # the guard passes
    r = k.json("ca", "rotate", CA, "-n", NS, *kc)
    assert r["failed"] is None and r["crls_signed"] == [r["successor"]], r
    successor = state(kube_api, r["successor"])[0]
    assert successor["crl_number"] == successor["reserved"] == 1


def test_a_home_without_an_intermediate_does_not_drop_its_crl(kimpki, kube_api, tmp_path):
    """The CronJob imports root CAs only. The credential trusts the root and carries the CRLs of
    the root and of the intermediate below it: the root-only home must not rewrite the set
    without the intermediate's CRL (Envoy would refuse every client of the intermediate)."""
    k = kimpki
    kc = ["--kubeconfig", kube_api.kubeconfig_path]
    k.ok("ca", "init", "root.example")
    k.ok("ca", "init", "issuing.example", "--parent", "root.example")
    k.ok("issue", "kim.example.com", "--ca", "root.example", "--days", "1")  # the pod can renew it
    k.ok("issue", "--client", "a.example.com", "--ca", "issuing.example")
    k.ok("secret", "create", "kim-credential", "--cert", "kim.example.com", "--mutual", *kc)
    k.ok("revoke", "a.example.com", "-n", NS, *kc)
    pod = Kimpki(tmp_path / "pod-home", k.cwd)
    shutil.copy(k.home / "cas" / "root.example" / "ca.key", tmp_path / "root.key")
    pod.ok("ca", "import", "root.example", "--cert", k.home / "cas" / "root.example" / "ca.crt",
           "--key", tmp_path / "root.key")
    from kimpki.kube import Cluster
    from kimpki.ops import revoking
    from kimpki.ops.authority import no_passphrase
    from kimpki.ops.cluster_revocations import ClusterRevocations
    from kimpki.store import Store

    store = Store.open(k.home)
    try:  # the root's CRL due: the pod re-signs it and would republish the set
        with Cluster.connect(kubeconfig=kube_api.kubeconfig_path) as cluster:
            revoking.current_crl(store, "root.example", now=datetime.now(timezone.utc) - timedelta(days=5),
                                 passphrase=no_passphrase, refresh=True, mirror=ClusterRevocations(cluster, NS))
    finally:
        store.close()
    before = kube_api.get_object("secrets", NS, "kim-credential")
    res = pod("renew", "-n", NS, *kc, "--renew-before", "99.9%", "--json")
    assert res.code == 1 and "Traceback" not in res.err
    (err,) = res.json["errors"]  # republishing the CRLs, then renewing the credential: both refused
    (failed,) = [r for r in res.json["results"] if r["action"] == "failed"]
    for reason in (err["reason"], failed["reason"]):
        assert "carries the CRL of CN=issuing.example, a CA this kimpki home does not have" in reason
    after = kube_api.get_object("secrets", NS, "kim-credential")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_ten_thousand_revocations_fit_in_the_configmap(setup, kube_api):
    """10,000 revoked certificates: the state (gzipped JSON) and the CRL (DER) fit in a
    ConfigMap's 1 MiB, which the stand-in enforces as the API server does; the pod's home loads
    them all."""
    from kimpki.store import Store
    from kimpki.store import revocations as db

    k, pod, kc = setup
    now = datetime.now(timezone.utc).replace(microsecond=0)
    store = Store.open(k.home)
    try:
        with store.locked():
            for i in range(10_000):
                db.record(store, db.Revocation(CA, format((i + 1) << 100, "x"), None, "client", now + timedelta(days=90),
                                               now, "keyCompromise", "test"))
    finally:
        store.close()
    d = k.json("revoke", "a.example.com", "-n", NS, *kc)
    st, crl = state(kube_api)
    assert len(st["revoked"]) == len(crl) == 10_001 and crl_number(crl) == d["crl"]["crl_number"]
    cm = kube_api.get_object("configmaps", NS, "kimpki-revocations")
    size = sum(len(base64.b64decode(v)) for v in cm["binaryData"].values())
    assert size < 1024 * 1024, size
    loaded = pod.json("renew", "-n", NS, *kc)
    assert loaded["crls_loaded"] == [CA] and loaded["errors"] == []
    assert len(delivered(kube_api)) == 10_001
