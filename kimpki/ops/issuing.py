"""Issuing use cases: a leaf for hosts (server or client), and signing an external CSR."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from kimpki.errors import UsageError
from kimpki.ops import constraints
from kimpki.ops.authority import PassphraseSource, fresh_serial, load_issuer, trust_bundle
from kimpki.pki import csr as csrmod
from kimpki.pki import keys, parse, profiles
from kimpki.pki.names import HostName, parse_hosts, safe_store_name
from kimpki.store import CertRecord, Store
from kimpki.store.fs import PRIVATE_FILE, PUBLIC_FILE, ensure_private_dir, write_output


@dataclass
class IssueResult:
    record: CertRecord
    cert: x509.Certificate
    previous: CertRecord | None
    root_path: Path
    out_files: list[str]

    def to_dict(self) -> dict:
        r = self.record
        return {
            "name": r.name,
            "kind": r.kind,
            "cert": str(r.cert_path),
            "key": str(r.key_path) if r.has_key else None,
            "ca": str(r.ca_path),
            "ca_name": r.ca,
            "serial": r.serial,
            "not_before": parse.rfc3339(r.not_before),
            "not_after": parse.rfc3339(r.not_after),
            "dns_names": r.dns_names,
            "ip_addresses": r.ip_addresses,
            "subject": r.subject,
            "issuer": self.cert.issuer.rfc4514_string(),
            "key_type": r.key_type,
            "state": r.state,
            "previous_serial": self.previous.serial if self.previous else None,
            "out_files": self.out_files,
        }


def _sign_and_store(store: Store, *, name: str, hosts: list[HostName], kind: profiles.LeafKind,
                    public_key, key_pem: bytes | None, key_type: str | None, ca_name: str | None,
                    org: str | None, days: float, now: datetime, passphrase: PassphraseSource,
                    state: str, not_before: datetime | None = None,
                    not_after: datetime | None = None) -> IssueResult:
    with store.locked():
        ca = store.get_ca(ca_name)
        if not_before is None or not_after is None:
            not_before, not_after = profiles.validity(now, days)
        constraints.enforce(store, ca, hosts, not_after, now)  # before asking for a passphrase
        issuer = load_issuer(store, ca, passphrase)
        cert = profiles.issue_leaf(public_key, hosts, kind, issuer, not_before, not_after, org=org,
                                   serial=fresh_serial(store, ca.name))
        chain_pem = parse.certs_to_pem([cert]) + issuer.chain_below_root_pem
        # The SANs are the hosts just written into it, in order (not read back from the certificate).
        dns = [h.value for h in hosts if not h.is_ip]
        ips = [h.value for h in hosts if h.is_ip]
        rec, previous = store.add_cert(
            name, kind=kind.value, ca=ca.name, serial=parse.serial_hex(cert),
            subject=cert.subject.rfc4514_string(), dns_names=dns, ip_addresses=ips,
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
            key_type=key_type, key_fingerprint=keys.public_key_fingerprint(public_key),
            chain_pem=chain_pem, key_pem=key_pem,
            # What the holder should trust: during a CA rotation's overlap, old and new roots.
            ca_pem=trust_bundle(store, ca.name, issuer.trust_anchor_pem),
            now=now, state=state)
    return IssueResult(rec, cert, previous, rec.ca_path, [])


def issue(store: Store, raw_hosts: list[str] | list[HostName], *, kind: profiles.LeafKind = profiles.LeafKind.SERVER,
          ca_name: str | None = None, org: str | None = None, days: float = 90,
          key_type: keys.KeyType = keys.DEFAULT_KEY_TYPE, name: str | None = None,
          now: datetime, passphrase: PassphraseSource, state: str = "current",
          not_before: datetime | None = None, not_after: datetime | None = None,
          key: keys.PrivateKey | None = None) -> IssueResult:
    """Issue a certificate for ``raw_hosts`` (the first is the CN) and record it in the store.
    ``raw_hosts``: names as typed, or HostNames parsed already (a policy's), taken as they are.
    ``key``: one made beforehand (of ``key_type``), e.g. before a store batch locks the home."""
    hosts = parse_hosts(raw_hosts)
    if not hosts:
        raise UsageError("give at least one HOST")
    store_name = safe_store_name(name or hosts[0].value)
    if key is None:
        key = keys.generate_key(key_type)  # outside the lock: generation is the slow part
    return _sign_and_store(store, name=store_name, hosts=hosts, kind=kind, public_key=key.public_key(),
                           key_pem=keys.key_to_pem(key), key_type=key_type.value, ca_name=ca_name,
                           org=org, days=days, now=now, passphrase=passphrase, state=state,
                           not_before=not_before, not_after=not_after)


def sign_csr(store: Store, csr_data: bytes, *, source: str, extra_sans: list[str],
             kind: profiles.LeafKind, ca_name: str | None, days: float, name: str | None,
             now: datetime, passphrase: PassphraseSource) -> IssueResult:
    """Sign an external CSR under the same profile; the requester keeps its key."""
    req = csrmod.load_csr(csr_data, source)
    hosts = csrmod.csr_hosts(req, extra_sans)
    kt = keys.key_type_of(req.public_key())
    if kt is None:
        raise UsageError(f"{source}: unsupported key ({keys.describe_public_key(req.public_key())}); "
                         f"kimpki signs {', '.join(keys.KEY_TYPES)}")
    store_name = safe_store_name(name or hosts[0].value)
    return _sign_and_store(store, name=store_name, hosts=hosts, kind=kind, public_key=req.public_key(),
                           key_pem=None, key_type=kt.value, ca_name=ca_name, org=csrmod.csr_org(req),
                           days=days, now=now, passphrase=passphrase, state="current")


def export_files(result: IssueResult, out_dir: Path) -> list[str]:
    """Copy the certificate files out of the store as the manual openssl steps named them: <name>.crt/.key, ca.crt."""
    ensure_private_dir(out_dir) if not out_dir.exists() else None
    r = result.record
    stem = r.name
    written = []
    write_output(out_dir / f"{stem}.crt", r.cert_path.read_bytes(), PUBLIC_FILE)
    written.append(str(out_dir / f"{stem}.crt"))
    if r.has_key:
        write_output(out_dir / f"{stem}.key", r.key_path.read_bytes(), PRIVATE_FILE)
        written.append(str(out_dir / f"{stem}.key"))
    write_output(out_dir / "ca.crt", r.ca_path.read_bytes(), PUBLIC_FILE)
    written.append(str(out_dir / "ca.crt"))
    result.out_files = written
    return written
