"""Multi-GPU / multi-node training under ``torchrun`` (``bodyage train --distributed``).

Two modes share one process group (``gloo`` on CPU, ``nccl`` on CUDA; one process per GPU):

``members`` (default)
    The run's networks (``folds x members``, numbered as ``member_<k>.pt``) are dealt out
    round-robin: rank ``r`` of ``W`` trains members ``k`` with ``k % W == r``, each one whole
    and alone, and writes its ``member_<k>.pt`` atomically. No gradients cross processes, so
    this scales perfectly for ensembles as long as there are at least as many members as ranks.
``ddp``
    Every member is trained by all ranks together with
    :class:`torch.nn.parallel.DistributedDataParallel`: each rank takes its shard of every
    epoch's permutation, gradients are all-reduced (averaged) after each backward pass, so all
    ranks take identical optimiser steps and end with identical weights. Use it when there are
    fewer members than GPUs or one member is too slow on one GPU.

In both modes rank 0 alone writes the run's shared files (``config.json``, ``splits.json``,
``distributed.json``, calibration, bias correction, metrics, the ``cohort.sqlite`` rows) and
publishes the run; the other ranks wait at barriers. Errors are agreed on: when one rank fails
at a synchronisation point, every rank raises a :class:`BodyageError` naming the failing rank,
so nothing hangs waiting for a dead peer (torchrun also stops the other workers when one exits
with an error).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from bodyage_core.errors import BodyageError, ConfigError

MODES = ("members", "ddp")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_HINT = ("launch it with torchrun, e.g. `torchrun --nproc_per_node 2 -m "
               "bodyage_core.cli.main -- train WORKSPACE --run RUN --distributed` or `torchrun "
               "--nproc_per_node 2 --no-python bodyage -- train WORKSPACE --run RUN "
               "--distributed` (the `--` keeps torchrun from reading bodyage's options)")


def torchrun_env() -> dict[str, str] | None:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or None."""
    if not all(os.environ.get(k) for k in _ENV):
        return None
    return {k: os.environ[k] for k in _ENV}


@dataclass
class DistContext:
    """This process's place in the run: ``rank`` of ``world_size``; ``local_rank`` on its node.

    The single-process context (``world_size == 1``, no process group) makes every collective a
    no-op, so the training code runs the same with and without torchrun.
    """

    mode: str = "members"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "auto"           # the device string this rank trains on ("cuda:<local>")

    @property
    def active(self) -> bool:
        return self.world_size > 1 and self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.active and self.mode == "ddp"

    # -- collectives (no-ops without a process group) ----------------------------------------
    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def agree(self, error: BaseException | None) -> None:
        """Synchronisation point that shares failures: every rank passes the exception it hit
        (or None); when any rank failed, every rank raises (the failing rank its own error, the
        others a :class:`BodyageError` naming the failing rank and its message)."""
        if not self.active:
            if error is not None:
                raise error
            return
        msg = None if error is None else _describe(error)
        msgs = self.all_gather(msg)
        if error is not None:
            raise error
        bad = [(r, m) for r, m in enumerate(msgs) if m is not None]
        if bad:
            r, m = bad[0]
            raise BodyageError(f"rank {r} of {self.world_size} failed: {m}",
                               hint="fix that problem and run the command again (with --resume "
                                    "to keep the members already trained)")

    def close(self, wait_s: float = 60.0) -> None:
        """Leave the process group. Every rank first meets the others (bounded by ``wait_s``
        under gloo, so a dead rank cannot hang the exit): tearing gloo down while another rank
        still talks to it aborts the process ("terminate called without an active exception"),
        seen here in one of a few runs."""
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                try:
                    if self.backend == "gloo":
                        dist.monitored_barrier(timeout=datetime.timedelta(seconds=wait_s))
                    else:
                        dist.barrier()
                except Exception:  # noqa: BLE001 - a rank already gone; leave anyway
                    pass
                dist.destroy_process_group()
            self.backend = None

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "world_size": self.world_size, "backend": self.backend}


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:500]


def check_members_mode(world_size: int, n_networks: int) -> None:
    """Members mode needs at least one network per rank."""
    if world_size > n_networks:
        raise ConfigError(
            f"--distributed members: world size {world_size} is larger than the {n_networks} "
            f"network(s) to train (folds x members), so {world_size - n_networks} rank(s) "
            "would idle",
            hint=f"use --nproc_per_node/--nnodes for at most {n_networks} processes, more "
                 "--members, or --distributed ddp")


def init_distributed(mode: str = "members", device: str = "auto",
                     timeout_min: float = 60.0) -> DistContext:
    """Join the torchrun process group; a :class:`BodyageError` saying how to launch when the
    torchrun environment is missing. ``device`` ``auto``/``cuda`` -> ``cuda:<LOCAL_RANK>`` with
    ``nccl`` when CUDA is available, else CPU with ``gloo``."""
    if mode not in MODES:
        raise ConfigError(f"unknown --distributed mode {mode!r}", hint=f"use one of {MODES}")
    env = torchrun_env()
    if env is None:
        missing = [k for k in _ENV if not os.environ.get(k)]
        raise ConfigError(f"--distributed needs the torchrun environment ({', '.join(missing)} "
                          "not set)", hint=LAUNCH_HINT)
    import torch
    import torch.distributed as dist

    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available",
                          hint="use --device cpu (gloo) or --device auto")
    if use_cuda:
        n_gpu = torch.cuda.device_count()
        if local >= n_gpu:
            raise ConfigError(f"LOCAL_RANK {local} but this node has only {n_gpu} GPU(s)",
                              hint=f"use torchrun --nproc_per_node {n_gpu} (one process per "
                                   "GPU)")
        torch.cuda.set_device(local)
        backend, dev = "nccl", f"cuda:{local}"
    else:
        backend, dev = "gloo", "cpu"
    ctx = DistContext(mode=mode, rank=rank, world_size=world, local_rank=local,
                      backend=None, device=dev)
    if world > 1:
        if not dist.is_initialized():
            kwargs: dict[str, Any] = {"timeout": datetime.timedelta(minutes=timeout_min)}
            if use_cuda:
                kwargs["device_id"] = torch.device(dev)
            try:
                dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
            except Exception as exc:  # noqa: BLE001 - rendezvous problems are user-fixable
                raise BodyageError(f"cannot join the process group at {env['MASTER_ADDR']}:"
                                   f"{env['MASTER_PORT']} as rank {rank} of {world} "
                                   f"({_describe(exc)})",
                                   hint="check that every node runs the same torchrun "
                                        "command and can reach the master address") from None
        ctx.backend = backend
    return ctx


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of ``indices`` (``DistributedSampler`` style): padded by wrapping
    round so every rank gets the same number (so all ranks take the same number of steps)."""
    indices = np.asarray(indices)
    if world_size <= 1:
        return indices
    per = -(-len(indices) // world_size)
    total = per * world_size
    if total > len(indices):
        reps = -(-total // max(len(indices), 1))
        padded = np.concatenate([indices] * reps)[:total]
    else:
        padded = indices
    return padded[rank:total:world_size]


def parameter_digest(model) -> str:
    """SHA-1 of a network's parameters (in order, as float32 bytes): equal digests on all
    ranks mean bit-identical weights."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
