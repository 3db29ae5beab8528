"""The torch registration engine: affine (Adam, RAS millimetres), then a diffeomorphic
stationary-velocity cubic B-spline free-form deformation on a multi-resolution pyramid, LNCC or
MSE on the water and fat channels, bending-energy regularisation (deepali's model, as in the
paper). Several subjects register against one reference in one call (``register_batch``); each
subject's loss depends on its own parameters only and Adam is elementwise, so a batch gives each
subject the result it would get alone. The result is the :class:`SubjectTransform` and quality
block that the SimpleITK engine returns (``register.assess``), so the files, warping, atlas
space and caches do not know which engine made them; the quality block resamples on the
engine's device (:class:`~bodyage_core.registration.torch_quality.TorchWarps`), since through
SimpleITK it took twice the GPU's time for the registration itself on one core.

Reached through ``RegistrationConfig(engine="torch", torch_preset=..., torch_device=...,
torch_options={...})`` and :func:`bodyage_core.registration.register.register`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.registration import torch_svf as S
from bodyage_core.registration.config import (
    RegistrationConfig,
    TorchConfig,
    torch_config,
)
from bodyage_core.registration.inputs import labels_array, normalised, shared_channels
from bodyage_core.registration.quality import body_mask, combined_intensity
from bodyage_core.registration.result import RegistrationResult, assess
from bodyage_core.registration.torch_geometry import (
    affine_to_itk,
    field_to_itk,
    mm_per_normalised,
    normalised_to_mm,
    normalised_to_world,
)
from bodyage_core.registration.torch_quality import TorchWarps
from bodyage_core.registration.transform import SubjectTransform
from bodyage_core.volume import Volume


# -- inputs ---------------------------------------------------------------------------------
def _tensor(a: np.ndarray, device, dtype) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)


def _centre_of_mass(img: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS centre of the intensity mass (ITK's MOMENTS initialiser: the affine starts by
    bringing the two centres together)."""
    w = np.clip(np.asarray(img, dtype=np.float64), 0, None)
    total = w.sum()
    if total <= 0:
        idx = (np.array(img.shape, dtype=float) - 1) / 2
    else:
        idx = np.array([(w.sum(axis=tuple(j for j in range(3) if j != i))
                         * np.arange(img.shape[i])).sum() / total for i in range(3)])
    return (np.asarray(affine) @ np.r_[idx[::-1], 1.0])[:3]


