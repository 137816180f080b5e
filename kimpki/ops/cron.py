"""Running ``kimpki renew`` on a schedule: a crontab line, or a Kubernetes CronJob.

**crontab** (:func:`crontab_entry`): one line that runs this very kimpki (the console script
beside the running Python, else ``python -m kimpki``, by absolute path: cron's PATH is minimal)
on this home (``--home``, absolute: cron does not set KIMPKI_HOME), appending its output to a
log file (``renew --log-file LOG``, which never follows a planted link as ``>> LOG`` would) or,
with no log, leaving it to cron's mail. No ``flock`` wrapper:
renew takes the home's renewal lock itself and a second run says so and exits 0. ``%`` is
escaped, as crontab turns a bare ``%`` into a newline.

**Kubernetes** (:func:`kubernetes_objects`): in the gateway namespace,

* ServiceAccount, Role, RoleBinding ``kimpki-renew``. The Role grants exactly what renew sends
  (:data:`SECRET_VERBS`, :data:`LEASE_VERBS`): Secrets get/list/update — renew lists the managed
  Secrets and updates each one in place with a resourceVersion-guarded PUT; it never creates one
  (it only renews credentials that exist) and never patches — and the renewal Lease
  get/update by name, plus Lease create, which RBAC cannot restrict by name (the name of an
  object being created is not known at authorization time); and the revocation state, ConfigMap
  ``kimpki-revocations``, get/update by name (:mod:`kimpki.ops.cluster_revocations`: renew loads
  the revoked list and CRL numbers into its memory home, reserves a number there before it
  re-signs a CRL, and publishes the CRL there; only ``kimpki revoke`` creates it). No wildcards.
* CronJob ``kimpki-renew`` (batch/v1): ``concurrencyPolicy: Forbid`` (and the Lease besides),
  ``startingDeadlineSeconds`` so a run missed while the control plane was down still happens
  within the hour, a small ``backoffLimit`` (a re-run finishes what a failed run left pending),
  ``activeDeadlineSeconds``, and a Pod that passes the "restricted" Pod Security Standard
  (non-root UID 65532, read-only root filesystem, no privilege escalation, all capabilities
  dropped, RuntimeDefault seccomp), with requests and limits.

How the Pod gets a usable kimpki home: the home is a memory-backed ``emptyDir`` (its keys never
reach the node's disk); one init container per CA runs ``kimpki ca import NAME`` from the CA
Secret (default ``kimpki-ca``, mounted read-only, *only* into the init containers), then the
main container runs ``kimpki renew`` with the in-cluster service account. The CA Secret holds
``NAME.crt`` and ``NAME.key`` (and ``NAME.passphrase`` when the key is encrypted) for each CA;
:func:`ca_secret_command` prints the ``kubectl create secret generic`` line that makes it from
the home, and :func:`ca_secret` renders it with the key inside, only when asked.

The image must provide ``kimpki`` on its PATH and be readable by an arbitrary non-root UID;
kimpki publishes no image, so the caller must name one (no default that would not exist).
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kimpki.errors import NotFoundError, OperationError, UsageError

NAME = "kimpki-renew"
CA_SECRET = "kimpki-ca"
DEFAULT_SCHEDULE = "17 3 * * *"  # daily, off the hour (everyone's cron fires at :00)
DEFAULT_TIME_ZONE = "Etc/UTC"
LEASE_NAME = "kimpki-renew"  # kimpki.ops.locking.DEFAULT_LEASE_NAME (not imported: keep this module light)

POD_HOME_MOUNT = "/var/lib/kimpki"
POD_HOME = POD_HOME_MOUNT + "/home"  # a directory kimpki creates itself (0700) inside the emptyDir
POD_CA_DIR = "/etc/kimpki/ca"
POD_UID = 65532  # the conventional "nonroot" UID of distroless images; any non-root UID works

SECRET_VERBS = ("get", "list", "update")
REVOCATIONS = "kimpki-revocations"  # kimpki.ops.cluster_revocations.CONFIGMAP (not imported: keep this module light)
REVOCATION_VERBS = ("get", "update")  # restricted to resourceNames: [REVOCATIONS]; renew never creates it
LEASE_VERBS = ("get", "update")  # restricted to resourceNames: [LEASE_NAME]
LEASE_CREATE_VERBS = ("create",)  # RBAC cannot restrict create by resourceNames

STARTING_DEADLINE_SECONDS = 3600
BACKOFF_LIMIT = 2
ACTIVE_DEADLINE_SECONDS = 1800
HISTORY_LIMIT = 3

LABELS = {"app.kubernetes.io/name": "kimpki", "app.kubernetes.io/component": "renew"}
CA_LABELS = {"app.kubernetes.io/name": "kimpki", "app.kubernetes.io/component": "ca"}


# --------------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] means low + i


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_FIELD_NAMES = "minute hour day-of-month month day-of-week"
_ITEM = re.compile(r"\A(?:(\*)|(\d+)(?:-(\d+))?)(?:/(\d+))?\Z")


def _fields(kubernetes: bool) -> tuple[_Field, ...]:
    # cron takes 7 for Sunday too; the CronJob controller's parser (robfig/cron) stops at 6
    return (_Field("minute", 0, 59), _Field("hour", 0, 23), _Field("day-of-month", 1, 31),
            _Field("month", 1, 12, _MONTHS), _Field("day-of-week", 0, 6 if kubernetes else 7, _DAYS))


def _check_field(text: str, f: _Field, schedule: str) -> None:
    def bad(why: str) -> UsageError:
        return UsageError(f"invalid cron schedule {schedule!r}: {f.name} {why}")

    if f.names and text.lower() in f.names:
        return  # a name stands alone (cron allows no ranges or lists of names)
    for item in text.split(","):
        m = _ITEM.match(item)
        if not m:
            hint = f" (or a name: {', '.join(f.names)})" if f.names else ""
            raise bad(f"{item!r} is not *, N, N-M, */S or N-M/S{hint}")
        star, start, end, step = m.groups()
        if step is not None and int(step) < 1:
            raise bad(f"step in {item!r} must be at least 1")
        if star:
            continue
        if step is not None and end is None:
            raise bad(f"{item!r}: a step needs * or a range (N-M/S)")
        for v in (start, end):
            if v is not None and not f.low <= int(v) <= f.high:
                sunday = " (write 0 for Sunday)" if f.name == "day-of-week" and int(v) == 7 else ""
                raise bad(f"{v} is out of range {f.low}-{f.high}{sunday}")
        if end is not None and int(start) > int(end):
            raise bad(f"range {item!r} runs backwards")


def check_schedule(schedule: str, *, kubernetes: bool = False) -> str:
    """The schedule with its whitespace normalised, or a :class:`UsageError` saying what is wrong:
    five fields (minute hour day-of-month month day-of-week) of ``*``, ``N``, ``N-M``, ``*/S``,
    ``N-M/S`` and comma lists, month and weekday names, or a macro like ``@daily``. Only what
    both cron and the CronJob controller read the same way is accepted."""
    text = " ".join(str(schedule).split())
    if not text:
        raise UsageError("the cron schedule is empty: give five fields, e.g. --schedule \"17 3 * * *\"")
    if text.startswith("@"):
        if text.lower() in _MACROS:
            return text.lower()
        raise UsageError(f"invalid cron schedule {text!r}: macros are {', '.join(_MACROS)}")
    parts = text.split(" ")
    if any(p.upper().startswith(("TZ=", "CRON_TZ=")) for p in parts):
        raise UsageError(f"invalid cron schedule {text!r}: no TZ= in the schedule; "
                         "use --time-zone (CronJob) or the system's time zone (crontab)")
    if len(parts) != 5:
        raise UsageError(f"invalid cron schedule {text!r}: it has {len(parts)} field(s), a schedule has 5 "
                         f"({_FIELD_NAMES})")
    for part, f in zip(parts, _fields(kubernetes)):
        _check_field(part, f, text)
    return text


# --------------------------------------------------------------------------------- crontab
def kimpki_argv() -> tuple[list[str], dict[str, str]]:
    """How to start this kimpki from cron, and the environment it needs: the ``kimpki`` console
    script installed beside the running interpreter, else ``python -m kimpki`` (with PYTHONPATH
    when kimpki is not installed in site-packages). Paths are absolute but not resolved: a
    virtual environment's python is a symlink that must stay one."""
    python = Path(sys.executable).absolute()
    script = python.parent / "kimpki"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)], {}
    import site

    import kimpki

    root = Path(kimpki.__file__).absolute().parent.parent
    site_dirs = {Path(p).absolute() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    return [str(python), "-m", "kimpki"], ({} if root in site_dirs else {"PYTHONPATH": str(root)})


@dataclass
class CrontabEntry:
    schedule: str
    argv: list[str]
    env: dict[str, str]
    log: Path | None
    home: Path

    @property
    def command(self) -> str:
        words = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.quote(a) for a in self.argv]
        cmd = " ".join(words)
        return cmd.replace("%", "\\%")  # crontab: an unescaped % ends the command

    @property
    def line(self) -> str:
        return f"{self.schedule} {self.command}"

    def to_dict(self) -> dict:
        return {"schedule": self.schedule, "line": self.line, "argv": self.argv, "env": self.env,
                "log": str(self.log) if self.log else None, "home": str(self.home)}


