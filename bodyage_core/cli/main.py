"""Entry point of the ``bodyage`` console script.

Each sub-command lives in its own module ``bodyage_core.cli.cmd_<name>`` exposing
``register(subparsers)``, which adds its parser and sets ``func`` to a function taking the parsed
``args`` and returning an exit code. A :class:`~bodyage_core.errors.BodyageError` ends in one line
on stderr and exit code 2, never a traceback; Ctrl+C (and SIGTERM, handled the same way) ends
with exit code 130.

What the dispatcher does around every command (so that each command need not):

* **names**: ``--run``, ``--subject``, ``--kind``, ``--group``, ``--exclude`` values follow the
  one name rule (:func:`bodyage_core.names.check_name`) before anything runs;
* **the workspace lock**: a command that writes a workspace (:data:`WRITES_WORKSPACE`, or a
  parser default ``writes_workspace=True/False``) holds ``<workspace>/.bodyage.lock`` for its
  whole run (:mod:`bodyage_core.cluster.lock`); a second writer is refused naming the holder,
  or waits with ``--wait``. ``synth`` and ``import`` may create the folder; when they fail
  before writing any subject, the folder they created is removed again;
* **system errors** become one line too: ``OSError`` (disk full, read-only file system,
  permission denied, file too large, I/O error) and SQLite errors say what happened and what to
  do; a read-only cohort index is never called damaged. ``train`` that fails after it started
  leaves its run marked ``failed`` (``interrupted`` after Ctrl+C / SIGTERM) in cohort.sqlite.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import shlex
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from bodyage_core import __version__
from bodyage_core.cohort.paths import WorkspacePaths
from bodyage_core.errors import BodyageError, Cancelled

# Order is the order shown by ``bodyage --help``.
COMMANDS = (
    "demo", "synth", "import", "exclude", "info", "train", "predict", "explain", "register",
    "atlas", "compare", "report", "models", "export", "gui",
)

#: Commands that write their ``workspace`` argument (the lock is taken for them).
WRITES_WORKSPACE = frozenset({"synth", "import", "exclude", "train", "predict", "explain",
                              "register", "atlas", "compare", "report"})
#: Commands that may create the workspace folder.
CREATES_WORKSPACE = frozenset({"synth", "import"})
#: Arguments holding names that become file or folder names.
NAME_ARGUMENTS = {"run": "--run", "subject": "--subject", "subjects": "--subject",
                  "kind": "--kind", "group": "--group", "exclude": "--exclude",
                  "ids": "subject id"}


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl+C (tasks marked cancelled, the lock released)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bodyage",
        description="Biological age from whole-body MRI: train, predict, explain, map, view.",
    )
    parser.add_argument("--version", action="version", version=f"bodyage {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"bodyage_core.cli.cmd_{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    name = args.command
    if getattr(args, "atlas_command", None):
        name = f"{name} {args.atlas_command}"
    with _sigterm_as_interrupt():
        try:
            check_names(args)
            with command_lock(args, argv):
                with _mark_failed_run(args):
                    return int(args.func(args) or 0)
        except BodyageError as err:
            print(f"bodyage {name}: error: {err}", file=sys.stderr)
            return 2
        except Cancelled:
            print(f"bodyage {name}: cancelled", file=sys.stderr)
            return 130
        except KeyboardInterrupt as err:
            how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
            print(f"\nbodyage {name}: {how} — run the same command again to resume",
                  file=sys.stderr)
            return 130
        except OSError as err:
            print(f"bodyage {name}: error: {describe_os_error(err)}", file=sys.stderr)
            return 2
        except sqlite3.DatabaseError as err:
            if type(err) not in (sqlite3.OperationalError, sqlite3.DatabaseError):
                raise
            from bodyage_core.cohort.sqlite_errors import sqlite_error

            where = WorkspacePaths(getattr(args, "workspace", None) or ".").db_path
            print(f"bodyage {name}: error: {sqlite_error(err, where)}", file=sys.stderr)
            return 2
        except RuntimeError as err:
            if not _is_write_failure(err):
                raise
            print(f"bodyage {name}: error: writing a file failed ({_first_line(err)}) — the "
                  "disk is probably full or a file-size limit was reached: free space and run "
                  "the same command again", file=sys.stderr)
            return 2
        except MemoryError:
            print(f"bodyage {name}: error: out of memory — use a smaller grid or batch "
                  "(--batch-size), fewer --workers, or a machine with more memory",
                  file=sys.stderr)
            return 2


# -- names --------------------------------------------------------------------------------------

def check_names(args: argparse.Namespace) -> None:
    """Every name argument of the command follows the name rule (a ConfigError otherwise)."""
    from bodyage_core.names import check_name

    for attr, label in NAME_ARGUMENTS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            check_name(str(v), label)


# -- system errors -------------------------------------------------------------------------------

def describe_os_error(err: OSError) -> str:
    """One line for an OSError: what happened, to which file, and what to do."""
    where = f" ({err.filename})" if err.filename else ""
    code = err.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return (f"disk full (no space left on device){where} — free space on that disk and run "
                "the same command again (finished work is kept)")
    if code == errno.EROFS:
        return (f"read-only file system{where} — the workspace cannot be written there; "
                "nothing is damaged: run on a writable copy, or remount it writable")
    if code in (errno.EACCES, errno.EPERM):
        return (f"permission denied{where} — make the workspace (or that file) writable for "
                "you, or run as its owner")
    if code == errno.EFBIG:
        return (f"file too large for the file system or the process's file-size limit{where}"
                " — check `ulimit -f` and the file system, then run again")
    if code == errno.EIO:
        return (f"input/output error{where} — the disk or network file system failed; check "
                "it, then run again")
    if code == errno.ENOENT:
        return f"file or folder not found{where} — check the path"
    text = err.strerror or str(err) or type(err).__name__
    return f"{text}{where}"


#: What torch's file writer says when a write fails (a full disk, EFBIG): it raises a
#: RuntimeError, not an OSError.
_TORCH_WRITE_FAILURES = ("iostream error", "unexpected pos", "PytorchStreamWriter failed",
                         "file write failed")


def _is_write_failure(err: RuntimeError) -> bool:
    text = str(err)
    chain = [err, err.__cause__, err.__context__]
    return any(k in text for k in _TORCH_WRITE_FAILURES) or any(
        isinstance(e, RuntimeError) and any(k in str(e) for k in _TORCH_WRITE_FAILURES)
        for e in chain[1:] if e is not None)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


# -- the workspace lock ------------------------------------------------------------------------

def writes_workspace(args: argparse.Namespace) -> bool:
    """Whether the command writes ``args.workspace``: the parser default ``writes_workspace``
    (a bool, or a function of the parsed args, e.g. ``exclude --list`` only reads), else
    :data:`WRITES_WORKSPACE`."""
    flag = getattr(args, "writes_workspace", None)
    if callable(flag):
        flag = flag(args)
    if flag is None:
        flag = args.command in WRITES_WORKSPACE
    return bool(flag) and bool(getattr(args, "workspace", None))


def command_line(argv: list[str] | None) -> str:
    return "bodyage " + shlex.join(list(sys.argv[1:] if argv is None else argv))


@contextlib.contextmanager
def command_lock(args: argparse.Namespace, argv: list[str] | None = None) -> Iterator[None]:
    """Hold the workspace lock around a writing command (see the module docstring)."""
    if not writes_workspace(args) or _other_rank(args):
        yield
        return
    from bodyage_core.cluster.lock import WorkspaceLock
    from bodyage_core.cohort.workspace import Workspace

    root = Path(args.workspace).expanduser()
    created = False
    if not root.exists() and args.command in CREATES_WORKSPACE:
        root.mkdir(parents=True)
        created = True
    elif not root.is_dir() or (args.command not in CREATES_WORKSPACE
                               and not Workspace.is_workspace(root)):
        yield              # the command itself says what is wrong with the path
        return
    try:
        lock = WorkspaceLock(root, command_line(argv), wait=bool(getattr(args, "wait_lock", False)),
                             reentrant=True).acquire()
        try:
            if lock.stale:
                print(f"note: took over the workspace lock of a run that ended without "
                      f"releasing it ({lock.stale})", file=sys.stderr)
            yield
        finally:
            lock.release()
    except BaseException:
        if created:
            _remove_if_unused(root)
        raise


def _other_rank(args: argparse.Namespace) -> bool:
    """A torchrun rank other than 0 of ``train --distributed``: rank 0 holds the lock."""
    if not getattr(args, "distributed", None):
        return False
    try:
        return int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


def _remove_if_unused(root: Path) -> None:
    """Remove a workspace folder this command created when no subject was written into it."""
    import shutil

    try:
        paths = WorkspacePaths(root)
        subjects = paths.subjects_root
        if subjects.is_dir() and any(subjects.iterdir()):
            return
        db = paths.db_path
        if db.exists():
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                n = con.execute("SELECT COUNT(*) FROM subjects").fetchone()[0]
            except sqlite3.Error:
                n = 0
            finally:
                con.close()
            if n:
                return
        shutil.rmtree(root)
    except OSError:
        pass


# -- a failed training run is marked so ---------------------------------------------------------

@contextlib.contextmanager
def _mark_failed_run(args: argparse.Namespace) -> Iterator[None]:
    """``train``: a run this command started (status ``training`` in cohort.sqlite) that ends
    in an error is marked ``failed`` (``interrupted`` after Ctrl+C / SIGTERM)."""
    if args.command != "train" or not getattr(args, "run", None) or _other_rank(args):
        yield
        return
    try:
        yield
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, (KeyboardInterrupt, Cancelled)) else "failed"
        _set_run_status(Path(args.workspace), args.run, status)
        raise


def _set_run_status(root: Path, run: str, status: str) -> None:
    from bodyage_core.cohort.database import CohortDB

    try:
        db = CohortDB.open(WorkspacePaths(root).db_path)
    except (BodyageError, OSError, sqlite3.Error):
        return
    try:
        db.end_run(run, status)
    finally:
        db.close()


# -- SIGTERM ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the
    main thread, so a stage cancels its tasks and releases the lock as after Ctrl+C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, _raise)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
