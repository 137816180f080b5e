"""Secrets given in environment variables leave ``os.environ`` as soon as kimpki knows about them.

A child process inherits ``os.environ`` unless told otherwise, and some children are started by
libraries kimpki does not control: the ``kubernetes`` client runs a kubeconfig's ``exec``
credential plugin with a copy of the whole environment. So the passphrase variables are moved
out of the environment into this module: ``KIMPKI_CA_PASSPHRASE`` when the CLI starts, a
policy's ``spec.passphrase.env`` when the policy is loaded. Readers call :func:`take`.
(Children kimpki starts itself get an allow-listed environment besides: see
:func:`kimpki.localgw.envoy_process.child_environment`.)
"""

from __future__ import annotations

import os

PASSPHRASE_ENV = "KIMPKI_CA_PASSPHRASE"

_taken: dict[str, str] = {}


def take(name: str) -> str | None:
    """The variable's value, removed from the environment (a later value set in the environment
    replaces the one taken before)."""
    if name in os.environ:
        _taken[name] = os.environ.pop(name)
    return _taken.get(name)


def hide(*names: str) -> None:
    """Take ``names`` out of the environment now, before any child can be started."""
    for name in names:
        take(name)
