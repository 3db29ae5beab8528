"""A small synthetic neck-to-knee subject (water/fat Dixon, organ labels, an importance blob)
for screenshots, benchmarks and tests when no synthetic cohort is at hand. Qt-free numpy."""

from __future__ import annotations

import numpy as np

from bodyage_core.volume import Volume

DEMO_LABELS = {1: "subcutaneous fat", 2: "lung", 3: "liver", 4: "spine", 5: "thigh muscle",
               6: "heart"}


def demo_subject(shape_xyz: tuple[int, int, int] = (96, 64, 160),
                 spacing_xyz: tuple[float, float, float] = (4.0, 4.0, 6.0),
                 seed: int = 0) -> tuple[Volume, Volume, Volume]:
    """``(dixon, labels, blob)``: a two-channel (water, fat) body, its label map and a smooth
    importance map peaking in the liver, all on one RAS grid (numpy order z, y, x)."""
    nx, ny, nz = shape_xyz
    sx, sy, sz = spacing_xyz
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.linspace(0, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx),
                          indexing="ij", sparse=True)
    # torso (z > 0.45) an ellipse, legs (z < 0.45) two circles; a little asymmetric (liver right)
    torso_rx = 0.78 - 0.1 * np.clip(z - 0.85, 0, 1) * 6
    torso = ((x / torso_rx) ** 2 + (y / 0.72) ** 2 <= 1) & (z >= 0.42) & (z <= 0.97)
    legs = (((x - 0.38) / 0.3) ** 2 + (y / 0.45) ** 2 <= 1) | (((x + 0.38) / 0.3) ** 2 +
                                                              (y / 0.45) ** 2 <= 1)
    legs = legs & (z < 0.44)
    body = torso | legs
    inner_t = ((x / (torso_rx - 0.1)) ** 2 + (y / 0.6) ** 2 <= 1) & (z >= 0.43) & (z <= 0.95)
    inner_l = ((((x - 0.38) / 0.22) ** 2 + (y / 0.36) ** 2 <= 1) |
               (((x + 0.38) / 0.22) ** 2 + (y / 0.36) ** 2 <= 1)) & (z < 0.44)
    inner = inner_t | inner_l
    lungs = (((np.abs(x) - 0.33) / 0.25) ** 2 + ((y + 0.05) / 0.45) ** 2 +
             ((z - 0.8) / 0.12) ** 2 <= 1)
    heart = ((x + 0.1) / 0.2) ** 2 + ((y - 0.25) / 0.25) ** 2 + ((z - 0.75) / 0.07) ** 2 <= 1
    # liver on the subject's right: RAS x < 0 is left... +x is Right, so liver at x > 0
    liver = ((x - 0.3) / 0.35) ** 2 + ((y - 0.05) / 0.4) ** 2 + ((z - 0.64) / 0.08) ** 2 <= 1
    spine = ((x / 0.09) ** 2 + ((y + 0.45) / 0.09) ** 2 <= 1) & (z > 0.44) & (z < 0.96)
    labels = np.zeros((nz, ny, nx), np.uint8)
    labels[body & ~inner] = 1
    labels[inner_l] = 5
    labels[lungs & inner] = 2
    labels[liver & inner & ~lungs] = 3
    labels[heart & inner] = 6
    labels[spine & body] = 4
    water = np.where(body, 0.55, 0.0) + np.where(labels == 5, 0.3, 0) + np.where(
        labels == 3, 0.15, 0) + np.where(labels == 6, 0.25, 0) - np.where(labels == 2, 0.5, 0)
    water += np.where(labels == 4, -0.2, 0)
    fat = np.where(labels == 1, 0.9, 0.0) + np.where(inner & (labels == 0), 0.35, 0.0)
    bias = 1 + 0.15 * np.sin(3 * z + x)
    noise = rng.normal(0, 0.03, (2, nz, ny, nx))
    data = np.stack([np.clip(water * bias, 0, None), np.clip(fat * bias, 0, None)]) + noise
    data = (np.clip(data, 0, None) * 1000).astype(np.float32)
    aff = np.diag([sx, sy, sz, 1.0])
    aff[:3, 3] = [-(nx - 1) * sx / 2, -(ny - 1) * sy / 2, -(nz - 1) * sz * 0.6]
    dixon = Volume(data, aff, ("water", "fat"), {"path": "demo"})
    blob = np.exp(-(((x - 0.3) / 0.2) ** 2 + ((y - 0.05) / 0.25) ** 2 + ((z - 0.64) / 0.06) ** 2))
    blob = blob + 0.6 * np.exp(-((x / 0.15) ** 2 + ((y + 0.4) / 0.15) ** 2 +
                                 ((z - 0.6) / 0.15) ** 2))
    blob_vol = Volume(blob.astype(np.float32) * np.asarray(body, np.float32), aff,
                      ("gradcam",), {"path": "demo"})
    return dixon, Volume(labels, aff, ("labels",)), blob_vol
