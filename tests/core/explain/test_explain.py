"""Explanation maps: Grad-CAM, occlusion, guided Grad-CAM, randomisation check, hooks.

A tiny 3D CNN following the models contract (stages ``stem, layer1, layer2``, output
``(N, 2) = [mu, log_var]``) is *trained* on synthetic 16^3 volumes whose target is the mean
intensity inside a known box; the maps must put most of their mass inside that box.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bodyage_core.errors import BodyageError
from bodyage_core.explain import (
    count_hooks,
    gradcam,
    gradient_x_input,
    guided_gradcam,
    layer_names,
    occlusion_map,
    randomisation_check,
)

torch.set_num_threads(1)

SHAPE = (16, 16, 16)
BOX = (slice(3, 9), slice(8, 14), slice(5, 11))  # (z, y, x): 216 of 4096 voxels = 5.3 %


class TinyNet3D(nn.Module):
    """Same contract as the 3D ResNet: named stages, ``(N, C, D, H, W) -> (N, 2)``."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(nn.Conv3d(width, width, 3, stride=2, padding=1),
                                    nn.ReLU(inplace=True))
        self.layer2 = nn.Sequential(nn.Conv3d(width, 2 * width, 3, padding=1),
                                    nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(2 * width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.head(self.pool(x).flatten(1))


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise volumes; inside BOX a level ``a ~ U(-1, 1)`` is added; the target is ``a``."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.randn(n, 1, *SHAPE, generator=g)
    a = torch.rand(n, generator=g) * 2 - 1
    x[(slice(None), 0) + BOX] += a[:, None, None, None]
    return x, a


def train(sign: float, seed: int, steps: int = 200) -> nn.Module:
    """A few hundred quick Adam steps of 8 volumes (about 2 s on one thread)."""
    torch.manual_seed(seed)
    model = TinyNet3D()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    x, a = make_data(256, seed)
    model.train()
    for step in range(steps):
        idx = torch.arange(step * 8, step * 8 + 8) % 256
        loss = ((model(x[idx])[:, 0] - sign * a[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def trained():
    return train(+1.0, seed=1)


@pytest.fixture(scope="module")
def inverted():
    return train(-1.0, seed=2)


@pytest.fixture(scope="module")
def test_data():
    x, a = make_data(8, seed=99)
    return x, a


def box_fraction(maps: np.ndarray) -> float:
    """Mean over inputs of the share of |map| mass inside BOX."""
    m = np.abs(maps).reshape(len(maps), *SHAPE)
    inside = m[(slice(None),) + BOX].reshape(len(m), -1).sum(1)
    return float(np.mean(inside / np.maximum(m.reshape(len(m), -1).sum(1), 1e-12)))


UNIFORM = 216 / 4096


def test_model_learned(trained, test_data):
    x, a = test_data
    with torch.no_grad():
        mu = trained(x)[:, 0]
    assert float(torch.mean(torch.abs(mu - a))) < 0.1


def centre_of_mass_in_box(maps: np.ndarray) -> bool:
    m = np.abs(maps).reshape(len(maps), *SHAPE).sum(0)
    grid = np.indices(SHAPE).reshape(3, -1)
    com = (grid * m.ravel()).sum(1) / m.sum()
    return all(sl.start <= c < sl.stop for c, sl in zip(com, BOX))


@pytest.mark.parametrize("layer", ["stem", "layer1", "layer2"])
@pytest.mark.parametrize("variant", ["relu", "signed"])
def test_gradcam_points_at_box(trained, test_data, layer, variant):
    x, a = test_data
    res = gradcam(trained, x, layer=layer, variant=variant)
    assert res.members.shape == (1, 8, *SHAPE)
    assert res.mean.shape == (8, *SHAPE) and res.mean.dtype == np.float32
    a = a.numpy()
    # A box near 0 carries no signal. The ReLU map keeps only evidence that *raises* the
    # prediction, so for a dark box (a < 0: evidence for younger) it is empty there by design.
    keep = a > 0.3 if variant == "relu" else np.abs(a) > 0.3
    frac = box_fraction(res.mean[keep])
    assert frac > 5 * UNIFORM, frac           # uniform map: 0.053; measured 0.3 - 0.55
    assert centre_of_mass_in_box(res.mean[keep])


def test_mean_only_gradcam_equals_the_members_mean(trained, inverted, test_data):
    """``members=False`` (what ``bodyage explain`` uses without --members) sums the maps on the
    device and keeps no member's: the same mean, the same predictions."""
    x, _ = test_data
    both = gradcam([trained, inverted], x, layer="layer1", variant="signed", batch_size=3,
                   target_std=[2.0, 3.0])
    mean = gradcam([trained, inverted], x, layer="layer1", variant="signed", batch_size=3,
                   target_std=[2.0, 3.0], members=False)
    assert mean.members is None and both.members.shape == (2, *both.mean.shape)
    assert np.allclose(mean.mean, both.members.mean(axis=0), atol=1e-6)
    assert np.allclose(mean.mean, both.mean) and np.array_equal(mean.mu, both.mu)


def test_gradcam_from_bfloat16_activations(trained, test_data):
    """What CUDA's bfloat16 autocast hands the map: activations and gradients in bfloat16. The
    map is formed in float32 and matches the float32 one (the CPU stands in for the device by
    running the network itself in bfloat16)."""
    import copy

    from bodyage_core.explain.gradcam import _gradcam_tensor

    x, _ = test_data
    ref, _ = _gradcam_tensor(trained, x, trained.layer1, "layer1", "signed")
    low = copy.deepcopy(trained).to(torch.bfloat16)
    cam, mu = _gradcam_tensor(low, x.to(torch.bfloat16), low.layer1, "layer1", "signed")
    assert cam.dtype == torch.float32 and mu.shape == (len(x),)
    r = np.corrcoef(cam.numpy().ravel(), ref.numpy().ravel())[0, 1]
    assert r > 0.98, r
    assert centre_of_mass_in_box(cam.numpy())


@pytest.mark.parametrize("variant", ["relu", "signed", "abs"])
def test_gradient_x_input_points_at_box(trained, test_data, variant):
    x, a = test_data
    res = gradient_x_input([trained, trained], x, variant=variant, target_std=[2.0, 2.0])
    assert res.members.shape == (2, 8, *SHAPE) and res.method == "gradxinput"
    a = a.numpy()
    keep = a > 0.3 if variant == "relu" else np.abs(a) > 0.3
    frac = box_fraction(res.mean[keep])
    assert frac > 4 * UNIFORM, frac           # uniform map: 0.053; measured 0.26 - 0.35
    if variant == "relu":                     # |.| maps keep diffuse sensitivity around
        assert centre_of_mass_in_box(res.mean[keep])
    if variant != "signed":
        assert (res.mean >= 0).all()
    plain = gradient_x_input(trained, x, variant=variant)
    np.testing.assert_allclose(res.mean, 2.0 * plain.mean, rtol=1e-4, atol=1e-6)
    assert count_hooks(trained) == 0
    with pytest.raises(BodyageError, match="variant"):
        gradient_x_input(trained, x, variant="max")


def test_signed_gradcam_sign_follows_relation(trained, inverted, test_data):
    x, a = test_data
    big = np.abs(a.numpy()) > 0.4
    s_pos = gradcam(trained, x, layer="layer2", variant="signed").mean
    s_neg = gradcam(inverted, x, layer="layer2", variant="signed").mean
    box_pos = s_pos[(slice(None),) + BOX].reshape(8, -1).sum(1)
    box_neg = s_neg[(slice(None),) + BOX].reshape(8, -1).sum(1)
    sign_a = np.sign(a.numpy())
    # positive = evidence for older: with target = a, a bright box (a > 0) raises mu
    assert np.all(np.sign(box_pos[big]) == sign_a[big])
    assert np.all(np.sign(box_neg[big]) == -sign_a[big])


def test_signed_map_negates_with_negated_output(trained, test_data):
    import copy

    x, _ = test_data
    neg = copy.deepcopy(trained)
    with torch.no_grad():
        neg.head.weight[0].neg_()
        neg.head.bias[0].neg_()
    s = gradcam(trained, x[:2], layer="layer2", variant="signed").mean
    s_neg = gradcam(neg, x[:2], layer="layer2", variant="signed").mean
    np.testing.assert_allclose(s_neg, -s, atol=1e-6)


def test_relu_is_positive_part_of_signed(trained, test_data):
    x, _ = test_data
    # Upsampling is linear and ReLU is taken on the coarse map, so compare at full resolution.
    r = gradcam(trained, x[:2], layer="stem", variant="relu").mean
    s = gradcam(trained, x[:2], layer="stem", variant="signed").mean
    np.testing.assert_allclose(r, np.maximum(s, 0), atol=1e-6)


def test_ensemble_mean_and_batching(trained, inverted, test_data):
    x, _ = test_data
    res = gradcam([trained, inverted], x, layer="layer2", batch_size=3)
    assert res.members.shape == (2, 8, *SHAPE) and res.mu.shape == (2, 8)
    np.testing.assert_allclose(res.mean, res.members.mean(0), rtol=1e-6)
    single = gradcam(trained, x, layer="layer2").members[0]
    np.testing.assert_allclose(res.members[0], single, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        np.testing.assert_allclose(res.mu[0], trained(x)[:, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_occlusion_points_at_box(trained, test_data):
    x, a = test_data
    big = np.abs(a.numpy()) > 0.3
    xs = x[torch.as_tensor(big)][:3]
    res = occlusion_map(trained, xs, patch=4, stride=4, batch_size=32)
    assert res.mean.shape == (len(xs), *SHAPE)
    assert res.info["n_patches"] == 64
    assert box_fraction(res.mean) > 5 * UNIFORM
    assert centre_of_mass_in_box(res.mean)
    # occluding a bright box (a > 0) with zeros lowers the prediction: delta > 0 = older evidence
    box_sum = res.mean[(slice(None),) + BOX].reshape(len(xs), -1).sum(1)
    assert np.all(np.sign(box_sum) == np.sign(a.numpy()[big][:3]))


def test_occlusion_mean_baseline_and_coverage(trained, test_data):
    x, _ = test_data
    res = occlusion_map([trained, trained], x[:1], patch=(5, 16, 7), stride=3, baseline="mean",
                        target_std=10.0)
    assert res.members.shape == (2, 1, *SHAPE)
    assert np.all(np.isfinite(res.mean))
    assert res.info["patch"] == [5, 16, 7]
    np.testing.assert_allclose(res.members[0], res.members[1])


def test_unknown_layer_lists_valid_names(trained, test_data):
    x, _ = test_data
    with pytest.raises(BodyageError) as err:
        gradcam(trained, x[:1], layer="layer9")
    msg = str(err.value)
    for name in ("stem", "layer1", "layer2"):
        assert name in msg
    assert layer_names(trained)[:3] == ["stem", "layer1", "layer2"]
    with pytest.raises(BodyageError, match="variant"):
        gradcam(trained, x[:1], layer="layer1", variant="abs")


def test_non_spatial_layer_is_a_clear_error(trained, test_data):
    x, _ = test_data
    with pytest.raises(BodyageError, match="feature map"):
        gradcam(trained, x[:1], layer="head")
    assert count_hooks(trained) == 0


def test_upsampled_shape_anisotropic_input(trained):
    x = torch.randn(2, 1, 12, 20, 16)
    for layer in ("stem", "layer2"):
        res = gradcam(trained, x, layer=layer)
        assert res.mean.shape == (2, 12, 20, 16)


def test_hooks_flags_and_mode_restored(trained, test_data):
    x, _ = test_data
    trained.train()
    try:
        gradcam(trained, x[:2], layer="layer2")
        guided_gradcam(trained, x[:2], layer="layer2")
        occlusion_map(trained, x[:1], patch=8)
        with pytest.raises(BodyageError):
            gradcam(trained, x[:1], layer="head")
        assert count_hooks(trained) == 0
        assert trained.training
        assert all(p.requires_grad for p in trained.parameters())
    finally:
        trained.eval()


class TinyNet2D(nn.Module):
    """A 2.5D-style net: ``(N, C, H, W) -> (N, 2)``, inplace ReLUs as in torchvision."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.layer1(self.stem(x)).mean(dim=(2, 3)))


def test_guided_gradcam_2d():
    torch.manual_seed(0)
    model = TinyNet2D().eval()
    x = torch.randn(3, 2, 24, 20)
    res = guided_gradcam(model, x, layer="layer1")
    assert res.members.shape == (1, 3, 24, 20)
    assert res.info["grad_cam"].shape == (3, 24, 20)
    assert np.all(np.isfinite(res.mean))
    assert count_hooks(model) == 0
    cam2d = gradcam(model, x, layer="layer1")
    assert cam2d.mean.shape == (3, 24, 20)


def test_randomisation_check_passes_trained(trained, test_data):
    x, a = test_data
    big = torch.as_tensor(np.abs(a.numpy()) > 0.3)
    rep = randomisation_check(trained, x[big][:4], layer="layer2", mode="cascading")
    assert rep["passed"] and not rep["flagged"], rep
    assert [s["randomised"][-1] for s in rep["steps"]] == ["head", "layer2", "layer1", "stem"]
    assert count_hooks(trained) == 0
    full = randomisation_check(trained, x[big][:4], layer="layer2", mode="full")
    assert full["passed"], full


class InputEcho(nn.Module):
    """Degenerate: the explained 'layer' is the input itself, the head a global linear read-out —
    every Grad-CAM of it is the input times a constant, whatever the weights."""

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(1, 2)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


def test_randomisation_check_flags_degenerate(test_data):
    x, _ = test_data
    torch.manual_seed(0)
    rep = randomisation_check(InputEcho(), x[:2], layer="features", mode="full",
                              variant="signed")
    assert rep["flagged"] and not rep["passed"]
    assert rep["max_rho"] > 0.99
    assert "FLAGGED" in rep["message"]
