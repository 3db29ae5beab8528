"""Image loading and saving: every reader returns one :class:`~bodyage_core.volume.Volume`.

``load_volume(path)`` dispatches on what ``path`` is:

==========================  ===============================================================
``*.nii``, ``*.nii.gz``     NIfTI (nibabel): scl_slope/scl_inter applied, sform before qform
folder / DICOM slice file   DICOM series (pydicom): step from ImagePositionPatient, age/sex
``*.nrrd``, ``*.nhdr``      NRRD (SimpleITK)
``*.mha``, ``*.mhd``        MetaImage (SimpleITK)
``*.zip``                   UK Biobank neck-to-knee Dixon stations (field 20201), stitched
==========================  ===============================================================

The result is always canonical **RAS** (index axes permuted and flipped, never resampled, so an
oblique acquisition keeps its rotation), data ``(C, Z, Y, X)`` float32 (integers for
``load_labels``), affine voxel ``(x, y, z)`` -> RAS mm, and ``provenance['orientation']`` holds the
file's own axis letters (e.g. ``'PSR'``). Every failure a user can cause is a
:class:`~bodyage_core.errors.LoadError` naming the path and the fix.

Garbage images (:mod:`bodyage_core.qc.image_checks`): an intensity image's NaN / inf voxels are
counted (``provenance["nonfinite_voxels"]``), set to 0 and flagged in ``provenance["qc"]``
(``{"flag", "message"}`` dicts), as are a constant image and fewer than 4 voxels along an axis;
a header claiming an absurd size is refused before anything is allocated, a NaN or singular
affine is refused at load, a corrupt UK Biobank zip member is a LoadError naming the zip.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.errors import LoadError
from bodyage_core.io.dicom import load_dicom_series, parse_age, parse_sex
from bodyage_core.io.itk import ITK_SUFFIXES, load_itk
from bodyage_core.io.nifti import is_nifti, load_nifti, write_nifti
from bodyage_core.io.ukbb import load_ukbb_zip as _load_ukbb_zip
from bodyage_core.qc.image_checks import scan_loaded
from bodyage_core.volume import Volume

__all__ = [
    "load_volume", "load_labels", "load_channels", "save_volume", "save_array",
    "load_dicom_series",
    "load_ukbb_zip", "detect_format", "parse_age", "parse_sex", "LoadError",
]

SUPPORTED = ".nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, .zip (UK Biobank Dixon), a DICOM folder"


def detect_format(path: str | Path) -> str:
    """``'nifti'``, ``'itk'``, ``'ukbb_zip'`` or ``'dicom'`` for ``path``; LoadError otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LoadError("file or folder not found", path, "check the path")
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    if is_nifti(path):
        return "nifti"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith(".zip"):
        return "ukbb_zip"
    if name.endswith(".dcm") or _has_dicm_magic(path):
        return "dicom"
    raise LoadError(f"unknown image format {path.suffix or '(no extension)'!r}", path,
                    f"bodyage reads {SUPPORTED}")


def load_ukbb_zip(path: str | Path, *args: Any, **kwargs: Any) -> Volume:
    """:func:`bodyage_core.io.ukbb.load_ukbb_zip`, with a corrupt member (a ``zlib.error``
    while inflating it) reported as a LoadError naming the zip, and the QC scan of
    :func:`load_volume`."""
    try:
        vol = _load_ukbb_zip(path, *args, **kwargs)
    except (zlib.error, zipfile.BadZipFile, EOFError) as err:
        raise LoadError(f"a member of the zip cannot be decompressed ({type(err).__name__}: "
                        f"{err})", path, "the zip is corrupt; fetch it again") from None
    return scan_loaded(vol)


def _has_dicm_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _apply_channels(vol: Volume, channels: tuple[str, ...] | list[str] | str | None,
                    path: Path) -> Volume:
    if channels is None:
        return vol
    if isinstance(channels, str):
        channels = (channels,)
    channels = tuple(channels)
    if all(c in vol.channels for c in channels):
        idx = [vol.channels.index(c) for c in channels]
        if idx == list(range(vol.n_channels)):
            return vol
        return vol.with_data(vol.data[idx], channels)
    if len(channels) == vol.n_channels:  # naming the channels of a file without names
        vol.channels = channels
        return vol
    raise LoadError(f"asked for channels {list(channels)} but the image has "
                    f"{list(vol.channels)}", path,
                    "ask for channels the file has, or one name per channel to name them")


def load_volume(path: str | Path, channels: tuple[str, ...] | list[str] | str | None = None,
                **options: Any) -> Volume:
    """Load an image file/folder as a canonical-RAS float32 :class:`Volume`.

    Parameters
    ----------
    path
        NIfTI, NRRD, MetaImage file, DICOM folder (or one of its slices), or UK Biobank zip.
    channels
        For a UK Biobank zip, which Dixon channels to stitch (default ``('water', 'fat')``;
        any of ``water, fat, in, opp``). For other files: channel names to select (files
        bodyage wrote keep their names) or, with one name per channel, names to give them.
    options
        Passed to the format reader (``series_uid`` for DICOM; ``expected_stations``,
        ``spacing_xyz`` for UK Biobank zips).

    Returns
    -------
    Volume
        ``data`` ``(C, Z, Y, X)`` float32, affine voxel ``(x, y, z)`` -> RAS mm.
    """
    path = Path(path).expanduser()
    fmt = detect_format(path)
    if fmt == "ukbb_zip":
        return load_ukbb_zip(path, channels=channels or ("water", "fat"), **options)
    if fmt == "nifti":
        vol = load_nifti(path)
    elif fmt == "itk":
        vol = load_itk(path)
    else:
        vol = load_dicom_series(path, **options)
    return scan_loaded(_apply_channels(vol, channels, path))


