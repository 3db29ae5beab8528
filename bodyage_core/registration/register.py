"""Subject -> reference registration with SimpleITK: affine, then deformable.

The similarity is computed on one combined image per volume: every channel used (``water`` and
``fat`` by default, each divided by its robust maximum) is weighted and summed, so both Dixon
contrasts drive the registration (fat-dominant and water-dominant tissues stay distinct
intensities). Deformable methods:

* ``"demons"`` (default): demons (fast symmetric forces by default, or diffeomorphic) on a
  multi-resolution pyramid after histogram matching (the reference is a template of the same
  contrast, so intensities are comparable); water and fat take turns updating one field.
* ``"bspline"``: cubic B-spline, coarse control-point mesh refined over the pyramid, L-BFGS-B,
  Mattes MI / correlation / ANTS neighbourhood correlation on a random voxel sample.
* ``"affine"``: affine only.

The forward transform is kept as an affine plus a displacement field on the reference grid; its
inverse displacement field comes from ``sitk.InvertDisplacementField``. A registration that throws,
returns non-finite values, folds space, or ends with poor overlap is returned with
``quality["status"] == "failed"`` and its reasons; it is never silently used.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import SimpleITK as sitk

from bodyage_core.errors import BodyageError, ConfigError
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.registration.convert import array_to_sitk, volume_to_sitk
from bodyage_core.registration.quality import (
    body_mask,
    combined_intensity,
    dice,
    jacobian_stats,
    label_dice,
    normalized_cross_correlation,
    robust_max,
)
from bodyage_core.registration.transform import (
    LABEL_INTERPOLATION,
    SubjectTransform,
    _as_affine,
    warp_map,
)
from bodyage_core.volume import Volume

METHODS = ("demons", "bspline", "affine")
#: ``sitk``: this module's SimpleITK stages; ``torch``: the stationary-velocity B-spline engine
#: of :mod:`bodyage_core.registration.torch_engine` (``method="affine"`` stops after its affine).
ENGINES = ("sitk", "torch")
DEFAULT_ENGINE = "sitk"
# fields only the torch engine reads: left out of to_dict() for the sitk engine, so that the
# fingerprints of atlases and transforms made before the torch engine existed stay the same
_TORCH_FIELDS = ("engine", "torch_preset", "torch_device", "torch_options")
METRICS = ("mattes", "correlation", "meansquares", "ants")


@dataclass
class QualityThresholds:
    """When a registration counts as failed (any one is enough)."""

    min_body_dice: float = 0.80
    min_ncc: float = 0.30
    max_folding_fraction: float = 0.01
    min_affine_det: float = 0.4
    max_affine_det: float = 2.5
    max_displacement_mm: float = 120.0
    min_label_dice: float | None = None


def _as_tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(float(v))


@dataclass
class RegistrationConfig:
    """Registration parameters (defaults tuned for the ~4.5 x 4.5 x 6 mm synthetic grid).

    Shrink factors and smoothing sigmas are per pyramid level, coarse to fine, in voxels.
    """

    method: str = "demons"
    channel_weights: dict[str, float] = field(default_factory=lambda: {"water": 1.0, "fat": 1.0})
    # affine stage
    affine_metric: str = "mattes"
    affine_shrink: tuple[int, ...] = (4, 2)
    affine_sigmas: tuple[float, ...] = (2.0, 1.0)
    affine_iterations: int = 80
    sampling_percentage: float = 0.15
    # B-spline stage
    bspline_metric: str = "mattes"
    bspline_mesh_mm: float = 60.0
    bspline_shrink: tuple[int, ...] = (4, 2, 1)
    bspline_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    bspline_iterations: int = 25
    # demons stage
    demons_shrink: tuple[int, ...] = (4, 2, 1)
    demons_iterations: tuple[int, ...] = (60, 40, 15)
    demons_sigma: float = 1.5
    demons_update_sigma: float = 0.0
    demons_chunk: int = 1
    demons_variant: str = "fast_symmetric"
    # inverse field (computed on a grid coarser by ``invert_shrink``, then upsampled)
    invert_iterations: int = 20
    invert_shrink: int = 2
    threads: int | None = None
    seed: int = 0
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    # engine (see ENGINES); the torch engine's preset (torch_engine.PRESETS), device (auto, cpu,
    # cuda) and overrides of the preset's fields (torch_engine.TorchConfig)
    engine: str = DEFAULT_ENGINE
    torch_preset: str = "fast"
    torch_device: str = "auto"
    torch_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> RegistrationConfig:
        if self.method not in METHODS:
            raise ConfigError(f"unknown registration method {self.method!r}",
                              hint=f"use one of {', '.join(METHODS)}")
        for name in ("affine_metric", "bspline_metric"):
            if getattr(self, name) not in METRICS:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}",
                                  hint=f"use one of {', '.join(METRICS)}")
        if self.demons_variant not in ("diffeomorphic", "fast_symmetric"):
            raise ConfigError(f"unknown demons_variant {self.demons_variant!r}",
                              hint="diffeomorphic or fast_symmetric")
        if len(self.demons_shrink) != len(self.demons_iterations):
            raise ConfigError("demons_shrink and demons_iterations need one entry per level")
        if len(self.bspline_shrink) != len(self.bspline_sigmas):
            raise ConfigError("bspline_shrink and bspline_sigmas need one entry per level")
        if len(self.affine_shrink) != len(self.affine_sigmas):
            raise ConfigError("affine_shrink and affine_sigmas need one entry per level")
        if not _number(self.sampling_percentage) or not 0 < self.sampling_percentage <= 1:
            raise ConfigError("sampling_percentage must be in (0, 1]")
        for name in ("affine_iterations", "bspline_iterations", "invert_iterations",
                     "demons_iterations"):
            for v in _as_tuple(getattr(self, name)):
                if not _integer(v) or v < 0:
                    raise ConfigError(f"{name} must be whole numbers >= 0, got "
                                      f"{getattr(self, name)!r}")
        for name in ("affine_shrink", "bspline_shrink", "demons_shrink", "invert_shrink",
                     "demons_chunk"):
            for v in _as_tuple(getattr(self, name)):
                if not _integer(v) or v < 1:
                    raise ConfigError(f"{name} must be whole numbers >= 1, got "
                                      f"{getattr(self, name)!r}")
        for name in ("affine_sigmas", "bspline_sigmas", "demons_sigma", "demons_update_sigma"):
            for v in _as_tuple(getattr(self, name)):
                if not _number(v) or v < 0:
                    raise ConfigError(f"{name} must be finite numbers >= 0, got "
                                      f"{getattr(self, name)!r}")
        if not _number(self.bspline_mesh_mm) or self.bspline_mesh_mm <= 0:
            raise ConfigError(f"bspline_mesh_mm must be a positive number, got "
                              f"{self.bspline_mesh_mm!r}")
        if not isinstance(self.channel_weights, dict) or not all(
                _number(w) and w >= 0 for w in self.channel_weights.values()):
            raise ConfigError("channel_weights must map channel names to numbers >= 0")
        if self.threads is not None and (not _integer(self.threads) or self.threads < 1):
            raise ConfigError(f"threads must be a whole number >= 1, got {self.threads!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown registration engine {self.engine!r}",
                              hint=f"use one of {', '.join(ENGINES)}")
        if self.engine == "torch":
            from bodyage_core.registration.torch_engine import torch_config

            torch_config(self)   # unknown preset / option names fail here, not in a worker
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.engine == "sitk":
            for k in _TORCH_FIELDS:
                d.pop(k)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> RegistrationConfig:
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown registration option(s): {', '.join(sorted(unknown))}",
                              hint=f"valid options: {', '.join(sorted(names))}")
        th = d.pop("thresholds", None)
        for k, v in list(d.items()):
            if isinstance(v, list):
                d[k] = tuple(v)
        try:
            cfg = cls(**d)
        except TypeError as err:
            raise ConfigError(f"bad registration options ({err})") from None
        if th is not None:
            try:
                cfg.thresholds = th if isinstance(th, QualityThresholds) \
                    else QualityThresholds(**th)
            except TypeError as err:
                raise ConfigError(f"bad registration quality thresholds ({err})") from None
        return cfg.validate()


@dataclass
class RegistrationResult:
    """What :func:`register` returns.

    ``transform`` is None only when the registration threw before producing one. ``warped`` is
    the subject (all channels) resampled onto the reference grid; ``warped_labels`` likewise
    (``LABEL_INTERPOLATION``) when the subject's labels were given.
    """

    transform: SubjectTransform | None
    quality: dict[str, Any]
    warped: Volume | None = None
    warped_labels: Volume | None = None

    @property
    def ok(self) -> bool:
        return self.quality.get("status") == "ok"


# -- helpers ----------------------------------------------------------------------------------
def _metric(reg: sitk.ImageRegistrationMethod, name: str) -> None:
    if name == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    elif name == "correlation":
        reg.SetMetricAsCorrelation()
    elif name == "meansquares":
        reg.SetMetricAsMeanSquares()
    elif name == "ants":
        reg.SetMetricAsANTSNeighborhoodCorrelation(radius=2)


def _smooth_resample(img: sitk.Image, shrink: int) -> sitk.Image:
    """Gaussian smoothing then resampling by ``shrink`` (first/last voxel centres kept)."""
    if shrink <= 1:
        return img
    sp = np.array(img.GetSpacing())
    size = np.array(img.GetSize())
    smoothed = sitk.SmoothingRecursiveGaussian(img, [float(s) for s in 0.5 * shrink * sp])
    new_size = np.maximum(4, np.round(size / shrink)).astype(int)
    new_sp = (size - 1) * sp / np.maximum(new_size - 1, 1)
    return sitk.Resample(smoothed, [int(s) for s in new_size], sitk.Transform(), sitk.sitkLinear,
                         img.GetOrigin(), [float(s) for s in new_sp], img.GetDirection(), 0.0,
                         img.GetPixelID())


def _affine_stage(fixed: sitk.Image, moving: sitk.Image, cfg: RegistrationConfig):
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    _metric(reg, cfg.affine_metric)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(cfg.sampling_percentage, cfg.seed or 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=4.0, minStep=0.01, numberOfIterations=cfg.affine_iterations,
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(cfg.affine_shrink))
    reg.SetSmoothingSigmasPerLevel(list(cfg.affine_sigmas))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    out = reg.Execute(fixed, moving)
    return _as_affine(_unwrap(out)), float(reg.GetMetricValue())


def _unwrap(tx: sitk.Transform) -> sitk.Transform:
    """The single transform inside a one-element composite (what Execute returns)."""
    if tx.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(tx)
        if comp.GetNumberOfTransforms() == 1:
            return comp.GetNthTransform(0).Downcast()
    return tx.Downcast() if hasattr(tx, "Downcast") else tx


def _demons_stage(fixed: list[sitk.Image], moving_aff: list[sitk.Image],
                  cfg: RegistrationConfig, reporter: ProgressReporter
                  ) -> tuple[sitk.Image, float]:
    """Multi-channel diffeomorphic demons: at every pyramid level the channels take turns
    (``demons_chunk`` iterations each) in updating one displacement field."""
    moving_aff = [sitk.HistogramMatching(m, f, numberOfHistogramLevels=128,
                                         numberOfMatchPoints=7, thresholdAtMeanIntensity=True)
                  for f, m in zip(fixed, moving_aff)]
    field_img = None
    metric = float("nan")
    n = len(cfg.demons_shrink)
    for level, (shrink, iters) in enumerate(zip(cfg.demons_shrink, cfg.demons_iterations)):
        f_l = [_smooth_resample(f, shrink) for f in fixed]
        m_l = [_smooth_resample(m, shrink) for m in moving_aff]
        if field_img is None:
            field_img = sitk.Image(f_l[0].GetSize(), sitk.sitkVectorFloat64, 3)
            field_img.CopyInformation(f_l[0])
        else:
            field_img = sitk.Resample(field_img, f_l[0], sitk.Transform(), sitk.sitkLinear, 0.0,
                                      sitk.sitkVectorFloat64)
        demons = (sitk.FastSymmetricForcesDemonsRegistrationFilter()
                  if cfg.demons_variant == "fast_symmetric"
                  else sitk.DiffeomorphicDemonsRegistrationFilter())
        demons.SetSmoothDisplacementField(True)
        demons.SetStandardDeviations(float(cfg.demons_sigma))
        if cfg.demons_update_sigma > 0:
            demons.SetSmoothUpdateField(True)
            demons.SetUpdateFieldStandardDeviations(float(cfg.demons_update_sigma))
        chunk = max(1, int(cfg.demons_chunk))
        done = 0
        while done < iters:
            step = min(chunk, int(iters) - done)
            demons.SetNumberOfIterations(step)
            metrics = []
            for f, m in zip(f_l, m_l):
                field_img = demons.Execute(f, m, field_img)
                metrics.append(float(demons.GetMetric()))
            metric = float(np.mean(metrics))
            done += step
            reporter.update("deformable", level + done / iters, n, metric=metric)
    if field_img.GetSize() != fixed[0].GetSize():
        field_img = sitk.Resample(field_img, fixed[0], sitk.Transform(), sitk.sitkLinear, 0.0,
                                  sitk.sitkVectorFloat64)
    return field_img, metric


def _bspline_stage(fixed: sitk.Image, moving: sitk.Image, affine: sitk.AffineTransform,
                   cfg: RegistrationConfig) -> tuple[sitk.Image, float]:
    levels = len(cfg.bspline_shrink)
    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    mesh = np.maximum(1, np.round(extent / cfg.bspline_mesh_mm)).astype(int)
    init_mesh = np.maximum(1, mesh // (2 ** (levels - 1)))
    tx = sitk.BSplineTransformInitializer(fixed, [int(m) for m in init_mesh], 3)
    reg = sitk.ImageRegistrationMethod()
    _metric(reg, cfg.bspline_metric)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(cfg.sampling_percentage, cfg.seed or 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGS2(solutionAccuracy=1e-4,
                             numberOfIterations=cfg.bspline_iterations,
                             deltaConvergenceTolerance=1e-5)
    reg.SetShrinkFactorsPerLevel(list(cfg.bspline_shrink))
    reg.SetSmoothingSigmasPerLevel(list(cfg.bspline_sigmas))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetMovingInitialTransform(affine)
    reg.SetInitialTransformAsBSpline(tx, inPlace=True,
                                     scaleFactors=[2 ** i for i in range(levels)])
    reg.Execute(fixed, moving)
    field_img = sitk.TransformToDisplacementField(
        tx, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(),
        fixed.GetDirection())
    return field_img, float(reg.GetMetricValue())


def _shared_channels(a: Volume, b: Volume, weights: dict[str, float] | None) -> list[str]:
    names = [c for c in a.channels if c in b.channels
             and (weights is None or float(weights.get(c, 0.0)) > 0)]
    if not names:
        if a.n_channels != b.n_channels:
            raise BodyageError(f"no common channels to register: {a.channels} vs {b.channels}",
                               hint="register volumes of the same contrast (e.g. water+fat)")
        names = list(range(a.n_channels))
    return names


def _normalised(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    return a / robust_max(a)


def invert_field(field_img: sitk.Image, iterations: int = 20, shrink: int = 1) -> sitk.Image:
    """Inverse of a displacement field (``sitk.InvertDisplacementField``), optionally computed
    on a grid ``shrink`` times coarser and resampled back (the fields here are smooth)."""
    work = field_img
    if shrink > 1:
        sp = np.array(field_img.GetSpacing())
        size = np.array(field_img.GetSize())
        new_size = np.maximum(4, np.round(size / shrink)).astype(int)
        new_sp = (size - 1) * sp / np.maximum(new_size - 1, 1)
        work = sitk.Resample(field_img, [int(v) for v in new_size], sitk.Transform(),
                             sitk.sitkLinear, field_img.GetOrigin(), [float(v) for v in new_sp],
                             field_img.GetDirection(), 0.0, sitk.sitkVectorFloat64)
    inv = sitk.InvertDisplacementField(work, maximumNumberOfIterations=int(iterations),
                                       maxErrorToleranceThreshold=0.1,
                                       meanErrorToleranceThreshold=0.001,
                                       enforceBoundaryCondition=True)
    if shrink > 1:
        inv = sitk.Resample(inv, field_img, sitk.Transform(), sitk.sitkLinear, 0.0,
                            sitk.sitkVectorFloat64)
    return inv


def _labels_array(labels, like: Volume, what: str) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, Volume):
        if labels.shape != like.shape or not np.allclose(labels.affine, like.affine, atol=1e-2):
            raise BodyageError(
                f"the {what} label map is on another grid ({labels.shape}) than its image "
                f"({like.shape})", path=labels.provenance.get("path"),
                hint="resample the label map onto the image grid (nearest neighbour) first")
        return np.asarray(labels.data[0])
    arr = np.asarray(labels)
    if arr.shape != like.shape:
        raise BodyageError(f"the {what} label map has shape {arr.shape}, its image {like.shape}",
                           hint="give a label map on the image grid")
    return arr


# -- public -----------------------------------------------------------------------------------
def register(moving: Volume, fixed: Volume, config: RegistrationConfig | None = None,
             moving_labels: Volume | np.ndarray | None = None,
             fixed_labels: Volume | np.ndarray | None = None,
             fixed_mask: np.ndarray | None = None,
             reporter: ProgressReporter | None = None) -> RegistrationResult:
    """Register ``moving`` (a subject) to ``fixed`` (a reference / template).

    Parameters
    ----------
    moving, fixed
        Volumes (``(C, Z, Y, X)``, RAS affines); channels named in
        ``config.channel_weights`` are combined into the similarity image.
    config
        :class:`RegistrationConfig` (defaults when None).
    moving_labels, fixed_labels
        Optional integer label maps on the grids of ``moving`` / ``fixed``; when both are given
        the quality gets the Dice per label and their mean.
    fixed_mask
        Body mask of ``fixed`` ``(Z, Y, X)`` (computed when None).
    reporter
        Progress / cancellation.

    Returns
    -------
    :class:`RegistrationResult` with the transform (reference -> subject points), the quality
    dict (``status`` ``"ok"``/``"failed"``, ``reasons``, ``metric``, ``ncc``, ``dice_body``,
    ``dice_labels``, ``dice_labels_mean``, Jacobian and displacement facts, ``seconds``) and the
    subject warped onto the reference grid.
    """
    cfg = (config or RegistrationConfig()).validate()
    if cfg.engine == "torch":
        from bodyage_core.registration.torch_engine import register_batch

        return register_batch([moving], fixed, cfg, [moving_labels], fixed_labels, fixed_mask,
                              reporter)[0]
    reporter = ensure_reporter(reporter)
    if cfg.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(cfg.threads))
    t0 = time.perf_counter()
    mov_lab = _labels_array(moving_labels, moving, "subject")
    fix_lab = _labels_array(fixed_labels, fixed, "reference")
    fixed_c = combined_intensity(fixed, cfg.channel_weights)
    moving_c = combined_intensity(moving, cfg.channel_weights)
    f_img = array_to_sitk(fixed_c, fixed.affine, np.float32)
    m_img = array_to_sitk(moving_c, moving.affine, np.float32)
    fmask = body_mask(fixed_c) if fixed_mask is None else np.asarray(fixed_mask, bool)
    quality: dict[str, Any] = {"method": cfg.method, "status": "ok", "reasons": []}

    timings: dict[str, float] = {"prepare": time.perf_counter() - t0}
    quality["timings"] = timings
    reporter.update("affine", 0, 1)
    try:
        t1 = time.perf_counter()
        affine, affine_metric = _affine_stage(f_img, m_img, cfg)
        timings["affine"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        quality["metric_affine"] = affine_metric
        reporter.update("affine", 1, 1, metric=affine_metric)
        fwd = inv = None
        metric = affine_metric
        if cfg.method == "demons":
            names = _shared_channels(fixed, moving, cfg.channel_weights)
            f_ch = [array_to_sitk(_normalised(fixed.channel(c)), fixed.affine) for c in names]
            m_ch = [sitk.Resample(array_to_sitk(_normalised(moving.channel(c)), moving.affine),
                                  f_img, affine, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
                    for c in names]
            fwd, metric = _demons_stage(f_ch, m_ch, cfg, reporter)
        elif cfg.method == "bspline":
            reporter.update("deformable", 0, 1)
            fwd, metric = _bspline_stage(f_img, m_img, affine, cfg)
            reporter.update("deformable", 1, 1, metric=metric)
        timings["deformable"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        if fwd is not None:
            reporter.update("inverse", 0, 1)
            inv = invert_field(fwd, cfg.invert_iterations, cfg.invert_shrink)
            reporter.update("inverse", 1, 1)
        timings["inverse"] = time.perf_counter() - t1
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()
        quality.update(status="failed", seconds=time.perf_counter() - t0,
                       reasons=[f"registration diverged: {msg[-1][:200] if msg else exc}"])
        return RegistrationResult(None, quality)
    quality["metric"] = metric
    transform = SubjectTransform(affine, fixed.shape, fixed.affine, fwd, inv,
                                 {"method": cfg.method})

    return assess(moving, fixed, transform, quality, cfg.thresholds, moving_c, fixed_c, fmask,
                  mov_lab, fix_lab, reporter, t0)


def assess(moving: Volume, fixed: Volume, transform: SubjectTransform, quality: dict[str, Any],
           thresholds: QualityThresholds, moving_c: np.ndarray, fixed_c: np.ndarray,
           fmask: np.ndarray, mov_lab: np.ndarray | None, fix_lab: np.ndarray | None,
           reporter: ProgressReporter, t0: float) -> RegistrationResult:
    """The quality block of a finished registration, whichever engine made ``transform``: the
    subject warped onto the reference grid, body Dice, NCC, label Dice, Jacobian and
    displacement facts, and the failure reasons (``quality`` is filled in place)."""
    timings = quality["timings"]
    fwd = transform.forward_field
    ref_grid = (fixed.shape, fixed.affine)
    reporter.update("quality", 0, 1)
    t1 = time.perf_counter()
    warped = warp_map(moving, transform, ref_grid, "linear")
    warped_c = warp_map(Volume(moving_c, moving.affine), transform, ref_grid, "linear").data[0]
    mmask = body_mask(moving_c)
    wmask = warp_map(Volume(mmask.astype(np.uint8), moving.affine), transform, ref_grid,
                     "nearest").data[0] > 0
    quality["dice_body"] = dice(wmask, fmask)
    quality["ncc"] = normalized_cross_correlation(warped_c, fixed_c, fmask | wmask)
    quality["ncc_before"] = normalized_cross_correlation(
        warp_map(Volume(moving_c, moving.affine), SubjectTransform(
            sitk.AffineTransform(3), fixed.shape, fixed.affine), ref_grid).data[0],
        fixed_c, fmask)
    det = float(np.linalg.det(transform.affine_matrix[:3, :3]))
    quality["affine_det"] = det
    warped_labels = None
    if mov_lab is not None:
        warped_labels = warp_map(Volume(mov_lab, moving.affine, channels=("labels",)),
                                 transform, ref_grid, LABEL_INTERPOLATION)
        if fix_lab is not None:
            per = label_dice(warped_labels.data[0], fix_lab)
            quality["dice_labels"] = {str(k): v for k, v in per.items()}
            quality["dice_labels_mean"] = float(np.mean(list(per.values()))) if per else None
    if fwd is not None:
        quality.update(jacobian_stats(fwd, fmask))
        disp = np.linalg.norm(sitk.GetArrayViewFromImage(fwd), axis=-1)
        quality["max_displacement_mm"] = float(disp[fmask].max() if fmask.any() else disp.max())
        quality["mean_displacement_mm"] = float(disp[fmask].mean() if fmask.any() else 0.0)
    quality["reasons"] = _failure_reasons(quality, thresholds)
    if quality["reasons"]:
        quality["status"] = "failed"
    timings["quality"] = time.perf_counter() - t1
    quality["seconds"] = time.perf_counter() - t0
    reporter.update("quality", 1, 1, dice_body=quality["dice_body"])
    return RegistrationResult(transform, quality, warped, warped_labels)


def _failure_reasons(q: dict[str, Any], th: QualityThresholds) -> list[str]:
    reasons = []
    for key in ("metric", "ncc", "dice_body"):
        v = q.get(key)
        if v is None or not np.isfinite(v):
            reasons.append(f"diverged: {key} is not finite")
    if q.get("dice_body", 1.0) < th.min_body_dice:
        reasons.append(f"body-mask Dice {q['dice_body']:.3f} < {th.min_body_dice}")
    if q.get("ncc", 1.0) < th.min_ncc:
        reasons.append(f"image correlation {q['ncc']:.3f} < {th.min_ncc}")
    det = q.get("affine_det", 1.0)
    if not th.min_affine_det <= det <= th.max_affine_det:
        reasons.append(f"affine volume change {det:.2f} outside "
                       f"[{th.min_affine_det}, {th.max_affine_det}] (diverged)")
    if q.get("folding_fraction", 0.0) > th.max_folding_fraction:
        reasons.append(f"deformation folds {100 * q['folding_fraction']:.2f}% of the body")
    if q.get("max_displacement_mm", 0.0) > th.max_displacement_mm:
        reasons.append(f"displacement {q['max_displacement_mm']:.0f} mm > "
                       f"{th.max_displacement_mm} mm (diverged)")
    if th.min_label_dice is not None and q.get("dice_labels_mean") is not None \
            and q["dice_labels_mean"] < th.min_label_dice:
        reasons.append(f"mean label Dice {q['dice_labels_mean']:.3f} < {th.min_label_dice}")
    return reasons


def body_volume_ml(volume: Volume, weights: dict[str, float] | None = None) -> float:
    """Body volume in millilitres (body mask of the combined channels)."""
    m = body_mask(combined_intensity(volume, weights))
    return float(m.sum() * np.prod(volume.spacing) / 1000.0)


__all__ = ["DEFAULT_ENGINE", "ENGINES", "QualityThresholds", "RegistrationConfig", "RegistrationResult", "register",
           "body_volume_ml", "volume_to_sitk"]
