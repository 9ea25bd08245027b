"""Errors a user can act on. Each message names the problem and the fix in one line."""

from __future__ import annotations


class PosbenchError(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits non-zero."""

    exit_code = 2


class UnknownModelError(PosbenchError):
    pass


class ModelPackageMissingError(PosbenchError):
    pass


class UnknownProbeError(PosbenchError):
    pass


class UnknownInterventionError(PosbenchError):
    pass


class BadOptionError(PosbenchError):
    pass


class ContextTooLongError(PosbenchError):
    pass


class EmptyDataError(PosbenchError):
    pass


class MalformedDataError(PosbenchError):
    pass


class HeadIndexError(PosbenchError):
    pass


class StoreError(PosbenchError):
    pass


class StoreNotWritableError(StoreError):
    pass


class StoreMissingError(StoreError):
    """No store at the path yet (or one without runs): not an error for a reader such as the
    dashboard, which shows an empty store."""


class ResourceLimitError(PosbenchError):
    """A request larger than the declared limits or than the memory that is free."""


class OutputPathError(PosbenchError):
    """An output file or folder (``--json``, ``report --out``) that cannot be written."""


class StoreBusyError(StoreError):
    """The result was computed but could not be written to the store; it is in a recovery file
    (``recovery_path``) that ``posbench import`` stores later. Exit code 3: not bad input."""

    exit_code = 3

    def __init__(self, message: str, recovery_path=None, result=None):
        super().__init__(message)
        self.recovery_path = recovery_path
        self.result = result


class PosbenchWarning(UserWarning):
    """Something a user should know about a run that still ran (text cut to --seq-len, a
    sequence too short for the measurement). The CLI prints it on one line."""
