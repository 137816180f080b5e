"""``kimpki status``: every credential with hosts, expiry, renewal date and state (for monitoring)."""

from __future__ import annotations

import click

from kimpki.cli.common import (MANIFESTS_HINT, emit, existing_store, json_option, no_cluster_hint, note, now_utc,
                               open_store, table)
from kimpki.cli.renew import check_places, place_options, rule_settings

EPILOG = """\b
Examples:
  kimpki status                                 # the store: server certificates, where deployed
  kimpki status --cluster                       # credential Secrets in istio-system
  kimpki status -A --fail-on due                # every namespace; exit 1 if any is due (monitoring)
  kimpki status --manifests ./deploy --json
  kimpki status --policy policies/ --renew-before 30d
  kimpki status -o prometheus                   # gauges for Prometheus, CA certificates included
  kimpki status --textfile /var/lib/node_exporter/textfile/kimpki.prom
\b
Without place options the store's inventory is shown: every current server certificate
with the places it was deployed to (what kimpki wrote). With --cluster (or -n, -A,
--kubeconfig, --context), --manifests or --policy, the Secrets themselves are read:
what the gateway actually serves.
\b
State: valid; due (inside the renewal window: the last third of the lifetime unless
--renew-before or the policy's renewBefore says otherwise; --jitter as for renew);
expired; not-yet-valid; broken (a credential Secret whose annotations or certificate
cannot be read: renew cannot renew it). With --policy, a due credential outside the
policy's maintenance windows shows when its next window opens ("due, window ...";
renew defers it until then), or "outside window" when renew would not wait.
\b
CRLs: each CA's CRL in the store, or the CRLs the Secrets carry (how many carry each),
with its next update; an expired one makes Envoy refuse every client of its CA.
\b
Exit codes: 0, unless --fail-on: 'due' exits 1 when any credential is due, expired or
broken, 'expired' only when any is expired or broken. 2 usage error.
"""

ALERT = {"due": ("due", "expired", "broken"), "expired": ("expired", "broken")}


def _day(t: str | None) -> str:
    return t[:16].replace("T", " ") if t else "-"


@click.command("status", epilog=EPILOG)
@place_options
@click.option("--cluster", "use_cluster", is_flag=True,
              help="Read the credential Secrets of the cluster (implied by -n, -A, --kubeconfig, --context).")
@click.option("--renew-before", metavar="X", help="Renewal window: a duration before notAfter (30d) or the last "
                                                  "X% of the lifetime (25%). Default: the last third.")
@click.option("--jitter", metavar="X", help="As for 'kimpki renew': renew up to this much earlier, per serial.")
@click.option("--fail-on", type=click.Choice(["due", "expired"]),
              help="Exit 1 when any credential is due (or worse), or expired (or broken).")
@click.option("-o", "--output", type=click.Choice(["text", "json", "prometheus"]), default=None,
              help="text (default), json (as --json) or prometheus: certificate gauges, CA certificates "
                   "included, in Prometheus' text format.")
@click.option("--textfile", metavar="FILE.prom",
              help="Also write the prometheus gauges to FILE.prom atomically (node_exporter's textfile "
                   "collector directory).")
