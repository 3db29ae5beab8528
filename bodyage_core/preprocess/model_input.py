"""The model grid (spacing, size, channels, normalisation) and preparing a Volume for it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bodyage_core.errors import ConfigError
from bodyage_core.preprocess.grid import resample_to_grid
from bodyage_core.preprocess.intensity import METHODS, apply_normalisation, normalise_intensity
from bodyage_core.volume import Volume


def _default_normalisation() -> dict[str, Any]:
    return {"method": "percentile", "p": [0.5, 99.5]}


@dataclass
class ModelGrid:
    """What a 3D model expects: voxel size, array size, channels and intensity normalisation.

    Attributes
    ----------
    spacing_xyz
        Voxel size, mm, ``(x, y, z)``.
    shape_zyx
        Array size ``(Z, Y, X)`` (the tensor's ``(D, H, W)``).
    channels
        Channel names in the order of the tensor's C axis, e.g. ``('water', 'fat')``.
    normalisation
        ``{'method': 'percentile', 'p': [0.5, 99.5]}`` (default), ``{'method': 'zscore'}`` or
        ``{'method': 'none'}``; computed per channel per subject. With fixed values
        (``'lo'``/``'hi'`` for percentile, ``'mean'``/``'std'`` for zscore) those are applied
        to every subject instead.
    order
        Interpolation order used when resampling (1 = trilinear).
    centre
        ``'body'`` (centre the body in the field of view), ``'image'``, or RAS mm coordinates
        of the grid's centre (a reference image on its subject's grid).
    """

    spacing_xyz: tuple[float, float, float]
    shape_zyx: tuple[int, int, int]
    channels: tuple[str, ...] = ("water", "fat")
    normalisation: dict[str, Any] = field(default_factory=_default_normalisation)
    order: int = 1
    centre: str | tuple[float, float, float] = "body"

    def __post_init__(self) -> None:
        self.spacing_xyz = tuple(float(v) for v in self.spacing_xyz)  # type: ignore[assignment]
        self.shape_zyx = tuple(int(v) for v in self.shape_zyx)  # type: ignore[assignment]
        self.channels = tuple(str(c) for c in self.channels)
        self.normalisation = dict(self.normalisation)
        if len(self.spacing_xyz) != 3 or min(self.spacing_xyz) <= 0:
            raise ConfigError(f"model grid spacing must be three positive numbers, got "
                              f"{self.spacing_xyz}")
        if len(self.shape_zyx) != 3 or min(self.shape_zyx) < 1:
            raise ConfigError(f"model grid shape must be three positive integers, got "
                              f"{self.shape_zyx}")
        if not self.channels:
            raise ConfigError("model grid needs at least one channel")
        if self.normalisation.get("method") not in METHODS:
            raise ConfigError(f"unknown normalisation {self.normalisation.get('method')!r}",
                              hint=f"use one of {', '.join(METHODS)}")
        if isinstance(self.centre, str):
            if self.centre not in ("body", "image"):
                raise ConfigError(f"model grid centre must be 'body', 'image' or coordinates, "
                                  f"not {self.centre!r}")
        else:
            c = tuple(float(v) for v in self.centre)
            if len(c) != 3 or not all(np.isfinite(c)):
                raise ConfigError(f"model grid centre must be three finite numbers (RAS mm), "
                                  f"got {self.centre!r}")
            self.centre = c

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacing_xyz"] = list(self.spacing_xyz)
        d["shape_zyx"] = list(self.shape_zyx)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelGrid:
        known = {"spacing_xyz", "shape_zyx", "channels", "normalisation", "order", "centre"}
        missing = {"spacing_xyz", "shape_zyx"} - set(d)
        if missing:
            raise ConfigError(f"model grid is missing {sorted(missing)}",
                              hint="give spacing_xyz and shape_zyx")
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model grid keys {sorted(unknown)}",
                              hint=f"known keys: {sorted(known)}")
        return cls(**d)

    @property
    def tensor_shape(self) -> tuple[int, int, int, int]:
        """``(C, D, H, W)`` of one prepared sample."""
        return (len(self.channels), *self.shape_zyx)


def prepare_for_model(volume: Volume, grid: ModelGrid,
                      return_volume: bool = False) -> np.ndarray | Volume:
    """Resample, centre and normalise a Volume for a model: ``(C, Z, Y, X)`` float32.

    Steps: select ``grid.channels`` (in that order); :func:`resample_to_grid` to
    ``grid.spacing_xyz`` / ``grid.shape_zyx`` with the body centred; normalise each channel
    with ``grid.normalisation``. With ``return_volume=True`` the result is a Volume on the model
    grid (its affine is the one Grad-CAM maps must be saved with), and
    ``provenance['normalisation']`` lists each channel's recorded parameters.
    """
    missing = [c for c in grid.channels if c not in volume.channels]
    if missing:
        where = volume.provenance.get("path")
        raise ConfigError(f"the image has channels {list(volume.channels)} but the model expects "
                          f"{list(grid.channels)}", where,
                          "load the image with the model's channels (e.g. water and fat)")
    idx = [volume.channels.index(c) for c in grid.channels]
    sel = volume if idx == list(range(volume.n_channels)) else \
        Volume(volume.data[idx], volume.affine, grid.channels, dict(volume.provenance),
               dict(volume.metadata))
    res = resample_to_grid(sel, grid.spacing_xyz, grid.shape_zyx, order=grid.order,
                           centre=grid.centre)
    norm = dict(grid.normalisation)
    method = norm.pop("method")
    fixed = (method == "percentile" and {"lo", "hi"} <= set(norm)) or \
        (method == "zscore" and {"mean", "std"} <= set(norm))
    out = np.empty(res.data.shape, dtype=np.float32)
    records = []
    for c in range(res.n_channels):
        if fixed:  # cohort-wide values given: apply them as they are
            out[c] = apply_normalisation(res.data[c], grid.normalisation)
            records.append(dict(grid.normalisation))
        else:
            kwargs = {k: v for k, v in norm.items() if k in ("p", "clip")}
            out[c], rec = normalise_intensity(res.data[c], method=method, **kwargs)
            records.append(rec)
    if not return_volume:
        return out
    prov = {**res.provenance, "normalisation": records, "model_grid": grid.to_dict()}
    return Volume(out, res.affine, grid.channels, prov, dict(volume.metadata))
