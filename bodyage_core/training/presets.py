"""The training defaults of a model kind: one source for ``bodyage train``, the wizard and the
scripts that train the shipped models.

The figures behind each default are in ``docs/RESULTS.md``; the short reason is kept with the
values (:attr:`TrainDefaults.why`) so that the commands can print what they chose and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bodyage_core.training.augment import AugmentConfig
from bodyage_core.training.trainer import TrainConfig

NO_AUGMENT = AugmentConfig(0, 0, 0, 0, 0, 0, False)


@dataclass(frozen=True)
class TrainDefaults:
    """Optimisation, augmentation and network width that a model kind trains with by default."""

    mode: str                     # "3d" | "2.5d"
    train: dict[str, Any]
    augment: dict[str, Any]
    width_cpu: int
    width_cuda: int
    why: tuple[str, ...] = field(default_factory=tuple)

    def width(self, device_type: str) -> int:
        return self.width_cuda if device_type == "cuda" else self.width_cpu


# Measured on the synthetic whole-body cohort (600 subjects, default grid, held-out test):
# width 8, lr 1e-3 with a step decay, batch 8, one warm-up epoch, mean-variance loss and
# integer shifts with intensity jitter gave 2.57 y (1.06x the noise floor) in 19 min on one CPU
# thread; rotation/scaling resample every batch (slow on CPU) without a measured gain.
_3D = TrainDefaults(
    mode="3d",
    train={"epochs": 30, "batch_size": 8, "lr": 1e-3, "loss": "meanvar", "scheduler": "step",
           "warmup_epochs": 1, "early_stopping": 0, "keep": "last", "weight_decay": 1e-4,
           "bias_correction": "auto"},
    augment={"translate": 3, "rotate_deg": 0, "scale": 0, "gain": 0.1, "offset": 0.05},
    width_cpu=8, width_cuda=32,
    why=("mean-variance loss: each member predicts its own sigma (uncertainty)",
         "lr 1e-3, step decay at 5/6 of the epochs, 1 warm-up epoch, batch 8: the settings of "
         "the synthetic benchmark (1.06x the noise floor)",
         "last-epoch weights: the validation predictions that calibrate sigma and fit the "
         "bias correction stay honest (the best epoch makes them optimistic)",
         "shifts of up to 3 voxels and intensity jitter: no resampling per batch",
         "bias correction auto: the full inverse of the validation fit unless it raises the "
         "validation MAE by more than 5 % (then shrunk); train says which",
         "width 8 on a CPU (a 3D ResNet-18 of width 64 costs ~3 s per forward pass there); "
         "32 on a GPU"),
)

# Langner's 2.5D recipe (step decay at 5/6, translation only) on the same benchmark: 3.79 y.
_2D = TrainDefaults(
    mode="2.5d",
    train={"epochs": 30, "batch_size": 8, "lr": 1e-3, "loss": "meanvar", "scheduler": "step",
           "warmup_epochs": 1, "early_stopping": 0, "keep": "last", "weight_decay": 0.0,
           "bias_correction": "auto"},
    augment={"translate": 16, "rotate_deg": 0, "scale": 0, "gain": 0.1, "offset": 0.05},
    width_cpu=8, width_cuda=64,
    why=("Langner's 2.5D recipe: mean-variance loss, step decay at 5/6 of the training, "
         "translation of up to 16 pixels, no rotation or scaling",),
)


def defaults_for(mode: str) -> TrainDefaults:
    """The :class:`TrainDefaults` of ``"3d"`` or ``"2.5d"`` models."""
    if mode not in ("3d", "2.5d"):
        raise ValueError(f"mode must be '3d' or '2.5d', got {mode!r}")
    return _3D if mode == "3d" else _2D


def train_config(mode: str, augment: bool = True, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` a model kind trains with: its defaults, then ``overrides``
    (``None`` values are ignored, so command-line options that were not given keep the
    default)."""
    d = defaults_for(mode)
    kw = dict(d.train)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    aug = overrides.get("augment")
    if not isinstance(aug, AugmentConfig):
        aug = AugmentConfig(**d.augment) if augment else NO_AUGMENT
    kw["augment"] = aug
    return TrainConfig(**kw)
