"""Revoking certificates and publishing each CA's CRL (``kimpki revoke``, ``kimpki crl``).

A revocation is recorded and the CA's CRL re-signed in one store transaction: the CA key is
loaded first, so a wrong passphrase changes nothing, and a CRL number is never used twice (the
number in ``crl.pem`` counts as used even if the database lost the transaction that wrote it).
"""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.serialization import Encoding

from kimpki.errors import KimpkiError, NotFoundError, OperationError, UsageError
from kimpki.istio import contract as c
from kimpki.istio.credential import ROLE_CREDENTIAL, crl_file_name, default_ca_file_name, read_provenance
from kimpki.ops.authority import PassphraseSource, generations, load_issuer, read_ca_cert, root_of
from kimpki.ops.places import SecretPlace
from kimpki.pki import parse
from kimpki.pki import revocation as rv
from kimpki.store import CaRecord, Store
from kimpki.store import revocations as db

CRL_VALIDITY_KEY = "crl-validity:"  # settings: a CA's CRL validity in seconds (kimpki crl --next-update)


@dataclass
class CrlResult:
    ca: str
    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    path: str
    signed: bool  # False: the stored CRL was still fresh and is returned as it is
    pem: bytes

    def to_dict(self) -> dict:
        return {"ca": self.ca, "crl_number": self.number, "this_update": parse.rfc3339(self.this_update),
                "next_update": parse.rfc3339(self.next_update),
                "refresh_after": parse.rfc3339(rv.crl_refresh_due(self.this_update, self.next_update)),
                "revoked_entries": self.entries, "path": self.path, "signed": self.signed}


@dataclass
class RevokeResult:
    revocation: db.Revocation
    already: bool
    crl: CrlResult | None
    tree_crls: list[CrlResult] = field(default_factory=list)  # other CAs of the trust tree, newly signed
    republished: list[dict] | None = None  # credentials given the new CRLs (None: no place given)
    place: str | None = None
    restapled: list[dict] | None = None  # stapled credentials of the certificate given a revoked staple
    pair: "RevokeResult | None" = None  # the other half of an RSA+ECDSA pair, revoked with it

    def to_dict(self) -> dict:
        return {**self.revocation.to_dict(), "already_revoked": self.already,
                "crl": self.crl.to_dict() if self.crl else None,
                "tree_crls": [c.to_dict() for c in self.tree_crls],
                "place": self.place, "republished": self.republished, "restapled": self.restapled,
                "pair": self.pair.to_dict() if self.pair else None}


def normalise_serial(text: str) -> str:
    """A serial as kimpki prints it (lower-case hex, no colons or leading zeros)."""
    raw = text.strip().lower().replace(":", "")
    if raw.startswith("0x"):
        raw = raw[2:]
    if not raw or len(raw) > 40 or any(c not in "0123456789abcdef" for c in raw):
        raise UsageError(f"--serial {text!r}: expected the certificate's serial in hex (as 'kimpki list' shows it)")
    return format(int(raw, 16), "x")


def find_target(store: Store, *, name: str | None, serial: str | None, ca: str | None) -> db.Revocation:
    """What to revoke, as an unrecorded Revocation (times filled in by ``revoke``)."""
    if (name is None) == (serial is None):
        raise UsageError("give the certificate's NAME or --serial HEX (one of them)")
    if ca is not None:
        store.get_ca(ca)  # an unknown CA is NotFoundError (exit 1), as in every command
    if name is not None:
        rec = store.find_cert(name)
        if rec is None:
            raise NotFoundError(f"no certificate named {name!r} in the store (see 'kimpki list'; an older "
                                f"version: --serial HEX from 'kimpki list --all')")
        if ca is not None and rec.ca != ca:
            raise UsageError(f"{name} was issued by CA {rec.ca!r}, not {ca!r}")
        return db.Revocation(rec.ca, rec.serial, rec.name, rec.kind, rec.not_after, rec.not_after, "", "")
    hexa = normalise_serial(serial)
    rows = store.db.execute("SELECT * FROM certificates WHERE serial=?" + (" AND ca=?" if ca else "") +
                            " ORDER BY id DESC", (hexa, ca) if ca else (hexa,)).fetchall()
    if rows:
        rec = store._cert_from_row(rows[0])
        return db.Revocation(rec.ca, rec.serial, rec.name, rec.kind, rec.not_after, rec.not_after, "", "")
    for cand in store.list_cas():  # an intermediate CA's own certificate, revoked by its parent
        if cand.serial == hexa and cand.parent is not None and ca in (None, cand.parent):
            return db.Revocation(cand.parent, cand.serial, cand.name, "ca", cand.not_after, cand.not_after, "", "")
    where = f" issued by CA {ca!r}" if ca else ""
    raise NotFoundError(f"no certificate with serial {hexa}{where} in the store: kimpki revokes only what "
                        f"it issued (see 'kimpki list --all')")


