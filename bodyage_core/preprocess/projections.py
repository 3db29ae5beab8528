"""Langner's 2.5D input format: coronal + sagittal mean-intensity projections, 8-bit.

For each channel (water, fat) the volume is averaged over **all coronal slices** (along y,
anterior-posterior) and over **all sagittal slices** (along x, left-right). The two projections
are placed **side by side** in one 2D image — coronal left, sagittal right, rows running from
superior (top) to inferior — each min-max scaled to [0, 1] separately, the combined image resized
to ``out_size`` (bilinear) and stored as 8 bit. Langner et al. fuse UK Biobank stations into a
370 x 224 x 174 volume at 2.232 x 2.232 x 3.0 mm and resize the 370 x (224 + 174) image to
256 x 256; projections of a volume on another grid are first brought to that reference pixel
size (rows 3.0 mm, columns 2.232 mm) so the layout's proportions do not depend on the input
grid.

Display orientation (documented here because the model sees it):

* rows: superior (row 0) to inferior;
* coronal columns: patient right to patient left (radiological convention, as if facing the
  patient);
* sagittal columns: anterior to posterior (the subject faces left).

The optional third channel (Langner's Fig. 1, blue) is voxel-wise **fat fraction**
``fat / (water + fat)`` inside the body (0 outside): the coronal slice through the body's
centre of mass and the sagittal slice through the centre of mass of the body's right half,
in the same side-by-side layout, scaled 0..1 -> 0..255 (no min-max).

:func:`projection_images` is the same layout in floating point (no 8-bit quantisation) for any
number of channels: the 2.5D models are trained and predicted on it, computed from the
channels on the model grid (``bodyage_core.training.data``, ``InputSpec.projection ==
"langner"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from bodyage_core.preprocess.grid import body_mask, otsu_threshold
from bodyage_core.volume import Volume

#: Langner's fused grid (x, y, z) mm.
REFERENCE_SPACING = (2.232, 2.232, 3.0)


def _resize2d(img: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Bilinear resize with pixel-centre alignment (like OpenCV's INTER_LINEAR)."""
    h, w = img.shape
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if (h, w) == (oh, ow):
        return img.astype(np.float64)
    rows = (np.arange(oh) + 0.5) * (h / oh) - 0.5
    cols = (np.arange(ow) + 0.5) * (w / ow) - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(img.astype(np.float64), [rr, cc], order=1, mode="nearest")


def _to_reference(img: np.ndarray, row_mm: float, col_mm: float,
                  ref_row_mm: float, ref_col_mm: float) -> np.ndarray:
    """Resample a projection to the reference pixel size (rows x cols mm)."""
    h = max(1, int(round(img.shape[0] * row_mm / ref_row_mm)))
    w = max(1, int(round(img.shape[1] * col_mm / ref_col_mm)))
    return _resize2d(img, (h, w))


def _minmax(img: np.ndarray) -> np.ndarray:
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros_like(img, dtype=np.float64)
    return (img - lo) / (hi - lo)


