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

import time
from typing import Any

import numpy as np
import SimpleITK as sitk

from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.registration.config import (
    DEFAULT_ENGINE,
    ENGINES,
    QualityThresholds,
    RegistrationConfig,
)
from bodyage_core.registration.convert import array_to_sitk, volume_to_sitk
from bodyage_core.registration.inputs import labels_array, normalised, shared_channels
from bodyage_core.registration.quality import (
    body_mask,
    combined_intensity,
)
from bodyage_core.registration.result import RegistrationResult, assess
from bodyage_core.registration.transform import SubjectTransform, _as_affine
from bodyage_core.volume import Volume


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
    mov_lab = labels_array(moving_labels, moving, "subject")
    fix_lab = labels_array(fixed_labels, fixed, "reference")
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
            names = shared_channels(fixed, moving, cfg.channel_weights)
            f_ch = [array_to_sitk(normalised(fixed.channel(c)), fixed.affine) for c in names]
            m_ch = [sitk.Resample(array_to_sitk(normalised(moving.channel(c)), moving.affine),
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


def body_volume_ml(volume: Volume, weights: dict[str, float] | None = None) -> float:
    """Body volume in millilitres (body mask of the combined channels)."""
    m = body_mask(combined_intensity(volume, weights))
    return float(m.sum() * np.prod(volume.spacing) / 1000.0)


__all__ = ["DEFAULT_ENGINE", "ENGINES", "QualityThresholds", "RegistrationConfig", "RegistrationResult", "register",
           "body_volume_ml", "volume_to_sitk"]
