"""Regression losses on the network output ``(N, 2)`` = (mu, log-variance s), and the target
standardisation that maps ages (years) to network units and back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bodyage_core.errors import ConfigError

LOSSES = ("l1", "mse", "meanvar")
#: log-variance (standardised units) is clamped to this range in the mean-variance loss and when
#: converting outputs to variances: sigma between 0.03 and 33 target standard deviations.
LOGVAR_RANGE = (-7.0, 7.0)


def l1_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of ``mu`` (the log-variance column is ignored)."""
    return (out[:, 0] - y).abs().mean()


def mse_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``mu``."""
    return ((out[:, 0] - y) ** 2).mean()


def meanvar_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood (Langner): ``exp(-s) (y - mu)^2 + s``, averaged."""
    mu = out[:, 0]
    s = out[:, 1].clamp(*LOGVAR_RANGE)
    return (torch.exp(-s) * (y - mu) ** 2 + s).mean()


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return {"l1": l1_loss, "mse": mse_loss, "meanvar": meanvar_loss}[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}", hint=f"use one of {', '.join(LOSSES)}") \
            from None


@dataclass
class TargetScaler:
    """Standardise ages: ``z = (age - mean) / std``; reverse on output."""

    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, ages: Sequence[float] | np.ndarray) -> TargetScaler:
        a = np.asarray(ages, dtype=np.float64)
        std = float(a.std())
        return cls(float(a.mean()), std if std > 1e-8 else 1.0)

    def transform(self, ages):
        return (np.asarray(ages, dtype=np.float64) - self.mean) / self.std

    def inverse(self, z):
        return np.asarray(z, dtype=np.float64) * self.std + self.mean

    def inverse_var(self, var_z):
        """Variance in years^2 from a variance in standardised units."""
        return np.asarray(var_z, dtype=np.float64) * self.std ** 2

    def to_dict(self) -> dict[str, float]:
        return {"target_mean": self.mean, "target_std": self.std}
