"""2D regressors for the 2.5D projection images (Langner et al.).

Input ``(N, C, H, W)`` float tensors (coronal + sagittal mean-intensity projections side by
side, 2 or 3 channels); output ``(N, 2)``: ``mu`` and log-variance ``s`` in standardised units.

ImageNet weights cannot be downloaded here; :func:`load_weights` accepts a user-supplied
state-dict file (torchvision's ``resnet50`` / ``vgg16_bn`` key layout is understood) and loads
every tensor whose name and shape match, reporting what matched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bodyage_core.errors import BodyageError
from bodyage_core.models.resnet3d import RegressionHead


class BasicBlock2d(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck2d(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


_RESNET_LAYOUTS = {
    18: (BasicBlock2d, (2, 2, 2, 2)),
    34: (BasicBlock2d, (3, 4, 6, 3)),
    50: (Bottleneck2d, (3, 4, 6, 3)),
}


class ResNet2D(nn.Module):
    """2D ResNet-18/34/50 regressor with stages ``stem, layer1..layer4``."""

    def __init__(self, in_channels: int = 2, depth: int = 50, width: int = 64,
                 hidden: int = 256, dropout: float = 0.0):
        super().__init__()
        if depth not in _RESNET_LAYOUTS:
            raise BodyageError(f"ResNet2D depth must be one of {sorted(_RESNET_LAYOUTS)}, "
                               f"got {depth}")
        block, layers = _RESNET_LAYOUTS[depth]
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        inp = width
        stages = []
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            mods = []
            for j in range(n):
                mods.append(block(inp, planes, 2 if (j == 0 and i > 0) else 1))
                inp = planes * block.expansion
            stages.append(nn.Sequential(*mods))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = RegressionHead(inp, hidden, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(self.pool(x).flatten(1))


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M")


class VGG2D(nn.Module):
    """VGG16 with batch norm (torchvision ``vgg16_bn`` layout of ``features``) as a regressor.

    ``width`` scales the channel counts (64 reproduces VGG16); the classifier is replaced by
    global average pooling -> hidden -> (mu, log_var). Grad-CAM layers are ``block1..block5``
    (aliases of the ReLU closing each block, see :func:`bodyage_core.models.list_layers`).
    """

    def __init__(self, in_channels: int = 2, width: int = 64, hidden: int = 256,
                 dropout: float = 0.0):
        super().__init__()
        self.in_channels = in_channels
        mods: list[nn.Module] = []
        c = in_channels
        self.block_ends: list[int] = []
        for v in _VGG16:
            if v == "M":
                self.block_ends.append(len(mods) - 1)  # the ReLU before the pool
                mods.append(nn.MaxPool2d(2, 2))
            else:
                out = int(v) * width // 64
                mods += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out),
                         nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*mods)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = RegressionHead(c, hidden, dropout)

    def block_layer_names(self) -> dict[str, str]:
        return {f"block{i + 1}": f"features.{j}" for i, j in enumerate(self.block_ends)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def _torchvision_key(key: str) -> str:
    """Map torchvision ResNet key names onto ours (``conv1`` -> ``stem.0``, ``bn1`` -> ``stem.1``)."""
    if key.startswith("conv1."):
        return "stem.0." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "stem.1." + key[len("bn1."):]
    return key


def load_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Partially load a user-supplied weights file into ``model``.

    Every tensor whose (mapped) name exists in ``model`` with the same shape is copied; a first
    convolution with another number of input channels is adapted by averaging over the file's
    input channels. Returns ``{"matched": [...], "adapted": [...], "skipped": [...],
    "missing": [...]}`` (``missing``: model tensors the file did not provide).
    """
    path = Path(path)
    if not path.is_file():
        raise BodyageError("weights file not found", path=path,
                           hint="give the path of a PyTorch state-dict (.pt/.pth) file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise BodyageError(f"cannot read weights file ({type(exc).__name__}: {exc})", path=path,
                           hint="save it with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BodyageError("weights file does not hold a state dict", path=path)
    own = model.state_dict()
    report: dict[str, list[str]] = {"matched": [], "adapted": [], "skipped": [], "missing": []}
    new_state = {}
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        k = key[7:] if key.startswith("module.") else key
        k = k if k in own else _torchvision_key(k)
        if k not in own:
            report["skipped"].append(key)
            continue
        target = own[k]
        if target.shape == tensor.shape:
            new_state[k] = tensor.to(target.dtype)
            report["matched"].append(k)
        elif (tensor.ndim == target.ndim and tensor.ndim >= 4
              and tensor.shape[0] == target.shape[0] and tensor.shape[2:] == target.shape[2:]):
            mean = tensor.mean(dim=1, keepdim=True)
            scale = tensor.shape[1] / target.shape[1]
            new_state[k] = (mean.expand_as(target) * scale).to(target.dtype).clone()
            report["adapted"].append(k)
        else:
            report["skipped"].append(key)
    model.load_state_dict(new_state, strict=False)
    loaded = set(new_state)
    report["missing"] = [k for k in own if k not in loaded]
    if not loaded:
        raise BodyageError("no tensor in the weights file matches the model", path=path,
                           hint="use weights of the same architecture (e.g. torchvision "
                                "resnet50 or vgg16_bn)")
    return report
