"""The torch registration engine: conventions against the SimpleITK transform files, recovery
of a known deformation, diffeomorphism, agreement with the SimpleITK engine, batching, dtype /
device, and ``--engine`` reaching it from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from bodyage_core.registration import RegistrationConfig, SubjectTransform, register, warp_map
from bodyage_core.registration import torch_svf as S
from bodyage_core.registration.torch_engine import register_batch
from bodyage_core.registration.torch_geometry import (
    affine_from_itk,
    affine_to_itk,
    field_from_itk,
    field_to_itk,
    normalised_to_world,
)
from bodyage_core.registration.transform import LABEL_INTERPOLATION
from bodyage_core.synth.params import sample_subject
from bodyage_core.synth.phantom import generate_subject
from bodyage_core.volume import Volume

GRID = (14.0, 14.0, 18.0)     # 36 x 28 x 62 voxels
QUICK = {"iterations": (30, 15), "affine_iterations": (40, 20)}


def _subject(i: int):
    s = generate_subject(sample_subject(0, 6 * i), grid=GRID)
    vol = Volume(np.concatenate([s.water.data, s.fat.data]), s.water.affine,
                 channels=("water", "fat"))
    return vol, np.asarray(s.labels.data[0])


@pytest.fixture(scope="module")
def subjects():
    return [_subject(i) for i in range(3)]


def _cfg(**kw):
    return RegistrationConfig(engine="torch", torch_device="cpu", threads=1,
                              torch_options={**QUICK, **kw.pop("opts", {})}, **kw)


def _known_transform(fixed: Volume, seed: int = 0) -> SubjectTransform:
    """A smooth diffeomorphism plus a 1.5-voxel shift, as a SubjectTransform."""
    g = torch.Generator().manual_seed(seed)
    size = fixed.shape
    stride = (6, 4, 4)
    coef = 0.02 * torch.randn(1, 3, *S.control_grid_shape(size, stride), generator=g,
                              dtype=torch.float64)
    v = S.bspline_dense(coef, stride, size)
    ident = S.identity_grid(size, "cpu", torch.float64)
    fwd, inv = S.exp_velocity(v, 7, ident)[0], S.exp_velocity(-v, 7, ident)[0]
    m = np.eye(4)
    m[:3, 3] = [1.5 * fixed.spacing[0], 0.0, -1.5 * fixed.spacing[2]]
    return SubjectTransform(affine_to_itk(m), size, fixed.affine,
                            field_to_itk(fwd, size, fixed.affine),
                            field_to_itk(inv, size, fixed.affine))


def test_lps_round_trip_and_sampling_convention(subjects):
    """The fields and affine the engine writes mean, through SimpleITK, the point map it
    sampled with: Theta (g + d(g)) in normalised terms is T(p) = A(p + u(p)) in LPS mm."""
    fixed, moving = subjects[0][0], subjects[1][0]
    m = np.eye(4)
    m[:3, :3] = [[1.05, 0.02, 0.0], [-0.01, 0.97, 0.03], [0.0, 0.02, 1.1]]
    m[:3, 3] = [4.0, -7.0, 12.0]
    tx = affine_to_itk(m)
    assert np.allclose(affine_from_itk(tx), m)
    g = torch.Generator().manual_seed(1)
    d = 0.03 * torch.randn(3, *fixed.shape, generator=g, dtype=torch.float64)
    img = field_to_itk(d, fixed.shape, fixed.affine)
    assert np.allclose(field_from_itk(img, fixed.shape, fixed.affine), d.numpy())
    st = SubjectTransform(tx, fixed.shape, fixed.affine, img, img).to_reference()
    n2w_f = normalised_to_world(fixed.shape, fixed.affine)
    w2n_m = np.linalg.inv(normalised_to_world(moving.shape, moving.affine))
    theta = w2n_m @ m @ n2w_f
    flip = np.diag([-1.0, -1.0, 1.0])
    for z, y, x in [(3, 5, 7), (30, 14, 20), (50, 20, 30)]:
        gn = 2 * np.array([x, y, z]) / (np.array(fixed.shape[::-1]) - 1) - 1
        q_norm = theta[:3, :3] @ (gn + d[:, z, y, x].numpy()) + theta[:3, 3]
        q_ras = normalised_to_world(moving.shape, moving.affine) @ np.r_[q_norm, 1]
        p_ras = fixed.affine @ np.array([x, y, z, 1.0])
        q_lps = np.array(st.TransformPoint(tuple(flip @ p_ras[:3])))
        assert np.allclose(flip @ q_lps, q_ras[:3], atol=1e-6)


def test_recovers_known_deformation(subjects):
    """A subject made by warping the reference with a known transform ``T``: ``moving(p) =
    fixed(T(p))``, so the registration of ``moving`` to ``fixed`` (reference points ->
    subject points, ``fixed(p) ~ moving(T_est(p))``) recovers ``T^-1``, and its inverse field
    recovers ``T``; both within a voxel at the organ voxels."""
    fixed, labels = subjects[0]
    truth = _known_transform(fixed)
    moving = warp_map(fixed, truth, fixed, "linear")
    res = register(moving, fixed, _cfg(opts={"iterations": (60, 40), "control_mm": (28, 28, 36)}))
    assert res.ok, res.quality["reasons"]
    mask = labels > 0
    zyx = np.argwhere(mask)[::37]
    pts = [tuple(np.diag([-1.0, -1.0, 1.0]) @ (fixed.affine @ np.r_[p[::-1], 1.0])[:3])
           for p in zyx]
    spacing = np.array(fixed.spacing)

    def mean_error(est, true):
        err = np.array([np.subtract(est.TransformPoint(p), true.TransformPoint(p))
                        for p in pts])
        return np.linalg.norm(err / spacing, axis=1).mean()

    shift = np.linalg.norm([np.subtract(truth.to_subject().TransformPoint(p), p) / spacing
                            for p in pts], axis=1).mean()
    assert shift > 1.5                      # the truth moves the organs ~2 voxels
    assert mean_error(res.transform.to_reference(), truth.to_subject()) < 1.0
    assert mean_error(res.transform.to_subject(), truth.to_reference()) < 1.0
    assert res.quality["jacobian_min"] > 0


def test_diffeomorphic_and_quality_block(subjects, tmp_path):
    (fixed, fl), (moving, ml) = subjects[0], subjects[1]
    res = register(moving, fixed, _cfg(), moving_labels=ml, fixed_labels=fl)
    q = res.quality
    assert q["status"] == "ok" and q["engine"] == "torch"
    assert q["folding_fraction"] == 0.0 and q["jacobian_min"] > 0
    before = np.mean([np.mean((ml == k) == (fl == k)) for k in (1,)])
    assert q["dice_labels_mean"] > 0.5 and before is not None
    for key in ("dice_body", "ncc", "ncc_before", "affine_det", "max_displacement_mm",
                "seconds", "reasons"):
        assert key in q
    # the same files as the SimpleITK engine, and warping after a reload agrees
    res.transform.save(tmp_path)
    back = SubjectTransform.load(tmp_path)
    a = warp_map(Volume(ml, moving.affine), back, fixed, LABEL_INTERPOLATION).data[0]
    assert np.mean(a == res.warped_labels.data[0]) > 0.999
    inv = warp_map(Volume(fl, fixed.affine), back, moving, LABEL_INTERPOLATION,
                   inverse=True).data[0]
    assert np.mean(inv == ml) > 0.7


def _shifted(vol: Volume, labels, voxels=(2, -1, 1)):
    """The same data on a grid moved by whole voxels: a pure translation in world space."""
    aff = vol.affine.copy()
    aff[:3, 3] += np.asarray(voxels) * np.asarray(vol.spacing)
    return Volume(vol.data, aff, channels=vol.channels), labels


@pytest.mark.parametrize("case", ["identity", "translation"])
def test_warped_labels_match_sitk(subjects, case):
    fixed, fl = subjects[0]
    moving, ml = (fixed, fl) if case == "identity" else _shifted(fixed, fl)
    t = register(moving, fixed, _cfg(), moving_labels=ml, fixed_labels=fl)
    s = register(moving, fixed, RegistrationConfig(threads=1, demons_iterations=(10, 5, 2)),
                 moving_labels=ml, fixed_labels=fl)
    assert t.ok and s.ok
    body = fl > 0
    agree = np.mean(t.warped_labels.data[0][body] == s.warped_labels.data[0][body])
    assert agree > 0.93
    assert t.quality["dice_labels_mean"] > 0.9
    assert t.quality["dice_labels_mean"] >= s.quality["dice_labels_mean"] - 0.03


def test_batched_equals_unbatched(subjects):
    fixed, fl = subjects[0]
    movs = [subjects[1][0], subjects[2][0]]
    cfg = _cfg(opts={"iterations": (15, 5), "affine_iterations": (20, 10)})
    both = register_batch(movs, fixed, cfg)
    for i, mov in enumerate(movs):
        one = register_batch([mov], fixed, cfg)[0]
        a = sitk.GetArrayFromImage(both[i].transform.forward_field)
        b = sitk.GetArrayFromImage(one.transform.forward_field)
        assert np.abs(a - b).max() < 0.05            # mm
        assert np.allclose(both[i].transform.affine_matrix, one.transform.affine_matrix,
                           atol=1e-3)
        assert both[i].quality["batch"] == 2


def test_dtype_and_device_arguments(subjects):
    """The device/dtype-generic path: float64 on the CPU gives the float32 result (what the
    CUDA run is checked against below, where a GPU exists)."""
    fixed, moving = subjects[0][0], subjects[1][0]
    cfg = _cfg(opts={"iterations": (10, 5), "affine_iterations": (15, 5)})
    r32 = register_batch([moving], fixed, cfg, device="cpu", dtype=torch.float32)[0]
    r64 = register_batch([moving], fixed, cfg, device=torch.device("cpu"), dtype="float64")[0]
    a = sitk.GetArrayFromImage(r32.transform.forward_field)
    b = sitk.GetArrayFromImage(r64.transform.forward_field)
    assert np.abs(a - b).max() < 0.2
    assert abs(r32.quality["dice_body"] - r64.quality["dice_body"]) < 0.01
    if torch.cuda.is_available():
        rc = register_batch([moving], fixed, cfg, device="cuda")[0]
        c = sitk.GetArrayFromImage(rc.transform.forward_field)
        assert np.abs(a - c).max() < 0.2 and rc.quality["device"].startswith("cuda")


def _smooth_image(seed=0, size=(12, 10, 14), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return S.gaussian_smooth(torch.rand(1, 2, *size, generator=g, dtype=dtype), 1.5)


def test_sampling_gradient_is_central_and_dtype_free():
    """At the voxel centres (where the engine samples while the displacement is zero) the
    gradient with respect to the sampling points is the central difference, the same in float32
    and float64; trilinear interpolation's own gradient there is one-sided, its side chosen by
    the coordinates' rounding (the cause of fields 5.5 mm apart between the two dtypes)."""
    img64 = _smooth_image()
    size = tuple(img64.shape[2:])
    grads = {}
    for dt in (torch.float32, torch.float64):
        img = img64.to(dt)
        grid = S.identity_grid(size, "cpu", dt).requires_grad_(True)
        w = torch.linspace(-1, 1, img.numel(), dtype=dt).view_as(img)
        (S.sample_image(img, grid) * w).sum().backward()
        grads[dt] = grid.grad.double()
    ref = grads[torch.float64]
    assert (grads[torch.float32] - ref).abs().max() < 1e-4 * ref.abs().max()
    # x component at an inner voxel: sum over channels of w * (I[x+1] - I[x-1]) / 2 per
    # normalised unit ((n - 1) / 2 voxels)
    w = torch.linspace(-1, 1, img64.numel(), dtype=torch.float64).view_as(img64)
    z, y, x = 5, 4, 6
    central = ((img64[0, :, z, y, x + 1] - img64[0, :, z, y, x - 1]) / 2
               * (size[2] - 1) / 2 * w[0, :, z, y, x]).sum()
    assert torch.isclose(ref[0, z, y, x, 0], central, rtol=1e-6)
    # outside the grid the image falls to zero (zeros padding): the slope is there too
    img = torch.ones(1, 1, 4, 4, 4, dtype=torch.float64)
    p = torch.tensor([[[[[1.2, 0.0, 0.0]]]]], dtype=torch.float64, requires_grad=True)
    S.sample_image(img, p).sum().backward()
    assert p.grad[..., 0].item() < 0


