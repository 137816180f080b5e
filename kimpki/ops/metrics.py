"""Prometheus metrics for a tool that runs from cron and exits: no exporter to scrape, so the
metrics go where Prometheus already looks — a node_exporter textfile (``*.prom``, written under a
temporary name and renamed, no timestamps) or a Pushgateway. ``prometheus_client`` writes the
exposition format and does the push; nothing here formats it by hand.

Series (every timestamp in Unix seconds):

* ``kimpki_certificate_*{kind,name,ca,serial,namespace,secret}``: one per certificate kimpki knows
  in the chosen place, CA certificates (roots and intermediates) included; ``namespace`` and
  ``secret`` are empty for the store.
* ``kimpki_ca_longest_leaf_lifetime_seconds{name}``: per CA, the longest lifetime of a current leaf
  it issued (the alert "a CA expires within the lifetime of what it issues" needs it).
* ``kimpki_renew_*``: one renew run (last run, last success, success, certificates by result, duration).
* ``kimpki_verify_*{host,mode}``: one ``verify --all`` run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from kimpki.errors import OperationError, UsageError

CERT_LABELS = ("kind", "name", "ca", "serial", "namespace", "secret")
RENEW_RESULTS = ("renewed", "failed", "deferred", "due")
LAST_SUCCESS = "kimpki_renew_last_success_timestamp_seconds"


@dataclass(frozen=True)
class CertificateSample:
    """One certificate as an on-call person needs to find it."""

    kind: str  # ca | server | client
    name: str
    ca: str
    serial: str
    not_before: datetime
    not_after: datetime
    renewal_time: datetime | None = None  # leaves only: CAs are rotated by a person, not renewed
    namespace: str = ""
    secret: str = ""

    def labels(self) -> list[str]:
        return [self.kind, self.name, self.ca or "", self.serial, self.namespace, self.secret]


@dataclass(frozen=True)
class RevocationSample:
    """A CRL (per CA) or an OCSP staple (per server certificate) and when it must be replaced."""

    kind: str  # crl | ocsp_staple
    name: str  # the CA (crl) or the certificate (ocsp_staple)
    ident: str  # the CRL number, or the stapled certificate's serial
    next_update: datetime
    namespace: str = ""
    secret: str = ""


def certificate_registry(samples: Iterable[CertificateSample | RevocationSample], now: datetime):
    """A registry holding the certificate gauges of ``samples``. A collector of metric families,
    not ``Gauge.labels()`` children: with 10,000 credentials those cost more than the survey."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily

    samples = list(samples)

    class Certificates:
        def collect(self):
            not_after = GaugeMetricFamily("kimpki_certificate_not_after_timestamp_seconds", "Certificate notAfter.",
                                          labels=CERT_LABELS)
            not_before = GaugeMetricFamily("kimpki_certificate_not_before_timestamp_seconds",
                                           "Certificate notBefore.", labels=CERT_LABELS)
            renewal = GaugeMetricFamily("kimpki_certificate_renewal_timestamp_seconds",
                                        "When kimpki renew renews the certificate (leaves only).", labels=CERT_LABELS)
            expired = GaugeMetricFamily("kimpki_certificate_expired", "1 when the certificate is past notAfter.",
                                        labels=CERT_LABELS)
            longest = GaugeMetricFamily("kimpki_ca_longest_leaf_lifetime_seconds",
                                        "Per CA: the longest lifetime of a current leaf it issued.", labels=["name"])
            crl = GaugeMetricFamily("kimpki_crl_next_update_timestamp_seconds",
                                    "When a CA's CRL must be replaced (Envoy refuses every client after it).",
                                    labels=["ca", "crl_number", "namespace", "secret"])
            staple = GaugeMetricFamily("kimpki_ocsp_staple_next_update_timestamp_seconds",
                                       "When a server certificate's OCSP staple must be replaced.",
                                       labels=["name", "serial", "namespace", "secret"])
            lifetimes: dict[str, float] = {}
            for s in samples:
                if isinstance(s, RevocationSample):
                    (crl if s.kind == "crl" else staple).add_metric([s.name, s.ident, s.namespace, s.secret],
                                                                    s.next_update.timestamp())
                    continue
                labels = s.labels()
                not_after.add_metric(labels, s.not_after.timestamp())
                not_before.add_metric(labels, s.not_before.timestamp())
                expired.add_metric(labels, 1 if now >= s.not_after else 0)
                if s.kind != "ca":
                    if s.renewal_time is not None:
                        renewal.add_metric(labels, s.renewal_time.timestamp())
                    if s.ca:
                        life = (s.not_after - s.not_before).total_seconds()
                        lifetimes[s.ca] = max(life, lifetimes.get(s.ca, 0.0))
            for ca, life in sorted(lifetimes.items()):
                longest.add_metric([ca], life)
            return [not_after, not_before, renewal, expired, longest, crl, staple]

    reg = CollectorRegistry()
    reg.register(Certificates())
    return reg


