"""Registration parameters, for both engines, without either engine.

The SimpleITK stages (:mod:`bodyage_core.registration.register`) and the torch engine
(:mod:`bodyage_core.registration.torch_engine`) read the same :class:`RegistrationConfig`;
the torch engine's own parameters (:class:`TorchConfig`, its presets) live here too, so that a
configuration can be checked, stored and fingerprinted without importing torch or SimpleITK.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from bodyage_core.errors import ConfigError

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
    # engine (see ENGINES); the torch engine's preset (PRESETS), device (auto, cpu,
    # cuda) and overrides of the preset's fields (TorchConfig)
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


@dataclass(frozen=True)
class TorchConfig:
    """The torch engine's parameters. Per-level tuples run coarse to fine; shrink factors are
    of the reference grid."""

    similarity: str = "lncc"                 # lncc | mse, on every channel used
    window: int = 3                          # LNCC box, voxels of each level
    # added to the product of the local variances (intensities scaled to ~1): windows whose
    # variance is below about its square root stop counting, and those near it pull towards
    # more local contrast. 1e-4 reached ordinary tissue contrast (local sd ~0.1): an image
    # registered to itself moved 15-30 mm on a coarse grid, organ Dice 0.02 lower on the
    # default grid; 1e-12 let the synthetic images' flat regions in (identity Dice 0.95
    # against 1.0); 1e-8 is still far above float32's rounding of the variances
    lncc_eps: float = 1e-8
    levels: tuple[int, ...] = (4, 2)         # deformable pyramid shrink factors
    iterations: tuple[int, ...] = (40, 20)
    lr_mm: float = 1.0                       # Adam step of the velocity coefficients, mm
    # control-point spacing at the finest level, mm along x, y, z; the same number of voxels
    # apart on every level's grid (coarser levels: proportionally coarser meshes, as deepali)
    control_mm: tuple[float, float, float] = (17.9, 17.9, 24.0)
    bending: float = 0.002                   # weight of the bending energy (normalised units)
    steps: int = 5                           # scaling and squaring while optimising
    # the velocity is integrated on each level's grid shrunk this much more, and its
    # displacement upsampled to warp: the field is a B-spline of control spacing of several
    # voxels, smooth at that resolution, and the squaring steps are most of an iteration's cost
    field_shrink: int = 2
    final_steps: int = 7                     # ... for the saved fields (the last level)
    affine_levels: tuple[int, ...] = (8, 4)
    affine_iterations: tuple[int, ...] = (40, 20)
    affine_lr: float = 0.01                  # Adam step of the linear part (unitless) and of
    affine_translation_mm: float = 100.0     # the translation, in units of this many mm
    affine_window: int = 5
    dtype: str = "float32"

    def validate(self) -> TorchConfig:
        if self.similarity not in ("lncc", "mse"):
            raise ConfigError(f"unknown torch similarity {self.similarity!r}", hint="lncc or mse")
        if len(self.levels) != len(self.iterations) or not self.levels:
            raise ConfigError("torch levels and iterations need one entry per level")
        if len(self.affine_levels) != len(self.affine_iterations):
            raise ConfigError("torch affine_levels and affine_iterations need one entry per level")
        if min(self.levels + self.affine_levels + (self.field_shrink,)) < 1 \
                or len(self.control_mm) != 3 or min(self.control_mm) <= 0:
            raise ConfigError("torch shrink factors must be >= 1 and control_mm three positive "
                              "numbers")
        if not _number(self.lncc_eps) or self.lncc_eps <= 0:
            raise ConfigError(f"torch lncc_eps must be a positive number, got {self.lncc_eps!r}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"torch dtype must be float32 or float64, got {self.dtype!r}")
        return self


#: ``paper``: the paper's registration (deepali SVF FFD, LNCC, bending energy 0.01, control
#: point stride 4 x 4 x 8 voxels (x, y, z) of the 2.232 x 2.232 x 3 mm UK Biobank grid, 3
#: levels), expressed in mm so that it means the same mesh on any reference grid. ``fast``: the
#: CPU default (TorchConfig's defaults), two levels ending at half resolution (the B-spline
#: field is smooth at that spacing; its finest level costs 1/8 of the full grid's), LNCC over
#: 3-voxel boxes, bending 0.002, 40 + 20 iterations: tuned on the default synthetic grid
#: (bench/bench_registration_engines.py), where it reaches the SimpleITK engine's organ Dice
#: in under half its CPU time.
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {},
    "paper": {"levels": (4, 2, 1), "iterations": (100, 100, 100), "field_shrink": 1,
              "control_mm": (4 * 2.232, 4 * 2.232, 8 * 3.0), "bending": 0.01, "window": 5,
              "affine_levels": (4, 2), "affine_iterations": (100, 50)},
}


def torch_config(rcfg) -> TorchConfig:
    """The :class:`TorchConfig` of a RegistrationConfig (its preset plus its overrides)."""
    if rcfg.torch_preset not in PRESETS:
        raise ConfigError(f"unknown torch registration preset {rcfg.torch_preset!r}",
                          hint=f"use one of {', '.join(PRESETS)}")
    opts = {**PRESETS[rcfg.torch_preset], **(rcfg.torch_options or {})}
    names = {f.name for f in fields(TorchConfig)}
    unknown = set(opts) - names
    if unknown:
        raise ConfigError(f"unknown torch registration option(s): {', '.join(sorted(unknown))}",
                          hint=f"valid: {', '.join(sorted(names))}")
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}
    try:
        return replace(TorchConfig(), **opts).validate()
    except TypeError as err:
        raise ConfigError(f"bad torch registration options ({err})") from None


def config_summary(rcfg) -> dict[str, Any]:
    return asdict(torch_config(rcfg))