def load_channels(paths: Mapping[str, str | Path]) -> Volume:
    """Load the images named in ``paths`` (e.g. ``{'water': ..., 'fat': ...}``) as one Volume.

    Each file gives one channel, except a file named for several channels (the water and fat
    of one UK Biobank zip, as a streamed import records them), which is read once with those
    channels. All images must be on the same grid (shape and affine within 1e-3 mm); otherwise a
    LoadError names the file that differs. Channel order follows ``paths``.
    """
    if not paths:
        raise ValueError("load_channels needs at least one path")
    by_file: dict[str, list[str]] = {}
    for name, p in paths.items():
        by_file.setdefault(str(p), []).append(name)
    parts: dict[str, np.ndarray] = {}
    vols: list[Volume] = []
    first_path = None
    for p, names in by_file.items():
        if len(names) == 1:
            v = load_volume(p)
            if v.n_channels != 1:
                raise LoadError(f"expected a single-channel image for {names[0]!r}, it has "
                                f"{v.n_channels} channels", p, "pass one image per channel")
        else:
            v = load_volume(p, channels=tuple(names))
        if vols and not v.same_grid(vols[0]):
            raise LoadError(f"{names[0]!r} is not on the grid of {first_path} (shape {v.shape} "
                            f"vs {vols[0].shape})", p,
                            "resample the images onto one grid first")
        first_path = first_path or p
        vols.append(v)
        parts.update(zip(names, v.data))
    prov = dict(vols[0].provenance)
    prov["paths"] = {name: str(p) for name, p in paths.items()}
    if len(vols) > 1:   # every file's QC flags, named by its channel(s)
        flags = []
        for names, v in zip(by_file.values(), vols):
            for f in v.provenance.get("qc") or []:
                flags.append({"flag": f["flag"],
                              "message": f"{'/'.join(names)}: {f['message']}"})
        prov["qc"] = flags
        prov["nonfinite_voxels"] = sum(int(v.provenance.get("nonfinite_voxels") or 0)
                                       for v in vols)
    meta: dict[str, Any] = {}
    for v in vols:
        meta.update(v.metadata)
    return Volume(np.stack([parts[name] for name in paths]), vols[0].affine, tuple(paths), prov,
                  meta)


def load_labels(path: str | Path, **options: Any) -> Volume:
    """Load a label map keeping its integer values (no float scaling, no interpolation).

    Reorientation to RAS only permutes/flips axes, so labels stay exact. Returns a one-channel
    Volume (``channels=('labels',)``) with an integer dtype.
    """
    path = Path(path).expanduser()
    fmt = detect_format(path)
    if fmt == "nifti":
        vol = load_nifti(path, labels=True)
    elif fmt == "itk":
        vol = load_itk(path, labels=True)
    elif fmt == "dicom":
        vol = load_dicom_series(path, labels=True, **options)
    else:
        raise LoadError("a UK Biobank zip holds images, not label maps", path,
                        "pass a NIfTI/NRRD/MHA label map")
    if vol.n_channels == 1:
        vol.channels = ("labels",)
    return vol


def save_array(array_zyx: np.ndarray, affine: np.ndarray, path: str | Path,
               dtype: Any = None, channels: tuple[str, ...] | None = None) -> Path:
    """Write a ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array as NIfTI atomically.

    ``affine`` maps voxel ``(x, y, z)`` to RAS mm (the Volume convention). ``dtype`` defaults to
    the array's (float64 is stored as float32). Returns the path.
    """
    return write_nifti(array_zyx, affine, path, dtype=dtype, channels=channels)


def save_volume(volume: Volume | np.ndarray, path_or_affine: Any, path: str | Path | None = None,
                dtype: Any = None) -> Path:
    """Write a Volume as NIfTI atomically: ``save_volume(volume, path)``.

    Also accepts ``save_volume(array_zyx, affine, path)``. Channel names, metadata and the exact
    affine are kept in a header extension, so ``load_volume`` returns the same Volume.
    """
    if isinstance(volume, Volume):
        target = path_or_affine if path is None else path
        prov = {k: v for k, v in volume.provenance.items() if k not in ("path", "format")}
        return write_nifti(volume.data, volume.affine, target, dtype=dtype,
                           channels=volume.channels, metadata=volume.metadata, provenance=prov)
    if path is None:
        raise TypeError("save_volume(array, affine, path) needs a path")
    return write_nifti(np.asarray(volume), path_or_affine, path, dtype=dtype)