def _layout(cor_zx: np.ndarray, sag_zy: np.ndarray, spacing: np.ndarray,
            ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orient coronal (Z, X) and sagittal (Z, Y) images for display and bring to ref pixels."""
    cor = cor_zx[::-1, ::-1]  # superior at top; patient right (high x) on the left
    sag = sag_zy[::-1, ::-1]  # superior at top; anterior (high y) on the left
    cor = _to_reference(cor, spacing[2], spacing[0], ref[2], ref[0])
    sag = _to_reference(sag, spacing[2], spacing[1], ref[2], ref[1])
    return cor, sag


def _to_uint8(img01: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img01 * 255.0), 0, 255).astype(np.uint8)


def _side_by_side(vol: np.ndarray, spacing: np.ndarray, ref: np.ndarray,
                  out_size: Sequence[int], minmax: bool = True) -> np.ndarray:
    """One channel ``(Z, Y, X)`` -> its coronal | sagittal mean projections, float64 ``out_size``."""
    cor, sag = _layout(vol.mean(axis=1, dtype=np.float64), vol.mean(axis=2, dtype=np.float64),
                       spacing, ref)
    if minmax:
        cor, sag = _minmax(cor), _minmax(sag)
    return _resize2d(np.concatenate([cor, sag], axis=1), out_size)


def projection_images(channels: np.ndarray, spacing: Sequence[float],
                      out_size: Sequence[int] = (256, 256), minmax: bool = True,
                      reference_spacing: Sequence[float] = REFERENCE_SPACING) -> np.ndarray:
    """Langner's layout in floating point: ``(C, Z, Y, X)`` -> float32 ``(C, H, W)``.

    The same images as :func:`projections_25d` (per channel: coronal | sagittal mean-intensity
    projections, superior at the top, patient right and anterior on the left, brought to the
    reference pixel size, each projection min-max scaled to [0, 1], resized bilinearly) before
    their 8-bit quantisation (``projections_25d`` is this image x 255, rounded).

    Parameters
    ----------
    channels
        ``(C, Z, Y, X)`` (or one ``(Z, Y, X)``) on a canonical RAS grid (numpy order).
    spacing
        Voxel size ``(x, y, z)`` mm of that grid (NB: not numpy order).
    out_size
        ``(H, W)`` of the output.
    minmax
        Min-max scale each projection to [0, 1] (Langner's format); False keeps the mean
        intensities.
    reference_spacing
        Pixel size ``(x, y, z)`` the projections are brought to before the resize.
    """
    arr = np.asarray(channels, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"channels must be (C, Z, Y, X), got shape {arr.shape}")
    spacing = np.asarray(spacing, dtype=np.float64).reshape(3)
    ref = np.asarray(reference_spacing, dtype=np.float64).reshape(3)
    return np.stack([_side_by_side(ch, spacing, ref, out_size, minmax)
                     for ch in arr]).astype(np.float32)


def projections_25d(water: np.ndarray, fat: np.ndarray, spacing: Sequence[float],
                    out_size: Sequence[int] = (256, 256), fat_fraction: bool = False,
                    reference_spacing: Sequence[float] = REFERENCE_SPACING) -> np.ndarray:
    """Langner's 2D image of a water/fat volume: ``uint8`` array ``(C, H, W)``.

    Parameters
    ----------
    water, fat
        ``(Z, Y, X)`` arrays on the same canonical RAS grid (numpy order).
    spacing
        Voxel size ``(x, y, z)`` mm of that grid.
    out_size
        ``(H, W)`` of the output, default 256 x 256.
    fat_fraction
        Add a third channel of fat-fraction slices.
    reference_spacing
        Pixel size ``(x, y, z)`` the projections are brought to before the resize.

    Returns
    -------
    np.ndarray
        ``(2, H, W)`` (water, fat) or ``(3, H, W)`` (water, fat, fat fraction), uint8.
    """
    water = np.asarray(water, dtype=np.float32)
    fat = np.asarray(fat, dtype=np.float32)
    if water.shape != fat.shape or water.ndim != 3:
        raise ValueError(f"water and fat must be (Z, Y, X) of one shape, got {water.shape} "
                         f"and {fat.shape}")
    spacing = np.asarray(spacing, dtype=np.float64).reshape(3)
    ref = np.asarray(reference_spacing, dtype=np.float64).reshape(3)
    out = []
    for vol in (water, fat):
        out.append(_to_uint8(_side_by_side(vol, spacing, ref, out_size)))
    if fat_fraction:
        y_c, x_c, t = _fat_fraction_slices(water, fat)
        cor, sag = _layout(_fat_fraction(water[:, y_c, :], fat[:, y_c, :], t),
                           _fat_fraction(water[:, :, x_c], fat[:, :, x_c], t), spacing, ref)
        side = np.concatenate([cor, sag], axis=1)
        out.append(_to_uint8(_resize2d(side, out_size)))
    return np.stack(out)


def _fat_fraction_slices(water: np.ndarray, fat: np.ndarray,
                         max_voxels: int = 2_000_000) -> tuple[int, int, float]:
    """Coronal index through the body's centre of mass, sagittal index through the centre of
    mass of the body's right half, and the body threshold (mask on a subsampled volume)."""
    stride = max(1, int(np.ceil((water.size / max_voxels) ** (1 / 3))))
    total = water[::stride, ::stride, ::stride] + fat[::stride, ::stride, ::stride]
    t = otsu_threshold(total)
    mask = body_mask(total, t)
    if not mask.any():
        return water.shape[1] // 2, water.shape[2] // 2, t
    _, ys, xs = np.nonzero(mask)
    right = xs[xs >= xs.mean()]  # RAS: higher x = patient right
    y_c = min(int(round(ys.mean() * stride)), water.shape[1] - 1)
    x_c = min(int(round(right.mean() * stride)), water.shape[2] - 1)
    return y_c, x_c, t


def _fat_fraction(water: np.ndarray, fat: np.ndarray, threshold: float) -> np.ndarray:
    """``fat / (water + fat)`` where the signal is above the body threshold, else 0."""
    total = water.astype(np.float64) + fat
    ff = np.where(total > threshold, fat / np.where(total > 0, total, 1.0), 0.0)
    return np.clip(ff, 0.0, 1.0)


def projections_from_volume(volume: Volume, out_size: Sequence[int] = (256, 256),
                            fat_fraction: bool = False) -> np.ndarray:
    """:func:`projections_25d` of a Volume with ``water`` and ``fat`` channels."""
    return projections_25d(volume.channel("water"), volume.channel("fat"), volume.spacing,
                           out_size=out_size, fat_fraction=fat_fraction)
