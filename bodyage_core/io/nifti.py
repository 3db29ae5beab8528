"""NIfTI (.nii, .nii.gz) reading and atomic writing.

* ``scl_slope`` / ``scl_inter`` are applied (``get_fdata``); label maps keep integers.
* The affine is nibabel's best affine: the **sform** when ``sform_code > 0``, else the qform
  when ``qform_code > 0``, else the pixdim fall-back — the precedence the NIfTI standard sets.
* The array is reoriented to canonical RAS (axes permuted/flipped only, never resampled) and
  transposed to the Volume order ``(C, Z, Y, X)``; a 4th NIfTI axis becomes channels.
* Files bodyage writes carry a small JSON header extension (code 6, ``bodyage:`` prefix) with
  the channel names, metadata and the float64 affine, so save -> load round-trips exactly.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bodyage_core.atomic import atomic_path
from bodyage_core.errors import LoadError
from bodyage_core.io._geometry import make_volume
from bodyage_core.qc.image_checks import check_affine, check_allocation
from bodyage_core.volume import Volume

_EXT_CODE = 6  # NIfTI "comment" extension
_EXT_PREFIX = b"bodyage:"
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, struct.error,
                nib.filebasedimages.ImageFileError)


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _open(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path), mmap=False)  # read into memory: no lazy file-backed arrays
    except FileNotFoundError as err:
        raise LoadError("file not found", path, "check the path") from err
    except _READ_ERRORS as err:
        raise LoadError(f"not a readable NIfTI file ({err})", path,
                        "the file may be truncated or not NIfTI; re-export or re-download it") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise LoadError(f"not a NIfTI image ({type(img).__name__})", path,
                        "convert it to .nii.gz") from None
    # the header's claims, before any voxel is read: an absurd size is one line, not a
    # MemoryError (float32 result + the on-disk copy)
    try:
        itemsize = int(img.header.get_data_dtype().itemsize)
    except (TypeError, ValueError):
        itemsize = 8
    check_allocation(img.shape, 4 + itemsize, path)
    if len(img.shape) not in (3, 4):
        if len(img.shape) == 5 and img.shape[3] == 1:
            pass
        else:
            raise LoadError(f"expected a 3D or 4D image, the file is {len(img.shape)}D "
                            f"{tuple(img.shape)}", path, "split it into 3D volumes first")
    return img


def _bodyage_extension(img) -> dict[str, Any]:
    for ext in img.header.extensions:
        if ext.get_code() == _EXT_CODE:
            content = ext.get_content()
            if isinstance(content, bytes) and content.startswith(_EXT_PREFIX):
                try:
                    return json.loads(content[len(_EXT_PREFIX):].rstrip(b"\x00").decode())
                except (ValueError, UnicodeDecodeError):
                    return {}
    return {}


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The provenance bodyage wrote into a NIfTI's header extension, reading the header only;
    ``{}`` for another writer's file or one that cannot be read."""
    try:
        img = nib.load(str(path))
    except (FileNotFoundError, *_READ_ERRORS):
        return {}
    return dict(_bodyage_extension(img).get("provenance") or {})


def _best_affine(img, extra: dict[str, Any]) -> tuple[np.ndarray, str]:
    hdr = img.header
    affine = np.asarray(img.affine, dtype=np.float64)
    sform_code = int(hdr["sform_code"])
    qform_code = int(hdr["qform_code"])
    source = "sform" if sform_code > 0 else ("qform" if qform_code > 0 else "pixdim")
    check_affine(affine, img.get_filename())
    saved = extra.get("affine")
    if saved is not None:
        saved = np.asarray(saved, dtype=np.float64)
        if saved.shape == (4, 4) and np.allclose(saved, affine, atol=1e-3):
            affine = saved  # float64 copy of the float32 header affine: exact round trip
    return affine, source


def _read_data(img, path: Path, labels: bool) -> np.ndarray:
    try:
        if not labels:
            data = img.get_fdata(dtype=np.float32)
        else:
            proxy = img.dataobj
            raw = np.asanyarray(proxy.get_unscaled()) if hasattr(proxy, "get_unscaled") \
                else np.asanyarray(proxy)
            slope = float(getattr(proxy, "slope", 1.0))
            inter = float(getattr(proxy, "inter", 0.0))
            if slope != 1.0 or inter != 0.0:
                raw = raw * slope + inter
            data = _as_label_dtype(raw, path)
    except _READ_ERRORS as err:
        raise LoadError(f"could not read the image data ({err})", path,
                        "the file is probably truncated or corrupt; re-export or re-download it") from err
    if data.ndim == 5:
        data = data[:, :, :, 0, :]
    return data