@json_option
@click.pass_context
def command(ctx, manifests, namespace, all_namespaces, policy, kubeconfig, context, use_cluster, renew_before,
            jitter, fail_on, output, textfile, as_json):
    """Show every credential with hosts, notAfter, days left, renewal date and state."""
    import contextlib

    from kimpki.ops.renewing import inventory_status, open_targets, result_warnings, survey, unfinished

    if as_json and output not in (None, "json"):
        raise click.UsageError(f"--json and -o {output} contradict each other")
    as_json = as_json or output == "json"
    prometheus = output == "prometheus"
    if textfile:
        from kimpki.ops.metrics import check_textfile_path

        check_textfile_path(textfile)
    check_places(namespace, all_namespaces, manifests, policy, kubeconfig, context)
    settings = rule_settings(renew_before, jitter)
    now = now_utc()
    cluster = bool(use_cluster or kubeconfig or context or ((namespace or all_namespaces) and not (manifests or policy)))
    if not (cluster or manifests or policy):
        store = open_store(ctx)
        warnings: list[str] = []
        rows = inventory_status(store, settings, now, warnings)
        from kimpki.ops.metrics import store_crl_samples

        data = {"source": "store", "time": _t(now), "certificates": rows, "counts": _counts(rows),
                "crls": _crls(store_crl_samples(store), now), "warnings": warnings}
        _warn(warnings)
        if prometheus or textfile:
            from kimpki.ops.metrics import store_samples

            _metrics(store_samples(store, settings.renew_before, settings.jitter, now), now, prometheus, textfile)
        if not prometheus:
            emit(data, as_json, _inventory_text)
    else:
        with contextlib.ExitStack() as stack, no_cluster_hint(MANIFESTS_HINT):
            targets = open_targets(stack, manifests=manifests, policy=policy, namespace=namespace,
                                   all_namespaces=all_namespaces, cluster=cluster, kubeconfig=kubeconfig,
                                   context=context)
            results = survey(targets, settings, now)
        home_store = existing_store(ctx)  # None when there is no home: status never creates one
        found_unfinished = unfinished(home_store, results)
        creds = [r.to_dict(now) for r in results if r.state != "ca-bundle"]
        skipped = [{"secret": r.secret, "namespace": r.namespace, "place": r.place, "reason": r.reason}
                   for r in results if r.state == "ca-bundle"]
        rows = creds
        warnings = result_warnings(results)
        from kimpki.ops.metrics import place_crl_samples

        data = {"source": "places", "time": _t(now), "places": [t.description for t in targets],
                "credentials": creds, "skipped": skipped, "counts": _counts(creds), "unfinished": found_unfinished,
                "crls": _crls(place_crl_samples(results, home_store), now), "warnings": warnings}
        _warn(warnings)
        if prometheus or textfile:
            from kimpki.ops.metrics import place_samples

            _metrics(place_samples(results, home_store), now, prometheus, textfile)
        if not prometheus:
            emit(data, as_json, _places_text)
    if fail_on:
        alarming = [r for r in rows if r["state"] in ALERT[fail_on]]
        if alarming:
            counts = _counts(alarming)
            note("kimpki: status: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                 + f" (--fail-on {fail_on})")
            ctx.exit(1)


def _metrics(samples, now, to_stdout: bool, textfile: str | None) -> None:
    from kimpki.ops.metrics import certificate_registry, exposition, write_textfile

    registry = certificate_registry(samples, now)
    if textfile:
        write_textfile(textfile, registry)
    if to_stdout:
        click.echo(exposition(registry), nl=False)


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        note(f"kimpki: warning: {w}")


def _t(t) -> str:
    from kimpki.pki.parse import rfc3339

    return rfc3339(t)


def _counts(rows: list[dict]) -> dict:
    states = ("valid", "due", "expired", "not-yet-valid", "broken")
    return {s: sum(1 for r in rows if r["state"] == s) for s in states}


def _crls(samples, now) -> list[dict]:
    """Each distinct CRL (CA and number) with its next update, and how many Secrets carry it."""
    out: dict[tuple[str, str], dict] = {}
    for s in samples:
        row = out.setdefault((s.name, s.ident), {
            "ca": s.name, "crl_number": int(s.ident), "next_update": _t(s.next_update),
            "state": "expired" if now >= s.next_update else "valid", "secrets": 0})
        row["secrets"] += 1 if s.secret else 0
    return sorted(out.values(), key=lambda r: (r["ca"], r["crl_number"]))


def _crls_text(d: dict, carried: bool) -> str:
    if not d["crls"]:
        return ""
    rows = [[r["ca"], r["crl_number"], _day(r["next_update"]), r["state"]] + ([r["secrets"]] if carried else [])
            for r in d["crls"]]
    return "\n\nCRLs:\n" + table(rows, ["CA", "CRL NUMBER", "NEXT UPDATE", "STATE"] + (["SECRETS"] if carried else []))


def _places_text(d: dict) -> str:
    return _credentials_text(d) + _crls_text(d, carried=True)


def _credentials_text(d: dict) -> str:
    creds = d["credentials"]
    if not creds:
        return f"no managed credential Secrets in {', '.join(d['places'])}"
    several = len(d["places"]) > 1
    rows = [[r["namespace"], r["secret"], ",".join(r["hosts"]) or "-", _day(r["not_after"]),
             "-" if r["days_left"] is None else r["days_left"], _day(r["renewal_time"]), _state_cell(r)]
            + ([r["place"]] if several else []) for r in creds]
    out = table(rows, ["NAMESPACE", "SECRET", "HOSTS", "NOT AFTER", "DAYS", "RENEWAL DUE", "STATE"]
                + (["PLACE"] if several else []))
    stapled = [f"  {r['namespace']}/{r['secret']}: next update {r['ocsp_staple_next_update']}"
               for r in creds if r.get("ocsp_staple_next_update")]
    if stapled:
        out += "\nOCSP staples:\n" + "\n".join(stapled)
    broken = [f"  {r['namespace']}/{r['secret']}: {r['reason']}" for r in creds if r["state"] == "broken"]
    if broken:
        out += "\nbroken:\n" + "\n".join(broken)
    late = [f"  {u['namespace']}/{u['secret']}: serves serial {u['serial']}, still pending in the store: "
            f"the next 'kimpki renew' promotes it" for u in d.get("unfinished", ())]
    if late:
        out += "\nunfinished:\n" + "\n".join(late)
    return out


def _state_cell(r: dict) -> str:
    """The state, and for a due credential outside its maintenance windows what renew will do."""
    if r.get("window_decision") == "defer":
        return f"{r['state']}, window {_day(r['next_window'])}"
    if r.get("window_decision") == "override":
        return f"{r['state']}, outside window"
    return r["state"]


def _inventory_text(d: dict) -> str:
    return _certificates_text(d) + _crls_text(d, carried=False)


def _certificates_text(d: dict) -> str:
    rows = d["certificates"]
    if not rows:
        return "no server certificates in the store yet: run 'kimpki issue HOST'"

    def deployed(r: dict) -> str:
        places = [f"{p.get('namespace')}/{p.get('name')}" + (f" ({p['manifests']})" if p.get("manifests") else "")
                  for p in r["deployed_to"]]
        return ", ".join(places) or "-"

    return table([[r["certificate"], ",".join(r["hosts"]), _day(r["not_after"]), r["days_left"],
                   _day(r["renewal_time"]), r["state"] + (" (pending " + r["pending_serial"][:8] + ")"
                                                          if r["pending_serial"] else ""), deployed(r)]
                  for r in rows],
                 ["CERTIFICATE", "HOSTS", "NOT AFTER", "DAYS", "RENEWAL DUE", "STATE", "DEPLOYED TO"])
