"""CA use cases: init (root or intermediate), import, list, and loading a CA to sign with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography import x509

from kimpki.errors import KimpkiError, OperationError, UsageError
from kimpki.pki import keys, parse, profiles
from kimpki.pki.names import safe_store_name
from kimpki.store import CaRecord, Store
from kimpki.store.store import ca_repair_fix, damaged, read_ca_file

PassphraseSource = Callable[[str], bytes | None]
"""Called with the CA's name when its key is encrypted; returns the passphrase or None."""

DEFAULT_CA_NAME = "kimpki-ca"
DEFAULT_CA_DAYS = 3650


def no_passphrase(_name: str) -> bytes | None:
    return None


@dataclass
class CaResult:
    record: CaRecord
    cert: x509.Certificate
    warnings: list[str]
    restored: list[str] = field(default_factory=list)  # files a re-import put back (a damaged home)

    def to_dict(self, now) -> dict:
        info = parse.describe(self.cert, now)
        return {
            "name": self.record.name,
            "kind": "intermediate" if self.record.parent else "root",
            "parent": self.record.parent,
            "default": self.record.is_default,
            "cert": str(self.record.cert_path),
            "key": str(self.record.key_path),
            "encrypted": self.record.encrypted,
            "imported": self.record.imported,
            "serial": info["serial"],
            "subject": info["subject"],
            "not_before": info["not_before"],
            "not_after": info["not_after"],
            "days_left": info["days_left"],
            "key_type": info["key"],
            "state": self.record.state,
            "successor": self.record.successor,
            "predecessor": self.record.predecessor,
            "retired_at": parse.rfc3339(self.record.retired_at) if self.record.retired_at else None,
            "warnings": self.warnings,
            "restored": self.restored,
        }


def read_ca_cert(ca: CaRecord) -> x509.Certificate:
    """CA ``ca``'s certificate; a missing or garbled file is a damaged store (StoreDamaged)."""
    data = read_ca_file(ca, ca.cert_path)
    try:
        return parse.load_certificates(data, str(ca.cert_path))[0]
    except KimpkiError as e:
        raise damaged(ca.dir.parent.parent, ca.cert_path, f"holds no certificate ({e})", ca_repair_fix(ca)) from None


def root_of(store: Store, ca: CaRecord) -> CaRecord:
    """The root CA ``ca`` chains to (``ca`` itself for a root)."""
    while ca.parent is not None:
        ca = store.get_ca(ca.parent)
    return ca


def load_issuer(store: Store, ca: CaRecord, passphrase: PassphraseSource) -> profiles.Issuer:
    """Everything needed to sign under ``ca``: its certificate, key, intermediates and root
    (and, for a root still overlapping with the root it replaced, its cross certificate).
    A retired CA may not sign. Read (and decrypted) once per store batch."""
    return store.memo(("issuer", ca.name, passphrase), lambda: _load_issuer(store, ca, passphrase))


def _load_issuer(store: Store, ca: CaRecord, passphrase: PassphraseSource) -> profiles.Issuer:
    if ca.retired_at is not None:
        instead = f"; issue from its successor {ca.successor!r}" if ca.successor else ""
        raise OperationError(f"CA {ca.name!r} was retired on {parse.rfc3339(ca.retired_at)} and may no "
                             f"longer issue{instead}")
    cert = read_ca_cert(ca)
    pem = read_ca_file(ca, ca.key_path)
    pw = passphrase(ca.name) if keys.key_is_encrypted(pem) else None
    key = keys.load_key(pem, pw, what=f"key of CA {ca.name!r}")
    chain: list[x509.Certificate] = []
    root = cert
    parent = ca.parent
    while parent is not None:
        p = store.get_ca(parent)
        pcert = read_ca_cert(p)
        if p.parent is not None:
            chain.append(pcert)
        root = pcert
        parent = p.parent
    return profiles.Issuer(cert=cert, key=key, chain=tuple(chain), root=root, cross=_cross_certificates(store, ca))