def revoke(store: Store, *, name: str | None, serial: str | None, ca: str | None, reason: str, now: datetime,
           passphrase: PassphraseSource, command: str, place: SecretPlace | None = None,
           namespace: str | None = None) -> RevokeResult:
    """Record the revocation and sign the CRLs; with ``place``, republish them there
    (:func:`republish_crls`) and rewrite the OCSP staple of every credential serving the
    certificate (:func:`kimpki.ops.stapling.republish_staples`), also when the certificate was
    already revoked, so that running the command again finishes a republication that failed.
    Revoking the current version of one half of an RSA+ECDSA pair (by NAME) revokes the other
    half too: they are one host's identity. In a cluster, the revocation and the CRL numbers are
    also kept in its revocation state (:mod:`kimpki.ops.cluster_revocations`), which is merged
    into the home first."""
    from kimpki.ops import pairs
    from kimpki.ops.cluster_revocations import for_places
    from kimpki.ops.stapling import republish_staples

    mirror = for_places([(place, namespace)] if place is not None else [])
    if mirror:
        mirror.sync(store)
    current = store.find_cert(name) if name is not None else None
    partner = pairs.find_partner(store, current) if current is not None else None
    res = _revoke(store, name=name, serial=serial, ca=ca, reason=reason, now=now, passphrase=passphrase,
                  command=command, mirror=mirror or None)
    if res.already and mirror and mirror.record(store, res.revocation.ca):
        # revoked from this home before, without the cluster: its CRLs there lack the entry
        res.crl = current_crl(store, res.revocation.ca, now=now, passphrase=passphrase, refresh=True,
                              mirror=mirror)
    if partner is not None:
        res.pair = _revoke(store, name=partner.name, serial=None, ca=None, reason=reason, now=now,
                           passphrase=passphrase, command=command, mirror=mirror or None)
    if place is not None:
        res.place = place.description
        res.republished = republish_crls(store, place, res.revocation.ca, now=now, namespace=namespace)
        res.restapled = republish_staples(store, place, res.revocation.ca, res.revocation.serial, now=now,
                                          passphrase=passphrase, namespace=namespace)
    return res


def _revoke(store: Store, *, name: str | None, serial: str | None, ca: str | None, reason: str, now: datetime,
            passphrase: PassphraseSource, command: str, mirror=None) -> RevokeResult:
    target = find_target(store, name=name, serial=serial, ca=ca)
    reason = rv.reason_name(reason)
    existing = db.find(store, target.ca, target.serial)
    if existing is not None:
        return RevokeResult(existing, True, None)
    issuer_ca = store.get_ca(target.ca)
    issuer = load_issuer(store, issuer_ca, passphrase)  # before anything is written: a wrong passphrase changes nothing
    rev = db.Revocation(target.ca, target.serial, target.name, target.kind, target.not_after,
                        now.replace(microsecond=0), reason, command)
    # Envoy refuses every client of a chain in which one CA lacks a CRL: once this CA's tree uses
    # revocation, every CA of it needs a fresh CRL. Their keys are loaded first, too.
    others = [(ca, load_issuer(store, ca, passphrase)) for ca in _needing_crl(store, issuer_ca, now)]
    with store.locked():
        if db.find(store, rev.ca, rev.serial) is None:  # another process may have been faster
            db.record(store, rev)
        crl = _sign_crl(store, issuer_ca.name, issuer, now, mirror)
        tree_crls = [_sign_crl(store, ca.name, other, now, mirror) for ca, other in others]
    return RevokeResult(rev, False, crl, tree_crls)


def _needing_crl(store: Store, ca: CaRecord, now: datetime) -> list[CaRecord]:
    """The CAs of ``ca``'s trust tree (its root, that root's generations while a CA rotation
    overlaps, and every CA below them) other than ``ca`` whose CRL is missing or due for re-signing."""
    out = []
    for other in trust_tree(store, generations(store, root_of(store, ca).name)):
        if other.name == ca.name:
            continue
        state = db.crl_state(store, other.name)
        if (state is None or not db.crl_path(store, other.name).exists()
                or now >= rv.crl_refresh_due(state.this_update, state.next_update)):
            out.append(other)
    return out


