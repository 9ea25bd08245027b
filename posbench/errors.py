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


class PositionIdError(PosbenchError):
    pass