def _cross_certificates(store: Store, ca: CaRecord) -> tuple[x509.Certificate, ...]:
    """A root's certificate signed by the root it replaces, while that one is not retired: served
    after leaves so clients that trust only the old root keep verifying them."""
    if ca.parent is not None or ca.predecessor is None or not ca.cross_path.exists():
        return ()
    old = store.find_ca(ca.predecessor)
    if old is None or old.retired_at is not None:
        return ()
    return tuple(parse.load_certificates(read_ca_file(ca, ca.cross_path), str(ca.cross_path)))


UNENCRYPTED_KEY_FLAG = "--unencrypted-key"


def _key_protection(name: str, passphrase: bytes | None, unencrypted_key: bool, parent: CaRecord | None) -> None:
    """The rule for every CA key kimpki writes: encrypted with the passphrase when one is given;
    in the clear under an encrypted parent only when asked for explicitly."""
    if passphrase and unencrypted_key:
        raise UsageError(f"{UNENCRYPTED_KEY_FLAG} and a passphrase (--passphrase-file or KIMPKI_CA_PASSPHRASE) "
                         "contradict each other; drop one")
    if parent is not None and parent.encrypted and not passphrase and not unencrypted_key:
        raise UsageError(f"the key of CA {parent.name!r} is encrypted but no passphrase was given for the key of "
                         f"{name!r}: give --passphrase-file (or KIMPKI_CA_PASSPHRASE), or {UNENCRYPTED_KEY_FLAG} to store "
                         "it in the clear")


def check_may_sign_ca(store: Store, parent: CaRecord) -> None:
    """Refuse a CA under ``parent`` when a pathLenConstraint above it forbids one: leaves under
    it would fail every verifier ("path length constraint exceeded")."""
    below = 0  # CA certificates between the ancestor looked at and the new CA
    ca: CaRecord | None = parent
    while ca is not None:
        limit = parse.path_length(read_ca_cert(ca))
        if limit is not None and below + 1 > limit:
            if ca is parent:
                raise OperationError(f"CA {parent.name!r} has pathLen:{limit} and may not sign another CA "
                                     f"(verifiers would refuse every leaf below it): issue leaves from it, "
                                     f"or create the CA under {parent.parent or 'another root'!r}")
            raise OperationError(f"CA {ca.name!r} above {parent.name!r} has pathLen:{limit}: no further CA may be "
                                 f"created under {parent.name!r} (verifiers would refuse every leaf below it)")
        below += 1
        ca = store.get_ca(ca.parent) if ca.parent else None


def init_ca(store: Store, name: str, *, org: str | None, common_name: str | None,
            key_type: keys.KeyType, days: float, passphrase: bytes | None,
            parent: str | None, parent_passphrase: PassphraseSource, now,
            unencrypted_key: bool = False) -> CaResult:
    name = safe_store_name(name)
    if parent is not None:  # refuse before the key is generated
        p = store.get_ca(parent)
        _key_protection(name, passphrase, unencrypted_key, p)
        check_may_sign_ca(store, p)
    key = keys.generate_key(key_type)  # outside the lock: RSA-4096 can take a second
    with store.locked():
        return create_ca(store, name, key, key_type=key_type, org=org, common_name=common_name, days=days,
                         passphrase=passphrase, parent=parent, parent_passphrase=parent_passphrase, now=now,
                         unencrypted_key=unencrypted_key)


def create_ca(store: Store, name: str, key, *, key_type: keys.KeyType, org: str | None,
              common_name: str | None, days: float, passphrase: bytes | None, parent: str | None,
              parent_passphrase: PassphraseSource, now, unencrypted_key: bool = False) -> CaResult:
    """:func:`init_ca` with a key already generated. Call inside ``store.locked()``."""
    if store.find_ca(name) is not None:
        raise OperationError(f"a CA named {name!r} already exists (see 'kimpki ca list')")
    not_before, not_after = profiles.validity(now, days)
    chain_pem = None
    _key_protection(name, passphrase, unencrypted_key, store.get_ca(parent) if parent else None)
    if parent is None:
        cert = profiles.make_root(key, common_name or name, org, not_before, not_after)
    else:
        check_may_sign_ca(store, store.get_ca(parent))
        issuer = load_issuer(store, store.get_ca(parent), parent_passphrase)
        if not_after > issuer.cert.not_valid_after_utc:
            not_after = issuer.cert.not_valid_after_utc  # an intermediate never outlives its parent
        serial = fresh_serial(store, parent)
        cert = profiles.make_intermediate(key.public_key(), common_name or name, org, issuer,
                                          not_before, not_after, serial)
        above = issuer.chain_below_root
        chain_pem = parse.certs_to_pem(above) if above else None
    rec = store.add_ca(name, parent=parent, cert_pem=parse.certs_to_pem([cert]),
                       key_pem=keys.key_to_pem(key, passphrase), chain_pem=chain_pem,
                       serial=parse.serial_hex(cert), subject=cert.subject.rfc4514_string(),
                       not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                       key_type=key_type.value, encrypted=bool(passphrase), imported=False, now=now)
    return CaResult(rec, cert, [])