def ensure_tree_crls(store: Store, ca: CaRecord, *, now: datetime, passphrase: PassphraseSource,
                     mirror=None) -> list[CrlResult]:
    """When ``ca``'s trust tree uses revocation, sign every CRL of it that is missing or due
    (``ca rotate``: a successor joins a tree whose MUTUAL credentials carry CRLs, and needs one)."""
    tree = trust_tree(store, generations(store, root_of(store, ca).name))
    if not any(db.crl_state(store, t.name) for t in tree):
        return []
    todo = [t for t in tree if t.name == ca.name and db.crl_state(store, t.name) is None] + _needing_crl(store, ca, now)
    issuers = [(t, load_issuer(store, t, passphrase)) for t in todo]
    with store.locked():
        return [_sign_crl(store, t.name, issuer, now, mirror) for t, issuer in issuers]


def trust_tree(store: Store, tops: list[CaRecord]) -> list[CaRecord]:
    """``tops`` and every store CA below them, parents first; retired CAs left out (they issue
    nothing any more, and a gateway that trusts their clients gets them through ``tops``)."""
    cas = [ca for ca in store.list_cas() if ca.retired_at is None]
    tree = [ca for ca in tops if ca.retired_at is None]
    names = {ca.name for ca in tree}
    grew = True
    while grew:
        below = [ca for ca in cas if ca.parent in names and ca.name not in names]
        tree += below
        names |= {ca.name for ca in below}
        grew = bool(below)
    return tree


def client_trust(store: Store, bundle_pem: bytes) -> list[CaRecord]:
    """The client-trust tree of a MUTUAL credential publishing ``bundle_pem``: each store CA whose
    certificate is in the bundle, and every store CA below it."""
    given = set(parse.load_certificates(bundle_pem, "CA bundle"))
    return trust_tree(store, [ca for ca in store.list_cas() if read_ca_cert(ca) in given])


def client_trust_crls(store: Store, bundle_pem: bytes, now: datetime,
                      tree: list[CaRecord] | None = None) -> bytes | None:
    """The CRLs a MUTUAL credential publishing ``bundle_pem`` must carry: one for every CA of its
    client trust (:func:`client_trust`), concatenated PEM; None when no CA of it uses revocation
    (has a CRL).

    Envoy fails every certificate of a chain when one CA of it has no CRL, and every client of a
    CA whose CRL is past nextUpdate: a partial or expired set is refused here (one line naming
    ``kimpki crl CA``) rather than delivered."""
    tree = client_trust(store, bundle_pem) if tree is None else tree
    states = {ca.name: db.crl_state(store, ca.name) for ca in tree}
    if not any(states.values()):
        return None
    users = ", ".join(repr(n) for n, s in states.items() if s is not None)
    pems = []
    for ca in tree:
        state, path = states[ca.name], db.crl_path(store, ca.name)
        if state is None or not path.exists():
            raise OperationError(f"CA {ca.name!r} has no CRL, but its client trust uses revocation (CRL of "
                                 f"{users}) and Envoy would refuse every client of it: run 'kimpki crl {ca.name}'")
        if now >= state.next_update:
            raise OperationError(f"the CRL of CA {ca.name!r} expired on {parse.rfc3339(state.next_update)} and "
                                 f"Envoy would refuse every client of it: run 'kimpki crl {ca.name}'")
        pems.append(path.read_bytes())
    return b"".join(p if p.endswith(b"\n") else p + b"\n" for p in pems)


def crl_issuers(pem: bytes) -> set[str]:
    """The issuers (RFC 4514) of the PEM CRLs in ``pem``; unreadable blocks are left out."""
    from cryptography import x509

    marker = b"-----BEGIN X509 CRL-----"
    out = set()
    for part in pem.split(marker)[1:]:
        try:
            out.add(x509.load_pem_x509_crl(marker + part).issuer.rfc4514_string())
        except ValueError:
            continue
    return out


def known_ca_subjects(store: Store) -> frozenset[str]:
    """The subjects of every CA of the home, retired ones included."""
    return frozenset(read_ca_cert(ca).subject.rfc4514_string() for ca in store.list_cas())


def refuse_dropping_unknown_crls(current: bytes, new: bytes, known: frozenset[str], where: str) -> None:
    """A delivered CRL whose CA this home does not have must not be dropped: the home cannot tell
    whether the CA is still trusted (an intermediate below a published root, which the CronJob's
    home lacks: it imports roots only), and Envoy refuses every client of a CA without a CRL."""
    lost = sorted(i for i in crl_issuers(current) - crl_issuers(new) if i not in known)
    if lost:
        raise OperationError(f"{where} carries the CRL of {lost[0]}, a CA this kimpki home does not have: writing "
                             f"it without that CRL would make Envoy refuse every client of that CA; run this "
                             f"from a home that has the CA")


