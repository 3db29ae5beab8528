"""The per-subject batch stages as independent, idempotent tasks: the protocol.

A :class:`Stage` splits a workspace stage into :class:`Job` s, one per subject (and atlas group
where it matters). The engine (:mod:`bodyage_core.cluster.engine`) runs each job's task on a
worker; the task reads the subject's files and writes its own result files atomically into the
workspace (never the database), and returns a small dict. The client process, the single writer
of ``cohort.sqlite``, records that dict and the job's ``tasks`` row in one transaction.

A stage may group subjects (:meth:`Stage.group_size`): predict on a GPU runs one task for a
batch of subjects, each still a job with its own ``tasks`` row, result, failure and retries (a
subject retried runs alone).

The stages (``tasks.stage`` / ``tasks.key``), in :mod:`~bodyage_core.cluster.model_stages` and
:mod:`~bodyage_core.cluster.atlas_stages`:

========  ====================  ===========================================================
stage     key                   task writes (under ``subjects/<id>/``)
========  ====================  ===========================================================
predict   run                   ``prediction_<run>.json`` (+ the model-grid input cache)
explain   map kind              ``<kind>.nii.gz`` + ``<kind>.json`` (``gradcam_<run>`` ...)
register  atlas group           ``atlas_<group>/`` transform files + ``quality.json``
warp      ``<group>/<kind>``    ``atlas_<group>/<kind>.nii.gz`` (a map in atlas space)
========  ====================  ===========================================================

A job is skipped when it is finished (its ``tasks`` row is ``done`` and its output is there, or,
for explain and register, when a current output exists however it was made); ``overwrite`` /
``force`` redo it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bodyage_core.errors import BodyageError

# -- jobs and tasks -------------------------------------------------------------------------


@dataclass
class Job:
    """One unit of work: ``tasks`` row (stage, key, subject_id) and what its task needs."""

    key: str
    subject_id: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class SubjectTask:
    """A picklable call ``fn(**kwargs)`` run on a worker.

    It limits the worker's compute threads (``threads``, when the engine asks), times the call
    and names the file when a write fails (an ``OSError`` without a file name gets the subject
    folder). Returns ``{"out": fn's dict, "seconds": wall, "cpu_seconds": CPU time of the
    worker process during the call (exact with one task per process), "worker": "host:pid"}``.

    ``started``, when the engine sets it, is a file the task writes (and syncs) before it begins:
    a task lost with a dying worker that never wrote it was only queued there.
    """

    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any]
    threads: int | None = None
    folder: str | None = None
    started: str | None = None

    def __call__(self) -> dict[str, Any]:
        if self.started:
            mark_started(self.started)
        if self.threads:
            limit_threads(self.threads)
        t0 = time.perf_counter()
        c0 = time.process_time()
        try:
            out = self.fn(**self.kwargs)
        except OSError as err:
            if err.filename is None and self.folder is not None:
                raise OSError(err.errno, err.strerror or str(err), self.folder) from err
            raise
        finally:
            if self.threads:
                limit_threads(self.threads)   # libraries the task imported
        return {"out": out, "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
                "worker": f"{socket.gethostname()}:{os.getpid()}"}


def first_line(err: BaseException) -> str:
    """The first line of an error's text (its type's name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def mark_started(path: str) -> None:
    """Write ``path`` to disk before a task begins (synced: the worker may die right after)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


_THREADS_SET: dict[str, int] = {}
_LOCK = threading.Lock()


def limit_threads(n: int) -> None:
    """Cap the compute threads of this worker process at ``n``: environment variables for
    libraries not imported yet (OpenMP/BLAS, ITK), the setting of torch and SimpleITK when they
    are imported (each once). Never imports them itself (a cheap task stays cheap)."""
    import sys

    with _LOCK:
        if _THREADS_SET.get("env") != n:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
                os.environ.setdefault(var, str(n))
            _THREADS_SET["env"] = n
        torch = sys.modules.get("torch")
        if torch is not None and _THREADS_SET.get("torch") != n:
            try:
                torch.set_num_threads(n)
            except Exception:  # noqa: BLE001 - already running parallel work
                pass
            _THREADS_SET["torch"] = n
        sitk = sys.modules.get("SimpleITK")
        if sitk is not None and _THREADS_SET.get("sitk") != n:
            try:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
            except Exception:  # noqa: BLE001
                pass
            _THREADS_SET["sitk"] = n


def clear_stale_temporaries(path: Path) -> int:
    """Remove temporary files an earlier, killed attempt left beside ``path``
    (``.<stem>.XXXX<suffix>`` of :func:`bodyage_core.atomic.atomic_path`). Safe because one run
    holds the workspace and one task writes a subject's file at a time. Returns the count."""
    n = 0
    try:
        # a folder of transform files: every hidden file inside is a temporary
        stale = list(path.glob(".*")) if path.is_dir() else []
        stale += list(path.parent.glob(f".{path.stem}.*"))
        for p in stale:
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
    except OSError:
        pass
    return n


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name ``path`` in any OSError raised while writing it (ENOSPC, EACCES, EROFS...);
    first clear the temporaries a killed attempt may have left beside it."""
    clear_stale_temporaries(Path(path))
    try:
        yield
    except OSError as err:
        if err.filename and str(err.filename) != str(path) and \
                Path(str(err.filename)).name.startswith("."):
            # the temporary file of an atomic write: report the target instead
            raise OSError(err.errno, err.strerror, str(path)) from err
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def describe_error(exc: BaseException) -> str:
    """One line for the ``tasks.error`` column and the summary."""
    if isinstance(exc, BodyageError):
        return str(exc)
    name = type(exc).__name__
    if name == "KilledWorker":
        return ("the worker running this subject died (crash, out of memory or killed) — see "
                "the worker logs; the subject is retried on the next run")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"disk full (no space left on device){where} — free space on that disk and "
                "run the stage again (finished subjects are kept)")
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or name}{where}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {text}" if text else name


def _Paths(root: str | Path):
    """The path half of a :class:`~bodyage_core.cohort.Workspace` for workers: no database
    (the client records results)."""
    from bodyage_core.cohort.paths import WorkspacePaths

    return WorkspacePaths(Path(root))


# per-worker caches of loaded runs and atlases (a worker runs many subjects)
_RUNS: dict[tuple, Any] = {}
_ATLASES: dict[tuple, Any] = {}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def cached_run(run_dir: str | Path, device: str = "auto"):
    """The :class:`~bodyage_core.models.ensemble.AgeRun` of ``run_dir`` with its members
    loaded, once per worker thread (Grad-CAM hooks the networks, so threads never share one;
    reloaded when the run's config.json changes). ``auto`` and the device it stands for share
    one: a stage validating the run on the CPU in the client hands its networks to the tasks
    that run in the same thread on a machine without a GPU."""
    from bodyage_core.inference.device import resolve_device
    from bodyage_core.inference.ensemble import AgeRun

    run_dir = Path(run_dir)
    key = (str(run_dir), str(resolve_device(device)), _mtime(run_dir / "config.json"),
           threading.get_ident())
    with _LOCK:
        ar = _RUNS.get(key)
    if ar is None:
        ar = AgeRun(run_dir, device=device)
        ar.load_members()
        with _LOCK:
            if len(_RUNS) > 16:
                _RUNS.clear()
            _RUNS[key] = ar
    return ar


def cached_atlas(atlas_dir: str | Path):
    from bodyage_core.atlas.build import load_atlas

    atlas_dir = Path(atlas_dir)
    key = (str(atlas_dir), _mtime(atlas_dir / "members.json"),
           _mtime(atlas_dir / "template.nii.gz"))
    with _LOCK:
        if key not in _ATLASES:
            if len(_ATLASES) > 8:
                _ATLASES.clear()
            _ATLASES[key] = load_atlas(atlas_dir)
        return _ATLASES[key]


# -- the stage interface ----------------------------------------------------------------------


class Stage:
    """A per-subject batch stage. Subclasses set ``name`` and implement the hooks.

    Client side: :meth:`jobs` (validate, enumerate), :meth:`is_done` (skip?), :meth:`record`
    (store a task's result in the DB; called inside the transaction that marks the job done),
    :meth:`finish` (after all jobs, e.g. a CSV). Worker side: the :class:`SubjectTask` from
    :meth:`task`.
    """

    name = "stage"
    #: BodyageErrors are the input's fault: retrying cannot help, record the failure at once.
    retry_user_errors = False

    def jobs(self, ws) -> list[Job]:
        raise NotImplementedError

    def is_done(self, ws, job: Job, row: dict[str, Any] | None) -> bool:
        return row is not None and row.get("status") == "done"

    def task(self, ws, job: Job) -> SubjectTask:
        raise NotImplementedError

    def group_size(self) -> int:
        """Jobs per task: 1 (a task per subject) unless the stage batches subjects (predict on
        a GPU: one batch on the device for several subjects); then it implements
        :meth:`group_task`."""
        return 1

    def group_task(self, ws, jobs: list[Job]) -> SubjectTask:
        """One task for several jobs; its function returns ``{"results": [...]}``, one entry
        per job in order: ``{"out": dict}`` (what :meth:`record` takes) or ``{"error": one
        line, "user_error": bool}`` (a :class:`BodyageError`: not retried)."""
        raise NotImplementedError

    def record(self, ws, job: Job, out: dict[str, Any]) -> None:
        """Store a finished task's result (client side, inside a DB transaction)."""

    def record_skipped(self, ws, job: Job) -> None:
        """Bring the DB in line with an output found on disk (client side)."""

    def finish(self, ws, summary) -> None:
        """Called once after every job ran (not on cancellation)."""

    def describe(self) -> str:
        return self.name

