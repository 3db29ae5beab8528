"""Grad-CAM for age regression (3D and 2.5D), per ensemble member and averaged.

Method (Selvaraju et al. 2017, for regression as in Starck et al.): the gradient of the predicted
mean ``mu`` (column 0 of the ``(N, 2)`` model output, standardised units) with respect to the
feature maps ``A_k`` of a named layer is averaged over space into one weight ``w_k`` per channel;
the map is ``sum_k w_k A_k``, then

* ``variant='relu'``: ``ReLU`` of it (the classic Grad-CAM: evidence that raises the prediction);
* ``variant='signed'``: no ReLU — positive values are evidence for *older*, negative for *younger*.

The map is upsampled to the input grid (trilinear, or bilinear for 2D inputs,
``align_corners=False``). Values stay raw (no normalisation; the viewer normalises for display).

Array conventions: inputs are torch/numpy ``(N, C, D, H, W)`` (3D; D = z, H = y, W = x of the
Volume's numpy order) or ``(N, C, H, W)`` (2.5D). Maps are numpy ``float32`` of shape
``(N, D, H, W)`` / ``(N, H, W)``; per-member maps carry a leading member axis ``K``.

Batches: :func:`gradcam` sends each batch of ``batch_size`` inputs (default all) to the device
once and runs every member on it, one backward pass per member for the whole batch (the networks
are in eval mode, so the inputs of a batch do not interact: the maps are those of one input at a
time, to float precision).

Everything runs without building the autograd graph upstream of the explained layer: parameters
are frozen for the call, and the layer's output is re-rooted as the only tensor that needs a
gradient. The models are put in eval mode for the call; their training flag, parameter
``requires_grad`` flags and hooks are restored afterwards, also when an error is raised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bodyage_core.errors import BodyageError, ConfigError

VARIANTS = ("relu", "signed")


@dataclass
class MapResult:
    """Explanation maps for a batch, per ensemble member and their mean.

    Attributes
    ----------
    members
        ``(K, N, *spatial)`` float32: one map per member ``k`` and input ``n`` on the input grid
        (None where only the mean was asked for: :func:`gradcam` with ``members=False``).
    mean
        ``(N, *spatial)`` float32: the ensemble mean of ``members``.
    mu
        ``(K, N)`` float32: each member's predicted mean (standardised units) for the unaltered
        input.
    method, layer, variant
        How the maps were made (``layer`` is None for occlusion).
    info
        Free-form extras (e.g. the occlusion patch and stride).
    """

    members: np.ndarray | None
    mean: np.ndarray
    mu: np.ndarray
    method: str
    layer: str | None = None
    variant: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


# -- helpers shared by the explain modules ---------------------------------------------------------

def as_model_list(models: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """One model or an ensemble (a list of models) as a non-empty list."""
    if isinstance(models, nn.Module):
        return [models]
    out = list(models)
    if not out:
        raise ConfigError("no models given to explain — pass a model or a non-empty ensemble")
    for m in out:
        if not isinstance(m, nn.Module):
            raise TypeError(f"expected torch.nn.Module, got {type(m).__name__}")
    return out


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``'auto'``/None -> CUDA when available, else CPU; anything else as torch understands it."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N") \
            from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but CUDA is not available",
                          hint="use --device cpu or auto")
    return dev


def as_batch(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 tensor ``(N, C, *spatial)`` with 2 or 3 spatial axes."""
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    if t.ndim not in (4, 5):
        raise ValueError(f"expected an input batch (N, C, D, H, W) or (N, C, H, W), got shape "
                         f"{tuple(t.shape)}")
    return t.float()


def predicted_mean(out: torch.Tensor) -> torch.Tensor:
    """Column 0 (``mu``) of a model output ``(N, 2)``; a ``(N,)``/``(N, 1)`` output is accepted."""
    if out.ndim == 2:
        return out[:, 0]
    if out.ndim == 1:
        return out
    raise BodyageError(f"the model returned shape {tuple(out.shape)}; expected (N, 2) = "
                       "[mu, log_var]", hint="check the model follows the models contract")