def republish_crls(store: Store, place: SecretPlace, ca: str | None, *, now: datetime,
                   namespace: str | None = None) -> list[dict]:
    """Give every managed MUTUAL credential in ``place`` whose client trust holds CA ``ca`` (None:
    whose client trust uses revocation) the store's current CRLs of that trust, in place: only
    the CRL key of the Secret the gateway reads the CA from changes (:func:`crl_holder`),
    guarded by what was just read (resourceVersion; no blind retry, so a concurrent rotation is
    never undone: run again).
    Returns ``[{namespace, secret, credential, action}]`` (plus ``file_mounted: True`` for a
    file-mounted credential: its gateway reads the file, see ``caCrl``)."""
    done = []
    seen: set[tuple[str, str, str]] = set()  # file-mounted credentials may share one CA file
    trusts: dict[bytes, list[CaRecord]] = {}  # by CA bundle: most credentials share a few
    known: frozenset[str] | None = None
    for cred in list(place.managed(namespace)):
        prov = read_provenance(cred)
        if prov.get("role", ROLE_CREDENTIAL) != ROLE_CREDENTIAL or prov.get("mode") != "mutual":
            continue
        meta = cred["metadata"]
        ns, name = meta.get("namespace") or namespace or c.DEFAULT_NAMESPACE, meta["name"]
        found = crl_holder(place, cred, prov)
        if found is None:
            continue
        holder, ca_key, crl_key = found
        if (ns, holder["metadata"]["name"], crl_key) in seen:
            continue
        seen.add((ns, holder["metadata"]["name"], crl_key))
        data = holder.get("data") or {}
        try:
            bundle = base64.b64decode(data[ca_key], validate=True)
            tree = trusts[bundle] if bundle in trusts else trusts.setdefault(bundle, client_trust(store, bundle))
        except (ValueError, KimpkiError):
            raise OperationError(f"Secret {ns}/{holder['metadata']['name']}: its {ca_key} is not a readable CA "
                                 f"bundle; re-create the credential with 'kimpki secret create'") from None
        if ca is not None and ca not in {t.name for t in tree}:
            continue
        crls = client_trust_crls(store, bundle, now, tree)
        if crls is None:  # the tree uses no revocation (cannot be, just after revoking in it)
            continue
        if data.get(crl_key):
            known = known_ca_subjects(store) if known is None else known  # once, not once per Secret
            refuse_dropping_unknown_crls(base64.b64decode(data[crl_key]), crls, known,
                                         f"Secret {ns}/{holder['metadata']['name']}")
        desired = copy.deepcopy(holder)
        desired["data"] = {**data, crl_key: base64.b64encode(crls).decode("ascii")}
        try:
            res = place.write(desired, current=holder, retries=0)
        except KimpkiError as e:
            raise type(e)(f"{e} (the CRLs of secret/{name} were not republished: run the command "
                          f"again)") from None
        item = {"namespace": ns, "secret": holder["metadata"]["name"], "credential": name, "action": res.action}
        if (prov.get("delivery") or "sds") == "file-mounted":
            item["file_mounted"] = True
        done.append(item)
    return done


def crl_holder(place: SecretPlace, cred: dict, prov: dict) -> tuple[dict, str, str] | None:
    """``(Secret, CA key, CRL key)``: where the gateway reads the client CA and CRLs of the MUTUAL
    credential ``cred`` (its kimpki.io annotations ``prov``). SDS, Istio's precedence:
    ``NAME-cacert`` when it exists (no fallback), else ``NAME``; ``crl`` beside ``cacert``,
    ``ca.crl`` beside ``ca.crt``. File-mounted: istio-ingressgateway-ca-certs, the credential's CA
    file and the CRL file beside it (``example.com.crt``, ``example.com.crl``: the Gateway's
    ``caCrl``). None when that Secret or its CA key is missing."""
    meta = cred["metadata"]
    if (prov.get("delivery") or "sds") == "file-mounted":
        holder = place.get(meta.get("namespace"), c.FILE_MOUNTED_CA_SECRET)
        ca_key = str(prov.get("ca_file_name") or default_ca_file_name(str(prov.get("ca") or "")))
        crl_key = crl_file_name(ca_key)
    else:
        holder = place.get(meta.get("namespace"), c.cacert_secret_name(meta["name"])) or cred
        data = (holder or {}).get("data") or {}
        ca_key, crl_key = ((c.GENERIC_CA, c.GENERIC_CRL) if data.get(c.GENERIC_CA) else (c.TLS_CA, c.TLS_CRL))
    if holder is None or not (holder.get("data") or {}).get(ca_key):
        return None
    return holder, ca_key, crl_key


