"""A small two-channel (water, fat) body phantom with organ labels, for registration tests and
benchmarks when the synthetic cohort generator is not at hand.

Not anatomy: an ellipsoidal trunk with a subcutaneous fat layer, two lungs, a heart, a liver, a
spine and two thighs, enough structure for a registration to have something to align.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from bodyage_core.registration.convert import array_to_sitk, sitk_affine
from bodyage_core.volume import Volume

LABELS = {1: "subcutaneous_fat", 2: "lungs", 3: "heart", 4: "liver", 5: "spine", 6: "muscle",
          7: "thighs"}
# (water, fat) intensity per label; 0 background.
_INTENSITY = {0: (0.0, 0.0), 1: (0.08, 0.9), 2: (0.05, 0.02), 3: (0.85, 0.05), 4: (0.95, 0.15),
              5: (0.45, 0.35), 6: (0.7, 0.08), 7: (0.72, 0.12)}


def make_phantom(shape_zyx=(48, 40, 40), spacing_xyz=(4.5, 4.5, 6.0), size: float = 1.0,
                 fat: float = 1.0, shift_mm=(0.0, 0.0, 0.0), noise: float = 0.02,
                 seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A phantom ``Volume`` (channels ``water``, ``fat``; RAS, origin at the grid centre) and its
    ``(Z, Y, X)`` int16 label map (ids in :data:`LABELS`).

    ``size`` scales the body, ``fat`` the subcutaneous fat thickness, ``shift_mm`` moves it
    (RAS mm).
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    sx, sy, sz = spacing_xyz
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = -0.5 * np.array([(nx - 1) * sx, (ny - 1) * sy, (nz - 1) * sz])
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    pts = np.stack([xx, yy, zz], -1) @ affine[:3, :3].T + affine[:3, 3] - np.asarray(shift_mm)
    ex, ey, ez = 0.5 * nx * sx, 0.5 * ny * sy, 0.5 * nz * sz  # half extents (mm)
    x, y, z = pts[..., 0] / ex, pts[..., 1] / ey, pts[..., 2] / ez  # about -1..1

    def ell(cx, cy, cz, rx, ry, rz):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0

    s = size
    labels = np.zeros(shape_zyx, np.int16)
    trunk = ell(0, 0, 0.2, 0.78 * s, 0.62 * s, 0.75 * s)
    thighs = (ell(-0.35 * s, 0, -0.7, 0.3 * s, 0.38 * s, 0.45) |
              ell(0.35 * s, 0, -0.7, 0.3 * s, 0.38 * s, 0.45))
    body = trunk | thighs
    labels[body] = 1
    inner_trunk = ell(0, 0, 0.2, 0.78 * s - 0.12 * fat, 0.62 * s - 0.12 * fat, 0.75 * s - 0.05)
    inner_thighs = (ell(-0.35 * s, 0, -0.7, 0.3 * s - 0.1 * fat, 0.38 * s - 0.1 * fat, 0.43) |
                    ell(0.35 * s, 0, -0.7, 0.3 * s - 0.1 * fat, 0.38 * s - 0.1 * fat, 0.43))
    labels[inner_trunk] = 6
    labels[inner_thighs & ~inner_trunk] = 7
    labels[ell(0, 0, -0.15, 0.45 * s, 0.3 * s, 0.18)] = 1  # visceral fat
    labels[ell(-0.3 * s, 0.05, 0.5, 0.22 * s, 0.3 * s, 0.3)] = 2
    labels[ell(0.3 * s, 0.05, 0.5, 0.22 * s, 0.3 * s, 0.3)] = 2
    labels[ell(0.05, 0.15 * s, 0.35, 0.16 * s, 0.16 * s, 0.14)] = 3
    labels[ell(-0.25 * s, 0.05, 0.1, 0.3 * s, 0.25 * s, 0.15)] = 4
    spine = ((x / (0.09 * s)) ** 2 + ((y + 0.38 * s) / (0.09 * s)) ** 2 <= 1) & trunk \
        & (z > -0.4)
    labels[spine] = 5
    water = np.zeros(shape_zyx, np.float32)
    fat_img = np.zeros(shape_zyx, np.float32)
    for lab, (w, f) in _INTENSITY.items():
        m = labels == lab
        water[m] = w
        fat_img[m] = f
    # smooth intensity bias and noise
    bias = 1.0 + 0.05 * np.sin(1.3 * x + 0.7 * z)
    water = water * bias + noise * rng.standard_normal(shape_zyx).astype(np.float32)
    fat_img = fat_img * bias + noise * rng.standard_normal(shape_zyx).astype(np.float32)
    data = np.stack([np.clip(water, 0, None), np.clip(fat_img, 0, None)]).astype(np.float32)
    return Volume(data, affine, channels=("water", "fat")), labels


def smooth_deformation(volume: Volume, amplitude_mm: float = 6.0, seed: int = 1,
                       control: int = 4) -> sitk.Transform:
    """A known smooth B-spline deformation on the grid of ``volume`` (maps output points to
    input points, ITK convention), with random control-point displacements of about
    ``amplitude_mm``."""
    rng = np.random.default_rng(seed)
    ref = array_to_sitk(np.zeros(volume.shape, np.float32), volume.affine)
    tx = sitk.BSplineTransformInitializer(ref, [control] * 3, 3)
    params = rng.normal(0.0, amplitude_mm, len(tx.GetParameters()))
    tx.SetParameters(tuple(float(p) for p in params))
    return tx


def apply_transform(volume: Volume, labels: np.ndarray | None, tx: sitk.Transform
                    ) -> tuple[Volume, np.ndarray | None]:
    """Resample ``volume`` (linear) and ``labels`` (nearest) through ``tx`` on their own grid."""
    out = []
    ref = array_to_sitk(np.zeros(volume.shape, np.float32), volume.affine)
    for c in range(volume.n_channels):
        img = array_to_sitk(volume.data[c].astype(np.float32), volume.affine)
        out.append(sitk.GetArrayFromImage(sitk.Resample(img, ref, tx, sitk.sitkLinear, 0.0)))
    vol = Volume(np.stack(out), sitk_affine(ref), channels=volume.channels)
    lab = None
    if labels is not None:
        img = array_to_sitk(labels.astype(np.int16), volume.affine)
        lab = sitk.GetArrayFromImage(sitk.Resample(img, ref, tx, sitk.sitkNearestNeighbor, 0))
    return vol, lab
