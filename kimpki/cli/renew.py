"""``kimpki renew``: rotate every managed credential inside its renewal window (for cron)."""

from __future__ import annotations

import json

import click

from kimpki.cli.common import (MANIFESTS_HINT, cluster_options, emit, json_option, no_cluster_hint, now_utc,
                               open_store, passphrase_file_option, passphrase_source)

EPILOG = """\b
Examples:
  kimpki renew                                  # the cluster's istio-system namespace
  kimpki renew --all-namespaces --dry-run       # what is due anywhere; nothing written
  kimpki renew --manifests ./deploy             # a folder 'kimpki gateway serve' reads
  kimpki renew --policy policies/               # where the policy's credentials live
  kimpki renew --renew-before 30d --jitter 10%
  kimpki renew --log-format json                # one JSON object per log line
  kimpki cron render                            # a crontab line that runs renew
\b
Places: --manifests and --policy name the places to sweep; without them, the cluster
(--kubeconfig, --context; -n NS, default istio-system, or --all-namespaces).
When: from the certificate each Secret serves, in the last third of its lifetime
unless --renew-before (a duration before notAfter, or a percentage of the lifetime)
or the policy's renewBefore says otherwise (one at least as long as a certificate's
lifetime falls back to the third; the log and --json "warnings" say so, once per run).
--jitter renews up to that much earlier,
by a fixed amount per certificate serial, so that certificates issued together do
not all fall due in the same run. A policy's maintenanceWindows (on a Credential or
its Target) confine renewal to those times: a due credential outside them is
deferred (logged with the next window's opening; exit 0), unless waiting would let it
expire or come within a day (or a tenth of its lifetime) of notAfter: then it is
renewed now, and the log says why.
\b
Output: the log goes to stderr (or --log-file), one line per action (renewed, failed, would renew,
deferred, finished: a Secret already serving the new certificate a killed run wrote,
whose pending version is now promoted in the store; "would finish" in a dry run)
and a final summary line ("nothing due; next renewal TIME (NAMESPACE/SECRET)" when
nothing was due); --log-format json makes each line a JSON object (time, level,
event, secret, namespace, place, serials, message) for log collectors. --json
prints the summary object on stdout.
\b
One run at a time: a file lock in the kimpki home, and a Lease (kimpki-renew) in the
cluster. A run that finds the lock held for --lock-wait seconds does nothing and
exits 0, saying who holds it. A dry run takes no lock.
\b
Exit codes: 0 every due credential renewed (or deferred to its maintenance window),
nothing due, or another run holds the lock; 1 any renewal failed or a credential Secret is broken (a failed write keeps the
new certificate pending in the store; the next run finishes with it); 2 usage error.
"""


def place_options(f):
    """The options choosing where credentials are read (shared with ``kimpki status``)."""
    f = cluster_options(f)
    f = click.option("--policy", "policy", multiple=True, type=click.Path(exists=False), metavar="PATH",
                     help="Sweep the places this policy file or folder gives its Credentials (repeatable).")(f)
    f = click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace of the cluster.")(f)
    f = click.option("-n", "--namespace", metavar="NS",
                     help="Only this namespace (cluster default: istio-system; folders: every Secret).")(f)
    f = click.option("--manifests", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
                     help="A folder of manifests standing in for the cluster ('gateway serve' reads it): "
                          "sweep its Secrets (repeatable).")(f)
    return f


def check_places(namespace, all_namespaces, manifests, policy, kubeconfig, context) -> None:
    from kimpki.errors import UsageError

    if namespace and all_namespaces:
        raise UsageError("give -n/--namespace or --all-namespaces, not both")
    if (manifests or policy) and not policy and (kubeconfig or context):
        raise UsageError("--kubeconfig/--context choose a cluster, but --manifests sweeps folders only; "
                         "drop one of them")


def rule_settings(renew_before: str | None, jitter: str | None):
    from kimpki.ops.renewing import RenewalSettings
    from kimpki.pki.renewal import Jitter, RenewBefore

    return RenewalSettings(RenewBefore.parse(renew_before), Jitter.parse(jitter))