def import_ca(store: Store, name: str, cert_file: Path, key_file: Path, *,
              key_passphrase: bytes | None, passphrase: bytes | None, now,
              unencrypted_key: bool = False) -> CaResult:
    """Adopt an existing CA (such as a root made by hand with ``openssl req -x509``).

    The key is stored encrypted with ``passphrase`` when given; an encrypted key file stays
    encrypted (with its own passphrase) unless ``unencrypted_key`` asks for it in the clear."""
    name = safe_store_name(name)
    _key_protection(name, passphrase, unencrypted_key, None)
    from kimpki import input_files

    cert_data, key_data = input_files.read_bytes(cert_file), input_files.read_bytes(key_file)
    if passphrase is None and not unencrypted_key and keys.key_is_encrypted(key_data):
        passphrase = key_passphrase  # (None: load_key below says the passphrase is missing)
    certs = parse.load_certificates(cert_data, str(cert_file))
    cert = certs[0]
    key = keys.load_key(key_data, key_passphrase, what=f"key in {key_file}")
    if not keys.key_matches(key, cert.public_key()):
        raise OperationError(f"the key in {key_file} does not belong to the certificate in {cert_file}")
    if not parse.is_ca(cert):
        raise OperationError(f"{cert_file} is not a CA certificate (basicConstraints CA:FALSE)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            raise OperationError(f"{cert_file} may not sign certificates (keyUsage lacks keyCertSign)")
    except x509.ExtensionNotFound:
        pass
    if cert.issuer != cert.subject:
        raise OperationError(f"{cert_file} is not self-signed; import its root first "
                             "(importing intermediates is not supported yet)")
    if now > cert.not_valid_after_utc:
        raise OperationError(f"{cert_file} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    existing = store.find_ca(name)
    if existing is not None:
        return _restore(store, existing, cert, key, passphrase=passphrase, cert_file=cert_file)
    warnings = parse.profile_warnings(cert)
    kt = keys.key_type_of(key)
    with store.locked():
        rec = store.add_ca(name, parent=None, cert_pem=parse.certs_to_pem([cert]),
                           key_pem=keys.key_to_pem(key, passphrase), chain_pem=None,
                           serial=parse.serial_hex(cert), subject=cert.subject.rfc4514_string(),
                           not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                           key_type=kt.value if kt else None, encrypted=bool(passphrase),
                           imported=True, now=now)
    return CaResult(rec, cert, warnings)


def _restore(store: Store, ca: CaRecord, cert: x509.Certificate, key, *, passphrase: bytes | None,
             cert_file: Path) -> CaResult:
    """``ca import`` of a CA the store already has: put back the files a damaged home lost
    (see ``store.read_ca_file``). Anything else is a name clash."""
    if ca.serial != parse.serial_hex(cert):
        raise OperationError(f"a CA named {ca.name!r} already exists (see 'kimpki ca list'), and {cert_file} "
                             f"is another certificate (serial {parse.serial_hex(cert)}, not {ca.serial})")
    with store.locked():
        try:
            read_ca_cert(ca)
            cert_pem = None
        except KimpkiError:  # missing or garbled: the one being imported is the same certificate
            cert_pem = parse.certs_to_pem([cert])
        key_pem = None if ca.key_path.exists() else keys.key_to_pem(key, passphrase)
        if cert_pem is None and key_pem is None:
            raise OperationError(f"a CA named {ca.name!r} already exists (see 'kimpki ca list')")
        store.restore_ca_files(ca, cert_pem=cert_pem, key_pem=key_pem, encrypted=bool(passphrase))
    restored = [str(p) for p, data in ((ca.cert_path, cert_pem), (ca.key_path, key_pem)) if data is not None]
    return CaResult(store.get_ca(ca.name), cert, [], restored=restored)


def list_cas(store: Store) -> list[CaResult]:
    return [CaResult(ca, read_ca_cert(ca), []) for ca in store.list_cas()]


def ensure_default_ca(store: Store, now, passphrase: bytes | None = None) -> CaRecord | None:
    """Create a default CA when none exists at all (as mkcert does), its key encrypted with
    ``passphrase`` when one is given; returns it if created."""
    if store.list_cas():
        return None
    try:
        res = init_ca(store, DEFAULT_CA_NAME, org="kimpki", common_name="kimpki default CA",
                      key_type=keys.DEFAULT_KEY_TYPE, days=DEFAULT_CA_DAYS, passphrase=passphrase,
                      parent=None, parent_passphrase=no_passphrase, now=now)
    except OperationError:
        # Another process created it first: fine.
        return None
    return res.record


def generations(store: Store, ca_name: str) -> list[CaRecord]:
    """``ca_name`` and the CAs it replaced or that replace it (``kimpki ca rotate``), oldest
    first; just ``[ca]`` for a CA that was never rotated, ``[]`` for an unknown name."""
    ca = store.find_ca(ca_name)
    if ca is None:
        return []
    line, seen = [ca], {ca.name}
    while line[0].predecessor and line[0].predecessor not in seen:
        before = store.find_ca(line[0].predecessor)
        if before is None:
            break
        line.insert(0, before)
        seen.add(before.name)
    while line[-1].successor and line[-1].successor not in seen:
        after = store.find_ca(line[-1].successor)
        if after is None:
            break
        line.append(after)
        seen.add(after.name)
    return line


def trust_bundle(store: Store, ca_name: str, ca_pem: bytes) -> bytes:
    """The CA bundle to publish for CA ``ca_name``, given ``ca_pem`` (the CA's certificate, or
    the root it chains to): what a MUTUAL credential checks client certificates against, and
    what a holder of a certificate from ``ca_name`` is told to trust (its ``ca.crt``).

    The one place that decides it. Outside a rotation that is ``ca_pem`` unchanged. While a
    rotation overlaps (``kimpki ca rotate``), it holds the same certificate (own or root) of
    every generation that is not retired, old first, whichever generation ``ca_name`` is, so
    certificates from the old and the new CA are both accepted; after ``kimpki ca retire`` the
    retired generation drops out. Worked out once per store batch.
    """
    return store.memo(("trust_bundle", ca_name, ca_pem), lambda: _trust_bundle(store, ca_name, ca_pem))


def _trust_bundle(store: Store, ca_name: str, ca_pem: bytes) -> bytes:
    line = generations(store, ca_name)
    if len(line) < 2:
        return ca_pem
    given = parse.load_certificates(ca_pem, f"CA bundle of {ca_name!r}")
    own = {g.name: read_ca_cert(g) for g in line}
    root = {g.name: read_ca_cert(root_of(store, g)) for g in line}
    roles: set[str] = set()
    others: list[x509.Certificate] = []
    for cert in given:
        if cert in own.values():
            roles.add("own")
        elif cert in root.values():
            roles.add("root")
        else:
            others.append(cert)
    if not roles:
        return ca_pem
    bundle: list[x509.Certificate] = []
    for g in line:
        if g.retired_at is not None:
            continue
        for role, certs in (("own", own), ("root", root)):
            if role in roles and certs[g.name] not in bundle:
                bundle.append(certs[g.name])
    bundle += [c for c in others if c not in bundle]
    if not bundle or bundle == given:
        return ca_pem
    return parse.certs_to_pem(bundle)


def fresh_serial(store: Store, ca_name: str) -> int:
    for _ in range(8):
        serial = profiles.random_serial()
        if not store.serial_used(ca_name, format(serial, "x")):
            return serial
    raise OperationError("could not draw an unused serial number")  # 2^-159 per draw: never