def crontab_entry(*, schedule: str, home: Path, renew_args: list[str], log: Path | None) -> CrontabEntry:
    """The crontab line running ``kimpki --home HOME renew RENEW_ARGS``."""
    argv, env = kimpki_argv()
    # renew opens the log itself (--log-file): a shell's '>> LOG' would follow a link planted there
    logging = ["--log-file", str(log)] if log is not None else []
    return CrontabEntry(check_schedule(schedule), argv + ["--home", str(home), "renew", *renew_args, *logging], env,
                        log, home)


# --------------------------------------------------------------------------------- Kubernetes
@dataclass(frozen=True)
class CaMaterial:
    """A CA the CronJob imports: its name, where its files are in the home, whether its key is
    encrypted (then the Secret also carries ``NAME.passphrase``)."""

    name: str
    cert_path: Path
    key_path: Path
    encrypted: bool

    @property
    def keys(self) -> dict[str, str]:
        """Secret key -> what it holds."""
        keys = {f"{self.name}.crt": "cert", f"{self.name}.key": "key"}
        if self.encrypted:
            keys[f"{self.name}.passphrase"] = "passphrase"
        return keys


def cas_from_store(store, names: list[str] | tuple[str, ...] = ()) -> list[CaMaterial]:
    """The CAs the CronJob imports: ``names``, else every CA of the home not yet retired."""
    records = {ca.name: ca for ca in store.list_cas()}
    if names:
        missing = [n for n in names if n not in records]
        if missing:
            # exit 1, as every command that is given an unknown CA
            raise NotFoundError(f"no CA named {missing[0]!r} in the kimpki home {store.home} "
                                f"(known: {', '.join(sorted(records)) or 'none'})")
        chosen = [records[n] for n in dict.fromkeys(names)]
    else:
        chosen = [ca for ca in records.values() if ca.state != "retired"]
        if not chosen:
            raise UsageError(f"no CA in the kimpki home {store.home} for the CronJob to issue with: "
                             "create or import one first (kimpki ca init / kimpki ca import)")
    out = []
    for ca in chosen:
        if ca.parent:
            raise UsageError(f"CA {ca.name} is an intermediate and 'kimpki ca import' takes root CAs only, so the "
                             "CronJob cannot carry it yet; choose root CAs with --ca")
        if not ca.key_path.is_file():
            raise OperationError(f"CA {ca.name} has no private key in {ca.dir}: the CronJob could not issue with it")
        out.append(CaMaterial(ca.name, ca.cert_path, ca.key_path, ca.encrypted))
    return out


