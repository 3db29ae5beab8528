"""Occlusion sensitivity: a model-agnostic cross-check of Grad-CAM (brain-age primer).

A patch (size and stride configurable, per axis) slides over the input; inside it every channel
is replaced by a baseline (zero, the input's per-channel mean, or a constant) and the change of
the predicted mean is recorded:

    delta = mu(original) - mu(occluded)

in standardised units, times ``target_std`` to give years. Positive ``delta`` means the occluded
region pushed the prediction *up* (evidence for older), negative *down*. Each voxel gets the mean
``delta`` of the patches that covered it (overlapping patches average). The map is returned per
ensemble member and as the ensemble mean, raw (no normalisation).

Arrays: input ``(N, C, D, H, W)`` or ``(N, C, H, W)``; maps ``(K, N, *spatial)`` float32.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from bodyage_core.errors import ConfigError
from bodyage_core.explain.gradcam import (
    MapResult,
    _batches,
    as_batch,
    as_model_list,
    eval_frozen,
    member_scales,
    model_device,
    predicted_mean,
)
from bodyage_core.progress import ProgressReporter, ensure_reporter


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    vals = (int(value),) * ndim if np.isscalar(value) else tuple(int(v) for v in value)
    if len(vals) != ndim or any(v < 1 for v in vals):
        raise ConfigError(f"occlusion {name} must be a positive int or {ndim} positive ints, "
                          f"got {value!r}")
    return vals


def patch_starts(length: int, patch: int, stride: int) -> list[int]:
    """Start indices along one axis; the last patch is flush with the end so all voxels are
    covered (a patch larger than the axis covers it whole)."""
    if patch >= length:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def occlusion_map(models: nn.Module | Sequence[nn.Module], x: np.ndarray | torch.Tensor,
                  patch: int | Sequence[int] = 8, stride: int | Sequence[int] | None = None,
                  baseline: str | float = "zero", batch_size: int = 16,
                  target_std: float | Sequence[float] = 1.0, reporter: ProgressReporter | None = None
                  ) -> MapResult:
    """Occlusion-sensitivity maps of one model or an ensemble.

    Parameters
    ----------
    models
        A model or a list of ensemble members (models contract: ``(N, C, ...) -> (N, 2)``).
    x
        Input batch ``(N, C, D, H, W)`` or ``(N, C, H, W)`` on the model grid.
    patch, stride
        Patch size and step in voxels, one int or one per spatial axis (``stride`` defaults to
        half the patch, at least 1).
    baseline
        ``'zero'``, ``'mean'`` (each input's per-channel mean) or a number.
    batch_size
        Occluded copies per forward pass.
    target_std
        Multiplies ``delta``, one value or one per member (1.0 keeps standardised units; the
        run's ``target_std`` gives years).
    reporter
        Progress (stage ``'occlusion'``, one unit per forward pass); can cancel.

    Returns
    -------
    MapResult
        ``method='occlusion'``; ``info`` holds ``patch``, ``stride``, ``baseline`` and
        ``n_patches``.
    """
    members = as_model_list(models)
    xb = as_batch(x)
    spatial = tuple(int(s) for s in xb.shape[2:])
    nd = len(spatial)
    psize = _per_axis(patch, nd, "patch")
    pstride = _per_axis(stride if stride is not None else [max(1, p // 2) for p in psize],
                        nd, "stride")
    psize = tuple(min(p, s) for p, s in zip(psize, spatial))
    if isinstance(baseline, str):
        if baseline == "zero":
            base = torch.zeros(xb.shape[:2] + (1,) * nd)
        elif baseline == "mean":
            base = xb.mean(dim=tuple(range(2, xb.ndim)), keepdim=True)
        else:
            raise ConfigError(f"unknown occlusion baseline {baseline!r}; use zero, mean or a "
                              "number")
    else:
        base = torch.full(xb.shape[:2] + (1,) * nd, float(baseline))
    scales = member_scales(target_std, len(members))
    starts = list(itertools.product(*(patch_starts(s, p, st)
                                      for s, p, st in zip(spatial, psize, pstride))))
    rep = ensure_reporter(reporter)
    n_items = xb.shape[0]
    per_pass = max(1, int(batch_size))
    total = len(members) * n_items * -(-len(starts) // per_pass)
    done = 0

    coverage = np.zeros(spatial, dtype=np.float32)
    for st in starts:
        coverage[tuple(slice(a, a + p) for a, p in zip(st, psize))] += 1.0

    maps = np.zeros((len(members), n_items, *spatial), dtype=np.float32)
    mus = np.zeros((len(members), n_items), dtype=np.float32)
    for k, model in enumerate(members):
        dev = model_device(model)
        with eval_frozen(model), torch.no_grad():
            for i in range(n_items):
                xi = xb[i:i + 1].to(dev)
                bi = base[i:i + 1].to(dev)
                mu0 = float(predicted_mean(model(xi))[0])
                mus[k, i] = mu0
                acc = np.zeros(spatial, dtype=np.float64)
                for sl in _batches(len(starts), per_pass):
                    chunk = starts[sl]
                    batch = xi.repeat(len(chunk), *([1] * (xi.ndim - 1)))
                    for j, st in enumerate(chunk):
                        region = (j, slice(None)) + tuple(slice(a, a + p)
                                                          for a, p in zip(st, psize))
                        batch[region] = bi[0].expand_as(batch[region])
                    delta = (mu0 - predicted_mean(model(batch))).float().cpu().numpy()
                    for j, st in enumerate(chunk):
                        acc[tuple(slice(a, a + p) for a, p in zip(st, psize))] += delta[j]
                    done += 1
                    rep.update("occlusion", done, total)
                maps[k, i] = (acc / np.maximum(coverage, 1.0) * scales[k]).astype(np.float32)
    return MapResult(members=maps, mean=maps.mean(axis=0), mu=mus, method="occlusion",
                     layer=None, variant="signed",
                     info={"patch": list(psize), "stride": list(pstride),
                           "baseline": baseline, "n_patches": len(starts),
                           "target_std": scales})