def _sample_each(imgs: list[torch.Tensor], grids: torch.Tensor,
                 grads: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Each subject's image at its own grid (one batched call when their grids agree);
    ``grads``: their :func:`~torch_svf.spatial_gradient` (the gradient with respect to the
    grid, :func:`~torch_svf.sample_image`), when the grid needs one."""
    grads = grads or [None] * len(imgs)
    if all(t.shape == imgs[0].shape for t in imgs):
        return S.sample_image(torch.cat(imgs), grids,
                              None if grads[0] is None else torch.cat(grads))
    return torch.cat([S.sample_image(t, g[None], d) for t, g, d in zip(imgs, grids, grads)])


def _theta(m_ras: torch.Tensor, ref_n2w: torch.Tensor, mov_w2n: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 4)``: reference normalised -> subject normalised through RAS maps ``m_ras``."""
    return (mov_w2n @ m_ras @ ref_n2w)[:, :3]


# -- affine ---------------------------------------------------------------------------------
def _affine_stage(fixed_c, moving_c, ref_n2w, mov_w2n, centres, cfg: TorchConfig, reporter,
                  n_total) -> tuple[torch.Tensor, torch.Tensor]:
    """RAS maps ``M (N, 4, 4)``: ``q = c_m + t + (I + L)(p - c_f)``, from the centres of mass,
    by Adam on LNCC of the combined images; and the last similarity ``(N,)``."""
    n = len(moving_c)
    dev, dt = fixed_c.device, fixed_c.dtype
    c_f, c_m = centres
    lin = torch.zeros(n, 3, 3, device=dev, dtype=dt, requires_grad=True)
    trans = torch.zeros(n, 3, device=dev, dtype=dt, requires_grad=True)
    eye = torch.eye(3, device=dev, dtype=dt)

    def maps():
        a = eye + lin
        m = torch.zeros(n, 4, 4, device=dev, dtype=dt)
        m[:, :3, :3] = a
        m[:, :3, 3] = c_m + trans * cfg.affine_translation_mm - (a @ c_f[:, :, None])[..., 0]
        m[:, 3, 3] = 1
        return m

    loss = torch.zeros(n, device=dev, dtype=dt)
    done = 0
    f_pyr = S.pyramid(fixed_c, cfg.affine_levels)
    m_pyr = [S.pyramid(m, cfg.affine_levels) for m in moving_c]
    for shrink, iters in zip(cfg.affine_levels, cfg.affine_iterations):
        f = f_pyr[shrink]
        movs = [p[shrink] for p in m_pyr]
        grads = [S.spatial_gradient(m) for m in movs]
        ref = S.lncc_reference(f, cfg.affine_window) if cfg.similarity == "lncc" else None
        size = tuple(f.shape[2:])
        opt = torch.optim.Adam([lin, trans], lr=cfg.affine_lr)
        for _ in range(iters):
            opt.zero_grad(set_to_none=True)
            grid = F.affine_grid(_theta(maps(), ref_n2w, mov_w2n), (n, 1, *size),
                                 align_corners=True)
            warped = _sample_each(movs, grid, grads)
            loss = S.similarity(warped, f.expand(n, -1, -1, -1, -1), cfg.similarity,
                                cfg.affine_window, ref, cfg.lncc_eps)
            loss.sum().backward()
            opt.step()
            done += 1
            reporter.update("affine", done, n_total)
    with torch.no_grad():
        return maps(), loss.detach()


# -- deformable -----------------------------------------------------------------------------
def _deformable_stage(fixed_ch, warped_ch, weights, mm_norm, spacing_zyx, cfg: TorchConfig,
                      reporter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and inverse displacements ``(N, 3, Z, Y, X)`` (normalised, reference grid) of
    the velocity aligning the affinely pre-warped subject channels to the reference's; and
    the last similarity ``(N,)``."""
    n = warped_ch.shape[0]
    dev, dt = fixed_ch.device, fixed_ch.dtype
    full = tuple(fixed_ch.shape[2:])
    # mm of each velocity component per normalised unit: the coefficients are optimised in mm
    # so that one learning rate means the same step along the short and the long axes
    to_norm = torch.as_tensor(1.0 / mm_norm, device=dev, dtype=dt).view(1, 3, 1, 1, 1)
    finest = cfg.levels[-1]
    ctrl_zyx = np.asarray(cfg.control_mm[::-1], dtype=float)
    stride = tuple(int(max(1, round(c / (s * finest * cfg.field_shrink))))
                   for c, s in zip(ctrl_zyx, spacing_zyx))
    w = torch.as_tensor(weights, device=dev, dtype=dt)
    w = w / w.sum()
    coef = v_prev = None
    loss = torch.zeros(n, device=dev, dtype=dt)
    total = sum(cfg.iterations)
    done = 0
    sim = loss
    f_pyr, m_pyr = S.pyramid(fixed_ch, cfg.levels), S.pyramid(warped_ch, cfg.levels)
    for shrink, iters in zip(cfg.levels, cfg.iterations):
        f = f_pyr[shrink].expand(n, -1, -1, -1, -1)
        m = m_pyr[shrink]
        m_grad = S.spatial_gradient(m)
        refs = [S.lncc_reference(f[:1, c:c + 1], cfg.window) if cfg.similarity == "lncc"
                else None for c in range(f.shape[1])]
        img_size = tuple(f.shape[2:])
        img_ident = S.identity_grid(img_size, dev, dt)
        size = S.level_size(img_size, cfg.field_shrink)
        ident = S.identity_grid(size, dev, dt)
        # control spacing of this level in normalised units (z, y, x): the bending energy's
        h = tuple(2.0 * s / max(k - 1, 1) for s, k in zip(stride, size))
        if v_prev is None:
            coef = torch.zeros(n, 3, *S.control_grid_shape(size, stride), device=dev, dtype=dt)
        else:
            coef = S.control_points_from_dense(S.resize_field(v_prev, size), stride, size) \
                / to_norm
        coef.requires_grad_(True)
        opt = torch.optim.Adam([coef], lr=cfg.lr_mm)
        for _ in range(iters):
            opt.zero_grad(set_to_none=True)
            c_norm = coef * to_norm
            v = S.bspline_dense(c_norm, stride, size)
            d = S.resize_field(S.exp_velocity(v, cfg.steps, ident), img_size)
            moved = S.warp(m, d, img_ident, m_grad)
            sim = sum(w[c] * S.similarity(moved[:, c:c + 1], f[:, c:c + 1], cfg.similarity,
                                          cfg.window, refs[c], cfg.lncc_eps)
                      for c in range(m.shape[1]))
            loss = sim + cfg.bending * S.bending_energy(c_norm, h)
            loss.sum().backward()
            opt.step()
            done += 1
            reporter.update("deformable", done, total)
        with torch.no_grad():
            v_prev = S.bspline_dense(coef * to_norm, stride, size)
    # the saved fields: the last level's velocity integrated on the grid it was optimised on
    # (the field the similarity saw, with more squaring steps), upsampled to the reference grid
    with torch.no_grad():
        ident = S.identity_grid(tuple(v_prev.shape[2:]), dev, dt)
        fwd = S.resize_field(S.exp_velocity(v_prev, cfg.final_steps, ident), full)
        inv = S.resize_field(S.exp_velocity(-v_prev, cfg.final_steps, ident), full)
    return fwd, inv, sim.detach()


# -- public ---------------------------------------------------------------------------------
def resolve(device, dtype, cfg: TorchConfig):
    from bodyage_core.inference.device import resolve_device

    dev = resolve_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype or cfg.dtype)
    return dev, dt


def register_batch(movings: list[Volume], fixed: Volume, config=None,
                   moving_labels: list | None = None, fixed_labels=None,
                   fixed_mask: np.ndarray | None = None,
                   reporter: ProgressReporter | None = None, device=None, dtype=None) -> list:
    """Register several subjects to one reference with the torch engine.

    ``config`` is a RegistrationConfig (its ``torch_preset``, ``torch_options``,
    ``torch_device``, ``channel_weights``, ``method`` and ``thresholds`` apply); ``device``
    and ``dtype`` (a torch dtype or its name) override its device and the preset's dtype.
    Returns one :class:`~bodyage_core.registration.register.RegistrationResult` per subject,
    with the same transform files and quality block as the SimpleITK engine.
    """
    rcfg = (config or RegistrationConfig(engine="torch")).validate()
    cfg = torch_config(rcfg)
    reporter = ensure_reporter(reporter)
    dev, dt = resolve(device if device is not None else rcfg.torch_device, dtype, cfg)
    if rcfg.threads and dev.type == "cpu":
        torch.set_num_threads(int(rcfg.threads))
    moving_labels = list(moving_labels or [None] * len(movings))
    t0 = time.perf_counter()
    n = len(movings)
    fix_lab = labels_array(fixed_labels, fixed, "reference")
    mov_labs = [labels_array(lab, m, "subject") for lab, m in zip(moving_labels, movings)]
    fixed_c = combined_intensity(fixed, rcfg.channel_weights)
    moving_cs = [combined_intensity(m, rcfg.channel_weights) for m in movings]
    fmask = body_mask(fixed_c) if fixed_mask is None else np.asarray(fixed_mask, bool)
    names = [shared_channels(fixed, m, rcfg.channel_weights) for m in movings]
    method = "torch_affine" if rcfg.method == "affine" else "torch_svf"
    prep = time.perf_counter() - t0

    with torch.no_grad():
        ref_n2w = _tensor(normalised_to_world(fixed.shape, fixed.affine), dev, dt)
        mov_w2n = torch.stack([_tensor(np.linalg.inv(normalised_to_world(m.shape, m.affine)),
                                       dev, dt) for m in movings])
        c_f = _tensor(_centre_of_mass(fixed_c, fixed.affine), dev, dt).expand(n, 3)
        c_m = torch.stack([_tensor(_centre_of_mass(c, m.affine), dev, dt)
                           for c, m in zip(moving_cs, movings)])
    t1 = time.perf_counter()
    m_ras, affine_loss = _affine_stage(
        _tensor(fixed_c, dev, dt)[None, None], [_tensor(c, dev, dt)[None, None]
                                                for c in moving_cs],
        ref_n2w[None], mov_w2n, (c_f, c_m), cfg, reporter, sum(cfg.affine_iterations))
    t_affine = time.perf_counter() - t1
    t1 = time.perf_counter()
    fwd = inv = None
    metric = affine_loss
    if rcfg.method != "affine":
        weights = [float(rcfg.channel_weights.get(c, 1.0)) if isinstance(c, str) else 1.0
                   for c in names[0]]
        fixed_ch = _tensor(np.stack([normalised(fixed.channel(c)) for c in names[0]]), dev,
                           dt)[None]
        with torch.no_grad():
            grid = F.affine_grid(_theta(m_ras, ref_n2w[None], mov_w2n),
                                 (n, 1, *fixed.shape), align_corners=True)
            warped = _sample_each(
                [_tensor(np.stack([normalised(m.channel(c)) for c in nm]), dev, dt)[None]
                 for m, nm in zip(movings, names)], grid)
            del grid
        spacing_zyx = np.linalg.norm(np.asarray(fixed.affine)[:3, :3], axis=0)[::-1]
        fwd, inv, metric = _deformable_stage(fixed_ch, warped, weights,
                                             mm_per_normalised(fixed.shape, fixed.affine),
                                             spacing_zyx, cfg, reporter)
        del warped
    t_def = time.perf_counter() - t1
    shared = time.perf_counter() - t0

    results = []
    m_np = m_ras.detach().to("cpu", torch.float64).numpy()
    with torch.no_grad():
        theta = _theta(m_ras, ref_n2w[None], mov_w2n)
        theta0 = (mov_w2n @ ref_n2w[None])[:, :3]
    mm = normalised_to_mm(fixed.shape, fixed.affine)
    for i, mov in enumerate(movings):
        t_i = time.perf_counter()
        ok_vals = np.isfinite(m_np[i]).all() and (fwd is None or bool(
            torch.isfinite(fwd[i]).all() and torch.isfinite(inv[i]).all()))
        quality: dict[str, Any] = {
            "method": method, "engine": "torch", "status": "ok", "reasons": [],
            "device": str(dev), "batch": n,
            # the batch's shared work is charged to each subject in equal parts
            "timings": {"prepare": prep / n, "affine": t_affine / n, "deformable": t_def / n,
                        "inverse": 0.0},
            "metric_affine": float(affine_loss[i]), "metric": float(metric[i])}
        if not ok_vals:
            quality.update(status="failed", seconds=shared / n,
                           reasons=["registration diverged: non-finite transform"])
            results.append(RegistrationResult(None, quality))
            continue
        f_img = field_to_itk(fwd[i], fixed.shape, fixed.affine) if fwd is not None else None
        i_img = field_to_itk(inv[i], fixed.shape, fixed.affine) if inv is not None else None
        transform = SubjectTransform(affine_to_itk(m_np[i]), fixed.shape, fixed.affine, f_img,
                                     i_img, {"method": method, "engine": "torch",
                                             "preset": rcfg.torch_preset})
        quality["timings"]["prepare"] += time.perf_counter() - t_i
        warps = TorchWarps(mov, fixed, theta[i], None if fwd is None else fwd[i], theta0[i], mm)
        with torch.no_grad():
            results.append(assess(mov, fixed, transform, quality, rcfg.thresholds, moving_cs[i],
                                  fixed_c, fmask, mov_labs[i], fix_lab, reporter,
                                  time.perf_counter() - shared / n, warps))
    return results