@contextlib.contextmanager
def eval_frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the block; both restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def layer_names(model: nn.Module) -> list[str]:
    """The layer names to offer for Grad-CAM: ``stem, layer1, ... layer4`` for the ResNets,
    ``features.<i>`` block ends for VGG (``bodyage_core.models.list_layers``), else the model's
    top-level children. Any dotted sub-module name (``'layer3.1'``) is accepted too."""
    from bodyage_core.models import list_layers

    names = list_layers(model)
    return names or [name for name, _ in model.named_children()]


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The sub-module called ``layer``; a BodyageError listing the valid names otherwise."""
    modules = dict(model.named_modules())
    if layer and layer in modules:
        return modules[layer]
    aliases = getattr(model, "block_layer_names", None)  # VGG: 'block3' -> 'features.23'
    if callable(aliases) and layer in aliases():
        return modules[aliases()[layer]]
    valid = ", ".join(layer_names(model)) or "(the model has no sub-modules)"
    raise ConfigError(f"no layer {layer!r} in {type(model).__name__}; valid layer names: {valid}",
                      hint="or a dotted sub-module name such as 'layer3.1'")


def member_scales(target_std: float | Sequence[float], k: int) -> list[float]:
    """One multiplier per member: the run's target standard deviation(s) turn standardised
    units into years (1.0 keeps standardised units)."""
    if np.isscalar(target_std):
        return [float(target_std)] * k  # type: ignore[arg-type]
    vals = [float(v) for v in target_std]  # type: ignore[union-attr]
    if len(vals) != k:
        raise ValueError(f"{len(vals)} target_std values for {k} models")
    return vals


def _batches(n: int, batch_size: int | None) -> Iterator[slice]:
    step = n if not batch_size or batch_size <= 0 else int(batch_size)
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float32 copy of the batch on ``device``, 3D batches ``channels_last_3d`` on CUDA (the
    layout the prepared networks run in)."""
    from bodyage_core.inference.device import to_device

    return to_device(x, device)


def _upsample(cam: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``(N, *s)`` -> ``(N, *size)``, trilinear (3D) or bilinear (2D), align_corners=False."""
    mode = "trilinear" if len(size) == 3 else "bilinear"
    if tuple(cam.shape[1:]) == tuple(size):
        return cam
    return F.interpolate(cam[:, None], size=size, mode=mode, align_corners=False)[:, 0]


@contextlib.contextmanager
def _capture(module: nn.Module, store: dict) -> Iterator[None]:
    """Forward hook that re-roots the module's output as a leaf needing a gradient.

    The leaf is stored in ``store['act']``; the module returns a clone of it, so in-place
    operations downstream (``ReLU(inplace=True)``) never touch the stored activations.
    """

    def hook(_mod, _inp, out):
        if not isinstance(out, torch.Tensor):
            raise BodyageError(f"layer output is a {type(out).__name__}, not a feature-map tensor",
                               hint="choose a convolutional stage such as 'layer3'")
        leaf = out.detach().requires_grad_(True)
        store["act"] = leaf
        return leaf.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _gradcam_tensor(model: nn.Module, x: torch.Tensor, module: nn.Module, layer: str,
                    variant: str, amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of one model for a batch already on the model's device.

    The forward and backward pass run under the prediction's bfloat16 autocast on CUDA
    (``amp``); the map itself is formed in float32 from the reduced-precision activations and
    gradients. Returns the upsampled map ``(N, *spatial)`` and ``mu`` ``(N,)`` (both detached).
    """
    from bodyage_core.inference.device import autocast

    store: dict[str, torch.Tensor] = {}
    with _capture(module, store), torch.enable_grad():
        with autocast(x.device, amp):
            mu = predicted_mean(model(x))
        act = store.get("act")
        if act is None:
            raise BodyageError(f"layer {layer!r} was not used by the model's forward pass",
                               hint="choose a stage the input flows through, e.g. 'layer3'")
        if act.ndim != x.ndim:
            raise BodyageError(
                f"layer {layer!r} gives an output of shape {tuple(act.shape)}, not a spatial "
                f"feature map like the input {tuple(x.shape)}",
                hint=f"choose a convolutional stage: {', '.join(layer_names(model))}")
        (grad,) = torch.autograd.grad(mu.sum(), act, allow_unused=True)
    if grad is None:  # the prediction does not depend on this layer at all
        grad = torch.zeros_like(act)
    with torch.no_grad():
        spatial = tuple(range(2, act.ndim))
        weights = grad.float().mean(dim=spatial, keepdim=True)    # (N, K, 1, 1[, 1])
        cam = (weights * act.detach().float()).sum(dim=1)          # (N, *s)
        if variant == "relu":
            cam = torch.relu(cam)
        cam = _upsample(cam, tuple(x.shape[2:]))
    return cam.detach(), mu.detach()


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown Grad-CAM variant {variant!r}; choose one of "
                          f"{', '.join(VARIANTS)}")
    return variant