class Log:
    """The renewal log on stderr: one line per event, as text or as JSON objects."""

    def __init__(self, fmt: str):
        self.fmt = fmt

    def __call__(self, level: str, event: str, message: str, **fields) -> None:
        from kimpki.pki.parse import rfc3339

        t = rfc3339(now_utc().replace(microsecond=0))
        if self.fmt == "json":
            click.echo(json.dumps({"time": t, "level": level, "event": event, **fields, "message": message}),
                       err=True)
        else:
            click.echo(f"{t} {level} {message}", err=True)

    def result(self, r) -> None:
        """One credential that needed an action (renewed, resumed, would renew, deferred, failed)."""
        from kimpki.ops import renewing as rn

        who = dict(secret=r.secret, namespace=r.namespace, place=r.place,
                   serials={"old": r.serial, "new": r.new_serial})
        if r.action == rn.FAILED:
            self("error", "failed", f"failed {r.ref} ({r.place}): {r.reason}", **who, reason=r.reason)
            return
        if r.action == rn.DEFERRED:
            self("info", "deferred", f"deferred {r.ref} ({r.place}): {r.state} since {_t(r.renewal_time)}, "
                                     f"valid until {_t(r.not_after)}; {r.reason}",
                 **who, next_window=_t(r.next_window), not_after=_t(r.not_after))
            return
        if r.action == rn.WOULD_FINISH:
            self("info", "would_finish", f"would finish {r.ref} ({r.place}): it already serves serial {r.finished}, "
                                         f"which an earlier run wrote and left pending in the store: a real run "
                                         f"promotes it to current, writing nothing",
                 **who, finished_serial=r.finished)
            return
        if r.action == rn.FINISHED:
            self("info", "finished", f"finished {r.ref} ({r.place}): it already served serial {r.finished}, which an "
                                     f"earlier run wrote and left pending in the store: promoted to current",
                 **who, finished_serial=r.finished)
            return
        if r.window_override:  # before the renewal's own line: why it happens outside the windows
            doing = "would renew" if r.action == rn.WOULD_RENEW else "renewing"
            self("warning", "outside_window", f"{r.ref}: {doing} outside its maintenance windows: "
                                              f"{r.window_override}",
                 secret=r.secret, namespace=r.namespace, place=r.place, reason=r.window_override,
                 next_window=_t(r.next_window))
        verb = {rn.RENEWED: "renewed", rn.RESUMED: "renewed", rn.WOULD_RENEW: "would renew"}[r.action]
        detail = f"serial {r.serial} (valid until {_t(r.not_after)}, {r.state})"
        if r.new_serial:
            detail += f" -> {r.new_serial} (valid until {r.new_not_after})"
        if r.action == rn.RESUMED:
            detail += ", with the certificate an earlier run left pending"
        event = {rn.RENEWED: "renewed", rn.RESUMED: "renewed", rn.WOULD_RENEW: "would_renew"}[r.action]
        extra = {"resumed": True} if r.action == rn.RESUMED else {}
        self("info", event, f"{verb} {r.ref} ({r.place}): {detail}", **who, not_after=r.new_not_after, **extra)
        if r.reason:  # rotation's warnings (e.g. a stale NAME-cacert Secret)
            self("warning", "warning", f"{r.ref}: {r.reason}", secret=r.secret, namespace=r.namespace)


class _Terminated(BaseException):
    """SIGTERM (cron's or the kubelet's stop) as an exception, so the run's metrics still go out."""


class RunMetrics:
    """The metrics of one renew run, written or pushed when it ends, however it ends: finished,
    failed, or interrupted (SIGTERM, Ctrl-C). A run that found the lock held reports nothing
    (the run holding it will)."""

    def __init__(self, textfile: str | None, pushgateway: str | None, job: str, log: "Log"):
        from kimpki.ops import metrics

        if textfile:
            metrics.check_textfile_path(textfile)
        if pushgateway:
            metrics.check_pushgateway_url(pushgateway)
        self.textfile, self.pushgateway, self.job, self.log = textfile, pushgateway, job, log
        self.started = now_utc()
        self.summary = None

    def finish(self, summary) -> None:
        self.summary = summary

    def __enter__(self):
        import signal

        def terminated(signum, frame):
            raise _Terminated()

        self._previous = signal.signal(signal.SIGTERM, terminated)
        return self

    def __exit__(self, exc_type, exc, tb):
        import signal

        signal.signal(signal.SIGTERM, self._previous)
        s = self.summary
        if s is not None and s.busy:
            return False
        success = exc_type is None and s is not None and s.ok
        if isinstance(exc, click.exceptions.Exit):  # ctx.exit(N): the run finished and chose its code
            success = s is not None and s.ok and exc.exit_code == 0
        counts = {"renewed": s.renewed, "failed": s.failed, "deferred": s.deferred, "due": s.due} if s else {}
        try:
            self._send(success, counts)
        except Exception as e:  # noqa: BLE001 - reporting must not hide the run's own outcome
            self.log("error", "metrics", f"metrics not written: {e}")
            if exc_type is None:
                raise
        if exc_type is _Terminated:
            self.log("error", "interrupted", "interrupted by SIGTERM; metrics written with success 0")
            raise SystemExit(143)
        return False

    def _send(self, success: bool, counts: dict) -> None:
        from kimpki.ops import metrics

        run = metrics.RenewRunMetrics(self.started, now_utc(), success, counts)
        if self.textfile:
            if not success:
                run.last_success = metrics.previous_last_success(self.textfile)
            metrics.write_textfile(self.textfile, metrics.renew_registry(run))
        if self.pushgateway:
            run.last_success = None  # the Pushgateway keeps the earlier value when this one is left out
            metrics.push(self.pushgateway, self.job, metrics.renew_registry(run), replace_all=success)


