"""The one error hierarchy. Only ``kimpki.cli`` turns these into messages and exit codes."""


class KimpkiError(Exception):
    """Base of every error kimpki reports to a user. ``str(err)`` is one line."""

    exit_code = 1


class UsageError(KimpkiError):
    """The user asked for something malformed (bad name, bad duration, missing option): exit 2."""

    exit_code = 2


class OperationError(KimpkiError):
    """A well-formed request that could not be carried out (wrong passphrase, API error): exit 1."""

    exit_code = 1


class NotFoundError(OperationError):
    """A named thing (CA, certificate, Secret) does not exist."""
