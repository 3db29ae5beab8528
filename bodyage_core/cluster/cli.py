"""Command-line glue shared by ``bodyage predict / explain / register / atlas maps``:
the engine options and running stages with a terminal progress bar and clean Ctrl+C."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bodyage_core.cluster.engine import Engine, EngineOptions, StageSummary
from bodyage_core.cluster.tasks import Stage

SCHEDULER_ENV = "BODYAGE_SCHEDULER"


def add_engine_arguments(p) -> None:
    """``--scheduler --workers --retries --connect-timeout --wait --dashboard-address`` on a
    sub-command parser."""
    g = p.add_argument_group("cohort scale (per-subject tasks on Dask; docs/CLUSTER.md)")
    g.add_argument("--scheduler", default=None, metavar="WHERE",
                   help="local (default: a Dask LocalCluster on this machine), "
                        "tcp://host:port (an existing Dask scheduler, e.g. from SLURM), or "
                        f"none/sync (in this process); default from ${SCHEDULER_ENV} or local")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of --scheduler local (default: one per CPU)")
    g.add_argument("--retries", type=int, default=2, metavar="N",
                   help="extra tries of a failed subject before it is recorded failed "
                        "(default 2)")
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to reach a tcp:// scheduler (default 10)")
    g.add_argument("--wait", action="store_true", dest="wait_lock",
                   help="if another run holds the workspace, wait for it instead of refusing")
    g.add_argument("--dashboard-address", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="where the local cluster's Dask dashboard listens (default "
                        "127.0.0.1:0: this machine only, a free port; its task names carry "
                        "subject ids): e.g. 127.0.0.1:8787, :8787 for every interface, none")


def engine_options(args) -> EngineOptions:
    scheduler = args.scheduler or os.environ.get(SCHEDULER_ENV) or "local"
    workers = args.workers
    if scheduler == "local" and workers is None and _uses_gpu(getattr(args, "device", None)):
        workers = 1     # one GPU: one worker (several GPUs: see docs/CLUSTER.md, dask-cuda)
    return EngineOptions(scheduler=scheduler, workers=workers, retries=args.retries,
                         connect_timeout=args.connect_timeout,
                         wait_lock=args.wait_lock,
                         dashboard_address=getattr(args, "dashboard_address",
                                                   "127.0.0.1:0")).validate()


def _uses_gpu(device: str | None) -> bool:
    if device is None or device == "cpu":
        return False
    if str(device).startswith("cuda"):
        return True
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def command_line(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    return "bodyage " + shlex.join(argv)


def run_stages(ws, args, stages: Sequence[Stage], after: Callable[[], Any] | None = None
               ) -> list[StageSummary] | int:
    """Run ``stages`` one after the other on one engine (the workspace locked throughout).

    ``after`` runs once the stages are done, the cluster closed and the lock still held; its
    result is appended to the returned list. Returns the summaries, or 130 after Ctrl+C (one
    line on stderr: what was kept and how to resume)."""
    from bodyage_core.progress import TerminalProgress

    opts = engine_options(args)
    summaries: list[Any] = []
    engine = Engine(ws, opts, command=command_line())
    try:
        engine.start()
        for stage in stages:
            summaries.append(engine.run(stage, TerminalProgress()))
        if after is not None:
            engine.stop_cluster()
            summaries.append(after())
    except KeyboardInterrupt:
        last = getattr(engine, "last", None)
        engine.close()
        done = f"{len(last.done)} subject(s) finished in this run are kept; " if last else ""
        print(f"\nbodyage {args.command}: interrupted — {done}run the same command again to "
              "resume", file=sys.stderr)
        return 130
    finally:
        engine.close()
    return summaries