def refresh_due_crls(store: Store, *, now: datetime, passphrase: PassphraseSource,
                     mirror=None) -> list[CrlResult]:
    """Re-sign every CA's CRL that is inside the last third of its validity (``kimpki renew``:
    the CRLs credentials carry must never pass nextUpdate). CAs that never had a CRL get none.
    ``mirror``: the cluster revocation state the numbers are reserved in and the CRLs published to."""
    out = []
    for ca in store.list_cas():
        state = db.crl_state(store, ca.name)
        if state is not None and ca.retired_at is None and now >= rv.crl_refresh_due(state.this_update,
                                                                                      state.next_update):
            out.append(current_crl(store, ca.name, now=now, passphrase=passphrase, mirror=mirror))
    return out


def uses_revocation(store: Store) -> bool:
    return store.db.execute("SELECT 1 FROM crls LIMIT 1").fetchone() is not None


def crl_validity(store: Store, ca: str) -> timedelta:
    return stored_crl_validity(store, ca) or rv.DEFAULT_CRL_VALIDITY


def stored_crl_validity(store: Store, ca: str) -> timedelta | None:
    """The CA's CRL validity when one was set (``kimpki crl --next-update``, a policy's ``crlValidity``)."""
    value = store.get_setting(CRL_VALIDITY_KEY + ca)
    return timedelta(seconds=int(value)) if value else None


def set_crl_validity(store: Store, ca: str, validity: timedelta) -> None:
    rv.check_crl_validity(validity)
    with store.locked():
        store.set_setting(CRL_VALIDITY_KEY + ca, str(int(validity.total_seconds())))


def current_crl(store: Store, ca_name: str, *, now: datetime, passphrase: PassphraseSource,
                refresh: bool = False, mirror=None) -> CrlResult:
    """The CA's CRL: the stored one while it is fresh (before the last third of its validity),
    else (or with ``refresh``) a newly signed one."""
    ca = store.get_ca(ca_name)
    state = db.crl_state(store, ca.name)
    path = db.crl_path(store, ca.name)
    if state is not None and not refresh and path.exists() and now < rv.crl_refresh_due(state.this_update,
                                                                                         state.next_update):
        pem = path.read_bytes()
        entries = len(parse_crl(pem, str(path)))
        return CrlResult(ca.name, state.number, state.this_update, state.next_update, entries, str(path), False, pem)
    issuer = load_issuer(store, ca, passphrase)
    with store.locked():
        return _sign_crl(store, ca.name, issuer, now, mirror)


def _sign_crl(store: Store, ca_name: str, issuer, now: datetime, mirror=None) -> CrlResult:
    """Sign and save the CA's next CRL. Call inside ``store.locked()``. With ``mirror`` (a
    cluster's revocation state), the number is reserved there first, and the CRL published there
    after: no other run, from any home, signs a CRL with that number."""
    path = db.crl_path(store, ca_name)
    seen = 0
    if path.exists():  # a CRL the database may not know of (killed between file and commit)
        try:
            seen = rv.crl_number(parse_crl(path.read_bytes(), str(path))) + 1
        except Exception:  # noqa: BLE001 - a damaged file: the database's number still counts
            seen = 0
    number = db.next_crl_number(store, ca_name, at_least=max(seen, 1))
    if mirror is not None:
        number = mirror.reserve(store, ca_name, number)  # also merges the revocations recorded there
    this_update = now.replace(microsecond=0)
    next_update = this_update + crl_validity(store, ca_name)
    entries = [rv.RevokedEntry(int(r.serial, 16), r.revoked_at, r.reason, r.not_after) for r in db.of_ca(store, ca_name)]
    crl = rv.build_crl(issuer.cert, issuer.key, entries, number=number, this_update=this_update,
                       next_update=next_update)
    pem = crl.public_bytes(Encoding.PEM)
    db.save_crl(store, ca_name, number, this_update, next_update, pem)
    if mirror is not None:
        mirror.publish(store, ca_name, number, this_update, next_update, pem)
    return CrlResult(ca_name, number, this_update, next_update, len(crl), str(path), True, pem)


def parse_crl(pem: bytes, source: str):
    from cryptography import x509

    try:
        return x509.load_pem_x509_crl(pem)
    except ValueError as e:
        raise UsageError(f"{source}: not a readable CRL ({e})") from None
