"""Resampling to a model grid and cropping/padding around the body.

Arrays are numpy ``(Z, Y, X)`` (``(C, Z, Y, X)`` inside a Volume); spacings are ``(x, y, z)`` mm
as in :class:`~bodyage_core.volume.Volume`; affines map voxel ``(x, y, z)`` to RAS mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from bodyage_core.volume import Volume

_REV = np.eye(4)[[2, 1, 0, 3]]  # swaps (x, y, z) <-> (z, y, x) in a 4x4 matrix


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (histogram between the 0.5 and 99.5 percentiles)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:
        return float(lo)
    hist, edges = np.histogram(np.clip(v, lo, hi), bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def body_mask(array: np.ndarray, threshold: float | None = None,
              largest_component: bool = True) -> np.ndarray:
    """Boolean body mask of a ``(Z, Y, X)`` image.

    ``threshold`` defaults to Otsu's threshold (robust: computed between the 0.5 and 99.5
    percentiles). Only the largest connected component is kept, so noise specks and small
    artefacts outside the body do not move the bounding box.
    """
    a = np.asarray(array)
    t = otsu_threshold(a) if threshold is None else float(threshold)
    mask = a > t
    if largest_component and mask.any():
        lab, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            mask = lab == int(np.argmax(sizes))
    return mask


def body_bbox(array: np.ndarray, threshold: float | None = None,
              max_voxels: int = 2_000_000) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive ``(lo_zyx, hi_zyx)`` voxel bounding box of the body, or None if no body.

    Large images are subsampled (integer stride) for the mask; the box is scaled back.
    """
    a = np.asarray(array)
    stride = max(1, int(np.ceil((a.size / max_voxels) ** (1 / 3))))
    sub = a[::stride, ::stride, ::stride]
    mask = body_mask(sub, threshold)
    if not mask.any():
        return None
    idx = [np.flatnonzero(mask.any(axis=tuple(j for j in range(3) if j != i)))
           for i in range(3)]
    lo = np.array([i[0] for i in idx]) * stride
    hi = np.minimum(np.array([i[-1] for i in idx]) * stride + stride - 1,
                    np.array(a.shape) - 1)
    return lo, hi


def _combined(volume: Volume) -> np.ndarray:
    """One image for body detection: the sum of the channels (water + fat = whole body)."""
    if volume.n_channels == 1:
        return volume.data[0]
    return volume.data.astype(np.float32, copy=False).sum(axis=0)


def body_centre_world(volume: Volume, threshold: float | None = None) -> np.ndarray:
    """RAS mm centre of the body's bounding box (the image centre when no body is found)."""
    box = body_bbox(_combined(volume), threshold)
    if box is None:
        centre = (np.array(volume.shape) - 1) / 2.0
    else:
        centre = (box[0] + box[1]) / 2.0
    return volume.voxel_to_world(centre)


