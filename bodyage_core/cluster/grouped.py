"""Running a stage in tasks of several subjects (a batch for the GPU), each recorded alone.

:func:`run_groups` is the body of :meth:`Engine.run` for a stage with a ``group_size``: a task
runs :meth:`Stage.group_task` on ``size`` jobs; a job that failed and may be retried runs again
alone, and so does every job of a task that failed as a whole (a killed worker).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from bodyage_core.cluster.tasks import Job, describe_error, first_line
from bodyage_core.errors import BodyageError, Cancelled


def run_groups(engine, stage, todo, jobs, summary, rep, size: int, sync: bool) -> None:
    """Run ``todo`` in tasks of ``size`` jobs (:meth:`Stage.group_task`), in this process
    (``sync``) or on the Dask client. Each job is recorded on its own; a job that failed
    and may be retried runs again alone, and so does every job of a task that failed as a
    whole (a killed worker), so one bad subject costs the others of its batch nothing."""
    ws = engine.ws
    units: deque[list[tuple[Job, int]]] = deque(
        [(j, 1) for j in todo[i:i + size]] for i in range(0, len(todo), size))
    in_flight: dict[Any, list[tuple[Job, int]]] = {}
    n_done = len(summary.skipped)

    def finished(job: Job) -> None:
        nonlocal n_done
        n_done += 1
        rep.update(stage.name, n_done, len(jobs), job.subject_id,
                   failed=len(summary.failed))

    def settle(unit: list[tuple[Job, int]], result: Any) -> None:
        if isinstance(result, BaseException):     # the whole task failed
            for job, attempt in unit:
                if engine._retryable(stage, result, attempt):
                    summary.retried += 1
                    units.appendleft([(job, attempt + 1)])
                    continue
                engine._record_failed(stage, job, describe_error(result), attempt, summary)
                finished(job)
            return
        entries = result["out"]["results"]
        share = {k: float(result[k]) / len(unit) for k in ("seconds", "cpu_seconds")
                 if result.get(k) is not None}
        for (job, attempt), entry in zip(unit, entries):
            if "out" in entry:
                engine._record_ok(stage, job, {"out": entry["out"],
                                             "worker": result.get("worker"), **share},
                                attempt, summary)
            elif attempt <= engine.options.retries and (
                    stage.retry_user_errors or not entry.get("user_error")):
                summary.retried += 1
                units.appendleft([(job, attempt + 1)])
                continue
            else:
                engine._record_failed(stage, job, entry["error"], attempt, summary)
            finished(job)

    def mark(unit, status: str, message: str | None = None, **kw) -> None:
        by_key: dict[str, list[str]] = {}
        for job, _a in unit:
            by_key.setdefault(job.key, []).append(job.subject_id)
        with ws.db.transaction():
            for key, sids in by_key.items():
                ws.db.mark_tasks(stage.name, key, sids, status, message, **kw)

    def make_task(unit):
        task = stage.group_task(ws, [job for job, _a in unit])
        if threads:
            task.threads = threads
        return task

    if engine.options.scheduler == "local":
        threads = engine.options.threads_per_worker if engine.options.processes else None
    else:
        threads = engine._min_worker_threads()
    if sync:
        threads = None
        while units:
            unit = units.popleft()
            mark(unit, "running")
            try:
                try:
                    result = make_task(unit)()
                except Cancelled:
                    raise
                except Exception as exc:  # noqa: BLE001 - recorded per subject
                    result = exc
                settle(unit, result)
            except BaseException:
                try:
                    mark(unit, "cancelled", "interrupted", only_status=("running",))
                except Exception:  # noqa: BLE001 - never mask the error on its way
                    pass
                raise
        return

    from distributed import wait

    client = engine.client

    def fill() -> None:
        window = engine.options.max_in_flight or max(16, 4 * engine._threads())
        window = max(1, -(-window // size))          # tasks of ``size`` jobs
        while units and len(in_flight) < window:
            unit = units.popleft()
            mark(unit, "running")
            first, attempt = unit[0]
            fut = client.submit(make_task(unit), key=f"bodyage-{stage.name}-{engine.token}-"
                                f"{first.key}-{first.subject_id}-g{len(unit)}-{attempt}",
                                pure=False)
            in_flight[fut] = unit

    try:
        fill()
        while in_flight:
            try:
                with client.as_current():
                    done, _ = wait(list(in_flight), timeout=0.5,
                                   return_when="FIRST_COMPLETED")
            except (TimeoutError, asyncio.TimeoutError):
                rep.check()
                continue
            for fut in done:
                unit = in_flight.pop(fut)
                if fut.status == "finished":
                    result: Any = fut.result()
                else:
                    try:
                        result = fut.exception()
                    except BaseException as err:  # noqa: BLE001 - cancelled by the cluster
                        if isinstance(err, KeyboardInterrupt):
                            raise
                        result = RuntimeError(f"the cluster dropped the task "
                                              f"({first_line(err)})")
                    if result is None:
                        result = RuntimeError(f"the cluster dropped the task (status "
                                              f"{fut.status})")
                fut.release()
                settle(unit, result)
            fill()
    except OSError as err:   # the scheduler went away (CommClosedError is an OSError)
        engine._cancel_units(stage, in_flight, units)
        raise BodyageError(f"lost the Dask scheduler {engine.options.scheduler} "
                           f"({first_line(err)}); {len(summary.done)} subject(s) finished "
                           "in this run are kept", engine.ws.root,
                           "run the same command again to resume") from None
    except BaseException:
        engine._cancel_units(stage, in_flight, units)
        raise
