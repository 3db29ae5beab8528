"""What a :class:`~bodyage_core.training.trainer.Trainer` does between its steps, as handlers on
its events (MONAI's engines and handlers are the model): validation, the learning-rate
schedule, best-weight tracking, early stopping and checkpointing. The trainer itself only runs
epochs of optimiser steps and fires events; :func:`default_handlers` gives the set its
configuration asks for, and callers (the CLI, the wizard, distributed training, tests) attach
their own beside them or pass another set.

Order within one event is by ``priority`` (lower first), then by attachment, so a handler a
caller attaches (priority 0) sees the epoch validated and runs before early stopping and the
checkpoint of that epoch:

======================  ========================================================  ==========
event                   handler                                                   priority
======================  ========================================================  ==========
STEP_STARTED            :class:`LrSchedule` (warm-up, step decay)                 0
EPOCH_COMPLETED         :class:`Validator` (validation MAE, history entry)        -100
VALIDATION_COMPLETED    :class:`LrSchedule` (plateau decay)                       10
VALIDATION_COMPLETED    :class:`BestWeights` (best epoch, epochs without gain)    20
EPOCH_COMPLETED         :class:`EarlyStopping`                                    50
EPOCH_COMPLETED         :class:`CheckpointSaver`                                  100
======================  ========================================================  ==========
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from bodyage_core.training.events import Events

if TYPE_CHECKING:
    from bodyage_core.training.trainer import Trainer, TrainState


class Handler:
    """Something that attaches itself to a trainer's events."""

    def attach(self, trainer: Trainer) -> None:
        raise NotImplementedError


def monitored_metric(trainer: Trainer) -> float:
    """The figure the schedule and the best-weight tracking follow: the validation MAE, or the
    training loss when there are no validation subjects."""
    st = trainer.state
    return st.val_mae if len(trainer.val_idx) else st.train_loss


class Validator(Handler):
    """After every epoch: precise batch-norm statistics, the validation MAE (fires
    ``VALIDATION_COMPLETED``) and the epoch's history entry."""

    priority = -100

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._t0 = None
        trainer.on(Events.STARTED, self._start)
        trainer.on(Events.EPOCH_COMPLETED, self, priority=self.priority)

    def _start(self, _st) -> None:
        self._t0 = time.perf_counter()

    def __call__(self, _st: TrainState) -> None:
        tr = self.trainer
        tr.validate()
        st = tr.state
        st.history.append({"epoch": st.epoch, "train_loss": st.train_loss,
                           "val_mae": st.val_mae, "lr": st.lr,
                           "time_s": time.perf_counter() - (self._t0 or time.perf_counter())})


class LrSchedule(Handler):
    """The learning-rate schedule of the configuration: linear warm-up over
    ``warmup_epochs``, then a step decay (/10 at ``step_fraction`` of the iterations) or
    ``ReduceLROnPlateau`` on the monitored metric."""

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer
        trainer.on(Events.STEP_STARTED, self._before_step)
        if trainer.config.scheduler == "plateau":
            trainer.on(Events.VALIDATION_COMPLETED, self._plateau, priority=10)

    def _before_step(self, st: TrainState) -> None:
        tr = self.trainer
        cfg = tr.config
        if cfg.scheduler == "step" and not st.lr_stepped \
                and st.iteration + 1 >= cfg.step_fraction * st.total_iterations:
            for g in tr.optimizer.param_groups:
                g["lr"] = g["lr"] / 10.0
            st.lr_stepped = True
        w = cfg.warmup_epochs
        if w > 0 and st.epoch_float <= w + 1:
            f = 1.0 if st.epoch_float >= w else max(0.05, st.epoch_float / w)
            for g in tr.optimizer.param_groups:
                g["lr"] = cfg.lr * f

    def _plateau(self, _st: TrainState) -> None:
        metric = monitored_metric(self.trainer)
        if math.isfinite(metric):
            self.trainer.plateau.step(metric)


class BestWeights(Handler):
    """Keeps the weights of the epoch with the best monitored metric (restored at the end
    when ``keep == 'best'``) and counts the epochs without a gain (early stopping reads it)."""

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer
        trainer.on(Events.VALIDATION_COMPLETED, self, priority=20)

    def __call__(self, st: TrainState) -> None:
        tr = self.trainer
        metric = monitored_metric(tr)
        if math.isfinite(metric) and metric < st.best_val_mae - 1e-9:
            st.best_val_mae = metric
            st.best_epoch = st.epoch
            st.bad_epochs = 0
            tr.best_state = {k: v.detach().cpu().clone()
                             for k, v in tr.model.state_dict().items()}
        else:
            st.bad_epochs += 1


class EarlyStopping(Handler):
    """Stops after ``patience`` epochs without a better validation MAE (fires
    ``EARLY_STOPPED``)."""

    priority = 50

    def __init__(self, patience: int):
        self.patience = int(patience)

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer
        trainer.on(Events.EPOCH_COMPLETED, self, priority=self.priority)

    def __call__(self, st: TrainState) -> None:
        if self.patience and st.bad_epochs >= self.patience and len(self.trainer.val_idx):
            st.stopped_early = True
            self.trainer.events.fire(Events.EARLY_STOPPED, st)


class CheckpointSaver(Handler):
    """Writes the resumable checkpoint after every epoch (fires ``CHECKPOINT_SAVED``)."""

    priority = 100

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer
        trainer.on(Events.EPOCH_COMPLETED, self, priority=self.priority)

    def __call__(self, _st: TrainState) -> None:
        self.trainer.save_checkpoint()


def default_handlers(config) -> list[Handler]:
    """The handlers a training configuration asks for (the table above)."""
    out: list[Handler] = [Validator(), LrSchedule(), BestWeights()]
    if config.early_stopping:
        out.append(EarlyStopping(config.early_stopping))
    out.append(CheckpointSaver())
    return out