@dataclass
class RenewRunMetrics:
    """What one ``kimpki renew`` run reports, whether it succeeded, failed or was interrupted."""

    started: datetime
    finished: datetime
    success: bool
    counts: dict[str, int]  # by RENEW_RESULTS
    last_success: datetime | None = None  # of an earlier run, when this one did not succeed


def renew_registry(run: RenewRunMetrics):
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    Gauge("kimpki_renew_last_run_timestamp_seconds", "When the last renew run finished.",
          registry=reg).set(run.finished.timestamp())
    last = run.finished if run.success else run.last_success
    if last is not None:
        Gauge(LAST_SUCCESS, "When a renew run last succeeded.", registry=reg).set(last.timestamp())
    Gauge("kimpki_renew_success", "1 when the last renew run succeeded.", registry=reg).set(1 if run.success else 0)
    by_result = Gauge("kimpki_renew_certificates", "Certificates of the last renew run, by result.", ["result"],
                      registry=reg)
    for result in RENEW_RESULTS:
        by_result.labels(result).set(run.counts.get(result, 0))
    Gauge("kimpki_renew_duration_seconds", "How long the last renew run took.",
          registry=reg).set(max(0.0, (run.finished - run.started).total_seconds()))
    return reg


def verify_registry(checks: Iterable[dict]):
    """``verify --all`` reports: ``{host, mode, ok, current}`` (current None when unknown)."""
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    ok = Gauge("kimpki_verify_handshake_ok", "1 when the handshake and every check passed.", ["host", "mode"],
               registry=reg)
    current = Gauge("kimpki_verify_serving_current",
                    "1 when the gateway serves the store's current certificate for the host.", ["host", "mode"],
                    registry=reg)
    for c in checks:
        ok.labels(c["host"], c["mode"]).set(1 if c["ok"] else 0)
        if c.get("current") is not None:
            current.labels(c["host"], c["mode"]).set(1 if c["current"] else 0)
    return reg


