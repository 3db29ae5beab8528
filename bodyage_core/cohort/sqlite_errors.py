"""SQLite errors on the cohort index as one line that says what happened and what to do: a
read-only workspace, a full disk, a lock held too long or an I/O error is reported as such, and
only a file that is not a database is called damaged."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from bodyage_core.errors import CohortError

SYSTEM_ERRORS = (sqlite3.OperationalError, sqlite3.DatabaseError)


def is_system_error(err: BaseException) -> bool:
    """An error of the file or the system (read-only, full, locked, I/O, damaged), not of the
    statement (IntegrityError, ProgrammingError: a bug, keeps its traceback)."""
    return type(err) in (sqlite3.OperationalError, sqlite3.DatabaseError)


def sqlite_error(err: BaseException, path: str | Path, action: str = "write") -> CohortError:
    """One line for an SQLite error on ``cohort.sqlite``: what happened and what to do.

    Only a file that is not a database (``file is not a database``, ``malformed``) is called
    damaged; a read-only file or folder, a full disk, a lock held by another process and an I/O
    error say so, and never advise restoring or re-importing a healthy index.
    """
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    low = text.lower()
    p = Path(path)
    if "readonly" in low or "read-only" in low or "read only" in low or             (action != "write" and "unable to open" in low and not writable(p)):
        return CohortError(f"the cohort index is read-only ({text}); nothing was changed", p,
                           "the database is not damaged: make the workspace folder and "
                           "cohort.sqlite writable (or run on a writable copy)")
    if "full" in low or "no space" in low:
        return CohortError(f"the disk holding the cohort index is full ({text}); the last "
                           "change was rolled back", p,
                           "free space on that disk and run the command again (the database "
                           "is not damaged)")
    if "locked" in low or "busy" in low:
        return CohortError(f"the cohort index is locked by another process ({text})", p,
                           "wait for the other bodyage command or viewer to finish its write, "
                           "then try again")
    if "disk i/o" in low or "ioerr" in low:
        return CohortError(f"input/output error on the cohort index ({text})", p,
                           "check the disk or network file system, then try again; do not "
                           "delete the database")
    if "unable to open" in low:
        return CohortError(f"cannot open the cohort index ({text})", p,
                           "check that the workspace folder exists and is readable and writable")
    if type(err) is sqlite3.DatabaseError or "not a database" in low or "malformed" in low:
        return CohortError(f"not a readable SQLite cohort index ({text})", p,
                           "the file is damaged: restore it from a backup or re-import the "
                           "cohort")
    return CohortError(f"cannot {action} the cohort index ({text})", p,
                       "check the disk and the workspace's permissions, then try again")


def is_read_only_error(err: BaseException) -> bool:
    low = str(err).lower()
    return any(w in low for w in ("readonly", "read-only", "read only", "unable to open"))


def writable(path: Path) -> bool:
    try:
        if path.exists() and not os.access(path, os.W_OK):
            return False
        return os.access(path.parent, os.W_OK)
    except OSError as err:
        return err.errno != errno.EROFS