def _as_label_dtype(raw: np.ndarray, path: Path) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.dtype.kind in "iub":
        return raw.astype(np.uint8) if raw.dtype.kind == "b" else raw
    if not np.all(np.isfinite(raw)):
        raise LoadError("label map contains NaN/inf", path, "pass an integer label map")
    rounded = np.rint(raw)
    if raw.size and np.max(np.abs(raw - rounded)) > 1e-3:
        raise LoadError("not a label map: values are not integers", path,
                        "use load_volume for intensity images")
    return rounded.astype(smallest_int_dtype(rounded))


def smallest_int_dtype(values: np.ndarray) -> np.dtype:
    """The smallest of uint8/uint16/int16/int32 that holds ``values``."""
    if values.size == 0:
        return np.dtype(np.uint8)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0:
        if hi < 256:
            return np.dtype(np.uint8)
        if hi < 65536:
            return np.dtype(np.uint16)
    elif lo >= -32768 and hi < 32768:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def load_nifti(path: str | Path, labels: bool = False) -> Volume:
    """Read a NIfTI file as a canonical-RAS :class:`Volume` (``float32``, or integers if labels)."""
    path = Path(path)
    img = _open(path)
    extra = _bodyage_extension(img)
    affine, source = _best_affine(img, extra)
    data = _read_data(img, path, labels)
    hdr = img.header
    n_chan = 1 if data.ndim == 3 else data.shape[3]
    channels = tuple(extra.get("channels") or ())
    if len(channels) != n_chan:
        channels = ("image",) if n_chan == 1 else tuple(f"image{i}" for i in range(n_chan))
    slope = getattr(img.dataobj, "slope", None)
    inter = getattr(img.dataobj, "inter", None)
    prov = {
        "path": str(path),
        "format": "nifti",
        "affine_source": source,
        "sform_code": int(hdr["sform_code"]),
        "qform_code": int(hdr["qform_code"]),
        "disk_dtype": str(hdr.get_data_dtype()),
        "scl_slope": None if slope is None else float(slope),
        "scl_inter": None if inter is None else float(inter),
    }
    prov.update(extra.get("provenance") or {})
    prov["path"] = str(path)
    prov["format"] = "nifti"
    prov.pop("orientation", None)
    return make_volume(data, affine, channels, prov, extra.get("metadata") or {})


def write_nifti(data_zyx: np.ndarray, affine: np.ndarray, path: str | Path,
                dtype: Any = None, channels: tuple[str, ...] | None = None,
                metadata: dict[str, Any] | None = None,
                provenance: dict[str, Any] | None = None) -> Path:
    """Write ``(Z, Y, X)`` or ``(C, Z, Y, X)`` data with a voxel-(x, y, z)->RAS affine, atomically."""
    path = Path(path)
    if not is_nifti(path):
        raise LoadError("can only write NIfTI (.nii or .nii.gz)", path, "use a .nii.gz name")
    data = np.asarray(data_zyx)
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4:
        raise ValueError(f"data must be (Z, Y, X) or (C, Z, Y, X), got {data.shape}")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    elif data.dtype == np.float64:
        data = data.astype(np.float32)
    elif data.dtype == np.bool_:
        data = data.astype(np.uint8)
    xyz = np.transpose(data, (3, 2, 1, 0))  # (X, Y, Z, C)
    if xyz.shape[3] == 1:
        xyz = xyz[..., 0]
    affine = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(xyz, affine)  # F-ordered view: written without a copy
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_data_dtype(xyz.dtype)
    img.header.set_xyzt_units("mm", "sec")
    extra: dict[str, Any] = {"affine": affine.tolist()}
    if channels:
        extra["channels"] = list(channels)
    if metadata:
        extra["metadata"] = _jsonable_dict(metadata)
    if provenance:
        extra["provenance"] = _jsonable_dict(provenance)
    payload = _EXT_PREFIX + json.dumps(extra, default=str).encode()
    payload += b"\x00" * ((-len(payload) - 8) % 16)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(_EXT_CODE, payload))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def _jsonable_dict(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[str(k)] = v
    return out
