"""Clear errors for an index directory that cannot be used, before anything opens it.

A mistyped ``--index`` must not silently create an empty index for a command that only reads, a file given as
the index must not reach LMDB, and a directory a writer cannot write (a read-only mount, no permission) must be
named as such rather than surface as a traceback from deep inside a write.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import UsageError

#: the file every initialised index holds (the candidate cache's LMDB data file)
INDEX_MARKER = "data.mdb"


def check_index_dir(path: str | os.PathLike, *, writer: bool) -> Path:
    """``path`` as a :class:`Path` when it can serve as an index directory, else :class:`UsageError` naming it.

    A reader needs an initialised index there; a writer needs a directory it can create and write.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"index {p} is a file, not an index directory (check --index or $RINDEX_INDEX)")
    if not writer:
        if not (p / INDEX_MARKER).is_file():
            raise UsageError(f"no index at {p} (check --index or $RINDEX_INDEX; `rindex build` creates one)")
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create index directory {p}: {describe_os_error(exc)}") from None
    if not os.access(p, os.W_OK):
        raise UsageError(f"index directory {p} is not writable (a read-only mount or no permission); "
                         "readers can still use it with --no-resynth")
    return p


def describe_os_error(exc: OSError) -> str:
    """A short reason for an ``OSError``, with a hint for the causes an operator can fix."""
    hints = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
             errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}
    reason = hints.get(exc.errno or 0) or exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{reason}{where}"


__all__ = ["INDEX_MARKER", "check_index_dir", "describe_os_error"]