def _t(t) -> str | None:
    from kimpki.pki.parse import rfc3339

    return rfc3339(t) if t is not None else None


def summary_line(s) -> str:
    nxt = s.next_due
    upcoming = f"next renewal {_t(nxt.renewal_time)} ({nxt.ref})" if nxt else None
    counts = (f"checked {s.checked}, due {s.due}, "
              + (f"would renew {s.would_renew}" if s.dry_run else f"renewed {s.renewed}")
              + (f", deferred {s.deferred}" if s.deferred else "")
              + (f", finished {len(s.finished)}" if s.finished else "")
              + (f", would finish {s.would_finish}" if s.would_finish else "")
              + f", failed {s.failed}, skipped {s.skipped}")
    if s.due == 0 and s.failed == 0 and not s.errors:
        return f"nothing due; {upcoming or 'no credentials'}; {counts}"
    win = s.next_window
    if win is not None:
        upcoming = "; ".join(x for x in (f"next maintenance window {_t(win.next_window)} ({win.ref})", upcoming) if x)
    return f"{counts}; {upcoming}" if upcoming else counts


@click.command("renew", epilog=EPILOG)
@place_options
@click.option("--renew-before", metavar="X", help="Renew this long before notAfter (30d) or in the last X% of "
                                                  "the lifetime (25%). Default: the last third.")
@click.option("--jitter", metavar="X", help="Renew up to this much earlier (2h, or 10% of the lifetime), "
                                            "fixed per certificate.")
@click.option("--dry-run", is_flag=True, help="Say what is due and would be renewed; issue and write nothing.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines on stderr as text or one JSON object per line.")
@click.option("--log-file", metavar="FILE",
              help="Append the log and the summary to FILE instead of stderr/stdout (created 0600; never "
                   "through a symbolic link, unlike a shell's '>> FILE'). 'kimpki cron render' uses it.")
@click.option("--lock-wait", type=click.FloatRange(min=0), default=5.0, show_default=True, metavar="SECONDS",
              help="How long to wait for another run's lock before giving up (exit 0, nothing done).")
@click.option("--textfile", metavar="FILE.prom",
              help="Write the run's metrics (last run, last success, success, certificates by result, "
                   "duration) to FILE.prom for node_exporter's textfile collector; also when the run fails.")
@click.option("--pushgateway", metavar="URL", help="Push the run's metrics to this Prometheus Pushgateway.")
@click.option("--job", default="kimpki-renew", show_default=True, metavar="NAME",
              help="The Pushgateway job the metrics are grouped under.")
@click.option("--qps", type=click.FloatRange(min=0), default=0.0, metavar="N",
              help="At most N API requests a second, on average (client-side limit for very large sweeps; "
                   "0, the default, is no limit; cert-manager uses 20).")
@click.option("--burst", type=click.IntRange(min=1), default=None, metavar="N",
              help="Requests allowed at once above --qps (default: the --qps value, at least 1; "
                   "cert-manager uses 50).")
