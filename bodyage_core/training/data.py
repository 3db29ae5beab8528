"""Subjects as training samples: records, model-grid inputs and their on-disk cache.

A :class:`SubjectRecord` is ``(subject_id, loader, age, sex, bmi_group, site)`` where
``loader()`` returns the model input as a float32 numpy array: ``(C, Z, Y, X)`` for 3D models or
``(C, H, W)`` for the 2.5D projections. Records come from a workspace (:func:`records_from_workspace`,
with inputs cached as ``cache/<grid-hash>/<id>.npy``, see :mod:`bodyage_core.preprocess.cache`)
or from plain arrays
(:func:`records_from_arrays`, used by tests and benchmarks).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.errors import BodyageError, CohortError, ConfigError
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.volume import Volume

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

    @property
    def array_shape(self) -> tuple[int, ...]:
        """Shape of one model input: ``(C, Z, Y, X)`` or ``(C, H, W)``."""
        if self.mode == "3d":
            return (len(self.channels), *self.shape_zyx)
        return (len(self.channels), *self.image_hw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.mode != "2.5d" or self.projection == "legacy":
            del d["projection"]  # 3D, and legacy 2.5D runs: the dict (and hash) as before
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        kw = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if kw.get("mode") == "2.5d" and "projection" not in kw:
            kw["projection"] = "legacy"  # recorded before the field existed
        return cls(**kw)

    @property
    def hash(self) -> str:
        """Short hash naming the cache file of this grid (includes the preprocessor used)."""
        key = dict(self.to_dict(), preprocessor=_preprocessor_name())
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class SubjectRecord:
    subject_id: str
    loader: Callable[[], np.ndarray]
    age: float | None = None
    sex: str | None = None
    bmi_group: str | None = None
    site: str | None = None
    bmi: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class AgeDataset:
    """Indexable collection of records with an optional in-memory cache of the arrays.

    ``max_bytes`` bounds the in-memory cache (least recently used arrays are dropped; they come
    back from the workspace's disk cache). None: ``BODYAGE_MEMORY_CACHE`` (e.g. ``40GB``) when
    set, else unbounded (every array stays in memory: right for cohorts that fit).
    """

    def __init__(self, records: Sequence[SubjectRecord], cache: bool = True,
                 max_bytes: int | None = None):
        self.records = list(records)
        self._cache: OrderedDict[int, np.ndarray] | None = OrderedDict() if cache else None
        if max_bytes is None and os.environ.get("BODYAGE_MEMORY_CACHE", "").strip():
            from bodyage_core.preprocess.cache import parse_size

            max_bytes = parse_size(os.environ["BODYAGE_MEMORY_CACHE"])
        self.max_bytes = max_bytes
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    @property
    def memory_bytes(self) -> int:
        """Bytes of the arrays held in memory now."""
        return self._bytes

    def array(self, i: int) -> np.ndarray:
        if self._cache is not None and i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        rec = self.records[i]
        try:
            a = np.asarray(rec.loader(), dtype=np.float32)
        except BodyageError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the subject, keep the cause
            raise BodyageError(f"cannot load the input of subject {rec.subject_id} "
                               f"({type(exc).__name__}: {exc})") from exc
        if self._cache is not None and (self.max_bytes is None or a.nbytes <= self.max_bytes):
            self._cache[i] = a
            self._bytes += a.nbytes
            while self.max_bytes is not None and self._bytes > self.max_bytes:
                _, old = self._cache.popitem(last=False)
                self._bytes -= old.nbytes
        return a

    def batch(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.array(int(i)) for i in indices])

    @property
    def ages(self) -> np.ndarray:
        return np.array([np.nan if r.age is None else r.age for r in self.records], dtype=float)

    @property
    def subject_ids(self) -> list[str]:
        return [r.subject_id for r in self.records]

    def column(self, name: str) -> list[Any]:
        return [getattr(r, name) for r in self.records]

    def preload(self, reporter: ProgressReporter | None = None) -> None:
        rep = ensure_reporter(reporter)
        for i in range(len(self)):
            self.array(i)
            rep.update("load", i + 1, len(self), self.records[i].subject_id)


def records_from_arrays(arrays: Sequence[np.ndarray] | np.ndarray, ages: Sequence[float],
                        subject_ids: Sequence[str] | None = None,
                        sex: Sequence | None = None, bmi_group: Sequence | None = None,
                        site: Sequence | None = None) -> list[SubjectRecord]:
    """Records over in-memory arrays (tests, benchmarks)."""
    n = len(arrays)
    ids = list(subject_ids) if subject_ids is not None else [f"s{i:04d}" for i in range(n)]
    return [SubjectRecord(ids[i], (lambda a=arrays[i]: a), float(ages[i]),
                          None if sex is None else sex[i],
                          None if bmi_group is None else bmi_group[i],
                          None if site is None else site[i]) for i in range(n)]


# -- preprocessing to the model grid ---------------------------------------------------------

def _preprocessor_name() -> str:
    try:
        from bodyage_core.preprocess import prepare_for_model  # noqa: F401
    except ImportError:
        return "bodyage_core.training.data._prepare_minimal/1"
    return "bodyage_core.preprocess.prepare_for_model/1"


def prepare_input(volume: Volume, spec: InputSpec) -> np.ndarray:
    """Bring a multi-channel :class:`Volume` onto the model grid: float32 ``spec.array_shape``.

    The geometry comes from ``bodyage_core.preprocess.prepare_for_model`` (resample to
    ``spacing_zyx``, centre the body, crop/pad to ``shape_zyx``; a minimal private resampler
    when that module is absent); then each channel is normalised (``spec.normalise``), and for
    2.5D the coronal and sagittal mean-intensity projections are laid side by side in the
    spec's layout (:func:`projections_for_spec`).
    """
    missing = [c for c in spec.channels if c not in volume.channels]
    if missing:
        raise BodyageError(f"image has channels {list(volume.channels)} but the model needs "
                           f"{list(spec.channels)}", path=volume.provenance.get("path"))
    vol = volume.with_data(np.stack([volume.channel(c) for c in spec.channels]),
                           channels=spec.channels)
    try:
        from bodyage_core.preprocess import ModelGrid, prepare_for_model
    except ImportError:
        prepare_for_model = None
    if prepare_for_model is not None:
        # Geometry (resample, centre the body, crop/pad) from the preprocess module; the
        # intensity normalisation named in the spec is applied here per channel.
        grid = ModelGrid(spacing_xyz=tuple(spec.spacing_zyx[::-1]), shape_zyx=spec.shape_zyx,
                         channels=spec.channels, normalisation={"method": "none"})
        out = np.asarray(prepare_for_model(vol, grid), dtype=np.float32)
        out = np.stack([_normalise(ch, spec.normalise) for ch in out])
        if spec.mode == "2.5d":
            out = projections_for_spec(out, spec)
    else:
        out = _prepare_minimal(vol, spec)
    if tuple(out.shape) != spec.array_shape:
        raise BodyageError(f"preprocessing gave shape {tuple(out.shape)}, expected "
                           f"{spec.array_shape}", path=volume.provenance.get("path"))
    return out


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


def minimal_model_grid(vol: Volume, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """The minimal preprocessor's geometry: every channel zoomed to ``spec.spacing_zyx``, then
    one crop/pad window of ``spec.shape_zyx`` centred on the channels' summed centre of mass.

    Returns the un-normalised ``(C, Z, Y, X)`` float32 array and the window's start (numpy
    order, in zoomed voxels; negative where padded) so callers can rebuild its affine.
    """
    from scipy import ndimage

    zoom = [s / t for s, t in zip(vol.spacing_zyx, spec.spacing_zyx)]
    chans = []
    for c in range(vol.n_channels):
        a = np.asarray(vol.data[c], dtype=np.float32)
        if not np.allclose(zoom, 1.0, atol=1e-3):
            a = ndimage.zoom(a, zoom, order=1)
        chans.append(a)
    grid = np.stack(chans)
    start = _crop_start(grid.sum(axis=0), spec.shape_zyx)
    out = np.stack([_crop_pad_at(grid[c], start, spec.shape_zyx) for c in range(len(grid))])
    return out, np.asarray(start, dtype=float)


def _prepare_minimal(vol: Volume, spec: InputSpec) -> np.ndarray:
    out, _start = minimal_model_grid(vol, spec)
    out = np.stack([_normalise(ch, spec.normalise) for ch in out])
    if spec.mode == "2.5d":
        return projections_for_spec(out, spec)
    return out.astype(np.float32)


def _crop_start(ref: np.ndarray, shape: Sequence[int]) -> list[int]:
    """Start (Z, Y, X) of a ``shape`` window centred on ``ref``'s centre of mass."""
    w = np.clip(ref, 0, None)
    tot = w.sum()
    com = ([float((w.sum(axis=tuple(j for j in range(3) if j != i)) * np.arange(ref.shape[i]))
                  .sum() / tot) for i in range(3)] if tot > 0 else [s / 2 for s in ref.shape])
    return [int(round(com[i] - shape[i] / 2)) for i in range(3)]


