"""Registration: RAS<->LPS conversion, recovery of a known deformation, map warping, inverse,
failure flags, transform I/O. Small phantoms (~40 x 32 x 32 voxels)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from bodyage_core.registration import (
    RegistrationConfig,
    SubjectTransform,
    label_dice,
    register,
    sitk_to_volume,
    volume_to_sitk,
    warp_map,
)
from bodyage_core.registration.convert import read_nifti, write_nifti
from bodyage_core.registration.phantom import apply_transform, make_phantom, smooth_deformation
from bodyage_core.volume import Volume

SHAPE = (40, 32, 32)


def _rot(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


@pytest.mark.parametrize("kind", ["ras", "lps_permuted", "oblique"])
def test_world_coordinates_round_trip(kind):
    rng = np.random.default_rng(0)
    aff = np.eye(4)
    if kind == "ras":
        aff[:3, :3] = np.diag([1.5, 2.0, 3.0])
    elif kind == "lps_permuted":
        aff[:3, :3] = np.array([[0, -2.0, 0], [0, 0, -1.5], [3.0, 0, 0]])
    else:
        aff[:3, :3] = _rot(17) @ np.diag([1.2, 1.7, 2.5])
    aff[:3, 3] = [10.0, -20.0, 35.0]
    data = rng.random((2, 5, 6, 7)).astype(np.float32)
    vol = Volume(data, aff, channels=("water", "fat"))
    img = volume_to_sitk(vol, "fat")
    assert img.GetSize() == (7, 6, 5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), data[1])
    zyx = rng.random((10, 3)) * [4, 5, 6]
    ras = vol.voxel_to_world(zyx)
    for p_zyx, p_ras in zip(zyx, ras):
        lps = img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in p_zyx[::-1]))
        np.testing.assert_allclose(lps, p_ras * [-1, -1, 1], atol=1e-6)
    back = sitk_to_volume(volume_to_sitk(vol, None), channels=vol.channels)
    np.testing.assert_allclose(back.affine, aff, atol=1e-9)
    np.testing.assert_array_equal(back.data, data)
    assert back.orientation == vol.orientation


def test_nifti_round_trip(tmp_path):
    vol, labels = make_phantom((12, 10, 8))
    write_nifti(vol, tmp_path / "v.nii.gz")
    write_nifti(labels, tmp_path / "l.nii.gz", affine=vol.affine)
    v2 = read_nifti(tmp_path / "v.nii.gz", channels=("water", "fat"))
    l2 = read_nifti(tmp_path / "l.nii.gz", labels=True)
    np.testing.assert_allclose(v2.data, vol.data, atol=1e-6)
    np.testing.assert_allclose(v2.affine, vol.affine, atol=1e-5)
    np.testing.assert_array_equal(l2.data[0], labels)


@pytest.fixture(scope="module")
def pair():
    fixed, flab = make_phantom(SHAPE, seed=0)
    mov0, mlab0 = make_phantom(SHAPE, size=1.08, fat=1.3, shift_mm=(6, -4, 8), seed=3)
    mov, mlab = apply_transform(mov0, mlab0, smooth_deformation(mov0, 5.0, seed=2))
    res = register(mov, fixed, RegistrationConfig(), moving_labels=mlab, fixed_labels=flab)
    return fixed, flab, mov, mlab, res


def test_registration_recovers_known_deformation(pair):
    fixed, flab, mov, mlab, res = pair
    q = res.quality
    assert res.ok, q["reasons"]
    before = np.mean(list(label_dice(mlab, flab).values()))
    after = q["dice_labels_mean"]
    assert after > before + 0.15, (before, after)
    assert after > 0.8
    assert q["dice_body"] > 0.9
    assert q["ncc"] > q["ncc_before"]
    assert q["folding_fraction"] < 0.01
    assert res.warped.same_grid(fixed) and res.warped.channels == ("water", "fat")


def test_warp_labels_keeps_integers(pair):
    fixed, flab, mov, mlab, res = pair
    lab = Volume(mlab.astype(np.int16), mov.affine, channels=("labels",))
    out = warp_map(lab, res.transform, fixed, "nearest")
    assert out.data.dtype == np.int16
    assert set(np.unique(out.data)) <= set(np.unique(mlab))
    back = warp_map(out, res.transform, mov, "nearest", inverse=True)
    assert back.data.dtype == np.int16 and back.same_grid(mov)


def _per_label_linear(lab: Volume, tx, ref) -> np.ndarray:
    """Reference for ``label_linear``: each label's indicator through SimpleITK's linear
    resampling, the largest wins (slow: one resampling per label)."""
    from bodyage_core.registration.convert import array_to_sitk, reference_image

    arr = lab.data[0].astype(np.int32)
    refimg = reference_image(ref)
    best = best_w = None
    for v in np.unique(arr):
        img = array_to_sitk((arr == v).astype(np.float32), lab.affine)
        w = sitk.GetArrayFromImage(sitk.Resample(img, refimg, tx.to_reference(), sitk.sitkLinear,
                                                 1.0 if v == 0 else 0.0, sitk.sitkFloat32))
        if best is None:
            best, best_w = np.full(w.shape, v, np.int32), w
        else:
            upd = w > best_w
            best[upd], best_w = v, np.where(upd, w, best_w)
    return best


def test_label_linear_matches_per_label_resampling_and_keeps_thin_shells(pair):
    """``label_linear`` (the default label interpolation) is per-label trilinear weight, argmax:
    the same labels as resampling every label's indicator with SimpleITK (ties aside), in both
    directions; and a one-voxel shell keeps its volume under the warp, where ITK's Gaussian label
    interpolator erodes it (what cost the synthetic atlas its skin)."""
    from bodyage_core.registration.transform import LABEL_INTERPOLATION

    fixed, flab, mov, mlab, res = pair
    assert LABEL_INTERPOLATION == "label_linear"
    lab = Volume(mlab.astype(np.int16), mov.affine, channels=("labels",))
    out = warp_map(lab, res.transform, fixed, "label_linear")
    assert out.data.dtype == np.int16 and out.same_grid(fixed)
    ref = _per_label_linear(lab, res.transform, fixed)
    # inside the grid: the body meets its top and bottom slices (neck and knees cut, as in a
    # scan), where SimpleITK's linear interpolator extends the edge voxel over its outer half
    # and label_linear counts it as outside
    assert np.mean(out.data[0][1:-1] == ref[1:-1]) > 0.999
    back = warp_map(out, res.transform, mov, "label_linear", inverse=True)
    assert back.same_grid(mov) and set(np.unique(back.data)) <= set(np.unique(mlab))

    body = mlab > 0
    # one voxel thick: the body's surface (not where the grid cuts the body at neck and knees)
    shell = body & ~ndimage.binary_erosion(body, border_value=1)
    thin = Volume(np.where(shell, 2, body.astype(np.int16)).astype(np.int16)[None], mov.affine,
                  channels=("labels",))
    fbody = flab > 0     # the shell warped onto the fixed body, against the fixed body's shell
    n_shell = int((fbody & ~ndimage.binary_erosion(fbody, border_value=1)).sum())
    kept = {m: int((warp_map(thin, res.transform, fixed, m).data[0] == 2).sum()) / n_shell
            for m in ("label_linear", "label_gaussian")}
    assert 0.7 < kept["label_linear"] < 1.3, kept    # (0.74; the Gaussian 0.51)
    assert kept["label_gaussian"] < 0.75 * kept["label_linear"], kept


def test_inverse_composed_with_forward_is_identity(pair):
    fixed, flab, mov, mlab, res = pair
    fwd = res.transform.to_reference()   # reference -> subject
    inv = res.transform.to_subject()     # subject -> reference
    img = volume_to_sitk(fixed)
    body = np.argwhere(flab > 0)
    rng = np.random.default_rng(1)
    errs = []
    for zyx in body[rng.choice(len(body), 200, replace=False)]:
        p = img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx[::-1]))
        errs.append(np.linalg.norm(np.array(inv.TransformPoint(fwd.TransformPoint(p))) - p))
    voxel = min(fixed.spacing)
    assert np.median(errs) < 0.5 * voxel
    assert np.percentile(errs, 95) < 2 * voxel


def test_linear_map_warp_and_back(pair):
    fixed, flab, mov, mlab, res = pair
    smooth = Volume((mlab > 0).astype(np.float32), mov.affine, channels=("map",))
    there = warp_map(smooth, res.transform, None, "linear")
    assert there.data.dtype == np.float32 and 0 <= there.data.min() and there.data.max() <= 1
    back = warp_map(there, res.transform, mov, "linear", inverse=True)
    a, b = smooth.data[0] > 0.5, back.data[0] > 0.5
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9


def test_transform_save_load(pair, tmp_path):
    fixed, flab, mov, mlab, res = pair
    res.transform.save(tmp_path / "t")
    t2 = SubjectTransform.load(tmp_path / "t")
    np.testing.assert_allclose(t2.affine_matrix, res.transform.affine_matrix, atol=1e-6)
    a = warp_map(mov, res.transform, None, "linear").data
    b = warp_map(mov, t2, None, "linear").data
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()


def test_divergence_and_bad_input_flagged():
    fixed, _ = make_phantom(SHAPE, seed=0)
    rng = np.random.default_rng(0)
    noise = Volume(rng.random((2,) + SHAPE).astype(np.float32), fixed.affine,
                   channels=("water", "fat"))
    res = register(noise, fixed)
    assert res.quality["status"] == "failed" and res.quality["reasons"]
    empty = Volume(np.zeros((2,) + SHAPE, np.float32), fixed.affine, channels=("water", "fat"))
    res = register(empty, fixed, RegistrationConfig(method="affine"))
    assert not res.ok and res.transform is None
    assert "diverged" in res.quality["reasons"][0]


def test_bspline_method_runs_and_improves():
    fixed, flab = make_phantom(SHAPE, seed=0)
    mov0, mlab0 = make_phantom(SHAPE, size=1.05, shift_mm=(4, 0, -6), seed=5)
    mov, mlab = apply_transform(mov0, mlab0, smooth_deformation(mov0, 4.0, seed=7))
    res = register(mov, fixed, RegistrationConfig(method="bspline", bspline_iterations=15),
                   moving_labels=mlab, fixed_labels=flab)
    before = np.mean(list(label_dice(mlab, flab).values()))
    assert res.ok and res.transform.inverse_field is not None
    assert res.quality["dice_labels_mean"] > before + 0.1


def test_config_errors():
    from bodyage_core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown registration method"):
        RegistrationConfig(method="magic").validate()
    with pytest.raises(ConfigError, match="unknown registration option"):
        RegistrationConfig.from_dict({"nonsense": 1})
    cfg = RegistrationConfig.from_dict(RegistrationConfig().to_dict())
    assert cfg == RegistrationConfig()


def test_label_map_on_another_grid_is_a_clear_error():
    from bodyage_core.errors import BodyageError

    fixed, flab = make_phantom(SHAPE, seed=0)
    wrong = Volume(np.zeros((20, 16, 16), np.int16), fixed.affine, channels=("labels",),
                   provenance={"path": "labels.nii.gz"})
    with pytest.raises(BodyageError, match="another grid.*labels.nii.gz|labels.nii.gz.*another"):
        register(fixed, fixed, moving_labels=wrong)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (0, 1, 0, 1, 0, 0, 0, 0, -1)])
@pytest.mark.parametrize("rate", [0.1, -0.2])
def test_jacobian_of_a_stretch_whatever_the_direction(direction, rate):
    """u = rate * (p - c) along one physical axis stretches by 1 + rate, on any grid. ITK's
    filter alone ignores the direction: on an LPS grid of a RAS volume it gave 1 - rate."""
    from bodyage_core.registration.quality import jacobian_stats

    shape, spacing, origin = (12, 14, 16), (2.0, 3.0, 4.0), (5.0, -7.0, 9.0)
    ref = sitk.Image(shape[::-1], sitk.sitkUInt8)
    ref.SetSpacing(spacing)
    ref.SetOrigin(origin)
    ref.SetDirection(direction)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    idx = np.stack([x, y, z], -1)                                   # (Z, Y, X, 3), x y z
    phys = origin + (idx * spacing) @ np.asarray(direction, float).reshape(3, 3).T
    disp = np.zeros_like(phys)
    disp[..., 0] = rate * (phys[..., 0] - phys[..., 0].mean())
    field = sitk.GetImageFromArray(disp, isVector=True)
    field.CopyInformation(ref)
    inner = np.zeros(shape, bool)
    inner[1:-1, 1:-1, 1:-1] = True      # ITK's border differences are one-sided
    stats = jacobian_stats(field, inner)
    assert stats["jacobian_min"] == pytest.approx(1 + rate, abs=1e-6)
    assert stats["jacobian_max"] == pytest.approx(1 + rate, abs=1e-6)
    assert stats["folding_fraction"] == 0.0


def test_percentile99_is_numpys_to_the_bit():
    from bodyage_core.registration.quality import percentile99, robust_max

    rng = np.random.default_rng(1)
    for n in [1, 2, 3, 100, 101, 4999, *rng.integers(1, 20000, 40).tolist()]:
        x = (rng.gamma(2.0, 1.0, int(n)) * rng.uniform(0.1, 1000)).astype(np.float32)
        if n % 2:
            x = np.round(x)                 # ties
        assert percentile99(x) == float(np.percentile(x, 99.0)), n
    img = rng.gamma(2.0, 1.0, (20, 30, 40)).astype(np.float32)
    img[:, :5] = 0
    img[0, 0, 0] = np.nan
    fin = img[np.isfinite(img)]
    assert robust_max(img) == float(np.percentile(fin[fin > 0.01 * fin.max()], 99.0))


def test_robust_max_leaves_out_nan_and_inf_and_keeps_its_input():
    from bodyage_core.registration.quality import robust_max

    rng = np.random.default_rng(2)
    img = rng.gamma(2.0, 1.0, (10, 20, 30)).astype(np.float32)
    clean = robust_max(img)
    before = img.copy()
    assert robust_max(img) == clean and np.array_equal(img, before)   # not reordered
    dirty = img.copy()
    dirty[0, 0, :3] = [np.nan, np.inf, -np.inf]
    fin = dirty[np.isfinite(dirty)]
    assert robust_max(dirty) == float(np.percentile(fin[fin > 0.01 * fin.max()], 99.0))
    assert robust_max(np.zeros((4, 4))) == 1.0 and robust_max(np.full(3, np.nan)) == 1.0
    assert robust_max(np.array([], np.float32)) == 1.0