@passphrase_file_option
@json_option
@click.pass_context
def command(ctx, manifests, namespace, all_namespaces, policy, kubeconfig, context, renew_before, jitter, dry_run,
            log_format, log_file, lock_wait, textfile, pushgateway, job, qps, burst, passphrase_file, as_json):
    """Renew every managed credential inside its renewal window.

    Reads the Secrets kimpki manages (label app.kubernetes.io/managed-by=kimpki),
    decides from the certificate each one serves, and rotates the due ones in place
    as 'kimpki rotate' does: a new key and certificate, the Secret updated, never
    deleted and re-created.
    """
    import contextlib

    check_places(namespace, all_namespaces, manifests, policy, kubeconfig, context)
    if burst is not None and not qps:
        from kimpki.errors import UsageError

        raise UsageError("--burst needs --qps (the client-side limit is off without it)")
    settings = rule_settings(renew_before, jitter)
    if log_file:
        _redirect_output(log_file)
    log = Log(log_format)
    client = dict(qps=qps, burst=burst or max(int(qps), 1),
                  notice=lambda text: log("warning", "api_pushback", text))
    report = RunMetrics(textfile, pushgateway, job, log) if (textfile or pushgateway) and not dry_run else None
    with report if report is not None else contextlib.nullcontext():
        _run(ctx, manifests, namespace, all_namespaces, policy, kubeconfig, context, settings, dry_run, log,
             lock_wait, passphrase_file, as_json, report, client)


def _redirect_output(log_file: str) -> None:
    """Everything this run prints (log lines, summary, errors) goes to the log file from here on."""
    import os
    import sys

    from kimpki.store.fs import append_log_nofollow

    fd = append_log_nofollow(log_file)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _run(ctx, manifests, namespace, all_namespaces, policy, kubeconfig, context, settings, dry_run, log, lock_wait,
         passphrase_file, as_json, report, client) -> None:
    import contextlib

    from kimpki.errors import KimpkiError
    from kimpki.ops.renewing import open_targets, renew

    store = open_store(ctx)
    try:
        with contextlib.ExitStack() as stack, no_cluster_hint(MANIFESTS_HINT):
            targets = open_targets(stack, manifests=manifests, policy=policy, namespace=namespace,
                                   all_namespaces=all_namespaces, cluster=not (manifests or policy),
                                   kubeconfig=kubeconfig, context=context, client=client)
            summary = renew(store, targets, now=now_utc(), passphrase=passphrase_source(passphrase_file),
                            settings=settings, dry_run=dry_run, lock_wait=lock_wait, on_result=log.result)
    except KimpkiError as e:
        if log.fmt != "json" or e.exit_code == 2:
            raise
        # A log collector reads only JSON lines: say the fatal error as one too.
        log("error", "error", str(e))
        ctx.exit(e.exit_code)
    counts = dict(checked=summary.checked, due=summary.due, renewed=summary.renewed,
                  would_renew=summary.would_renew, failed=summary.failed, skipped=summary.skipped,
                  deferred=summary.deferred, finished=len(summary.finished))
    if report is not None:
        report.finish(summary)
    if summary.busy:
        log("info", "lock_busy", summary.lock.get("busy_message") or "another run holds the renewal lock; nothing done",
            lock=summary.lock)
    else:
        for w in summary.warnings:  # once per run, not once per credential
            log("warning", "renew_before_fallback", w)
        if summary.crls_loaded:
            log("info", "crl_state_loaded", f"revocation state of CA {', '.join(summary.crls_loaded)} loaded from "
                                            f"the cluster", cas=summary.crls_loaded)
        for ca in summary.crls_signed:
            log("info", "crl_signed", f"CRL of CA {ca} re-signed (inside the last third of its validity)", ca=ca)
        for r in summary.crls_republished:
            log("info", "crl_republished", f"secret/{r['secret']} ({r['place']}): CRLs {r['action']}",
                secret=r["secret"], namespace=r["namespace"], place=r["place"])
        for r in summary.staples_refreshed:
            log("info", "ocsp_staple_refreshed", f"secret/{r['secret']} ({r['place']}): OCSP staple {r['action']}"
                + (f" ({r['status']}, next update {r['next_update']})" if r["status"] else ""),
                secret=r["secret"], namespace=r["namespace"], place=r["place"])
        for err in summary.errors:
            log("error", "error", f"cannot read {err['place']}: {err['reason']}", place=err["place"],
                reason=err["reason"])
        nxt = summary.next_due
        log("info" if summary.ok else "error", "summary", summary_line(summary), **counts,
            next_due={"time": _t(nxt.renewal_time), "secret": nxt.secret, "namespace": nxt.namespace,
                      "place": nxt.place} if nxt else None)
    if as_json:  # 10,000 credentials make a large object: build it only when asked for
        emit(summary.to_dict(), as_json)
    if not summary.busy and not summary.ok:
        ctx.exit(1)
