"""Run per-subject stages on Dask distributed (or in-process) with retries and a single DB writer.

::

    from bodyage_core.cluster import Engine, EngineOptions, PredictStage, ExplainStage

    with Engine(ws, EngineOptions(scheduler="local", workers=2)) as engine:
        engine.run(PredictStage("r1"), reporter)
        engine.run(ExplainStage("r1"), reporter)

Schedulers (``EngineOptions.scheduler``):

* ``"local"`` (default): a :class:`distributed.LocalCluster` on this machine, ``workers``
  processes (default: the CPUs this process may use) with one thread each;
* ``"tcp://host:port"`` (or ``tls://``): an existing Dask scheduler, e.g. one started by
  dask-jobqueue's ``SLURMCluster`` (docs/CLUSTER.md). The workers must see the workspace at the
  same path (a shared file system) and have bodyage installed;
* ``"none"`` / ``"sync"``: in this process, one subject after the other (no Dask).

How a stage runs: the client (this process) lists the stage's jobs, skips the finished ones,
marks the others ``running`` in the ``tasks`` table and submits them, at most a window of
``max_in_flight`` at a time. A worker runs a job's task: it reads the subject's files and
writes its results atomically into the workspace. The client receives each result and, as the
only writer of ``cohort.sqlite``, stores it together with the job's ``done`` row in one
transaction. A job whose task raised is resubmitted up to ``retries`` times (a user error, a
:class:`~bodyage_core.errors.BodyageError`, is not retried: the input must change), then recorded
``failed`` with a one-line error. A worker that dies mid-subject fails its task with Dask's
``KilledWorker`` (the local cluster's nanny restarts the worker), which counts as one attempt;
the tasks merely queued on it die too, and since each task writes a start marker before it
begins, those that never began go back in the queue without using one.

Ctrl+C (KeyboardInterrupt) or a cancelled reporter cancels the outstanding futures, marks
their jobs ``cancelled``, closes the cluster and releases the workspace lock; what finished is
kept, and running the stage again resumes. A client killed outright (SIGKILL) leaves ``running``
rows: the next run redoes those jobs (tasks are idempotent; every table is keyed by subject).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from bodyage_core.cluster.lock import WorkspaceLock
from bodyage_core.cluster.options import (
    EngineOptions,
    StageSummary,
    default_workers,
)
from bodyage_core.cluster.tasks import Job, Stage, describe_error, first_line
from bodyage_core.errors import BodyageError, Cancelled, ConfigError
from bodyage_core.progress import ProgressReporter, ensure_reporter

MARKER_DIR = ".bodyage_started"
# times a task lost on a dying worker before it began is requeued without using a try
_MAX_REQUEUES = 5


def _lost_with_worker(exc: BaseException | None) -> bool:
    """Whether a task's failure is its worker's death (KilledWorker, or dropped by the cluster
    with no exception of its own), not something the task raised."""
    if exc is None or (isinstance(exc, RuntimeError) and
                       str(exc).startswith("the cluster dropped the task")):
        return True
    return type(exc).__name__ == "KilledWorker"


class Engine:
    """A workspace lock plus a Dask client (or none) for running stages; a context manager."""

    def __init__(self, ws, options: EngineOptions | None = None, command: str | None = None,
                 lock: bool = True):
        self.ws = ws
        self.options = (options or EngineOptions()).validate()
        self.command = command
        self._use_lock = lock
        self.lock: WorkspaceLock | None = None
        self.client = None
        self.cluster = None
        self.token = uuid.uuid4().hex[:8]

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        if self._use_lock and self.lock is None:
            # reentrant: the CLI dispatcher holds the workspace for the whole command already
            self.lock = WorkspaceLock(self.ws.root, self.command, wait=self.options.wait_lock,
                                      timeout=self.options.lock_timeout,
                                      reentrant=True).acquire()
        try:
            # a remote scheduler is checked at once; a local cluster starts when needed
            if not self.options.is_sync and self.options.scheduler != "local" \
                    and self.client is None:
                self._connect()
        except BaseException:
            self.close()
            raise

    def stop_cluster(self) -> None:
        """Close the Dask client and the local cluster (the workspace stays locked)."""
        client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        if client is not None and cluster is not None:
            # our own workers: a heartbeat that meets the closing scheduler logs a traceback
            # (seen after Ctrl+C), which says nothing about the run
            _quiet(client.run, _silence_dask_logs, on_error="ignore")
        if client is not None:
            _quiet(client.close, timeout=10)
        if cluster is not None:
            _quiet(cluster.close, timeout=20)

    def close(self) -> None:
        """Stop the cluster and release the workspace lock."""
        try:
            self.stop_cluster()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _connect(self) -> None:
        import dask
        from distributed import Client

        opts = self.options
        if opts.scheduler == "local":
            from distributed import LocalCluster

            n = opts.workers or default_workers()
            # Each worker death fails its tasks at once (KilledWorker): the engine's own
            # retries count attempts, instead of the scheduler silently rerunning 3 times.
            extra: dict[str, Any] = {}
            if opts.processes:
                t = str(opts.threads_per_worker)
                extra["env"] = {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t}
            # worker-saturation 1 queues root-ish tasks on the scheduler; subject tasks are
            # not root-ish, so a dying worker can still hold bystanders (see the start markers)
            with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                                  "distributed.scheduler.worker-saturation": 1.0}), \
                    _no_sigint():
                try:
                    self.cluster = LocalCluster(
                        n_workers=n, threads_per_worker=opts.threads_per_worker,
                        processes=opts.processes,
                        dashboard_address=opts.dashboard_address,
                        silence_logs=opts.silence_logs, **extra)
                except (OSError, RuntimeError, TimeoutError, asyncio.TimeoutError) as err:
                    raise BodyageError(
                        f"could not start a local Dask cluster of {n} worker(s) "
                        f"({first_line(err)})",
                        hint="try fewer --workers, or --scheduler none to run in this "
                             "process") from None
            self.client = Client(self.cluster, timeout=opts.connect_timeout,
                                 set_as_default=False)
            return
        try:
            self.client = Client(opts.scheduler, timeout=opts.connect_timeout,
                                 set_as_default=False)
        except (OSError, TimeoutError, asyncio.TimeoutError) as err:
            raise BodyageError(
                f"cannot reach the Dask scheduler at {opts.scheduler} within "
                f"{opts.connect_timeout:g} s ({first_line(err)})",
                hint="start it (`dask scheduler`, or a SLURMCluster as in docs/CLUSTER.md) and "
                     "check the address, or use --scheduler local") from None
        except ValueError as err:   # a malformed address
            raise ConfigError(f"bad scheduler address {opts.scheduler!r} ({first_line(err)})",
                              hint="use tcp://host:port") from None
        self._check_workers()

    def _check_workers(self) -> None:
        """Workers of an existing cluster must import bodyage and see the workspace."""
        try:
            seen = self.client.run(_probe_worker, str(self.ws.root),
                                   on_error="return")
        except Exception:  # noqa: BLE001 - no workers yet (a queued SLURM job): check later
            return
        bad = [w for w, ok in seen.items() if ok is not True]
        if bad:
            what = seen[bad[0]]
            reason = (f"cannot import bodyage ({first_line(what)})"
                      if isinstance(what, BaseException) else "do not see the workspace folder")
            raise BodyageError(
                f"{len(bad)} of {len(seen)} Dask worker(s) (e.g. {bad[0]}) {reason}",
                self.ws.root,
                "run the workers in bodyage's Python environment with the workspace on a "
                "shared file system at the same path")

    @property
    def n_workers(self) -> int:
        if self.client is None:
            return 1
        try:
            return len(self.client.scheduler_info().get("workers", {}))
        except Exception:  # noqa: BLE001
            return 0

    def _threads(self) -> int:
        if self.client is None:
            return 1
        try:
            ws = self.client.scheduler_info().get("workers", {})
            return max(1, sum(int(w.get("nthreads", 1)) for w in ws.values()))
        except Exception:  # noqa: BLE001
            return 1

    def _min_worker_threads(self) -> int | None:
        try:
            ws = self.client.scheduler_info().get("workers", {})
            return min(int(w.get("nthreads", 1)) for w in ws.values()) if ws else None
        except Exception:  # noqa: BLE001
            return None

    # -- running a stage ---------------------------------------------------------------------
    _multi_key = False

    def _label(self, job: Job) -> str:
        return f"{job.subject_id} ({job.key})" if self._multi_key else job.subject_id

    def run(self, stage: Stage, reporter: ProgressReporter | None = None) -> StageSummary:
        """Run every unfinished job of ``stage``; returns a :class:`StageSummary`.

        Raises KeyboardInterrupt / :class:`~bodyage_core.errors.Cancelled` after cancelling
        cleanly (the summary so far is in ``self.last``)."""
        rep = ensure_reporter(reporter)
        t0 = time.perf_counter()
        ws = self.ws
        summary = StageSummary(stage.name, stage.describe(),
                               scheduler=self.options.scheduler)
        self.last = summary
        jobs = stage.jobs(ws)
        summary.total = len(jobs)
        self._multi_key = len({j.key for j in jobs}) > 1
        rows: dict[str, dict[str, dict[str, Any]]] = {}
        todo: list[Job] = []
        adopt: list[Job] = []   # finished on disk, not (yet) marked done in the DB
        for job in jobs:
            if job.key not in rows:
                rows[job.key] = ws.db.tasks(stage.name, job.key)
            row = rows[job.key].get(job.subject_id)
            if stage.is_done(ws, job, row):
                summary.skipped.append(self._label(job))
                adopt.append(job)
            else:
                todo.append(job)
        for start in range(0, len(adopt), 1000):
            with ws.db.transaction():
                for job in adopt[start:start + 1000]:
                    row = rows[job.key].get(job.subject_id)
                    stage.record_skipped(ws, job)
                    if row is None or row.get("status") != "done":
                        ws.db.finish_task(stage.name, job.key, job.subject_id, "done",
                                          attempts=0)
        rep.update(stage.name, len(summary.skipped), len(jobs), stage.describe())
        size = max(1, int(stage.group_size())) if todo else 1
        try:
            in_process = self.options.is_sync or (
                self.options.scheduler == "local" and self.client is None
                and len(todo) < self.options.min_cluster_jobs)
            if todo and size > 1:
                if in_process:
                    summary.scheduler, summary.workers = "in-process", 1
                else:
                    if self.client is None:
                        self._connect()
                    summary.workers = self.n_workers
                self._run_groups(stage, todo, jobs, summary, rep, size, in_process)
            elif todo and in_process:
                summary.scheduler = "in-process"
                summary.workers = 1
                self._run_sync(stage, todo, jobs, summary, rep)
            elif todo:
                if self.client is None:
                    self._connect()
                summary.workers = self.n_workers
                self._run_dask(stage, todo, jobs, summary, rep)
        except BaseException:
            summary.cancelled = True
            summary.seconds = time.perf_counter() - t0
            raise
        summary.seconds = time.perf_counter() - t0
        stage.finish(ws, summary)
        return summary

    def _record_ok(self, stage: Stage, job: Job, result: dict[str, Any], attempts: int,
                   summary: StageSummary) -> None:
        with self.ws.db.transaction():
            stage.record(self.ws, job, result["out"])
            self.ws.db.finish_task(stage.name, job.key, job.subject_id, "done",
                                   attempts=attempts, seconds=result.get("seconds"),
                                   worker=result.get("worker"))
        summary.done.append(self._label(job))
        summary.attempts += attempts
        if result.get("seconds") is not None:
            summary.task_seconds.append(float(result["seconds"]))
        if result.get("cpu_seconds") is not None:
            summary.task_cpu_seconds.append(float(result["cpu_seconds"]))

    def _record_failed(self, stage: Stage, job: Job, message: str, attempts: int,
                       summary: StageSummary) -> None:
        self.ws.db.finish_task(stage.name, job.key, job.subject_id, "failed", message,
                               attempts=attempts)
        summary.failed[self._label(job)] = message
        summary.attempts += attempts

    def _retryable(self, stage: Stage, exc: BaseException, attempt: int) -> bool:
        if attempt > self.options.retries:
            return False
        return stage.retry_user_errors or not isinstance(exc, BodyageError)

    def _run_sync(self, stage, todo, jobs, summary, rep) -> None:
        ws = self.ws
        n_done = len(summary.skipped)
        for job in todo:
            ws.db.mark_tasks(stage.name, job.key, [job.subject_id], "running")
            attempt = 1
            try:
                while True:
                    try:
                        result = stage.task(ws, job)()
                    except Cancelled:
                        raise
                    except Exception as exc:  # noqa: BLE001 - recorded per subject
                        if self._retryable(stage, exc, attempt):
                            attempt += 1
                            summary.retried += 1
                            continue
                        self._record_failed(stage, job, describe_error(exc), attempt, summary)
                        break
                    self._record_ok(stage, job, result, attempt, summary)
                    break
            except BaseException:
                try:
                    ws.db.mark_tasks(stage.name, job.key, [job.subject_id], "cancelled",
                                     "interrupted", only_status=("running",))
                except Exception:  # noqa: BLE001 - a full disk / read-only index: never mask
                    pass            # the error on its way (the next run redoes 'running' rows)
                raise
            n_done += 1
            rep.update(stage.name, n_done, len(jobs), job.subject_id,
                       failed=len(summary.failed))

    def _run_dask(self, stage, todo, jobs, summary, rep) -> None:
        from distributed import wait

        client = self.client
        ws = self.ws
        queue: deque[tuple[Job, int]] = deque((j, 1) for j in todo)
        in_flight: dict[Any, tuple[Job, int]] = {}
        # compute threads per task: the local setting, or an existing cluster's smallest worker
        # (several single-threaded workers per node must not each start a thread per core)
        # (threads of this process when the local workers are threads: left alone)
        if self.options.scheduler == "local":
            threads = self.options.threads_per_worker if self.options.processes else None
        else:
            threads = self._min_worker_threads()
        n_done = len(summary.skipped)
        # Dask assigns tasks to a worker ahead of its free threads, and a worker that dies fails
        # them all (KilledWorker). Each task writes a start marker first: one lost without it
        # had not begun there and goes back in the queue without using a try (a few times).
        markers = self._marker_dir(stage)
        started_files: dict[Any, Path | None] = {}
        requeued: dict[tuple[str, str], int] = {}
        n_submitted = [0]

        def fill() -> None:
            window = self.options.max_in_flight or max(16, 4 * self._threads())
            batch: list[tuple[Job, int]] = []
            while queue and len(in_flight) + len(batch) < window:
                batch.append(queue.popleft())
            if not batch:
                return
            fresh = [j for j, a in batch if a == 1]
            by_key: dict[str, list[str]] = {}
            for j in fresh:
                by_key.setdefault(j.key, []).append(j.subject_id)
            with ws.db.transaction():
                for key, sids in by_key.items():
                    ws.db.mark_tasks(stage.name, key, sids, "running")
            for job, attempt in batch:
                task = stage.task(ws, job)
                if threads:
                    task.threads = threads
                n_submitted[0] += 1
                marker = None
                if markers is not None and hasattr(task, "started"):
                    marker = markers / str(n_submitted[0])
                    task.started = str(marker)
                # a unique key per submission: a requeued task must not meet its lost twin
                fut = client.submit(task, key=f"bodyage-{stage.name}-{self.token}-"
                                    f"{job.key}-{job.subject_id}-{attempt}-{n_submitted[0]}",
                                    pure=False)
                in_flight[fut] = (job, attempt)
                started_files[fut] = marker

        try:
            fill()
            while in_flight:
                try:
                    with client.as_current():
                        finished, _ = wait(list(in_flight), timeout=0.5,
                                           return_when="FIRST_COMPLETED")
                except (TimeoutError, asyncio.TimeoutError):
                    rep.check()
                    continue
                for fut in finished:
                    job, attempt = in_flight.pop(fut)
                    marker = started_files.pop(fut, None)
                    if fut.status == "finished":
                        result = fut.result()
                        fut.release()
                        self._record_ok(stage, job, result, attempt, summary)
                    else:
                        try:
                            exc = fut.exception()
                        except BaseException as err:  # noqa: BLE001 - cancelled by the cluster
                            if isinstance(err, KeyboardInterrupt):
                                raise
                            exc = RuntimeError(f"the cluster dropped the task ({first_line(err)})")
                        if exc is None:
                            # a task lost with a worker that died beside it (status 'lost' or
                            # 'cancelled', no exception of its own): not this subject's fault
                            exc = RuntimeError(f"the cluster dropped the task (status "
                                               f"{fut.status})")
                        fut.release()
                        if marker is not None and _lost_with_worker(exc) and \
                                not marker.exists() and \
                                requeued.get((job.key, job.subject_id), 0) < _MAX_REQUEUES:
                            k = (job.key, job.subject_id)
                            requeued[k] = requeued.get(k, 0) + 1
                            queue.appendleft((job, attempt))
                            continue
                        if isinstance(exc, BaseException) and \
                                self._retryable(stage, exc, attempt):
                            summary.retried += 1
                            queue.appendleft((job, attempt + 1))
                            continue
                        self._record_failed(stage, job, describe_error(exc), attempt,
                                            summary)
                    n_done += 1
                    rep.update(stage.name, n_done, len(jobs), job.subject_id,
                               failed=len(summary.failed))
                fill()
        except OSError as err:   # the scheduler went away (CommClosedError is an OSError)
            self._cancel(stage, in_flight, queue)
            raise BodyageError(f"lost the Dask scheduler {self.options.scheduler} "
                               f"({first_line(err)}); {len(summary.done)} subject(s) finished "
                               "in this run are kept", self.ws.root,
                               "run the same command again to resume") from None
        except BaseException:
            self._cancel(stage, in_flight, queue)
            raise
        finally:
            if markers is not None:
                shutil.rmtree(markers, ignore_errors=True)
                try:
                    markers.parent.rmdir()      # unless another run's markers are there
                except OSError:
                    pass

    def _marker_dir(self, stage: Stage) -> Path | None:
        """``<workspace>/.bodyage_started/<stage>-<token>/`` for the tasks' start markers
        (the workers see the workspace); None where it cannot be made (no markers)."""
        d = Path(self.ws.root) / MARKER_DIR / f"{stage.name}-{self.token}"
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return d

    def _run_groups(self, stage, todo, jobs, summary, rep, size: int, sync: bool) -> None:
        from bodyage_core.cluster.grouped import run_groups

        run_groups(self, stage, todo, jobs, summary, rep, size, sync)

    def _cancel_units(self, stage, in_flight, units) -> None:
        pairs = [p for unit in list(in_flight.values()) + list(units) for p in unit]
        futures = list(in_flight)
        in_flight.clear()
        if futures and self.client is not None:
            _quiet(self.client.cancel, futures)
        self._cancel(stage, {}, pairs)

    def _cancel(self, stage, in_flight, queue) -> None:
        futures = list(in_flight)
        if futures and self.client is not None:
            _quiet(self.client.cancel, futures)
        by_key: dict[str, list[str]] = {}
        for job, _a in list(in_flight.values()) + list(queue):
            by_key.setdefault(job.key, []).append(job.subject_id)
        try:
            with self.ws.db.transaction():
                for key, sids in by_key.items():
                    self.ws.db.mark_tasks(stage.name, key, sids, "cancelled", "interrupted",
                                          only_status=("running",))
        except Exception:  # noqa: BLE001 - never mask the interruption
            pass
        in_flight.clear()


def run_stage(ws, stage: Stage, options: EngineOptions | None = None,
              reporter: ProgressReporter | None = None, command: str | None = None
              ) -> StageSummary:
    """Lock the workspace, start the engine, run ``stage``, close everything."""
    with Engine(ws, options, command=command) as engine:
        return engine.run(stage, reporter)


def _probe_worker(root: str):
    import importlib.util

    if importlib.util.find_spec("bodyage_core") is None:
        raise ModuleNotFoundError("No module named 'bodyage_core'")
    return os.path.isdir(root)


def _quiet(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - closing a cluster that is going away anyway
        pass


def _silence_dask_logs() -> None:
    """On a worker that is about to be closed: only critical messages from Dask."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]
    for name in ("distributed", *names):   # silence_logs sets some of them one by one
        logging.getLogger(name).setLevel(logging.CRITICAL)


class _no_sigint:
    """Start worker processes with SIGINT ignored (inherited across exec), so Ctrl+C reaches
    only the client, which then closes the cluster in order."""

    def __enter__(self):
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


__all__ = ["Engine", "EngineOptions", "StageSummary", "run_stage", "default_workers",
           "Cancelled"]