def resample_to_grid(volume: Volume, spacing_xyz: Sequence[float],
                     shape_zyx: Sequence[int] | None = None, order: int = 1,
                     centre: str | Sequence[float] = "body", cval: float = 0.0,
                     antialias: bool = True, threshold: float | None = None) -> Volume:
    """Resample a Volume onto a grid with voxel size ``spacing_xyz`` keeping world alignment.

    The output axes keep the input's directions (canonical RAS, rotation kept for an oblique
    image); only spacing, size and origin change, so world coordinates are preserved.

    Parameters
    ----------
    volume
        Input ``(C, Z, Y, X)`` Volume.
    spacing_xyz
        Output voxel size, mm, ``(x, y, z)``.
    shape_zyx
        Output size ``(Z, Y, X)``. None: cover the input's field of view (same centre).
    order
        Interpolation order (0 nearest — use for labels, keeps the dtype; 1 trilinear; 3 cubic).
    centre
        Where the output grid is centred when ``shape_zyx`` is given: ``'body'`` (centre of
        the body's bounding box, so the body sits in the middle of the field of view),
        ``'image'`` (the input's centre) or RAS mm coordinates.
    cval
        Value outside the input.
    antialias
        Gaussian pre-smoothing along axes that are downsampled (sigma = (factor - 1) / 2
        voxels), for ``order > 0``.
    threshold
        Body threshold for ``centre='body'`` (default Otsu).
    """
    spacing = np.asarray(spacing_xyz, dtype=np.float64).reshape(3)
    if np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    in_aff = volume.affine
    in_spacing = np.asarray(volume.spacing)
    rot = in_aff[:3, :3] / in_spacing[None, :]
    in_shape_xyz = np.array(volume.shape[::-1])
    if shape_zyx is None:
        out_shape_xyz = np.maximum(1, np.round(in_shape_xyz * in_spacing / spacing)).astype(int)
        centre_world = volume.voxel_to_world((np.array(volume.shape) - 1) / 2.0)
    else:
        out_shape_xyz = np.asarray(shape_zyx, dtype=int)[::-1]
        if isinstance(centre, str):
            if centre == "body":
                centre_world = body_centre_world(volume, threshold)
            elif centre == "image":
                centre_world = volume.voxel_to_world((np.array(volume.shape) - 1) / 2.0)
            else:
                raise ValueError(f"centre must be 'body', 'image' or coordinates, not {centre!r}")
        else:
            centre_world = np.asarray(centre, dtype=np.float64).reshape(3)
    out_aff = np.eye(4)
    out_aff[:3, :3] = rot * spacing[None, :]
    out_aff[:3, 3] = centre_world - out_aff[:3, :3] @ ((out_shape_xyz - 1) / 2.0)

    m = np.linalg.inv(in_aff) @ out_aff  # output (x, y, z) index -> input index
    m_zyx = _REV @ m @ _REV
    out_shape = tuple(int(s) for s in out_shape_xyz[::-1])
    matrix = m_zyx[:3, :3]
    offset = m_zyx[:3, 3]
    diag = np.allclose(matrix, np.diag(np.diag(matrix)), atol=1e-9)
    identity = (out_shape == volume.shape and np.allclose(matrix, np.eye(3), atol=1e-9)
                and np.allclose(offset, 0, atol=1e-6))
    keep_int = order == 0 and volume.data.dtype.kind in "iub"
    out_dtype = volume.data.dtype if keep_int else np.float32
    channels = []
    for c in range(volume.n_channels):
        src = volume.data[c]
        if identity:
            channels.append(np.array(src, dtype=out_dtype))
            continue
        if not keep_int:
            src = src.astype(np.float32, copy=False)
        if antialias and order > 0:
            factor = (spacing / in_spacing)[::-1]  # zyx
            sigma = np.maximum(0.0, (factor - 1.0) / 2.0)
            if np.any(sigma > 0.05):
                src = ndimage.gaussian_filter(src, sigma, mode="nearest")
        out = ndimage.affine_transform(src, np.diag(matrix) if diag else matrix, offset=offset,
                                       output_shape=out_shape, order=order, mode="constant",
                                       cval=cval, prefilter=order > 1,
                                       output=out_dtype)
        channels.append(out)
    prov: dict[str, Any] = {"resampled": {"spacing_xyz": [float(s) for s in spacing],
                                          "shape_zyx": list(out_shape), "order": order,
                                          "centre": centre if isinstance(centre, str)
                                          else [float(v) for v in centre]}}
    return Volume(np.stack(channels), out_aff, volume.channels,
                  {**volume.provenance, **prov}, dict(volume.metadata))


def crop_or_pad_to_body(volume: Volume, shape_zyx: Sequence[int],
                        threshold: float | None = None, cval: float = 0.0) -> Volume:
    """Crop and/or pad (no interpolation) to ``shape_zyx``, centred on the body's bounding box.

    The body mask is the largest connected component above ``threshold`` (default: Otsu on
    the sum of the channels). Voxels outside the input get ``cval``; the affine is shifted so
    world positions are unchanged. The integer offset of the new grid in the old one is
    recorded in ``provenance['crop_offset_zyx']``.
    """
    shape = np.asarray(shape_zyx, dtype=int).reshape(3)
    box = body_bbox(_combined(volume), threshold)
    in_shape = np.array(volume.shape)
    centre = (in_shape - 1) / 2.0 if box is None else (box[0] + box[1]) / 2.0
    start = np.floor(centre - (shape - 1) / 2.0 + 0.5).astype(int)  # new index 0 in old grid
    out = np.full((volume.n_channels, *shape), cval, dtype=volume.data.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + shape, in_shape)
    if np.all(src_hi > src_lo):
        dst_lo = src_lo - start
        dst_hi = dst_lo + (src_hi - src_lo)
        out[(slice(None), *(slice(a, b) for a, b in zip(dst_lo, dst_hi)))] = \
            volume.data[(slice(None), *(slice(a, b) for a, b in zip(src_lo, src_hi)))]
    aff = volume.affine.copy()
    aff[:3, 3] = volume.affine[:3, :3] @ start[::-1] + volume.affine[:3, 3]
    prov = {**volume.provenance, "crop_offset_zyx": [int(v) for v in start]}
    return Volume(out, aff, volume.channels, prov, dict(volume.metadata))
