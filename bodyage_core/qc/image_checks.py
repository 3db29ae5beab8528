"""Checks of an image on load and before a model sees it.

Quality flags are plain dicts ``{"flag": "<short_name>", "message": "<one line>"}``, kept as a
list in ``volume.provenance["qc"]`` (every module reads them in this one form). Flags set here:

=============  ===================================================================  ==========
flag           meaning                                                              at
=============  ===================================================================  ==========
``nonfinite``  NaN / inf voxels were counted and set to 0 (count in the message     load
               and in ``provenance["nonfinite_voxels"]``)
``constant``   every voxel of a channel has one value (an empty / blank image)     load
``thin``       fewer than :data:`MIN_AXIS_VOXELS` voxels along an axis             load
``dicom_gaps`` DICOM slice positions not evenly spaced (a missing slice?), the     load
               series was resampled to a uniform step (set by the DICOM reader)
``small_body`` under 1 % of the voxels are foreground                               model
=============  ===================================================================  ==========

Loading refuses (a one-line :class:`~bodyage_core.errors.LoadError`, before any large
allocation) a header that claims an absurd size (:func:`check_allocation`: more than
:data:`MAX_VOXELS` voxels, or more memory than is available) and an affine that is not finite
or is singular (:func:`check_affine`). :func:`check_model_input` refuses what no model can give
an age for: a constant or empty channel, fewer than 4 voxels along an axis, no body found,
non-finite values left in the data. Training records such a subject as failed and goes on;
prediction fails that subject with the message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.errors import BodyageError, LoadError

#: Largest image bodyage loads (voxels of all channels): 2^31.
MAX_VOXELS = 2 ** 31
#: Fewest voxels along any axis of a model input.
MIN_AXIS_VOXELS = 4


def qc_flag(flag: str, message: str) -> dict[str, str]:
    return {"flag": str(flag), "message": str(message)}


def add_flag(provenance: dict[str, Any], flag: str, message: str) -> None:
    """Append a QC flag to ``provenance["qc"]`` (replacing an earlier one of the same name)."""
    flags = [f for f in provenance.get("qc") or [] if f.get("flag") != flag]
    flags.append(qc_flag(flag, message))
    provenance["qc"] = flags


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _fmt_bytes(n: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{int(n)} B"


def check_allocation(shape: Sequence[int], bytes_per_voxel: float, path: str | Path | None,
                     what: str = "the header") -> None:
    """Refuse, before allocating, an image whose header claims an absurd size.

    ``shape``: every dimension (channels included) as the header gives it;
    ``bytes_per_voxel``: what loading costs per voxel (the float32 result plus the raw copy).
    """
    dims = [int(s) for s in shape]
    if any(d <= 0 for d in dims):
        raise LoadError(f"{what} gives an empty image shape {tuple(dims)}", path,
                        "the file is damaged or not an image; re-export it")
    n = math.prod(dims)
    if n > MAX_VOXELS:
        raise LoadError(f"{what} claims {' x '.join(map(str, dims))} = {n:,} voxels (more "
                        f"than 2^31): not a plausible image", path,
                        "the header is probably damaged; re-export or re-download the image")
    need = n * float(bytes_per_voxel)
    avail = available_memory()
    if avail is not None and need > avail:
        raise LoadError(f"{what} claims {' x '.join(map(str, dims))} voxels, which needs "
                        f"{_fmt_bytes(need)} of memory to load; {_fmt_bytes(avail)} is "
                        "available", path,
                        "check the file (a damaged header?) or load it on a larger machine")


def check_affine(affine: np.ndarray, path: str | Path | None) -> None:
    """Refuse a voxel-to-world matrix that is not finite or is singular (zero voxel size,
    parallel axes): one LoadError instead of a LinAlgError later."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise LoadError("the image's voxel-to-world matrix (affine) holds NaN or inf", path,
                        "the header's geometry (pixdim / sform / qform, or DICOM position "
                        "tags) is damaged; fix or re-export the image")
    m = a[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms < 1e-6) or abs(np.linalg.det(m)) < 1e-9 * max(float(np.prod(norms)), 1e-30):
        raise LoadError("the image's voxel-to-world matrix (affine) is singular (a voxel size "
                        f"of zero or parallel axes; voxel sizes {np.round(norms, 6).tolist()})",
                        path, "the header's geometry is damaged; fix or re-export the image")


