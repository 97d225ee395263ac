"""Exceptions of QLCP.

Every error the pipeline raises on bad input is a :class:`QLCPError` whose
message is one line naming the file or key at fault.  The command line prints
that line and exits non-zero; the Prefect tasks use :attr:`QLCPError.retriable`
to decide whether a retry can help.
"""

from __future__ import annotations


class QLCPError(Exception):
    """Base class: a problem with the user's input, stated in one line."""

    #: whether retrying the same call may succeed (I/O hiccups); bad input never does
    retriable = False


class ConfigError(QLCPError):
    """A configuration key is unknown, mistyped or impossible."""


class InputError(QLCPError):
    """An input file or directory is missing, unreadable or unusable."""


class MissingInputError(InputError):
    """An input a step needs does not exist (MISS_ERROR mode)."""


class OutputExistsError(QLCPError):
    """An output exists and the mode says EXIST_ERROR."""


class TransientIOError(QLCPError):
    """An I/O error that may go away on retry (busy disk, NFS hiccup)."""

    retriable = True
