"""How a stage runs (:class:`EngineOptions`) and what one run did (:class:`StageSummary`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from bodyage_core.errors import ConfigError

SYNC_SCHEDULERS = ("none", "sync")


def default_workers() -> int:
    """Worker processes of ``--scheduler local``: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class EngineOptions:
    """How to run per-subject stages.

    Parameters
    ----------
    scheduler
        ``"local"``, ``"none"``/``"sync"``, or a scheduler address ``tcp://host:port``.
    workers
        Worker processes of the local cluster (default :func:`default_workers`).
    threads_per_worker
        Threads per local worker (1: torch and SimpleITK get one core per worker).
    processes
        Local workers as processes (True, default) or threads of this process.
    retries
        Extra attempts of a failed subject (default 2, so at most 3 tries per run).
    connect_timeout
        Seconds to reach a ``tcp://`` scheduler before giving up with a clear error.
    wait_lock, lock_timeout
        Queue behind another run of the same workspace instead of refusing.
    max_in_flight
        Jobs submitted at once (default: 4 per worker thread, at least 16).
    min_cluster_jobs
        With ``"local"``, fewer unfinished jobs than this run in-process: starting worker
        processes would cost more than it saves (default 2: one subject never starts a cluster).
    dashboard_address
        Where the local cluster's Dask dashboard listens (default ``127.0.0.1:0``: this machine
        only, any free port; task names carry subject ids). ``:8787`` or ``0.0.0.0:8787`` opens
        it to the network (``--dashboard-address``); ``none`` turns it off.
    """

    scheduler: str = "local"
    workers: int | None = None
    threads_per_worker: int = 1
    processes: bool = True
    retries: int = 2
    connect_timeout: float = 10.0
    wait_lock: bool = False
    lock_timeout: float | None = None
    max_in_flight: int | None = None
    min_cluster_jobs: int = 2
    silence_logs: int = logging.ERROR
    dashboard_address: str = "127.0.0.1:0"

    def validate(self) -> EngineOptions:
        s = (self.scheduler or "local").strip()
        self.scheduler = s
        if s not in ("local", *SYNC_SCHEDULERS) and "://" not in s:
            raise ConfigError(f"--scheduler {s!r} is not local, none, sync or an address "
                              "like tcp://host:8786",
                              hint="see docs/CLUSTER.md for clusters")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be 0 or more, got {self.retries}")
        if self.connect_timeout <= 0:
            raise ConfigError("--connect-timeout must be positive")
        addr = (self.dashboard_address or "").strip()
        if addr.lower() in ("none", "off", "no", ""):
            self.dashboard_address = None
        else:
            host, sep, port = addr.rpartition(":")
            if not sep or not port.isdigit():
                raise ConfigError(f"--dashboard-address {addr!r} is not HOST:PORT",
                                  hint="e.g. 127.0.0.1:8787 (this machine), :8787 (every "
                                       "interface) or none")
            self.dashboard_address = addr
        return self

    @property
    def is_sync(self) -> bool:
        return self.scheduler in SYNC_SCHEDULERS


@dataclass
class StageSummary:
    """What one :meth:`Engine.run` did."""

    stage: str
    description: str
    total: int = 0
    done: list[str] = field(default_factory=list)          # computed in this run
    skipped: list[str] = field(default_factory=list)       # finished before
    failed: dict[str, str] = field(default_factory=dict)   # subject (key) -> error
    attempts: int = 0
    retried: int = 0
    seconds: float = 0.0
    task_seconds: list[float] = field(default_factory=list)
    task_cpu_seconds: list[float] = field(default_factory=list)
    cancelled: bool = False
    scheduler: str = ""
    workers: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)   # stage-specific output

    @property
    def subjects_per_minute(self) -> float | None:
        return 60.0 * len(self.done) / self.seconds if self.seconds > 0 and self.done else None

    def lines(self) -> list[str]:
        rate = self.subjects_per_minute
        out = [f"{self.description}: {len(self.done)} done, {len(self.skipped)} skipped "
               f"(finished before), {len(self.failed)} failed of {self.total} in "
               f"{self.seconds:.1f} s" + (f" ({rate:.1f}/min" if rate else "")
               + (f", {self.retried} retried" if self.retried else "")
               + (")" if rate else "")
               + f" [{self.scheduler}, {self.workers} worker(s)]"]
        for sid, msg in list(self.failed.items())[:20]:
            out.append(f"  failed {sid}: {msg}")
        if len(self.failed) > 20:
            out.append(f"  ... and {len(self.failed) - 20} more (tasks table of cohort.sqlite)")
        return out