def _crop_pad_at(a: np.ndarray, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """The ``shape`` window of ``a`` (Z, Y, X) beginning at ``start``, zero-padded outside."""
    out = np.zeros(tuple(shape), dtype=np.float32)
    src, dst = [], []
    for i in range(3):
        s0, s1 = max(start[i], 0), min(start[i] + shape[i], a.shape[i])
        src.append(slice(s0, max(s1, s0)))
        dst.append(slice(s0 - start[i], s0 - start[i] + max(s1 - s0, 0)))
    out[tuple(dst)] = a[tuple(src)]
    return out


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


# -- workspace -----------------------------------------------------------------------------

def subject_sources(ws, subject, kinds: Sequence[str]) -> list[Path]:
    """The files the images ``kinds`` of a subject are read from (distinct, in order)."""
    out: list[Path] = []
    for kind in kinds:
        if kind not in subject.images:
            have = ", ".join(sorted(subject.images)) or "none"
            raise CohortError(f"subject {subject.subject_id} has no {kind!r} image (has: {have})",
                              hint="import the missing image or train on other channels")
        p = ws.resolve(subject.images[kind])
        if p not in out:
            out.append(p)
    return out


def load_subject_volume(ws, subject, kinds: Sequence[str]) -> Volume:
    """Load the images ``kinds`` of one workspace subject as one multi-channel Volume
    (:func:`bodyage_core.io.load_channels`: kinds recorded with the same UK Biobank zip, the
    ``water`` and ``fat`` of a streamed import, are read from it in one pass)."""
    from bodyage_core.io import load_channels

    subject_sources(ws, subject, kinds)          # clear error for a missing kind
    return load_channels({k: ws.resolve(subject.images[k]) for k in kinds})


def input_cache(ws, spec: InputSpec):
    """The workspace's :class:`~bodyage_core.preprocess.cache.PreprocessCache` for ``spec``."""
    from bodyage_core.preprocess.cache import PreprocessCache

    return PreprocessCache.for_workspace(ws.root, spec)


def cache_path(ws, subject_id: str, spec: InputSpec) -> Path:
    """Where the model-grid input of a subject is cached: ``cache/<grid-hash>/<id>.npy``."""
    return input_cache(ws, spec).path(subject_id)


def cached_input(ws, subject, spec: InputSpec) -> np.ndarray:
    """The model-grid input of a workspace subject, from ``cache/<grid-hash>/<id>.npy`` when
    its source files are unchanged (size and mtime), else prepared and stored atomically
    (within the workspace's cache size limit)."""
    sources = subject_sources(ws, subject, spec.channels)
    return input_cache(ws, spec).get(
        subject.subject_id, sources,
        lambda: prepare_input(load_subject_volume(ws, subject, spec.channels), spec),
        shape=spec.array_shape)


def records_from_workspace(ws, spec: InputSpec, subject_ids: Sequence[str] | None = None,
                           require_age: bool = True) -> list[SubjectRecord]:
    """Records of the workspace's subjects (all, or ``subject_ids``) that have the images
    ``spec.channels``; inputs are loaded lazily through the ``.npy`` cache."""
    subjects = ws.db.subjects(list(subject_ids)) if subject_ids else ws.db.subjects()
    if subject_ids:
        found = {s.subject_id for s in subjects}
        unknown = [s for s in subject_ids if s not in found]
        if unknown:
            raise CohortError(f"unknown subject(s): {', '.join(unknown[:5])}",
                              hint="see `bodyage info WORKSPACE` for the subject ids")
    records = []
    for s in subjects:
        if require_age and s.age is None:
            continue
        records.append(SubjectRecord(s.subject_id, (lambda s=s: cached_input(ws, s, spec)),
                                     s.age, s.sex, s.bmi_group, s.site, s.bmi))
    return records
