"""Preprocessing on small synthetic volumes with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bodyage_core.errors import ConfigError
from bodyage_core.preprocess import (
    ModelGrid,
    apply_normalisation,
    body_bbox,
    crop_or_pad_to_body,
    normalise_intensity,
    prepare_for_model,
    projections_25d,
    projections_from_volume,
    resample_to_grid,
)
from bodyage_core.volume import Volume


def linear_volume(shape=(20, 24, 28), spacing=(2.0, 2.0, 3.0), origin=(-20.0, 5.0, -30.0)):
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    vol = Volume(np.zeros(shape, np.float32), aff)
    zyx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    ras = vol.voxel_to_world(zyx)
    f = 2.0 * ras[..., 0] - 0.5 * ras[..., 1] + 1.5 * ras[..., 2] + 7.0
    return vol.with_data(f.astype(np.float32)[None]), (lambda r: 2.0 * r[..., 0] - 0.5 * r[..., 1]
                                                      + 1.5 * r[..., 2] + 7.0)


def box_volume(shape=(30, 32, 40), box=((5, 15), (10, 20), (22, 34)), value=100.0, noise=0.0):
    data = np.zeros(shape, np.float32)
    data[box[0][0]:box[0][1], box[1][0]:box[1][1], box[2][0]:box[2][1]] = value
    if noise:
        data += np.random.default_rng(0).normal(0, noise, shape).astype(np.float32)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[:3, 3] = [-30.0, -20.0, 100.0]
    return Volume(data, aff, ("water",))


# -- resample_to_grid -----------------------------------------------------------------------
def test_resample_linear_function_exact():
    vol, f = linear_volume()
    out = resample_to_grid(vol, (3.0, 3.0, 4.5), antialias=False)
    assert out.spacing == pytest.approx((3.0, 3.0, 4.5))
    # same field of view, same centre
    c_in = vol.voxel_to_world((np.array(vol.shape) - 1) / 2)
    c_out = out.voxel_to_world((np.array(out.shape) - 1) / 2)
    np.testing.assert_allclose(c_in, c_out, atol=1e-6)
    zyx = np.stack(np.meshgrid(*[np.arange(1, s - 1) for s in out.shape], indexing="ij"), -1)
    inside = np.all((vol.world_to_voxel(out.voxel_to_world(zyx)) >= 0)
                    & (vol.world_to_voxel(out.voxel_to_world(zyx)) <= np.array(vol.shape) - 1),
                    axis=-1)
    got = out.array[1:-1, 1:-1, 1:-1][inside]
    want = f(out.voxel_to_world(zyx))[inside]
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_resample_identity_and_labels():
    vol, _ = linear_volume()
    same = resample_to_grid(vol, vol.spacing)
    assert same.same_grid(vol) and np.array_equal(same.data, vol.data)
    lab = Volume((np.arange(20 * 24 * 28) % 5).reshape(20, 24, 28).astype(np.uint8), vol.affine)
    out = resample_to_grid(lab, (1.0, 1.0, 1.5), order=0)
    assert out.data.dtype == np.uint8
    assert set(np.unique(out.data)) <= set(range(5))


def test_resample_with_shape_centres_body():
    vol = box_volume()
    box_centre = vol.voxel_to_world(np.array([(5 + 14) / 2, (10 + 19) / 2, (22 + 33) / 2]))
    out = resample_to_grid(vol, (4.0, 4.0, 6.0), shape_zyx=(16, 16, 16))
    assert out.shape == (16, 16, 16)
    np.testing.assert_allclose(out.voxel_to_world(np.array([7.5, 7.5, 7.5])), box_centre,
                               atol=1e-6)
    # the body's bounding box is centred in the output array
    lo, hi = body_bbox(out.array)
    centre = (lo + hi) / 2
    assert np.all(np.abs(centre - 7.5) <= 1.0)


def test_resample_keeps_oblique_rotation():
    a = np.deg2rad(10)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([2.0, 2.0, 3.0])
    vol = Volume(np.ones((10, 12, 14), np.float32), aff)
    out = resample_to_grid(vol, (4.0, 4.0, 6.0))
    assert out.is_oblique
    np.testing.assert_allclose(out.affine[:3, :3] / np.array(out.spacing), rot, atol=1e-9)


# -- crop_or_pad_to_body -------------------------------------------------------------------
def test_crop_or_pad_centres_body_and_keeps_world():
    vol = box_volume(noise=1.0)
    vol.data[0, 0, 2, 2] = 500.0  # a speck outside the body: ignored (largest component)
    out = crop_or_pad_to_body(vol, (16, 40, 20))
    assert out.shape == (16, 40, 20)
    lo, hi = body_bbox(out.array)
    assert np.all(np.abs((lo + hi) / 2 - (np.array(out.shape) - 1) / 2) <= 0.5)
    # world positions are preserved: a voxel's value is found at the same world point
    zyx_out = np.array([8, 20, 10])
    zyx_in = np.round(vol.world_to_voxel(out.voxel_to_world(zyx_out))).astype(int)
    assert out.array[tuple(zyx_out)] == vol.array[tuple(zyx_in)]
    assert out.provenance["crop_offset_zyx"] == [int(v) for v in zyx_in - zyx_out]
    # padding fills with cval outside the input
    big = crop_or_pad_to_body(vol, (60, 40, 50), cval=-1.0)
    assert big.shape == (60, 40, 50) and (big.array == -1.0).sum() > 0


# -- normalise_intensity -------------------------------------------------------------------
def test_normalise_percentile_and_zscore():
    a = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    out, params = normalise_intensity(a)
    assert params["method"] == "percentile" and params["p"] == [0.5, 99.5]
    assert params["lo"] == pytest.approx(np.percentile(a, 0.5))
    assert params["hi"] == pytest.approx(np.percentile(a, 99.5))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert out[5, 0, 0] == pytest.approx((500 - params["lo"]) / (params["hi"] - params["lo"]))
    json.dumps(params)  # recordable as is
    np.testing.assert_array_equal(apply_normalisation(a, params), out)
    z, zp = normalise_intensity(a, "zscore")
    assert zp["method"] == "zscore" and zp["mean"] == pytest.approx(499.5)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(z.std()) == pytest.approx(1.0, abs=1e-4)
    masked, mp = normalise_intensity(a, "zscore", mask=a >= 500)
    assert mp["mean"] == pytest.approx(749.5)
    with pytest.raises(ValueError):
        normalise_intensity(a, "banana")


# -- 2.5D projections ----------------------------------------------------------------------
def body_dixon(nz=40, ny=20, nx=30):
    water = np.zeros((nz, ny, nx), np.float32)
    fat = np.zeros((nz, ny, nx), np.float32)
    water[4:36, 4:16, 5:25] = 100.0
    fat[4:36, 4:16, 5:25] = 100.0
    water[30:34, 12:15, 18:23] = 1000.0  # bright: superior, anterior, patient right (high x)
    return water, fat


def test_projections_layout_and_dtype():
    water, fat = body_dixon()
    img = projections_25d(water, fat, (2.232, 2.232, 3.0))
    assert img.shape == (2, 256, 256) and img.dtype == np.uint8
    assert img[0].max() == 255 and img[0].min() == 0
    # coronal (30 columns) + sagittal (20 columns) side by side: split at 256 * 30 / 50
    split = 256 * 30 / 50
    w = img[0].astype(float)
    r, c = np.unravel_index(np.argmax(w[:, : int(split)]), w[:, : int(split)].shape)
    assert r < 128  # superior at the top
    assert c < split / 2  # patient right on the left of the coronal image
    sag = w[:, int(split) + 1:]
    r2, c2 = np.unravel_index(np.argmax(sag), sag.shape)
    assert r2 < 128 and c2 < sag.shape[1] / 2  # anterior on the left of the sagittal image
    # mean projection: a column through more body is brighter than one through less
    assert np.all(img[1][:, : int(split)].max(axis=0) >= 0)


def test_projections_fat_fraction_and_grid_independence():
    water, fat = body_dixon()
    img = projections_25d(water, fat, (2.232, 2.232, 3.0), fat_fraction=True)
    assert img.shape == (3, 256, 256)
    ff = img[2]
    assert ff.max() in (127, 128)  # fat / (water + fat) = 0.5 inside the body (no bright spot)
    assert ff[0, 0] == 0
    # the same body sampled twice as finely gives (nearly) the same image
    fine_w = np.repeat(np.repeat(np.repeat(water, 2, 0), 2, 1), 2, 2)
    fine_f = np.repeat(np.repeat(np.repeat(fat, 2, 0), 2, 1), 2, 2)
    img2 = projections_25d(fine_w, fine_f, (1.116, 1.116, 1.5))
    corr = np.corrcoef(img[0].ravel().astype(float), img2[0].ravel().astype(float))[0, 1]
    assert corr > 0.95
    vol = Volume(np.stack([water, fat]), np.diag([2.232, 2.232, 3.0, 1]), ("water", "fat"))
    np.testing.assert_array_equal(projections_from_volume(vol), img[:2])


# -- ModelGrid and prepare_for_model -------------------------------------------------------
def test_model_grid_dict_round_trip_and_validation():
    grid = ModelGrid((4.464, 4.464, 6.0), (48, 40, 32))
    d = grid.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert ModelGrid.from_dict(d) == grid
    assert grid.tensor_shape == (2, 48, 40, 32)
    with pytest.raises(ConfigError):
        ModelGrid.from_dict({"shape_zyx": [1, 2, 3]})
    with pytest.raises(ConfigError):
        ModelGrid.from_dict({**d, "bogus": 1})
    with pytest.raises(ConfigError):
        ModelGrid((1, 1, 1), (2, 2, 2), normalisation={"method": "magic"})


def test_prepare_for_model():
    base = box_volume(noise=0.5)
    vol = Volume(np.stack([base.array * 2, base.array]), base.affine, ("fat", "water"),
                 {"path": "subject.nii.gz"})
    grid = ModelGrid((4.0, 4.0, 6.0), (12, 16, 16), channels=("water", "fat"))
    x = prepare_for_model(vol, grid)
    assert x.shape == (2, 12, 16, 16) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    v = prepare_for_model(vol, grid, return_volume=True)
    assert v.channels == ("water", "fat") and v.spacing == pytest.approx((4.0, 4.0, 6.0))
    np.testing.assert_array_equal(v.data, x)
    assert v.provenance["normalisation"][0]["method"] == "percentile"
    # channel order honoured: fat is twice water before normalisation -> same after scaling
    np.testing.assert_allclose(x[0], x[1], atol=0.05)
    with pytest.raises(ConfigError, match="subject.nii.gz"):
        prepare_for_model(vol, ModelGrid((4, 4, 6), (8, 8, 8), channels=("t1",)))


def test_ukbb_zip_to_langner_image(tmp_path):
    """End to end: station zip -> stitched on Langner's grid -> 2 x 256 x 256 uint8."""
    from bodyage_core.io import load_volume
    from bodyage_core.io.ukbb_fake import write_ukbb_zip

    water, fat = body_dixon(nz=48)
    vol = Volume(np.stack([water, fat]), np.diag([2.232, 2.232, 3.0, 1.0]), ("water", "fat"))
    path = write_ukbb_zip(vol, tmp_path / "s.zip", overlap=3, channels=("water", "fat"))
    stitched = load_volume(path, spacing_xyz=(2.232, 2.232, 3.0), trim_volume_ends=0,
                           intensity_correction=False)  # the plain stitch, as compared below
    img = projections_from_volume(stitched)
    assert img.shape == (2, 256, 256) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, projections_25d(water, fat, (2.232, 2.232, 3.0)))


def test_prepare_for_model_with_fixed_normalisation():
    vol = box_volume()
    grid = ModelGrid((4.0, 4.0, 6.0), (8, 8, 8), channels=("water",),
                     normalisation={"method": "percentile", "lo": 0.0, "hi": 200.0,
                                    "clip": False})
    x = prepare_for_model(vol, grid)
    assert float(x.max()) == pytest.approx(0.5, abs=0.01)  # 100 / 200, not rescaled to 1