@dataclass
class CronJobSettings:
    schedule: str
    namespace: str
    image: str
    cas: list[CaMaterial]
    renew_args: list[str] = field(default_factory=list)
    time_zone: str = DEFAULT_TIME_ZONE
    ca_secret: str = CA_SECRET
    image_pull_policy: str = "IfNotPresent"


def check_image(image: str) -> str:
    image = (image or "").strip()
    if not image or any(ch.isspace() for ch in image) or image.startswith("-"):
        raise UsageError(f"invalid --image {image!r}: give an image reference like registry.example.com/kimpki:0.1.0")
    return image


def check_time_zone(tz: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"unknown --time-zone {tz!r}: give an IANA name such as Etc/UTC or Europe/Berlin") from None
    return tz


def _meta(name: str, namespace: str, labels: dict | None = None) -> dict:
    return {"name": name, "namespace": namespace, "labels": dict(labels or LABELS)}


def _security_context() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


def rbac_rules() -> list[dict]:
    """The Role's rules: what ``kimpki renew`` sends, nothing more (see the module doc)."""
    return [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": list(SECRET_VERBS)},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [LEASE_NAME],
         "verbs": list(LEASE_VERBS)},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": list(LEASE_CREATE_VERBS)},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [REVOCATIONS],
         "verbs": list(REVOCATION_VERBS)},
    ]


