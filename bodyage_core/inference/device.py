"""Where networks run: the torch device, the memory layout of 3D tensors, mixed precision."""

from __future__ import annotations

import torch
from torch import nn

from bodyage_core.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is a clear error."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available",
                          hint="use --device cpu or --device auto")
    if device not in ("cpu",) and not str(device).startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}", hint="use auto, cpu or cuda")
    return torch.device(device)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg
                                              or "can't allocate memory" in msg
                                              or "not enough memory" in msg)


def use_channels_last(device: torch.device, override: bool | None = None) -> bool:
    """3D tensors go ``channels_last_3d`` on CUDA (cuDNN's fast 3D convolutions), unless
    ``override`` says otherwise (the tests check that layout on CPU)."""
    return device.type == "cuda" if override is None else override


def is_3d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv3d) for m in model.modules())


def prepare_model(model: nn.Module, device: torch.device,
                  channels_last: bool | None = None) -> nn.Module:
    """Move ``model`` to ``device``, 3D models in the layout :func:`use_channels_last` picks.
    On CUDA the cuDNN autotuner is turned on: the model grid is fixed, so the fastest
    convolution algorithms are found once per batch shape and kept."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = model.to(device)
    if use_channels_last(device, channels_last) and is_3d(model):
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def to_device(x, device: torch.device, channels_last: bool | None = None) -> torch.Tensor:
    """A float32 tensor of ``x`` on ``device`` (3D batches in the layout
    :func:`use_channels_last` picks). A float16 batch (the input cache's dtype) travels as
    float16 -- half the bytes over PCIe -- and is widened on the device; a pinned host tensor
    is copied asynchronously."""
    t = torch.as_tensor(x)
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        t = t.to(torch.float32)
    t = t.to(device, non_blocking=True).to(torch.float32)
    if use_channels_last(device, channels_last) and t.ndim == 5:
        t = t.contiguous(memory_format=torch.channels_last_3d)
    return t


#: ``BODYAGE_COMPILE=1`` turns :func:`maybe_compile` on for every loaded ensemble.
ENV_COMPILE = "BODYAGE_COMPILE"


def compile_wanted(flag: bool | None = None) -> bool:
    """``flag`` when given, else ``BODYAGE_COMPILE`` (off by default: compiling costs tens of
    seconds per network shape, worth it only for a cohort on a GPU)."""
    if flag is not None:
        return bool(flag)
    import os

    return os.environ.get(ENV_COMPILE, "").strip().lower() in ("1", "true", "yes", "on")


def maybe_compile(model: nn.Module, enable: bool) -> nn.Module:
    """``torch.compile(model)`` when ``enable`` (the same weights, a faster forward after the
    first call of each input shape), else ``model``. Hooks (Grad-CAM, the QC features) go on the
    plain module, never on the compiled one."""
    if not enable:
        return model
    return torch.compile(model, dynamic=False)


def autocast(device: torch.device, amp: bool = True):
    """bfloat16 autocast on CUDA when ``amp``; a no-op context on the CPU."""
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