def test_box_filter_and_pyramid():
    img = _smooth_image(1)
    for w in (3, 5):
        pool = torch.nn.functional.avg_pool3d(img, w, 1, w // 2, count_include_pad=False)
        assert torch.allclose(S._box(img, w), pool, atol=1e-12)
    zz, yy, xx = torch.meshgrid(*(torch.linspace(-1, 1, n, dtype=torch.float64)
                                  for n in (40, 24, 32)), indexing="ij")
    body = torch.exp(-4 * ((xx - 0.2) ** 2 + yy ** 2 + (zz + 0.1) ** 2))[None, None]
    pyr = S.pyramid(body, (8, 4, 2))
    for k in (2, 4, 8):
        direct = S.downsample(body, k)
        assert pyr[k].shape == direct.shape
        if k < 8:   # (8: a 5 x 4 x 4 grid) the cascade's Gaussians add up to the direct one's
            assert (pyr[k] - direct).abs().max() < 0.05 * direct.max()


def test_engine_option_validation():
    with pytest.raises(Exception, match="unknown registration engine"):
        RegistrationConfig(engine="ants").validate()
    with pytest.raises(Exception, match="preset"):
        RegistrationConfig(engine="torch", torch_preset="nope").validate()
    with pytest.raises(Exception, match="option"):
        RegistrationConfig(engine="torch", torch_options={"bogus": 1}).validate()
    # the sitk engine's options (and so the atlas fingerprints) are what they were
    assert "engine" not in RegistrationConfig().to_dict()
    d = RegistrationConfig(engine="torch", torch_preset="paper").to_dict()
    assert RegistrationConfig.from_dict(d).torch_preset == "paper"


def test_engine_flag_reaches_the_engine(tmp_path, capsys):
    from bodyage_core.cli.main import main

    ws = tmp_path / "ws"
    assert main(["synth", str(ws), "--n", "4", "--grid", "16,16,22", "--seed", "1"]) == 0
    cfg = tmp_path / "quick.json"
    cfg.write_text(json.dumps({"torch_options": {"iterations": [8, 4],
                                                 "affine_iterations": [10, 5]},
                               "demons_iterations": [4, 2, 1]}))
    assert main(["atlas", "build", str(ws), "--groups", "", "--iterations", "0",
                 "--min-subjects", "2", "--config", str(cfg), "--engine", "torch",
                 "--device", "cpu"]) in (0, 1)
    members = json.loads((ws / "atlases" / "all" / "members.json").read_text())
    assert members["config"]["registration"]["engine"] == "torch"
    capsys.readouterr()
    rc = main(["register", str(ws), "--engine", "torch", "--device", "cpu", "--force",
               "--config", str(cfg), "--scheduler", "none"])
    out = capsys.readouterr().out
    assert "registration engine: torch" in out, out
    assert rc in (0, 1)
    qs = list((ws / "subjects").glob("*/atlas_all/quality.json"))
    assert qs and all(json.loads(q.read_text())["engine"] == "torch" for q in qs)


def test_device_quality_block_matches_sitk(subjects):
    """The torch engine's quality block (resampled on its device) against the transform files'
    SimpleITK path, on one known transform: the same numbers and warped volumes."""
    from bodyage_core.progress import ensure_reporter
    from bodyage_core.registration.config import QualityThresholds
    from bodyage_core.registration.quality import body_mask, combined_intensity
    from bodyage_core.registration.result import SitkWarps, assess
    from bodyage_core.registration.torch_quality import TorchWarps

    (fixed, fl), (moving, ml) = subjects[0], subjects[1]
    t = _known_transform(fixed, seed=3)
    fixed_c, moving_c = combined_intensity(fixed), combined_intensity(moving)
    fmask = body_mask(fixed_c)

    def block(warps):
        q = {"timings": {}, "status": "ok", "metric": 0.0}
        return assess(moving, fixed, t, q, QualityThresholds(), moving_c, fixed_c, fmask,
                      ml, fl, ensure_reporter(None), 0.0, warps)

    ref = block(SitkWarps(moving, fixed, t))
    got = block(TorchWarps.from_transform(moving, fixed, t, dtype=torch.float64))
    for key in ("dice_body", "ncc", "ncc_before", "dice_labels_mean", "jacobian_min",
                "jacobian_max", "folding_fraction", "max_displacement_mm",
                "mean_displacement_mm", "affine_det"):
        assert got.quality[key] == pytest.approx(ref.quality[key], abs=2e-3), key
    assert ref.quality["dice_labels_mean"] < 0.97            # the transform moves things
    a, b = got.warped.data, ref.warped.data
    assert a.shape == b.shape and got.warped.channels == ref.warped.channels
    assert np.abs(a - b).max() < 1e-3 * np.abs(b).max()
    lab_a, lab_b = got.warped_labels.data[0], ref.warped_labels.data[0]
    assert lab_a.dtype == lab_b.dtype and np.mean(lab_a == lab_b) > 0.999
