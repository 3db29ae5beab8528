"""What a model eats (:class:`InputSpec`) and how a :class:`Volume` becomes that input.

:func:`prepare_model_input` is the one preparation every caller uses (training's cache, the
prediction of a workspace subject or of a plain file, the explanation maps, the viewer): it
returns the input array together with the affine of the model grid it lies on, so that maps
computed on the model grid go back to the subject's space without guessing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.volume import Volume

#: Names the preprocessing in the cache key of a grid (an input cached with another
#: preprocessor is made again).
PREPROCESSOR = "bodyage_core.preprocess.prepare_for_model/1"

#: 2.5D layouts: ``"langner"`` (new runs) and ``"legacy"`` (runs trained before it existed).
PROJECTIONS = ("langner", "legacy")


@dataclass
class InputSpec:
    """What a model eats: image kinds (channels), the grid, normalisation and the 2.5D layout.

    ``mode`` is ``"3d"`` (input ``(C, Z, Y, X)`` with ``shape_zyx`` at ``spacing_zyx`` mm) or
    ``"2.5d"`` (input ``(C, H, W)``: coronal and sagittal mean-intensity projections side by
    side, resized to ``image_hw``, computed from the channels on that model grid).

    ``projection`` names the 2.5D layout:

    * ``"langner"`` (default; what new runs record): Langner's format of
      :func:`bodyage_core.preprocess.projections.projection_images` in floating point --
      superior at the top, coronal patient right on the left, sagittal anterior on the left,
      brought to Langner's reference pixel size, each projection min-max scaled to [0, 1];
    * ``"legacy"``: the layout of runs trained before this field existed
      (:func:`projections_2p5d`: no flips, model-grid pixels, no min-max). A spec dict without
      ``projection`` is read as legacy, and a legacy spec writes no ``projection`` key, so
      those runs keep their config, cache folder and predictions.

    For 3D specs the field is irrelevant (always ``"langner"``, never written).
    """

    channels: tuple[str, ...] = ("water", "fat")
    mode: str = "3d"
    spacing_zyx: tuple[float, float, float] = (6.0, 4.4640, 4.4640)
    shape_zyx: tuple[int, int, int] = (185, 87, 112)
    normalise: str = "foreground_mean"
    image_hw: tuple[int, int] = (256, 256)
    projection: str = "langner"
    #: ``"template"``: every input is first affine-aligned to the run's cohort template
    #: (:mod:`bodyage_core.preprocess.align`, identified by ``template_sha256``) and the model
    #: grid is cut from the template's centre; ``"none"``: the body is centred.
    align: str = "none"
    template_sha256: str | None = None
    #: the template itself while a run or model is in use (never serialised: the run and the
    #: model keep it as ``template.nii.gz``)
    template: Volume | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.spacing_zyx = tuple(float(v) for v in self.spacing_zyx)  # type: ignore[assignment]
        self.shape_zyx = tuple(int(v) for v in self.shape_zyx)  # type: ignore[assignment]
        self.image_hw = tuple(int(v) for v in self.image_hw)  # type: ignore[assignment]
        if self.mode not in ("3d", "2.5d"):
            raise ConfigError(f"input mode must be '3d' or '2.5d', got {self.mode!r}")
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"unknown 2.5D projection layout {self.projection!r}",
                              hint=f"use one of {', '.join(PROJECTIONS)}")
        if self.mode == "3d":
            self.projection = "langner"
        if self.align not in ("none", "template"):
            raise ConfigError(f"unknown input alignment {self.align!r}",
                              hint="use none or template")

    @property
    def array_shape(self) -> tuple[int, ...]:
        """Shape of one model input: ``(C, Z, Y, X)`` or ``(C, H, W)``."""
        if self.mode == "3d":
            return (len(self.channels), *self.shape_zyx)
        return (len(self.channels), *self.image_hw)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "template"}
        if self.mode != "2.5d" or self.projection == "legacy":
            del d["projection"]  # 3D, and legacy 2.5D runs: the dict (and hash) as before
        if self.align == "none":          # runs without alignment: the dict (and hash) as before
            del d["align"], d["template_sha256"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        kw = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "template"}
        if kw.get("mode") == "2.5d" and "projection" not in kw:
            kw["projection"] = "legacy"  # recorded before the field existed
        return cls(**kw)

    @property
    def hash(self) -> str:
        """Short hash naming the cache file of this grid (includes the preprocessor used)."""
        key = dict(self.to_dict(), preprocessor=PREPROCESSOR)
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class ModelInput:
    """A subject on a model's grid: the input ``array`` (float32 ``spec.array_shape``) and the
    ``affine`` (voxel (x, y, z) -> RAS mm) of the 3D model grid it was made on -- for 2.5D
    specs the grid the projections were computed from."""

    array: np.ndarray
    affine: np.ndarray
    spec: InputSpec

    def volume(self) -> Volume:
        """The 3D input as a Volume on the model grid (maps computed on it share its affine)."""
        if self.spec.mode != "3d":
            raise ConfigError("a 2.5D input is a pair of projection images, not a volume")
        return Volume(self.array, self.affine, tuple(self.spec.channels), {"model_grid": True})


def prepare_model_input(volume: Volume, spec: InputSpec,
                        template: Volume | None = None,
                        centre: Sequence[float] | None = None) -> ModelInput:
    """Bring a multi-channel :class:`Volume` onto the model grid of ``spec``.

    With ``spec.align == "template"`` the image is first affine-aligned to ``template`` (the
    run's cohort template, :func:`~bodyage_core.preprocess.align.align_to_template`) and the
    grid is cut from the template's centre; otherwise the body is centred. Then: resample to
    ``spacing_zyx`` and crop/pad to ``shape_zyx``
    (:func:`~bodyage_core.preprocess.model_input.prepare_for_model`), normalise every channel
    (``spec.normalise``); for 2.5D, lay the coronal and sagittal mean-intensity projections
    side by side in the spec's layout (:func:`projections_for_spec`). Returns the input with
    the affine of its grid (:class:`ModelInput`).

    ``centre`` (RAS mm) places the grid there instead of on the body: a reference image is
    prepared on exactly its subject's grid that way (models without input alignment only).
    """
    from bodyage_core.preprocess.model_input import ModelGrid, prepare_for_model

    missing = [c for c in spec.channels if c not in volume.channels]
    if missing:
        raise BodyageError(f"image has channels {list(volume.channels)} but the model needs "
                           f"{list(spec.channels)}", path=volume.provenance.get("path"))
    vol = volume.with_data(np.stack([volume.channel(c) for c in spec.channels]),
                           channels=spec.channels)
    template = template if template is not None else spec.template
    if spec.align == "template":
        from bodyage_core.preprocess.align import align_to_template, template_sha

        if template is None:
            raise BodyageError("this model aligns its input to a cohort template, and none "
                               "was given", hint="load the model with its template.nii.gz")
        if spec.template_sha256 and template_sha(template) != spec.template_sha256:
            raise BodyageError("the alignment template is not the one the model was trained "
                               "with", hint="use the template.nii.gz of the model's folder")
        if centre is not None:
            raise ConfigError("a fixed grid centre applies to models without input alignment")
        vol = align_to_template(vol, template)
    where = ("image" if spec.align == "template" else "body") if centre is None \
        else tuple(float(v) for v in centre)
    grid = ModelGrid(spacing_xyz=tuple(spec.spacing_zyx[::-1]), shape_zyx=spec.shape_zyx,
                     channels=spec.channels, normalisation={"method": "none"}, centre=where)
    on_grid = prepare_for_model(vol, grid, return_volume=True)
    out = np.stack([_normalise(ch, spec.normalise) for ch in np.asarray(on_grid.data)])
    if spec.mode == "2.5d":
        out = projections_for_spec(out, spec)
    out = np.asarray(out, dtype=np.float32)
    if tuple(out.shape) != spec.array_shape:
        raise BodyageError(f"preprocessing gave shape {tuple(out.shape)}, expected "
                           f"{spec.array_shape}", path=volume.provenance.get("path"))
    return ModelInput(out, np.asarray(on_grid.affine, dtype=float), spec)


def prepare_input(volume: Volume, spec: InputSpec,
                  template: Volume | None = None) -> np.ndarray:
    """The model input alone: float32 ``spec.array_shape`` (:func:`prepare_model_input`)."""
    return prepare_model_input(volume, spec, template).array


def normalise_foreground_mean(a: np.ndarray) -> np.ndarray:
    """Divide by the mean of the foreground (voxels above 10% of the 99th percentile)."""
    a = np.nan_to_num(a.astype(np.float32), nan=0.0)
    p = np.percentile(a, 99)
    fg = a > 0.1 * p
    m = float(a[fg].mean()) if fg.any() and p > 0 else 1.0
    return a / (m if m > 0 else 1.0)


NORMALISATIONS = ("foreground_mean", "percentile", "zscore", "none")


def _normalise(a: np.ndarray, method: str | None) -> np.ndarray:
    """Per-channel intensity normalisation of a model input (``spec.normalise``)."""
    if method == "foreground_mean":
        return normalise_foreground_mean(a)
    if method in ("none", None):
        return np.asarray(a, dtype=np.float32)
    if method in ("percentile", "zscore"):
        from bodyage_core.preprocess import normalise_intensity

        return np.asarray(normalise_intensity(a, method=method)[0], dtype=np.float32)
    raise ConfigError(f"unknown normalisation {method!r}",
                      hint=f"use one of {', '.join(NORMALISATIONS)}")


def _resize(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    from scipy import ndimage

    factors = [t / s for t, s in zip(shape, a.shape)]
    out = ndimage.zoom(a, factors, order=1)
    fixed = np.zeros(tuple(shape), dtype=np.float32)
    sl = tuple(slice(0, min(o, t)) for o, t in zip(out.shape, shape))
    fixed[sl] = out[sl]
    return fixed


def projections_for_spec(grid: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The 2.5D input of a spec from its model-grid channels ``(C, Z, Y, X)``: float32
    ``(C, H, W)`` in the spec's layout (``spec.projection``)."""
    if spec.projection == "legacy":
        return projections_2p5d(grid, spec.image_hw)
    return projections_langner(grid, spec.spacing_zyx, spec.image_hw)


def projections_langner(grid: np.ndarray, spacing_zyx: Sequence[float],
                        image_hw: Sequence[int]) -> np.ndarray:
    """``(C, Z, Y, X)`` on a model grid of ``spacing_zyx`` mm -> float32 ``(C, H, W)``:
    Langner's layout (:func:`bodyage_core.preprocess.projections.projection_images`, with its
    per-projection min-max scaling to [0, 1]) without the 8-bit quantisation."""
    from bodyage_core.preprocess.projections import projection_images

    return projection_images(grid, tuple(spacing_zyx)[::-1], image_hw, minmax=True)


def projections_2p5d(grid: np.ndarray, image_hw: Sequence[int]) -> np.ndarray:
    """The legacy 2.5D layout (``InputSpec.projection == "legacy"``; runs trained before
    Langner's layout was used) -- kept unchanged so those runs predict as they did.

    ``(C, Z, Y, X)`` -> ``(C, H, W)``: coronal (mean over y) and sagittal (mean over x)
    mean-intensity projections side by side, head up, resized to ``image_hw``."""
    out = []
    for ch in grid:
        cor = ch.mean(axis=1)          # (Z, X)
        sag = ch.mean(axis=2)          # (Z, Y)
        img = np.concatenate([cor, sag], axis=1)[::-1]  # superior at the top
        out.append(_resize(np.ascontiguousarray(img), image_hw))
    return np.stack(out).astype(np.float32)