def exposition(registry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def check_textfile_path(path: str) -> None:
    """node_exporter's textfile collector reads ``*.prom`` only: refuse a name it would ignore."""
    if not path.endswith(".prom"):
        raise UsageError(f"--textfile {path}: the name must end in .prom (node_exporter's textfile collector "
                         "reads only those)")


def write_textfile(path: str, registry) -> None:
    """Atomically (temporary name in the same folder, then rename): a scrape never sees half a file.
    Through kimpki's one writer for user-chosen paths rather than prometheus_client's
    write_to_textfile, whose temporary file has a predictable name it opens following links."""
    from prometheus_client import generate_latest

    from kimpki.store.fs import PUBLIC_FILE, write_output

    check_textfile_path(path)
    try:
        write_output(path, generate_latest(registry), PUBLIC_FILE)
    except OperationError as e:
        raise OperationError(f"--textfile: {e}") from None


def previous_last_success(path: str) -> datetime | None:
    """The last success recorded in an earlier run's textfile (kept when this run fails)."""
    from datetime import timezone

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return datetime.fromtimestamp(sample.value, timezone.utc)
    except ValueError:
        return None
    return None


def push(url: str, job: str, registry, *, replace_all: bool, timeout: float = 10.0) -> None:
    """Send ``registry`` to a Pushgateway. ``replace_all`` False keeps the group's other metrics
    (a failed run must not erase the last success the Pushgateway holds)."""
    from prometheus_client import push_to_gateway, pushadd_to_gateway

    send = push_to_gateway if replace_all else pushadd_to_gateway
    try:
        send(url, job=job, registry=registry, timeout=timeout)
    except OSError as e:  # URLError, connection refused, timeout
        raise OperationError(f"cannot push metrics to the Pushgateway {url}: {getattr(e, 'reason', None) or e}"
                             ) from None
    except Exception as e:  # noqa: BLE001 - prometheus_client raises IOError/ValueError subclasses on HTTP errors
        raise OperationError(f"cannot push metrics to the Pushgateway {url}: {e}") from None


def check_pushgateway_url(url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--pushgateway {url}: expected http(s)://HOST[:PORT]")


# ----------------------------------------------------------------------------- where samples come from
def store_samples(store, rule, jitter, now: datetime) -> list:
    """Every CA and every current leaf (server and client) of the store, and each CA's CRL."""
    from kimpki.pki.renewal import renewal_time

    out = [CertificateSample("ca", ca.name, ca.parent or ca.name, ca.serial, ca.not_before, ca.not_after)
           for ca in store.list_cas()]
    for rec in store.list_certs():
        renew_at = renewal_time(rec.not_before, rec.not_after, rule, jitter=jitter, key=rec.serial)
        out.append(CertificateSample(rec.kind, rec.name, rec.ca, rec.serial, rec.not_before, rec.not_after,
                                     renew_at))
    return out + store_crl_samples(store)


def store_crl_samples(store) -> list[RevocationSample]:
    """Each CA's CRL in the store (``status`` shows them too)."""
    from kimpki.store import revocations

    out = []
    for ca in store.list_cas():
        state = revocations.crl_state(store, ca.name)
        if state is not None:
            out.append(RevocationSample("crl", ca.name, str(state.number), state.next_update))
    return out


def place_crl_samples(results, store=None) -> list[RevocationSample]:
    """The CRLs the surveyed Secrets carry (Istio's ``crl``/``ca.crl`` keys), one per Secret and
    CA: :func:`place_samples`' CRLs, without reading every certificate (``status`` shows them)."""
    import base64

    from kimpki.istio import contract as c

    _, by_subject = _store_cas(store)
    out: list[RevocationSample] = []
    for r in results:
        for key in (c.GENERIC_CRL, c.TLS_CRL):
            value = ((r.source or {}).get("data") or {}).get(key)
            if not value:
                continue
            try:
                raw = base64.b64decode(value, validate=True)
            except ValueError:
                continue
            out += _revocation_samples(key, raw, r, by_subject)
    return out


def place_samples(results, store=None) -> list:
    """Every served leaf of a survey (``renewing.survey``), and every CA certificate the surveyed
    Secrets carry (chains and MUTUAL bundles; each CA once, at the first Secret holding it),
    with the CRLs and OCSP staples they carry.
    A CA the local ``store`` knows is named as the store names it (what leaves' ``ca`` label and
    ``kimpki ca`` commands say), others by their subject's common name."""
    import base64

    from kimpki.pki import parse

    by_key, by_subject = _store_cas(store)
    out: list = []
    seen: set[str] = set()
    for r in results:
        if r.serial and r.not_after is not None:
            out.append(CertificateSample("server", r.certificate or r.secret, r.ca or "", r.serial, r.not_before,
                                         r.not_after, r.renewal_time, r.namespace, r.secret))
        for key, value in ((r.source or {}).get("data") or {}).items():
            try:
                raw = base64.b64decode(value, validate=True)
                certs = parse.load_certificates(raw) if b"-----BEGIN CERTIFICATE-----" in raw else []
            except Exception:  # noqa: BLE001 - a damaged value: status reports the Secret as broken
                continue
            out += _revocation_samples(key, raw, r, by_subject)
            for cert in certs:
                fp = parse.fingerprint_sha256(cert)
                if not parse.is_ca(cert) or fp in seen:
                    continue
                seen.add(fp)
                # By public key: a cross certificate (a successor root signed by its predecessor)
                # is the same CA as the successor's own self-signed certificate.
                name = by_key.get(_spki(cert)) or _cn(cert.subject) or fp[:16]
                issuer = by_subject.get(cert.issuer.rfc4514_string()) or _cn(cert.issuer)
                out.append(CertificateSample("ca", name, issuer, parse.serial_hex(cert), cert.not_valid_before_utc,
                                             cert.not_valid_after_utc, None, r.namespace, r.secret))
    return out


def _revocation_samples(key: str, raw: bytes, r, by_subject: dict[str, str]) -> list[RevocationSample]:
    """CRLs (Istio's ``crl``/``ca.crl`` keys, any PEM CRL) and an OCSP staple in one Secret value."""
    import re

    from cryptography import x509

    from kimpki.istio import contract as c
    from kimpki.pki.revocation import crl_number, read_ocsp_staple

    out = []
    if key == c.OCSP_STAPLE:
        info = read_ocsp_staple(raw)
        if info is not None and info.next_update is not None:
            out.append(RevocationSample("ocsp_staple", r.certificate or r.secret, format(info.serial, "x"),
                                        info.next_update, r.namespace, r.secret))
        return out
    for block in re.findall(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", raw, re.S):
        try:
            crl = x509.load_pem_x509_crl(block)
            number = str(crl_number(crl))
        except (ValueError, x509.ExtensionNotFound):
            continue
        if crl.next_update_utc is not None:
            name = by_subject.get(crl.issuer.rfc4514_string()) or _cn(crl.issuer)
            out.append(RevocationSample("crl", name, number, crl.next_update_utc, r.namespace, r.secret))
    return out


def _store_cas(store) -> tuple[dict[bytes, str], dict[str, str]]:
    """The store's CA names by public key and by subject."""
    from cryptography import x509

    by_key: dict[bytes, str] = {}
    by_subject: dict[str, str] = {}
    for ca in (store.list_cas() if store is not None else []):
        try:
            cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
        except (OSError, ValueError):
            continue
        by_key[_spki(cert)] = ca.name
        by_subject.setdefault(cert.subject.rfc4514_string(), ca.name)
    return by_key, by_subject


def _spki(cert) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _cn(name) -> str:
    from cryptography.x509.oid import NameOID

    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""
