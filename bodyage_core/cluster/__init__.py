"""Cohort scale: per-subject, idempotent batch stages on Dask distributed.

* :mod:`~bodyage_core.cluster.tasks`  the stage protocol: jobs whose tasks write their
  per-subject files atomically and return what the client records; the stages themselves in
  :mod:`~bodyage_core.cluster.model_stages` (predict, explain) and
  :mod:`~bodyage_core.cluster.atlas_stages` (register, warp);
* :mod:`~bodyage_core.cluster.engine` runs them on a LocalCluster, an existing scheduler
  (``tcp://host:port``, e.g. dask-jobqueue on SLURM) or in-process, with retries, a progress bar
  fed by the futures, clean Ctrl+C and one writer of ``cohort.sqlite``; its settings and
  summary in :mod:`~bodyage_core.cluster.options`, tasks of several subjects (GPU batches) in
  :mod:`~bodyage_core.cluster.grouped`;
* :mod:`~bodyage_core.cluster.lock`   one batch run per workspace (``.bodyage.lock``).

Dask is imported only when a cluster is started. See docs/CLUSTER.md.
"""

from bodyage_core.cluster.atlas_stages import RegisterStage, WarpStage
from bodyage_core.cluster.engine import (
    Engine,
    EngineOptions,
    StageSummary,
    default_workers,
    run_stage,
)
from bodyage_core.cluster.lock import WorkspaceLock, WorkspaceLockedError
from bodyage_core.cluster.model_stages import ExplainStage, PredictStage
from bodyage_core.cluster.tasks import Job, Stage, SubjectTask, describe_error

__all__ = [
    "Engine", "EngineOptions", "ExplainStage", "Job", "PredictStage", "RegisterStage", "Stage",
    "StageSummary", "SubjectTask", "WarpStage", "WorkspaceLock", "WorkspaceLockedError",
    "default_workers", "describe_error", "run_stage",
]
