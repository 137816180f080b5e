"""Declarative policy files: CAs, certificates, credentials, gateway mounts and Gateways.

``load_policy(paths)`` reads YAML files or folders and returns a checked, frozen
:class:`~kimpki.policy.model.Policy`; every problem is one line ``FILE:LINE: message``.
Executing a policy (``kimpki plan`` / ``kimpki apply``) is :mod:`kimpki.ops.converge`.
"""

from kimpki.policy.load import credential_spec, load_policy
from kimpki.policy.model import API_VERSION, Policy
from kimpki.policy.source import PolicyError, Where

__all__ = ["load_policy", "credential_spec", "Policy", "PolicyError", "Where", "API_VERSION"]
