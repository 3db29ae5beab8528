"""Tiny synthetic volumes where age drives a visible feature (a cube growing with age)."""

from __future__ import annotations

import numpy as np


def age_volumes(n: int, size: int = 12, seed: int = 0, noise: float = 0.15,
                channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 80, n)
    x = np.zeros((n, channels, size, size, size), np.float32)
    c = size // 2
    for i, a in enumerate(ages):
        r = 1 + int(round((a - 20) / 60 * (c - 2)))
        x[i, :, c - r:c + r, c - r:c + r, c - r:c + r] = 1.0
    x += rng.normal(0, noise, x.shape).astype(np.float32)
    return x, ages
