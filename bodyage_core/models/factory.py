"""Build an age network from a JSON-able config and list its Grad-CAM layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from bodyage_core.errors import ConfigError
from bodyage_core.models.nets2d import VGG2D, ResNet2D, load_weights
from bodyage_core.models.resnet3d import NORMS, ResNet3D
from bodyage_core.models.sfcn3d import SFCN3D

ARCHS = ("resnet3d", "sfcn3d", "resnet2d", "vgg2d")
#: Architectures taking ``(N, C, D, H, W)`` volumes; the others take ``(N, C, H, W)`` images.
ARCHS_3D = ("resnet3d", "sfcn3d")

DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "arch": "resnet3d",
    "in_channels": 1,
    "width": 64,
    "depth": 18,          # ResNet depth (3D: 18 only; 2D: 18/34/50)
    "hidden": 256,
    "dropout": 0.0,
    "norm": "batch",      # 3D ResNet normalisation: batch | group | instance
    "weights": None,      # optional user-supplied state-dict file (2D nets)
}


def model_config(config: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """A full model config: defaults, updated with ``config`` and ``overrides``."""
    cfg = dict(DEFAULT_MODEL_CONFIG)
    if config:
        cfg.update({k: v for k, v in config.items() if k in DEFAULT_MODEL_CONFIG})
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if cfg["arch"] == "resnet2d" and config is not None and "depth" not in config \
            and "depth" not in overrides:
        cfg["depth"] = 50
    return cfg


def is_3d(config: Mapping[str, Any]) -> bool:
    return model_config(config)["arch"] in ARCHS_3D


def build_model(config: Mapping[str, Any] | None = None, **overrides: Any) -> nn.Module:
    """Build the network described by ``config`` (see :data:`DEFAULT_MODEL_CONFIG`).

    A ``weights`` path (2D nets) is partially loaded; the load report is kept on the model as
    ``model.weights_report``.
    """
    cfg = model_config(config, **overrides)
    arch = cfg["arch"]
    ch, width, hidden = int(cfg["in_channels"]), int(cfg["width"]), int(cfg["hidden"])
    if ch < 1 or width < 1 or hidden < 1:
        raise ConfigError(f"in_channels, width and hidden must be positive, got {ch}, {width}, "
                          f"{hidden}")
    if arch == "resnet3d":
        if int(cfg["depth"]) != 18:
            raise ConfigError(f"the 3D ResNet is ResNet-18 only, got depth {cfg['depth']}")
        if cfg["norm"] not in NORMS:
            raise ConfigError(f"unknown normalisation {cfg['norm']!r}",
                              hint=f"use one of {', '.join(NORMS)}")
        model: nn.Module = ResNet3D(ch, width, hidden=hidden, dropout=float(cfg["dropout"]),
                                    norm=cfg["norm"])
    elif arch == "sfcn3d":
        if cfg["norm"] not in NORMS:
            raise ConfigError(f"unknown normalisation {cfg['norm']!r}",
                              hint=f"use one of {', '.join(NORMS)}")
        model = SFCN3D(ch, width, dropout=float(cfg["dropout"]), norm=cfg["norm"])
    elif arch == "resnet2d":
        model = ResNet2D(ch, int(cfg["depth"]), width, hidden, float(cfg["dropout"]))
    elif arch == "vgg2d":
        model = VGG2D(ch, width, hidden, float(cfg["dropout"]))
    else:
        raise ConfigError(f"unknown model architecture {arch!r}", hint=f"use one of {ARCHS}")
    model.weights_report = None  # type: ignore[attr-defined]
    if cfg.get("weights"):
        model.weights_report = load_weights(model, cfg["weights"])  # type: ignore[attr-defined]
    return model


def list_layers(model: nn.Module) -> list[str]:
    """Valid Grad-CAM layer names of ``model`` (module names usable with ``get_submodule``).

    ResNets and the SFCN: ``stem, layer1, layer2, layer3, layer4``; VGG: ``features.<i>`` of
    the ReLU that closes each of the five blocks.
    """
    if isinstance(model, VGG2D):
        return list(model.block_layer_names().values())
    names = dict(model.named_children())
    return [n for n in ("stem", "layer1", "layer2", "layer3", "layer4") if n in names]