def kubernetes_objects(s: CronJobSettings) -> list[dict]:
    """ServiceAccount, Role, RoleBinding and CronJob (in that order: ``kubectl apply`` creates
    what the CronJob refers to first)."""
    if not s.cas:
        raise UsageError("the CronJob needs at least one CA to import")
    schedule = check_schedule(s.schedule, kubernetes=True)
    ns = s.namespace

    # fresh dicts for every container: shared ones would come out as YAML anchors and aliases
    def env():
        return [{"name": "KIMPKI_HOME", "value": POD_HOME}]

    def mounts(ca: bool = False):
        out = [{"name": "home", "mountPath": POD_HOME_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]
        return out + ([{"name": "ca", "mountPath": POD_CA_DIR, "readOnly": True}] if ca else [])

    init = []
    for i, ca in enumerate(s.cas, start=1):
        args = ["ca", "import", ca.name, "--cert", f"{POD_CA_DIR}/{ca.name}.crt", "--key", f"{POD_CA_DIR}/{ca.name}.key"]
        if ca.encrypted:
            # the pod's home is memory-backed and lives as long as the pod: the key stays unencrypted there
            args += ["--key-passphrase-file", f"{POD_CA_DIR}/{ca.name}.passphrase", "--unencrypted-key"]
        init.append({"name": f"import-ca-{i}", "image": s.image, "imagePullPolicy": s.image_pull_policy,
                     "command": ["kimpki"], "args": args, "env": env(),
                     "volumeMounts": mounts(ca=True), "securityContext": _security_context(),
                     "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}})
    renew = {"name": "renew", "image": s.image, "imagePullPolicy": s.image_pull_policy, "command": ["kimpki"],
             "args": ["renew", *s.renew_args], "env": env(), "volumeMounts": mounts(),
             "securityContext": _security_context(),
             # a LIST page of 500 Secrets and the renewed keys in the memory-backed home
             "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}}
    pod = {
        "serviceAccountName": NAME,
        "automountServiceAccountToken": True,  # renew talks to the API as this service account
        "restartPolicy": "Never",  # a failed run leaves its pod (and log) behind; the Job retries
        "securityContext": {"runAsNonRoot": True, "runAsUser": POD_UID, "runAsGroup": POD_UID, "fsGroup": POD_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": init,
        "containers": [renew],
        "volumes": [
            {"name": "home", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
            # group-readable through fsGroup, by nobody else
            {"name": "ca", "secret": {"secretName": s.ca_secret, "defaultMode": 0o440}},
        ],
    }
    cronjob = {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": _meta(NAME, ns),
        "spec": {
            "schedule": schedule,
            "timeZone": s.time_zone,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": STARTING_DEADLINE_SECONDS,
            "successfulJobsHistoryLimit": HISTORY_LIMIT,
            "failedJobsHistoryLimit": HISTORY_LIMIT,
            "jobTemplate": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "backoffLimit": BACKOFF_LIMIT,
                    "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS,
                    "template": {"metadata": {"labels": dict(LABELS)}, "spec": pod},
                },
            },
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, ns)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(NAME, ns),
         "rules": rbac_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(NAME, ns),
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME}},
        cronjob,
    ]


def ca_secret_command(s: CronJobSettings, passphrase_file: str | None = None) -> str:
    """The ``kubectl create secret generic`` line that makes the CA Secret from the home's files
    (the key is read by kubectl, never printed)."""
    words = ["kubectl", "-n", s.namespace, "create", "secret", "generic", s.ca_secret]
    for ca in s.cas:
        words.append(f"--from-file={ca.name}.crt={ca.cert_path}")
        words.append(f"--from-file={ca.name}.key={ca.key_path}")
        if ca.encrypted:
            words.append(f"--from-file={ca.name}.passphrase={passphrase_file or 'PASSPHRASE_FILE'}")
    return " ".join(shlex.quote(w) for w in words)


def ca_secret(s: CronJobSettings, passphrase: bytes | None = None) -> dict:
    """The CA Secret itself, private keys included: only on explicit request. It is deliberately
    *not* labelled managed-by=kimpki, so that renew never mistakes it for a credential."""
    data = {}
    for ca in s.cas:
        try:
            data[f"{ca.name}.crt"] = base64.b64encode(ca.cert_path.read_bytes()).decode()
            data[f"{ca.name}.key"] = base64.b64encode(ca.key_path.read_bytes()).decode()
        except OSError as e:
            raise OperationError(f"cannot read {e.filename}: {e.strerror}") from None
        if ca.encrypted:
            if not passphrase:
                raise UsageError(f"the key of CA {ca.name} is encrypted: give --passphrase-file so that the "
                                 "Secret can carry its passphrase")
            data[f"{ca.name}.passphrase"] = base64.b64encode(passphrase).decode()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(s.ca_secret, s.namespace, CA_LABELS),
            "type": "Opaque", "data": data}