def scan_loaded(volume):
    """Flag what a loaded intensity image holds (in place; returns the volume).

    Non-finite voxels are counted (``provenance["nonfinite_voxels"]``), set to 0 and flagged
    ``nonfinite``; a constant channel is flagged ``constant``; fewer than
    :data:`MIN_AXIS_VOXELS` voxels along an axis ``thin``.
    """
    data = volume.data
    prov = volume.provenance
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        n_bad = int(np.count_nonzero(bad))
        prov["nonfinite_voxels"] = n_bad
        if n_bad:
            n_nan = int(np.count_nonzero(np.isnan(data)))
            if not data.flags.writeable:
                data = volume.data = np.array(data)
            data[bad] = 0
            add_flag(prov, "nonfinite",
                     f"{n_bad:,} of {data.size:,} voxels were not finite (NaN {n_nan:,}, inf "
                     f"{n_bad - n_nan:,}) and were set to 0")
    shape = tuple(int(s) for s in data.shape[1:])
    if min(shape) < MIN_AXIS_VOXELS:
        add_flag(prov, "thin", f"only {' x '.join(map(str, shape))} voxels (z, y, x): fewer "
                               f"than {MIN_AXIS_VOXELS} along an axis, no model can use it")
    const = [c for c, ch in zip(volume.channels, data)
             if ch.size and float(ch.min()) == float(ch.max())]
    if const:
        v = float(data[volume.channels.index(const[0])].flat[0])
        add_flag(prov, "constant", f"every voxel of channel {', '.join(const)} is {v:g}: an "
                                   "empty or blank image")
    return volume


def check_model_input(volume, what: str) -> list[dict[str, str]]:
    """Check that a (loaded) Volume can be given to an age model; call before predicting.

    Returns the non-fatal QC flags (those recorded at load plus ``small_body``) to keep with the
    prediction. Raises :class:`BodyageError` naming ``what`` (e.g. ``"subject S12"`` or a file
    path) for an input that must be refused: non-finite values, a constant or empty channel,
    fewer than :data:`MIN_AXIS_VOXELS` voxels along an axis, or no body found (fewer than 8
    voxels, or 0.05 % of the image, above 10 % of the 99th percentile of the summed channels).
    """
    data = np.asarray(volume.data)
    shape = tuple(int(s) for s in data.shape[1:])
    if data.size == 0:
        raise BodyageError(f"{what}: the image is empty (shape {shape})",
                           hint="check the file; it holds no voxels")
    if min(shape) < MIN_AXIS_VOXELS:
        raise BodyageError(f"{what}: the image has only {' x '.join(map(str, shape))} voxels "
                           f"(z, y, x), fewer than {MIN_AXIS_VOXELS} along an axis: not a "
                           "volume an age model can read",
                           hint="give the whole 3D volume (a single slice or a projection "
                                "cannot be used)")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        n = int(np.count_nonzero(~np.isfinite(data)))
        raise BodyageError(f"{what}: {n:,} voxels are NaN or inf",
                           hint="load it with bodyage_core.io.load_volume (which sets them to 0 "
                                "and records it) or fix the image")
    for name, ch in zip(volume.channels, data):
        lo, hi = float(ch.min()), float(ch.max())
        if lo == hi:
            raise BodyageError(f"{what}: channel {name!r} holds one value everywhere ({lo:g}): "
                               "an empty or blank image, no body to give an age for",
                               hint="check the file (a failed export or conversion?) or "
                                    "exclude the subject (`bodyage exclude`)")
    total = np.abs(data.astype(np.float32, copy=False)).sum(axis=0)
    p99 = float(np.percentile(total, 99))
    fg = int(np.count_nonzero(total > 0.1 * p99)) if p99 > 0 else 0
    if fg < max(8, int(0.0005 * total.size)):
        raise BodyageError(f"{what}: no body found (only {fg} of {total.size:,} voxels stand "
                           "out from the background)",
                           hint="check the file: it looks empty or holds a few bright voxels "
                                "only")
    flags = [dict(f) for f in volume.provenance.get("qc") or []
             if isinstance(f, dict) and f.get("flag") not in ("constant", "thin")]
    if fg < 0.01 * total.size:
        flags.append(qc_flag("small_body", f"only {100 * fg / total.size:.2f} % of the voxels "
                                           "are foreground: check the body is in the image"))
    return flags


__all__ = ["MAX_VOXELS", "MIN_AXIS_VOXELS", "qc_flag", "add_flag", "available_memory",
           "check_allocation", "check_affine", "scan_loaded", "check_model_input"]
