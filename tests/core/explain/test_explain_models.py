"""Explanation maps on the project's real networks (small widths): 3D ResNet-18, 2D ResNet, VGG."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bodyage_core.errors import BodyageError
from bodyage_core.explain import count_hooks, gradcam, guided_gradcam, occlusion_map
from bodyage_core.models import build_model, list_layers

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def resnet3d():
    torch.manual_seed(0)
    return build_model({"arch": "resnet3d", "in_channels": 2, "width": 4, "hidden": 8}).eval()


def test_resnet3d_all_stages(resnet3d):
    x = torch.randn(2, 2, 24, 16, 20)
    for layer in list_layers(resnet3d):
        for variant in ("relu", "signed"):
            res = gradcam([resnet3d, resnet3d], x, layer=layer, variant=variant, target_std=[2, 2])
            assert res.members.shape == (2, 2, 24, 16, 20)
            assert np.all(np.isfinite(res.mean))
    assert list_layers(resnet3d) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert count_hooks(resnet3d) == 0
    assert all(p.requires_grad for p in resnet3d.parameters())


def test_resnet3d_default_layer_and_error(resnet3d):
    x = torch.randn(1, 2, 16, 16, 16)
    assert gradcam(resnet3d, x).layer == "layer3"
    with pytest.raises(BodyageError) as err:
        gradcam(resnet3d, x, layer="layer5")
    assert "stem, layer1, layer2, layer3, layer4" in str(err.value)


def test_resnet3d_occlusion(resnet3d):
    x = torch.randn(1, 2, 16, 16, 16)
    res = occlusion_map([resnet3d], x, patch=8, stride=8, baseline="mean")
    assert res.mean.shape == (1, 16, 16, 16) and res.info["n_patches"] == 8


@pytest.mark.parametrize("cfg,layer", [
    ({"arch": "resnet2d", "depth": 18, "width": 4}, "layer3"),
    ({"arch": "vgg2d", "width": 4}, "block4"),
])
def test_guided_gradcam_2d_nets(cfg, layer):
    torch.manual_seed(0)
    net = build_model(dict(cfg, in_channels=2, hidden=8)).eval()
    x = torch.randn(2, 2, 64, 64)
    res = guided_gradcam(net, x, layer=layer)
    assert res.mean.shape == (2, 64, 64)
    assert np.all(np.isfinite(res.mean))
    assert count_hooks(net) == 0
    for name in list_layers(net):
        assert gradcam(net, x, layer=name).mean.shape == (2, 64, 64)


def test_vgg_error_lists_its_layers():
    net = build_model({"arch": "vgg2d", "in_channels": 2, "width": 4, "hidden": 8}).eval()
    with pytest.raises(BodyageError) as err:
        gradcam(net, torch.randn(1, 2, 32, 32))  # default 'layer3' is a ResNet name
    assert "features." in str(err.value)
