"""The training loop of one network: events, progress, cancel, checkpoints, resume.

The :class:`Trainer` fires events (:class:`~bodyage_core.training.events.Events`) that handlers
attach to, and reports every step through a :class:`~bodyage_core.progress.ProgressReporter`
(``stage="train"``, values ``epoch, step, loss, val_mae, lr``; the reporter computes the ETA),
which is also where a cancel request is honoured (within one step). After every epoch the full
state (model, optimiser, scheduler, history, best weights) is written atomically to the
checkpoint file, so an interrupted run resumes from its last completed epoch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.inference.batch import predict_arrays
from bodyage_core.inference.device import autocast as _autocast
from bodyage_core.inference.device import is_oom, resolve_device
from bodyage_core.inference.device import prepare_model as _prepare_model
from bodyage_core.inference.device import to_device as _to_device
from bodyage_core.inference.weights import load_torch_file, save_torch_file
from bodyage_core.models.ensemble import BIAS_METHODS
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.training.augment import AugmentConfig, augment_batch
from bodyage_core.training.data import AgeDataset
from bodyage_core.training.events import EventEmitter, Events
from bodyage_core.training.losses import TargetScaler, get_loss

SCHEDULERS = ("plateau", "step", "none")
# consecutive optimiser steps with non-finite gradients before training is called diverged
MAX_BAD_GRAD_STEPS = 10


@dataclass
class TrainConfig:
    """Optimisation settings of one network (DESIGN.md defaults where they exist)."""

    epochs: int = 50
    batch_size: int = 4
    accumulate: int = 1            # gradient accumulation over this many mini-batches
    lr: float = 1e-4
    weight_decay: float = 0.0
    loss: str = "l1"               # l1 | mse | meanvar
    scheduler: str = "plateau"     # plateau (on val MAE) | step (2.5D: lr/10 at step_fraction)
    plateau_patience: int = 3
    plateau_factor: float = 0.1
    step_fraction: float = 5 / 6   # Langner: 6000 iterations, lr/10 for the last 1000
    early_stopping: int = 10       # epochs without a better val MAE before stopping; 0 = off
    warmup_epochs: int = 0         # linear lr warm-up (epochs)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    device: str = "auto"           # auto | cpu | cuda
    amp: bool = True               # bfloat16 autocast, CUDA only
    eval_batch_size: int = 16
    precise_bn: int = 128          # re-estimate batch-norm statistics on up to this many
                                   # training subjects before each validation (0 = off)
    keep: str = "best"             # weights a member ends with: best validation epoch | last.
                                   # "best" makes the validation predictions (which bias
                                   # correction and variance calibration are fitted on)
                                   # optimistic; "last" keeps them honest
    tta: list[str] = field(default_factory=list)  # test-time augmentation the run predicts
                                   # with (validation fits included): "flip_x" averages each
                                   # member over the input and its left-right mirror
    bias_correction: str = "full"  # full: corrected = (pred - b) / a as fitted on validation,
                                   # so the gap does not depend on age there (what comparing
                                   # accelerated and decelerated agers needs; below slope 0.5
                                   # the loo shrink: ensemble.fit_bias_policy); loo: shrunk
                                   # towards the raw prediction by leave-one-out MAE (lower
                                   # MAE, but the gap keeps part of its age dependence)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}",
                              hint=f"use one of {SCHEDULERS}")
        get_loss(self.loss)
        if self.keep not in ("best", "last"):
            raise ConfigError(f"unknown --keep {self.keep!r}", hint="use best or last")
        if self.bias_correction not in BIAS_METHODS:
            raise ConfigError(f"unknown --bias-correction {self.bias_correction!r}",
                              hint=f"use one of {', '.join(BIAS_METHODS)}")
        self.tta = list(self.tta or [])
        if set(self.tta) - {"flip_x"}:
            raise ConfigError(f"unknown test-time augmentation {self.tta}", hint="use flip_x")
        if self.epochs < 1 or self.batch_size < 1 or self.accumulate < 1:
            raise ConfigError("epochs, batch size and accumulation must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class TrainState:
    """What handlers see: counters, the last losses and the validation history."""

    member: str = ""
    #: where this member sits in its run: ``fold, folds, member, members`` (1-based), sent
    #: with every progress event so that nobody has to parse the label
    position: dict[str, int] = field(default_factory=dict)
    epoch: int = 0                 # epochs completed
    epoch_float: float = 0.0       # position in epochs at the current optimiser step
    iteration: int = 0             # mini-batches done in total
    total_iterations: int = 0
    step_in_epoch: int = 0
    steps_per_epoch: int = 0
    loss: float = math.nan         # last mini-batch loss
    train_loss: float = math.nan   # mean over the last epoch
    val_mae: float = math.nan      # years
    best_val_mae: float = math.inf
    best_epoch: int = -1
    lr: float = 0.0
    batch_size: int = 0
    accumulate: int = 1
    lr_stepped: bool = False
    stopped_early: bool = False
    bad_epochs: int = 0
    skipped_steps: int = 0         # optimiser steps dropped for non-finite gradients
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def sharded_predict(model: nn.Module, dataset: AgeDataset, indices: np.ndarray | None, dist,
                    batch_size: int = 16, device: torch.device | str = "cpu",
                    amp: bool = True) -> np.ndarray:
    """:func:`predict_arrays` split over the ranks of ``dist`` (rank r predicts every W-th
    subject); every rank returns all ``(N, 2)`` outputs, in the order of ``indices``."""
    idx = np.arange(len(dataset)) if indices is None else np.asarray(indices)
    w, r = dist.world_size, dist.rank
    mine = predict_arrays(model, dataset, idx[r::w], batch_size, device, amp)
    out = np.zeros((len(idx), 2), dtype=np.float64)
    for k, part in enumerate(dist.all_gather(mine)):
        out[k::w] = part
    return out


class Trainer:
    """Train one network on ``train`` (indices into a dataset), validating on ``val``.

    Parameters
    ----------
    model
        An age network (output ``(N, 2)``).
    dataset
        The :class:`AgeDataset` both index sets point into.
    train_idx, val_idx
        Training and validation subject indices (validation may be empty).
    config
        :class:`TrainConfig`.
    scaler
        Target standardisation (fitted on the training ages when None).
    checkpoint
        File written atomically after every epoch (and read by :meth:`fit` with ``resume``).
    reporter
        Progress and cancellation.
    dist
        A :class:`~bodyage_core.training.distributed.DistContext` in ``ddp`` mode: the network
        is wrapped in ``DistributedDataParallel``, every rank trains on its shard of each epoch
        (gradients all-reduced), validation figures are rank 0's, and only rank 0 writes the
        checkpoint. None (or any other context) trains alone as usual.
    """

    def __init__(self, model: nn.Module, dataset: AgeDataset, train_idx, val_idx,
                 config: TrainConfig | None = None, scaler: TargetScaler | None = None,
                 checkpoint: str | Path | None = None,
                 reporter: ProgressReporter | None = None, name: str = "member",
                 dist=None, position: dict[str, int] | None = None,
                 handlers: list | None = None):
        self.config = config or TrainConfig()
        self.dist = dist if dist is not None and getattr(dist, "ddp", False) else None
        self.dataset = dataset
        self.train_idx = np.asarray(train_idx, dtype=np.int64)
        self.val_idx = np.asarray(val_idx if val_idx is not None else [], dtype=np.int64)
        if len(self.train_idx) == 0:
            raise BodyageError("no training subjects", hint="add subjects with ages")
        ages = dataset.ages
        self.scaler = scaler or TargetScaler.fit(ages[self.train_idx])
        self.device = resolve_device(self.config.device)
        self.model = _prepare_model(model, self.device)
        self._net: nn.Module = self.model       # what the training forward pass runs
        if self.dist is not None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._net = DistributedDataParallel(self.model, device_ids=ids)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.reporter = ensure_reporter(reporter)
        self.events = EventEmitter()
        self.loss_fn = get_loss(self.config.loss)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr,
                                          weight_decay=self.config.weight_decay)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=self.config.plateau_factor,
            patience=self.config.plateau_patience)
        self.state = TrainState(member=name, position=dict(position or {}),
                                batch_size=self.config.batch_size,
                                accumulate=self.config.accumulate, lr=self.config.lr)
        self.best_state: dict[str, torch.Tensor] | None = None
        self._bad_grad_run = 0     # consecutive dropped steps (non-finite gradients)
        from bodyage_core.training.handlers import default_handlers

        self.handlers = list(default_handlers(self.config) if handlers is None else handlers)
        for h in self.handlers:
            h.attach(self)
        self._targets = self.scaler.transform(ages).astype(np.float32)

    def on(self, event: str, handler=None, priority: int = 0):
        """Attach ``handler(state)`` to an event (see :class:`Events`; the built-in handlers'
        priorities are in :mod:`bodyage_core.training.handlers`)."""
        return self.events.on(event, handler, priority)

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.checkpoint is None or (self.dist is not None and not self.dist.is_main):
            return
        payload = {
            "format": "bodyage-train-checkpoint/1",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "plateau": self.plateau.state_dict(),
            "state": asdict(self.state),
            "best_model": self.best_state,
            "scaler": self.scaler.to_dict(),
            "config": self.config.to_dict(),
        }
        save_torch_file(payload, self.checkpoint)
        self.events.fire(Events.CHECKPOINT_SAVED, self.state)

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Restore from the checkpoint; False when there is none. A damaged file is a
        :class:`BodyageError` naming it."""
        path = Path(path) if path is not None else self.checkpoint
        if path is None or not path.exists():
            return False
        ck = load_torch_file(path, what="training checkpoint")
        if not isinstance(ck, dict) or ck.get("format") != "bodyage-train-checkpoint/1":
            raise BodyageError("not a bodyage training checkpoint", path=path,
                               hint="delete it or train with --overwrite")
        try:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.plateau.load_state_dict(ck["plateau"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise BodyageError(f"checkpoint does not fit this model ({exc})", path=path,
                               hint="train with --overwrite") from None
        self.state = TrainState(**ck["state"])
        self.best_state = ck.get("best_model")
        sc = ck.get("scaler") or {}
        self.scaler = TargetScaler(sc.get("target_mean", self.scaler.mean),
                                   sc.get("target_std", self.scaler.std))
        self._targets = self.scaler.transform(self.dataset.ages).astype(np.float32)
        return True

    # -- training ----------------------------------------------------------------------------
    def _train_step(self, sel: np.ndarray, gen: torch.Generator) -> float:
        cfg, st = self.config, self.state
        x = _to_device(self.dataset.batch(sel, dtype=None), self.device)
        y = torch.as_tensor(self._targets[sel], device=self.device)
        if cfg.augment.enabled:
            x = augment_batch(x, cfg.augment, gen)
        sync = getattr(self, "_sync_grads", True)
        ctx = (self._net.no_sync() if self.dist is not None and not sync
               else contextlib.nullcontext())
        with ctx:
            with _autocast(self.device, cfg.amp):
                out = self._net(x)
            loss = self.loss_fn(out.float(), y)
            if not torch.isfinite(loss):
                raise BodyageError(f"training diverged (loss {loss.item()}) at epoch "
                                   f"{st.epoch + 1}",
                                   hint="lower the learning rate or use --loss l1")
            (loss / st.accumulate).backward()
        return float(loss.detach())

    def _optimizer_step(self) -> None:
        """Step unless a gradient is non-finite. A finite loss can still back-propagate to an
        inf/NaN gradient in reduced precision (bfloat16 autocast); one such step would turn
        every weight into NaN, so it is dropped, as a gradient scaler does, and counted.
        Under ddp the gradients are already all-reduced, so every rank drops the same step."""
        st = self.state
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        finite = not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        if finite:
            self.optimizer.step()
            self._bad_grad_run = 0
        else:
            st.skipped_steps += 1
            self._bad_grad_run += 1
            self.reporter.update("train", st.iteration, st.total_iterations,
                                 f"skipped an optimiser step: non-finite gradients "
                                 f"({st.skipped_steps} so far)")
            if self._bad_grad_run >= MAX_BAD_GRAD_STEPS:
                raise BodyageError(
                    f"training diverged: {self._bad_grad_run} optimiser steps in a row had "
                    f"non-finite gradients (epoch {st.epoch + 1})",
                    hint="train without mixed precision (--no-amp) or lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)

    def fit(self, resume: bool = False) -> TrainState:
        """Train for ``config.epochs`` (or until early stopping); leaves the best weights (by
        validation MAE) in ``self.model``. Resumes from the checkpoint when ``resume``."""
        cfg = self.config
        if resume:
            self.load_checkpoint()
        st = self.state
        n = len(self.train_idx)
        if self.dist is not None:       # this rank's shard of every epoch
            from bodyage_core.training.distributed import shard

            n = len(shard(self.train_idx, self.dist.rank, self.dist.world_size))
        st.steps_per_epoch = math.ceil(n / st.batch_size)
        st.total_iterations = st.steps_per_epoch * cfg.epochs
        self.events.fire(Events.STARTED, st)
        while st.epoch < cfg.epochs and not st.stopped_early:
            epoch = st.epoch
            self.events.fire(Events.EPOCH_STARTED, st)
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            if self.dist is None:
                perm = self.train_idx[torch.randperm(n, generator=gen).numpy()]
            else:   # one permutation on every rank, each takes its shard; own augmentation
                from bodyage_core.training.distributed import shard

                full = self.train_idx[torch.randperm(len(self.train_idx), generator=gen).numpy()]
                perm = shard(full, self.dist.rank, self.dist.world_size)
                gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch
                                                    + 7_919 * (self.dist.rank + 1))
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            losses: list[float] = []
            pos, k = 0, 0
            while pos < n:
                bs = st.batch_size
                sel = perm[pos:pos + bs]
                if len(sel) < 2 and n >= 2 and _has_batchnorm(self.model):
                    break  # a batch of one cannot be batch-normalised; skip the remainder
                # the last usable batch (only nothing or a lone subject follows) always
                # ends with an optimiser step (and, under ddp, a gradient all-reduce)
                rest = n - pos - len(sel)
                last = rest <= 0 or (rest < 2 and n >= 2 and _has_batchnorm(self.model))
                self._sync_grads = (k + 1) % st.accumulate == 0 or last
                try:
                    loss = self._train_step(sel, gen)
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                    if self.dist is not None:
                        raise BodyageError(
                            f"out of memory with batch size {st.batch_size} on rank "
                            f"{self.dist.rank} (--distributed ddp cannot shrink the batch of "
                            "one rank alone)", hint="use a smaller --batch-size with a larger "
                            "--accumulate") from None
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    if st.batch_size <= 1:
                        raise BodyageError("out of memory even with a batch of one subject",
                                           hint="use a coarser grid, a smaller --width, or "
                                                "another device") from None
                    st.batch_size = max(1, st.batch_size // 2)
                    st.accumulate *= 2
                    self.reporter.update("train", st.iteration, st.total_iterations,
                                         f"out of memory: retrying with batch size "
                                         f"{st.batch_size} (accumulating {st.accumulate})")
                    self.events.fire(Events.BATCH_SIZE_REDUCED, st)
                    pos, k, losses = 0, 0, []
                    continue
                losses.append(loss)
                pos += len(sel)
                k += 1
                if k % st.accumulate == 0 or pos >= n or last:
                    st.epoch_float = epoch + pos / n
                    self.events.fire(Events.STEP_STARTED, st)
                    self._optimizer_step()
                st.iteration += 1
                st.step_in_epoch = k
                st.loss = loss
                st.lr = self.optimizer.param_groups[0]["lr"]
                self.events.fire(Events.ITERATION_COMPLETED, st)
                self.reporter.update(
                    "train", epoch * st.steps_per_epoch + min(k, st.steps_per_epoch),
                    st.total_iterations, st.member, epoch=epoch + 1, step=k, loss=loss,
                    val_mae=st.val_mae, lr=st.lr, **st.position)
            st.train_loss = float(np.mean(losses)) if losses else math.nan
            if self.dist is not None:
                st.train_loss = float(np.nanmean(self.dist.all_gather(st.train_loss)))
            st.epoch = epoch + 1
            # validation, early stopping and the checkpoint are handlers of this event
            self.events.fire(Events.EPOCH_COMPLETED, st)
        if self.best_state is not None and cfg.keep == "best":
            self.model.load_state_dict(self.best_state)
        self.events.fire(Events.COMPLETED, st)
        return st

    @torch.no_grad()
    def _precise_bn(self) -> None:
        """Replace the running batch-norm statistics by exact averages over (up to
        ``config.precise_bn``) un-augmented training subjects with the current weights.

        With small batches and a high learning rate the exponential running averages lag the
        weights, and evaluation-mode predictions swing from epoch to epoch; this removes that.
        """
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns or self.config.precise_bn <= 0:
            return
        idx = self.train_idx[: self.config.precise_bn]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None          # cumulative average
        self.model.train()
        bs = max(2, self.state.batch_size)
        for i in range(0, len(idx), bs):
            sel = idx[i:i + bs]
            if len(sel) < 2:
                break
            with _autocast(self.device, self.config.amp):
                self.model(_to_device(self.dataset.batch(sel, dtype=None), self.device))
        for m, mom in zip(bns, momenta):
            m.momentum = mom

    def validate(self) -> None:
        """The validation MAE of the current weights (after precise batch-norm statistics) into
        the state; fires ``VALIDATION_COMPLETED`` (the :class:`~bodyage_core.training.handlers.
        Validator` calls this after every epoch)."""
        self._precise_bn()
        st = self.state
        if len(self.val_idx):
            if self.dist is None:
                out = predict_arrays(self.model, self.dataset, self.val_idx,
                                     self.config.eval_batch_size, self.device, self.config.amp)
            else:   # each rank predicts its share of the validation subjects
                out = sharded_predict(self.model, self.dataset, self.val_idx, self.dist,
                                      self.config.eval_batch_size, self.device, self.config.amp)
            pred = self.scaler.inverse(out[:, 0])
            st.val_mae = float(np.mean(np.abs(pred - self.dataset.ages[self.val_idx])))
            if self.dist is not None:   # every rank decides on rank 0's figure
                st.val_mae = float(self.dist.broadcast(st.val_mae))
        else:
            st.val_mae = math.nan
        self.events.fire(Events.VALIDATION_COMPLETED, st)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def state_dict_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
