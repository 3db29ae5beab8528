"""A lightweight fully convolutional 3D age regressor in the style of SFCN (Peng et al. 2021,
"Accurate brain age prediction with lightweight deep neural networks").

Few channels, one 3x3x3 convolution per stage, max-pooling after each, a 1x1x1 channel
reduction, global average pooling and heavy dropout before a single linear output: far fewer
parameters than a ResNet-18, which suits cohorts of a few hundred subjects.

Input ``(N, C, D, H, W)``; output ``(N, 2)``: the mean ``mu`` and the log-variance ``s`` in
standardised target units. Stages are named ``stem, layer1, layer2, layer3, layer4`` like the
ResNets, so Grad-CAM and the GUI find the same layer names (``layer3`` is the last pooled
stage, ``layer4`` the 1x1x1 reduction).
"""

from __future__ import annotations

import torch
from torch import nn

from bodyage_core.models.resnet3d import norm3d


def _stage(cin: int, cout: int, norm: str, pool: bool = True, kernel: int = 3,
           stride: int = 1) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Conv3d(cin, cout, kernel, stride=stride, padding=kernel // 2,
                                       bias=False), norm3d(norm, cout)]
    if pool:
        mods.append(nn.MaxPool3d(2, ceil_mode=True))
    mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class SFCN3D(nn.Module):
    """SFCN-like regressor: channels ``width x (1, 2, 4, 8)``, each stage halving the grid (the
    stem by a stride-2 convolution, the others by max-pooling), then a 1x1x1 reduction to ``4 x width``, average pooling, dropout, linear."""

    def __init__(self, in_channels: int = 1, width: int = 8, dropout: float = 0.5,
                 norm: str = "batch", stem_stride: int = 2):
        super().__init__()
        self.in_channels = in_channels
        self.norm = norm
        w = width
        # a strided stem instead of convolution + pooling at full resolution: ~4x cheaper on a
        # CPU, where the full-resolution maps (not the arithmetic) dominate the time
        self.stem = (_stage(in_channels, w, norm, pool=False, stride=2) if stem_stride == 2
                     else _stage(in_channels, w, norm))
        self.layer1 = _stage(w, 2 * w, norm)
        self.layer2 = _stage(2 * w, 4 * w, norm)
        self.layer3 = _stage(4 * w, 8 * w, norm)
        self.layer4 = _stage(8 * w, 4 * w, norm, pool=False, kernel=1)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(4 * w, 2)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.out.bias)
        with torch.no_grad():
            self.out.weight[1].mul_(0.1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("stem", "layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.pool(self.features(x)).flatten(1)))
