"""One writer per workspace: an advisory lock file ``<workspace>/.bodyage.lock``.

Every command that writes a workspace holds it for its whole run: ``synth``, ``import``,
``exclude``, ``train``, ``predict``, ``explain``, ``register``, ``atlas build``, ``atlas maps``,
``compare`` and ``report`` (the CLI dispatcher, :mod:`bodyage_core.cli.main`, takes it before the
command starts; the Dask stages' :class:`~bodyage_core.cluster.engine.Engine` joins it), and the
viewer's training wizard while it trains. The lock is exclusive: a second writer is refused
with the holder's pid, host, command and start time (or queues behind it with ``--wait``), so
a second ``train --resume`` cannot publish over a run being trained and ``train --overwrite``
cannot replace a run that ``explain`` is reading. Commands that only read (``info``, the
viewer browsing a workspace) take no lock.

The holder keeps the file open with an exclusive ``flock`` and writes who it is (pid, host,
command, start time) into it. The kernel drops the lock when the holder's process ends, however it
ends (SIGKILL, power loss of a node), so a lock file left behind by a dead run is *stale*: the next
run sees no lock held, takes it over and says so. A second live run refuses with a message naming
the holder, or waits for it (``wait=True``).

The file itself is never deleted (deleting a locked file lets two processes hold locks on two
different inodes); a released lock keeps its last holder with ``"active": false``. It is the one
file bodyage writes in place rather than through :mod:`bodyage_core.atomic` (a lock must stay
the same inode). On a shared file system the lock needs working ``flock`` (local disks, Lustre,
GPFS, NFSv4 do).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bodyage_core.errors import BodyageError

LOCK_NAME = ".bodyage.lock"

# (lock path, thread) -> how many WorkspaceLocks of this thread hold it (re-entrant joins)
_HELD: dict[tuple[str, int], int] = {}
_HELD_LOCK = threading.Lock()


class WorkspaceLockedError(BodyageError):
    """Another live run holds the workspace lock."""


def describe_holder(info: dict[str, Any]) -> str:
    if not info:
        return "another process (no details in the lock file)"
    since = info.get("started")
    when = (time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
            if isinstance(since, (int, float)) else "")
    cmd = f" ({info['command']})" if info.get("command") else ""
    return f"pid {info.get('pid')} on {info.get('host')}{cmd}{when}"


class WorkspaceLock:
    """Exclusive lock of a workspace for one batch run.

    Parameters
    ----------
    root
        The workspace folder.
    command
        What holds the lock (shown to a second run), e.g. ``'bodyage predict --run r'``.
    wait
        Wait for a live holder to finish instead of refusing.
    timeout
        With ``wait``, give up after this many seconds (None: wait for ever).
    poll
        Seconds between tries while waiting.

    Use as a context manager, or :meth:`acquire` / :meth:`release`. ``stale`` is the holder
    description of a dead run whose lock was taken over (None otherwise).
    """

    def __init__(self, root: str | Path, command: str | None = None, wait: bool = False,
                 timeout: float | None = None, poll: float = 0.5, reentrant: bool = False):
        self.root = Path(root)
        self.reentrant = reentrant
        self._joined = False
        self.path = self.root / LOCK_NAME
        if command is None:
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""
        self.command = command
        self.wait = wait
        self.timeout = timeout
        self.poll = poll
        self.stale: str | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._joined

    def _key(self) -> tuple[str, int]:
        return (os.path.abspath(self.path), threading.get_ident())

    def read(self) -> dict[str, Any]:
        """What the lock file says about its (last) holder; {} when empty or unreadable."""
        try:
            text = self.path.read_text()
        except OSError:
            return {}
        try:
            info = json.loads(text) if text.strip() else {}
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    def acquire(self) -> WorkspaceLock:
        if self._fd is not None or self._joined:
            return self
        if self.reentrant:
            with _HELD_LOCK:
                if self._key() in _HELD:
                    # this thread already holds the workspace (the CLI took it for the
                    # command): join it instead of refusing ourselves
                    _HELD[self._key()] += 1
                    self._joined = True
                    return self
        if not self.root.is_dir():
            raise BodyageError("workspace folder not found", self.root,
                               "check the path or create the workspace first")
        t0 = time.monotonic()
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise BodyageError(f"the workspace is read-only ({err.strerror}): a "
                                       "command that writes it cannot run; nothing was "
                                       "changed", self.path,
                                       "make the workspace writable, or run on a writable "
                                       "copy (reading it still works)") from None
                raise BodyageError(f"cannot create the workspace lock file ({err.strerror})",
                                   self.path, "make the workspace writable") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise BodyageError(f"cannot lock the workspace ({err.strerror})", self.path,
                                       "use a file system that supports flock") from None
                info = self.read()
                if not self.wait:
                    raise WorkspaceLockedError(
                        f"another bodyage run holds this workspace: {describe_holder(info)}",
                        self.path,
                        "wait for it to finish, or pass --wait to queue behind it") from None
                if self.timeout is not None and time.monotonic() - t0 > self.timeout:
                    raise WorkspaceLockedError(
                        f"still locked after waiting {self.timeout:g} s by "
                        f"{describe_holder(info)}", self.path,
                        "try again later") from None
                time.sleep(self.poll)
                continue
            break
        previous = self._read_fd(fd)
        if previous.get("pid") is not None and previous.get("active"):
            # the file says a run is active but nobody holds the flock: it died
            self.stale = describe_holder(previous)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": time.time(), "active": True}
        try:
            self._write_fd(fd, info)
        except OSError as err:   # a full disk or a read-only file: the flock itself holds
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EBADF):
                os.close(fd)
                raise
        self._fd = fd
        with _HELD_LOCK:
            _HELD[self._key()] = _HELD.get(self._key(), 0) + 1
        return self

    def release(self) -> None:
        if self._joined:
            self._joined = False
            with _HELD_LOCK:
                _HELD[self._key()] = _HELD.get(self._key(), 1) - 1
            return
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with _HELD_LOCK:
            _HELD.pop(self._key(), None)
        try:
            info = self._read_fd(fd)
            info["active"] = False
            info["released"] = time.time()
            self._write_fd(fd, info)
        except OSError:
            pass
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @staticmethod
    def _read_fd(fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
        try:
            info = json.loads(b"".join(chunks).decode() or "{}")
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    @staticmethod
    def _write_fd(fd: int, info: dict[str, Any]) -> None:
        data = (json.dumps(info) + "\n").encode()
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, data)
        os.fsync(fd)

    def __enter__(self) -> WorkspaceLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def workspace_writer(root: str | Path, command: str | None = None, wait: bool = False,
                     timeout: float | None = None) -> Iterator[WorkspaceLock]:
    """Hold the workspace lock of ``root`` for a block (joining it when this thread holds it
    already): ``with workspace_writer(ws.root, "bodyage gui: training wizard"): ...``."""
    lock = WorkspaceLock(root, command, wait=wait, timeout=timeout, reentrant=True).acquire()
    try:
        yield lock
    finally:
        lock.release()
