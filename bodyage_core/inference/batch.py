"""Batched forward passes of one network over arrays or a dataset."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bodyage_core.inference.device import autocast, is_oom, to_device
from bodyage_core.progress import ProgressReporter, ensure_reporter


@torch.no_grad()
def predict_arrays(model: nn.Module, dataset: Any, indices: np.ndarray | None = None,
                   batch_size: int = 16, device: torch.device | str = "cpu", amp: bool = True,
                   reporter: ProgressReporter | None = None,
                   stage: str = "predict") -> np.ndarray:
    """Raw network outputs ``(N, 2)`` (standardised mu, log-variance) for an array batch
    ``(N, C, ...)`` or anything with ``batch(indices)`` and ``len`` (a training dataset);
    halves the batch on out-of-memory."""
    dev = torch.device(device) if isinstance(device, str) else device
    model.eval()
    if isinstance(dataset, np.ndarray):
        arr = dataset
        get = lambda idx: arr[idx]  # noqa: E731
        n = len(arr)
    else:
        get = dataset.batch
        n = len(dataset)
    idx_all = np.arange(n) if indices is None else np.asarray(indices)
    out = np.zeros((len(idx_all), 2), dtype=np.float64)
    rep = ensure_reporter(reporter)
    pos, bs = 0, max(1, batch_size)
    while pos < len(idx_all):
        sel = idx_all[pos:pos + bs]
        try:
            with autocast(dev, amp):
                y = model(to_device(get(sel), dev))
        except Exception as exc:
            if is_oom(exc) and bs > 1:
                bs = max(1, bs // 2)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                rep.update(stage, pos, len(idx_all), f"out of memory: batch size now {bs}")
                continue
            raise
        out[pos:pos + len(sel)] = y.float().cpu().numpy()
        pos += len(sel)
        rep.update(stage, pos, len(idx_all))
    return out


class _Flipped:
    """A left-right mirrored view of a dataset or array batch (the x axis, last)."""

    def __init__(self, data: Any):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, idx) -> np.ndarray:
        b = self.data[idx] if isinstance(self.data, np.ndarray) else self.data.batch(idx)
        return np.ascontiguousarray(b[..., ::-1])


def predict_tta(model: nn.Module, dataset: Any, tta: tuple[str, ...] | list[str] = (),
                indices: np.ndarray | None = None, batch_size: int = 16,
                device: torch.device | str = "cpu", amp: bool = True,
                reporter: ProgressReporter | None = None, stage: str = "predict") -> np.ndarray:
    """:func:`predict_arrays`, averaged over the test-time augmentations ``tta`` (``"flip_x"``:
    the input and its left-right mirror image): mu is the mean, the log-variance that of the
    mean variance (the log-variance clamped to the loss's range first)."""
    outs = [predict_arrays(model, dataset, indices, batch_size, device, amp, reporter, stage)]
    if "flip_x" in tta:
        outs.append(predict_arrays(model, _Flipped(dataset), indices, batch_size, device, amp,
                                   reporter, stage))
    return combine_tta(outs)


def combine_tta(outs: list[np.ndarray]) -> np.ndarray:
    """Raw outputs ``(N, 2)`` of one network on each test-time augmentation of the same inputs
    -> one ``(N, 2)``: mu the mean, the log-variance that of the mean variance (clamped to the
    loss's range first). One output is returned as it is."""
    from bodyage_core.training.losses import LOGVAR_RANGE

    if len(outs) == 1:
        return outs[0]
    mu = np.mean([o[:, 0] for o in outs], axis=0)
    var = np.mean([np.exp(np.clip(o[:, 1], *LOGVAR_RANGE)) for o in outs], axis=0)
    return np.stack([mu, np.log(var)], axis=1)


@torch.no_grad()
def forward_tta(model: nn.Module, x: torch.Tensor, tta: tuple[str, ...] | list[str] = (),
                amp: bool = True) -> np.ndarray:
    """Raw outputs ``(N, 2)`` (float64) of ``model`` on a batch already on its device, averaged
    over ``tta`` as :func:`predict_tta` does (``flip_x`` mirrors the batch on the device)."""
    outs = []
    views = [x] + ([torch.flip(x, dims=(-1,))] if "flip_x" in tta else [])
    for v in views:
        with autocast(x.device, amp):
            y = model(v)
        outs.append(y.float().cpu().numpy().astype(np.float64))
    return combine_tta(outs)
