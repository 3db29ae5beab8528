"""Age networks, ensembles and trained runs.

Every network's ``forward(x)`` takes ``(N, C, D, H, W)`` (3D) or ``(N, C, H, W)`` (2.5D) float
tensors and returns ``(N, 2)``: the mean ``mu`` and the log-variance ``s`` in standardised
target units.
"""

from bodyage_core.models.factory import (
    ARCHS,
    DEFAULT_MODEL_CONFIG,
    build_model,
    is_3d,
    list_layers,
    model_config,
)
from bodyage_core.models.nets2d import VGG2D, ResNet2D, load_weights
from bodyage_core.models.resnet3d import ResNet3D
from bodyage_core.models.sfcn3d import SFCN3D

__all__ = [
    "ARCHS", "DEFAULT_MODEL_CONFIG", "ResNet2D", "ResNet3D", "SFCN3D", "VGG2D", "build_model",
    "is_3d", "list_layers", "load_weights", "model_config",
]