def gradcam(models: nn.Module | Sequence[nn.Module], x: np.ndarray | torch.Tensor,
            layer: str = "layer3", variant: str = "relu", batch_size: int | None = None,
            target_std: float | Sequence[float] = 1.0, amp: bool = True,
            members: bool = True) -> MapResult:
    """Grad-CAM maps of one model or an ensemble for a batch of inputs.

    Parameters
    ----------
    models
        A model or a list of models (ensemble members) following the models contract:
        ``forward`` takes ``(N, C, D, H, W)`` (or ``(N, C, H, W)``) and returns ``(N, 2)``.
        Each runs on its own device (the input is moved there).
    x
        Input batch ``(N, C, D, H, W)`` or ``(N, C, H, W)`` on the model grid (numpy or torch).
    layer
        Name of the sub-module whose output is explained (default ``'layer3'``).
    variant
        ``'relu'`` (classic) or ``'signed'`` (positive = older, negative = younger).
    batch_size
        Inputs per forward/backward pass (None: the whole batch at once).
    target_std
        Multiplier of each member's map (one value or one per member): the run's target
        standard deviation(s) express the gradient in years; 1.0 (default) keeps standardised
        units. ``mu`` is always returned in standardised units.
    amp
        bfloat16 autocast for members on CUDA, as prediction uses (default); no effect on the
        CPU. ``False``: float32 throughout.
    members
        Keep every member's map (default). ``False``: only the mean, summed on the device and
        copied to the host once per batch instead of once per member (``members`` is None in
        the result): at the UK Biobank grid each member's map is 58 MB per subject.

    Returns
    -------
    MapResult
        ``members (K, N, *spatial)``, ``mean (N, *spatial)``, ``mu (K, N)``; float32, raw values.
    """
    _check_variant(variant)
    nets = as_model_list(models)
    xb = as_batch(x)
    for m in nets:
        resolve_layer(m, layer)  # fail early, before any compute
    scales = member_scales(target_std, len(nets))
    keep = bool(members)
    out_shape = (*xb.shape[:1], *xb.shape[2:])
    maps = np.zeros((len(nets), *out_shape), dtype=np.float32) if keep else None
    mean = np.zeros(out_shape, dtype=np.float32)
    mus = np.zeros((len(nets), xb.shape[0]), dtype=np.float32)
    modules = [resolve_layer(m, layer) for m in nets]
    with contextlib.ExitStack() as frozen:
        for m in nets:
            frozen.enter_context(eval_frozen(m))
        for sl in _batches(xb.shape[0], batch_size):
            on: dict[torch.device, torch.Tensor] = {}     # the batch once per device
            total = None
            for k, model in enumerate(nets):
                dev = model_device(model)
                if dev not in on:
                    on[dev] = _on_device(xb[sl], dev)
                cam, mu = _gradcam_tensor(model, on[dev], modules[k], layer, variant, amp)
                mus[k, sl] = mu.float().cpu().numpy()
                if keep:
                    maps[k, sl] = cam.float().cpu().numpy() * scales[k]
                else:
                    part = cam.float() * float(scales[k])
                    total = part if total is None else total + part.to(total.device)
            if keep:
                mean[sl] = maps[:, sl].mean(axis=0)
            else:
                mean[sl] = (total / len(nets)).cpu().numpy()
    return MapResult(members=maps, mean=mean, mu=mus, method="gradcam",
                     layer=layer, variant=variant, info={"target_std": scales})


# -- gradient x input (input-resolution attribution) ----------------------------------------------

def gradient_x_input(models: nn.Module | Sequence[nn.Module], x: np.ndarray | torch.Tensor,
                     variant: str = "relu", batch_size: int | None = None,
                     target_std: float | Sequence[float] = 1.0,
                     reference: np.ndarray | torch.Tensor | None = None) -> MapResult:
    """Gradient x input (Shrikumar et al. 2016): ``sum_c x_c * d mu / d x_c`` per voxel.

    A first-order estimate of each voxel's contribution to the predicted age, at the input's
    resolution (no feature-map upsampling). ``variant='relu'`` keeps the positive part (evidence
    for older, like ReLU Grad-CAM), ``'signed'`` keeps the sign, ``'abs'`` the magnitude
    (sensitivity in either direction). Maps are ``(K, N, *spatial)`` float32 like
    :func:`gradcam`, raw values times ``target_std`` (years).

    ``reference`` (same shape as ``x``): attribute relative to a reference image instead of to
    zero, ``sum_c (x_c - r_c) * d mu / d x_c``, the first-order part of ``mu(x) - mu(r)``
    (the baseline of DeepLIFT and integrated gradients). With a population template warped onto
    the subject, voxels where the subject looks like the population get nothing whatever the
    network's gradient there, so the map keeps what is particular to this subject. Zero-based
    maps also credit anatomy that every subject has (the network's gradient in a region it only
    reads as a reference changes with age, and times the input that becomes an age trend there:
    on the demo cohort 0.33 of the trend fell inside the ageing organs, 0.59-0.64 with the atlas
    reference).
    """
    if variant not in VARIANTS + ("abs",):
        raise ConfigError(f"unknown gradient x input variant {variant!r}; choose relu, signed "
                          "or abs")
    members = as_model_list(models)
    xb = as_batch(x)
    rb = None
    if reference is not None:
        rb = as_batch(reference)
        if tuple(rb.shape) != tuple(xb.shape):
            raise ValueError(f"reference of shape {tuple(rb.shape)} for an input of shape "
                             f"{tuple(xb.shape)}")
    scales = member_scales(target_std, len(members))
    maps = np.zeros((len(members), xb.shape[0], *xb.shape[2:]), dtype=np.float32)
    mus = np.zeros((len(members), xb.shape[0]), dtype=np.float32)
    for k, model in enumerate(members):
        dev = model_device(model)
        with eval_frozen(model):
            for sl in _batches(xb.shape[0], batch_size):
                inp = _on_device(xb[sl], dev).requires_grad_(True)
                with torch.enable_grad():
                    mu = predicted_mean(model(inp))
                    (g,) = torch.autograd.grad(mu.sum(), inp, allow_unused=True)
                with torch.no_grad():
                    delta = inp if rb is None else inp - rb[sl].to(dev, inp.dtype)
                    m = (torch.zeros_like(inp) if g is None else g * delta).sum(dim=1)
                    if variant == "relu":
                        m = torch.relu(m)
                    elif variant == "abs":
                        m = m.abs()
                maps[k, sl] = m.float().cpu().numpy() * scales[k]
                mus[k, sl] = mu.detach().float().cpu().numpy()
    return MapResult(members=maps, mean=maps.mean(axis=0), mu=mus, method="gradxinput",
                     layer=None, variant=variant,
                     info={"target_std": scales, "reference": rb is not None})


