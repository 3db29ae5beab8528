"""3D ResNet-18 age regressor (Starck et al.), written from scratch.

Input ``(N, C, D, H, W)`` float tensor (D = z, H = y, W = x of the Volume's numpy order);
output ``(N, 2)``: column 0 the mean ``mu``, column 1 the log-variance ``s``, both in
standardised target units.
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "group", "instance")


def norm3d(kind: str, channels: int) -> nn.Module:
    """Normalisation layer: ``batch`` (the paper's), ``group`` (8 groups at most, robust to the
    small batches of 3D training on a CPU) or ``instance``."""
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        groups = max(1, min(8, channels // 2))
        while channels % groups:
            groups -= 1
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    raise ValueError(f"unknown normalisation {kind!r}; use one of {NORMS}")


class BasicBlock3d(nn.Module):
    """Two 3x3x3 convolutions with normalisation and an identity (or 1x1x1 projection)
    shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "batch"):
        super().__init__()
        self.conv1 = nn.Conv3d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm3d(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm3d(norm, planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_planes, planes, 1, stride=stride, bias=False),
                norm3d(norm, planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class RegressionHead(nn.Module):
    """Global average pool -> hidden -> ReLU -> (mu, log_var)."""

    def __init__(self, in_features: int, hidden: int = 256, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(hidden, 2)
        nn.init.zeros_(self.out.bias)
        with torch.no_grad():
            # Start with a small log-variance spread so the mean-variance loss is stable.
            self.out.weight[1].mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.relu(self.fc1(x))))


class ResNet3D(nn.Module):
    """3D ResNet regressor; ``layers=(2, 2, 2, 2)`` is ResNet-18.

    Parameters
    ----------
    in_channels
        Image channels (1 for T1, 2 for water + fat).
    width
        Channels of the stem and ``layer1``; later stages double it (64 is the paper's).
    layers
        BasicBlocks per stage.
    hidden
        Units of the hidden layer before the output.
    stem_stride
        Stride of the 7x7x7 stem convolution; the stem also max-pools by 2 when ``stem_pool``.
    norm
        ``batch`` (default, as the paper), ``group`` or ``instance`` normalisation.
    """

    def __init__(self, in_channels: int = 1, width: int = 64,
                 layers: tuple[int, int, int, int] = (2, 2, 2, 2), hidden: int = 256,
                 dropout: float = 0.0, stem_stride: int = 2, stem_pool: bool = True,
                 norm: str = "batch"):
        super().__init__()
        self.in_channels = in_channels
        self.norm = norm
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, width, 7, stride=stem_stride, padding=3, bias=False),
            norm3d(norm, width),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1) if stem_pool else nn.Identity(),
        )
        planes = width
        self.layer1 = self._make_layer(width, planes, layers[0], 1, norm)
        self.layer2 = self._make_layer(planes, planes * 2, layers[1], 2, norm)
        self.layer3 = self._make_layer(planes * 2, planes * 4, layers[2], 2, norm)
        self.layer4 = self._make_layer(planes * 4, planes * 8, layers[3], 2, norm)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = RegressionHead(planes * 8, hidden, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # zero-init the last BN of each block: a stable start
            if isinstance(m, BasicBlock3d):
                nn.init.zeros_(m.bn2.weight)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, blocks: int, stride: int,
                    norm: str = "batch") -> nn.Sequential:
        mods = [BasicBlock3d(in_planes, planes, stride, norm)]
        mods += [BasicBlock3d(planes, planes, 1, norm) for _ in range(blocks - 1)]
        return nn.Sequential(*mods)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.pool(self.features(x)).flatten(1)
        return self.head(f)
