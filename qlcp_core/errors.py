"""Exceptions of QLCP.

Every error the pipeline raises on bad input is a :class:`QLCPError` whose
message is one line naming the file or key at fault.  The command line prints
that line and exits non-zero; the Prefect tasks use :attr:`QLCPError.retriable`
to decide whether a retry can help.
"""

from __future__ import annotations

import errno
import re
import unicodedata


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


class OutputError(InputError):
    """The output directory cannot be written: read-only, full, no permission.

    Not a fault of one group or frame: a run stops at the first one (the
    command line exits 2 with the path and the cause).
    """


class RunLockedError(InputError):
    """Another run holds the output directory's lock."""


#: the OS errors that say "the environment", not the data: the cause as the message says it
ENVIRONMENT_ERRNOS = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def output_error(e: BaseException, path=None) -> OutputError | None:
    """The :class:`OutputError` for an OS error of the environment, else ``None``.

    Parameters
    ----------
    e : BaseException
        The error caught while writing.
    path : str or Path, optional
        The path being written (named in the message); default the error's own filename.

    Returns
    -------
    OutputError or None
        ``"{path}: cannot write ({cause})"`` when ``e``, or an error it was raised from or
        while handling (astropy rewraps a full disk as an ``OSError`` without errno), is an
        :class:`OSError` whose errno is one of :data:`ENVIRONMENT_ERRNOS`, else ``None``.
    """
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OutputError):
            return e if path is None else OutputError(str(e))
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            where = path if path is not None else (e.filename or "output")
            return OutputError(f"{where}: cannot write ({ENVIRONMENT_ERRNOS[e.errno]})")
        e = e.__cause__ or e.__context__
    return None


def one_line(text, limit: int = 400) -> str:
    """``text`` as one line of printable ASCII (what a FITS card holds), at most ``limit`` characters.

    Library messages (wcslib's) span lines and may carry non-ASCII characters: line breaks become
    ``"; "``, other characters their closest ASCII (or ``?``), runs of spaces one space."""
    s = unicodedata.normalize("NFKD", str(text))
    s = "; ".join(p.strip() for p in s.splitlines() if p.strip())
    s = "".join(c if " " <= c <= "~" else ("" if unicodedata.combining(c) else "?") for c in s)
    s = re.sub(r" {2,}", " ", s).strip()
    return s if len(s) <= limit else s[:limit - 3].rstrip() + "..."