# -- guided backpropagation and guided Grad-CAM (meant for the 2.5D model) ------------------------

@contextlib.contextmanager
def _guided_relus(model: nn.Module) -> Iterator[int]:
    """Make every ``nn.ReLU`` pass back only positive gradients (guided backpropagation).

    A forward hook registers a gradient hook on each ReLU output that clamps the incoming gradient
    at zero; ReLU's own backward then masks by the positive inputs. Yields the number of ReLU
    modules found; all hooks are removed afterwards.
    """
    handles = []

    def hook(_mod, _inp, out):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda g: g.clamp(min=0))

    try:
        n = 0
        for mod in model.modules():
            if isinstance(mod, nn.ReLU):
                handles.append(mod.register_forward_hook(hook))
                n += 1
        yield n
    finally:
        for h in handles:
            h.remove()


def guided_backprop(models: nn.Module | Sequence[nn.Module], x: np.ndarray | torch.Tensor,
                    batch_size: int | None = None) -> np.ndarray:
    """Guided-backpropagation gradients of ``mu`` w.r.t. the input, per member.

    Returns ``(K, N, C, *spatial)`` float32. Only ReLUs that are ``nn.ReLU`` modules are guided
    (a functional ``F.relu`` in a forward cannot be hooked).
    """
    members = as_model_list(models)
    xb = as_batch(x)
    out = np.zeros((len(members), *xb.shape), dtype=np.float32)
    for k, model in enumerate(members):
        dev = model_device(model)
        with eval_frozen(model), _guided_relus(model):
            for sl in _batches(xb.shape[0], batch_size):
                inp = xb[sl].to(dev).requires_grad_(True)
                with torch.enable_grad():
                    mu = predicted_mean(model(inp))
                    (g,) = torch.autograd.grad(mu.sum(), inp, allow_unused=True)
                if g is not None:
                    out[k, sl] = g.float().cpu().numpy()
    return out


def guided_gradcam(models: nn.Module | Sequence[nn.Module], x: np.ndarray | torch.Tensor,
                   layer: str = "layer3", variant: str = "relu",
                   batch_size: int | None = None,
                   target_std: float | Sequence[float] = 1.0, amp: bool = True) -> MapResult:
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM, per member.

    Designed for the 2.5D model (inputs ``(N, C, H, W)``), works for 3D inputs too. The
    per-channel product is summed over channels, so maps are ``(K, N, *spatial)`` like
    :func:`gradcam`; ``info['grad_cam']`` holds the plain Grad-CAM result's ensemble mean.
    """
    cam = gradcam(models, x, layer=layer, variant=variant, batch_size=batch_size,
                  target_std=target_std, amp=amp)
    guided = guided_backprop(models, x, batch_size=batch_size)    # (K, N, C, *s)
    maps = (guided * cam.members[:, :, None]).sum(axis=2).astype(np.float32)
    return MapResult(members=maps, mean=maps.mean(axis=0), mu=cam.mu, method="guided_gradcam",
                     layer=layer, variant=variant, info={"grad_cam": cam.mean})


def count_hooks(model: nn.Module) -> int:
    """Number of forward/backward hooks on the model's modules (0 after every explain call)."""
    n = 0
    for mod in model.modules():
        n += len(mod._forward_hooks) + len(mod._forward_pre_hooks)
        n += len(mod._backward_hooks) + len(getattr(mod, "_backward_pre_hooks", {}))
    return n
