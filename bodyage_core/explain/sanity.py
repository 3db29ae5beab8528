"""Model-randomisation sanity check for explanation maps (Adebayo et al. 2018).

If a saliency method shows the same map for a trained model and for the same architecture with
re-initialised (random) weights, the map tells about the input (edges, intensity), not about what
the model learned. :func:`randomisation_check` re-initialises a copy of the model — cascading from
the top stage down to the stem, or everything at once — recomputes the map at every step and
compares it with the trained model's map by Spearman rank correlation. It flags the check when a
randomised model's map is too similar (|rho| above a threshold).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from bodyage_core.errors import ConfigError
from bodyage_core.explain.gradcam import as_batch, gradcam, resolve_layer

MODES = ("cascading", "full")


def _reinit(module: nn.Module) -> int:
    """Re-initialise every sub-module that has ``reset_parameters``; returns how many."""
    n = 0
    for mod in module.modules():
        reset = getattr(mod, "reset_parameters", None)
        if callable(reset):
            reset()
            n += 1
        elif hasattr(mod, "reset_running_stats"):
            mod.reset_running_stats()
    return n


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation of two maps (flattened); None when either map is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    rho = stats.spearmanr(a, b).statistic
    return None if not np.isfinite(rho) else float(rho)


def _mean_rho(maps_a: np.ndarray, maps_b: np.ndarray) -> float | None:
    """Mean over inputs of the per-input Spearman rho (None when no input gives one)."""
    vals = [spearman(a, b) for a, b in zip(maps_a, maps_b)]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def randomisation_check(model: nn.Module, x: np.ndarray | torch.Tensor, layer: str = "layer3",
                        mode: str = "cascading", threshold: float = 0.5,
                        variant: str = "relu", method: str = "gradcam", seed: int = 0,
                        absolute: bool = True, **method_kwargs: Any) -> dict[str, Any]:
    """Compare the trained model's maps with those of re-initialised copies.

    Parameters
    ----------
    model
        The trained model (left untouched: a deep copy is randomised).
    x
        Input batch ``(N, C, D, H, W)`` or ``(N, C, H, W)``.
    layer
        Grad-CAM layer (ignored by ``method='occlusion'``).
    mode
        ``'cascading'``: re-initialise the top-level stages one after another from the output side
        (head first, stem last), a map after each; ``'full'``: all weights at once.
    threshold
        The check is flagged when any randomised map has a rank correlation above it.
    variant
        Grad-CAM variant (``'relu'`` or ``'signed'``).
    method
        ``'gradcam'`` or ``'occlusion'`` (``method_kwargs`` go to :func:`occlusion_map`).
    seed
        Seed of the re-initialisation (the global torch RNG is left as it was).
    absolute
        Compare ``|rho|`` with the threshold (a sign-flipped copy of the map is as suspicious as
        the map itself).

    Returns
    -------
    dict
        ``{'mode', 'layer', 'method', 'variant', 'threshold', 'steps': [{'randomised': [...],
        'rho': float | None}], 'max_rho': float | None, 'flagged': bool, 'passed': bool,
        'message': str}``. ``rho`` is the mean over the batch of the per-input Spearman rho;
        None when a map is constant (a randomised model with an all-zero ReLU map is *different*).
    """
    if mode not in MODES:
        raise ConfigError(f"unknown randomisation mode {mode!r}; choose {', '.join(MODES)}")
    xb = as_batch(x)

    def maps(m: nn.Module) -> np.ndarray:
        if method == "gradcam":
            return gradcam(m, xb, layer=layer, variant=variant).mean
        if method == "occlusion":
            from bodyage_core.explain.occlusion import occlusion_map

            return occlusion_map(m, xb, **method_kwargs).mean
        raise ConfigError(f"unknown method {method!r}; use gradcam or occlusion")

    if method == "gradcam":
        resolve_layer(model, layer)
    reference = maps(model)
    work = copy.deepcopy(model)
    stages = [(name, mod) for name, mod in work.named_children()
              if any(True for _ in mod.parameters()) or any(True for _ in mod.buffers())]
    if not stages:  # a model without sub-modules: randomise it as a whole
        stages = [("(all)", work)]
    steps: list[dict[str, Any]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if mode == "full":
            _reinit(work)
            steps.append({"randomised": [n for n, _ in stages], "rho": _mean_rho(reference,
                                                                                maps(work))})
        else:
            done: list[str] = []
            for name, mod in reversed(stages):
                _reinit(mod)
                done.append(name)
                steps.append({"randomised": list(done), "rho": _mean_rho(reference, maps(work))})
    rhos = [s["rho"] for s in steps if s["rho"] is not None]
    scores = [abs(r) if absolute else r for r in rhos]
    max_rho = float(max(scores)) if scores else None
    flagged = max_rho is not None and max_rho > threshold
    if flagged:
        worst = max((s for s in steps if s["rho"] is not None),
                    key=lambda s: abs(s["rho"]) if absolute else s["rho"])
        message = (f"FLAGGED: the map with {', '.join(worst['randomised'])} randomised has rank "
                   f"correlation {worst['rho']:.2f} with the trained model's map (threshold "
                   f"{threshold}); the map may reflect the input rather than what the model "
                   "learned")
    else:
        shown = "n/a (constant maps)" if max_rho is None else f"{max_rho:.2f}"
        message = (f"passed: randomised models give different maps (max |rho| {shown} <= "
                   f"{threshold})")
    return {"mode": mode, "layer": layer if method == "gradcam" else None, "method": method,
            "variant": variant, "threshold": float(threshold), "steps": steps,
            "max_rho": max_rho, "flagged": bool(flagged), "passed": not flagged,
            "message": message}
