"""System limits Envoy can run into, recognised in its log, each as one line naming the limit.

Envoy stops with an assertion or a terse error when the kernel refuses it a resource, e.g.
``assert failure: inotify_fd_ >= 0`` and exit code -6. The local gateway needs one inotify
instance (the listener file's watch; secrets come over the SDS stream, whatever their number),
but other programs of the same user share the limit. :func:`system_limit` turns such a log into
one line that says which limit and how to raise it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Limit:
    signs: tuple[str, ...]  # every one of them in a log line means this limit
    what: str
    sysctl: str | None  # the setting that raises it (None: not a sysctl)
    raise_hint: str

    def current(self) -> str:
        if self.sysctl is None:
            return ""
        try:
            value = Path("/proc/sys", *self.sysctl.split(".")).read_text().strip()
        except OSError:
            return ""
        return f" = {value}"


LIMITS = (
    Limit(("inotify_fd_ >= 0",), "no inotify instance left for this user", "fs.inotify.max_user_instances",
          "sysctl -w fs.inotify.max_user_instances=1024"),
    Limit(("unable to add filesystem watch", "No space left on device"), "no inotify watch left for this user",
          "fs.inotify.max_user_watches", "sysctl -w fs.inotify.max_user_watches=524288"),
    Limit(("Too many open files",), "no file descriptor left for Envoy", None, "ulimit -n 65536"),
)


def system_limit(log_text: str) -> str | None:
    """One line naming the system limit Envoy's log shows it ran into, or None."""
    for line in reversed(log_text.splitlines()):
        for limit in LIMITS:
            if all(sign in line for sign in limit.signs):
                setting = f"{limit.sysctl}{limit.current()}" if limit.sysctl else "RLIMIT_NOFILE"
                return f"Envoy stopped at a system limit: {limit.what} ({setting}); raise it, e.g. {limit.raise_hint}"
    return None
