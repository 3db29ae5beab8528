"""The fast drawing path of the 2D views: integer LUT compositing gives the colours of the
reference float compositing of :func:`bodyage_core.display.to_rgba` layers, and the separable
nearest-neighbour resampling of an overlay on another (axis-aligned) grid gives the values of
the general world-coordinate path."""

from __future__ import annotations

import numpy as np
import pytest

from bodyage_core import display
from bodyage_core.viewer import PLANES, ViewerState, plane_geometry, sample_nearest
from bodyage_core.viewer.resample import _resample_axis_aligned
from bodyage_core.volume import Volume


def composite_bgra(layers: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Alpha-composite RGBA uint8 layers (bottom first) over black into an opaque
    ``(rows, cols, 4)`` uint8 image in QImage RGB32 memory order (B, G, R, 255).

    The float reference for :func:`bodyage_core.display.composite_bgra32` (which must give the
    same colours to within one unit of rounding); kept here because only the tests use it."""
    out = np.empty((*shape, 4), dtype=np.uint8)
    out[..., 3] = 255
    acc = np.zeros((*shape, 3), dtype=np.float32)
    for rgba in layers:
        a = rgba[..., 3:4] * np.float32(1 / 255)
        acc += (rgba[..., :3] - acc) * a
    out[..., :3] = np.clip(np.rint(acc), 0, 255)[..., ::-1]
    return out


def _reference(layers, shape):
    rgba = [display.to_rgba(lay.array, lay.cmap, lay.vmin, lay.vmax, lay.threshold,
                            lay.opacity) for lay in layers]
    bgra = composite_bgra(rgba, shape)
    return bgra[..., [2, 1, 0]].astype(int)


@pytest.mark.parametrize("base_opacity", [1.0, 0.6])
def test_integer_composite_matches_float_reference(base_opacity):
    rng = np.random.default_rng(1)
    shape = (37, 53)
    img = rng.normal(100, 30, shape).astype(np.float32)
    heat = np.clip(rng.normal(0, 1, shape), 0, None).astype(np.float32)
    heat[:5] = np.nan                                     # outside a resampled map
    signed = rng.normal(0, 1, shape).astype(np.float32)
    labels = rng.integers(0, 7, shape).astype(np.int16)
    dense = rng.random(shape).astype(np.float32)          # no threshold: blended everywhere
    layers = [display.SliceLayer(img, "grey", 40, 160, None, base_opacity),
              display.SliceLayer(heat, "heat", 0, 2, 0.8, 0.7),
              display.SliceLayer(signed, "bwr", -2, 2, 0.5, 0.5),
              display.SliceLayer(labels, "labels", 0, 6, None, 0.35),
              display.SliceLayer(dense, "viridis", 0, 1, None, 0.3)]
    for n in range(1, len(layers) + 1):
        got = display.bgra32_to_rgba(display.composite_bgra32(layers[:n], shape))
        assert (got[..., 3] == 255).all()
        ref = _reference(layers[:n], shape)
        assert np.abs(got[..., :3].astype(int) - ref).max() <= 1, n
    # hidden pixels of an overlay leave the image below untouched, exactly
    two = display.bgra32_to_rgba(display.composite_bgra32(layers[:2], shape))
    one = display.bgra32_to_rgba(display.composite_bgra32(layers[:1], shape))
    hidden = ~(heat >= 0.8)
    assert np.array_equal(two[hidden], one[hidden])
    # nothing to draw: black
    assert (display.composite_bgra32([], shape) == 0xFF000000).all()


def test_base_layer_threshold_and_nan_are_black():
    a = np.array([[0.0, 0.5, np.nan], [1.0, 0.2, 0.9]], dtype=np.float32)
    out = display.bgra32_to_rgba(display.composite_bgra32(
        [display.SliceLayer(a, "grey", 0, 1, 0.4, 1.0)], a.shape))
    assert (out[0, 0, :3] == 0).all() and (out[0, 2, :3] == 0).all()
    assert (out[1, 0, :3] == 255).all()
    assert out[0, 1, 0] == display.lut("grey")[int(0.5 * 255), 0]


def _grid_pair(flip: bool):
    rng = np.random.default_rng(4)
    base = Volume(rng.random((20, 16, 12), dtype=np.float32),
                  np.diag([2.0, 2.5, 3.0, 1.0]) @ np.array(
                      [[1, 0, 0, -10], [0, 1, 0, -12], [0, 0, 1, -20], [0, 0, 0, 1.0]]),
                  ("t1",))
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    aff[:3, 3] = (-16.0, -5.0, -31.0)
    if flip:  # an LPS-stored map: x and y run the other way
        aff = aff @ np.diag([-1.0, -1.0, 1.0, 1.0])
        aff[:3, 3] = (20.0, 30.0, -31.0)
    ov = Volume(rng.random((18, 14, 13), dtype=np.float32), aff, ("map",))
    return base, ov


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("convention", ["radiological", "neurological"])
def test_separable_resampling_matches_world_sampling(flip, convention):
    base, ov = _grid_pair(flip)
    for plane in PLANES:
        geom = plane_geometry(base, plane, convention)
        for k in range(0, geom.n_slices, 3):
            fast = _resample_axis_aligned(base, ov.data[0], ov.affine, geom, k)
            rows, cols = geom.shape
            r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            zyx = np.empty((rows, cols, 3))
            zyx[..., geom.normal_axis] = k
            zyx[..., geom.col_axis] = (cols - 1 - c) if geom.flip_cols else c
            zyx[..., geom.row_axis] = (rows - 1 - r) if geom.flip_rows else r
            slow = sample_nearest(ov, "map", base.voxel_to_world(zyx))
            np.testing.assert_array_equal(np.isnan(fast), np.isnan(slow))
            ok = ~np.isnan(slow)
            # nearest neighbour ties (a voxel centre half way) may round either way
            agree = np.mean(fast[ok] == slow[ok]) if ok.any() else 1.0
            assert agree > 0.97, (plane, k, agree)


def test_state_slices_resampled_layer_through_fast_path():
    base, ov = _grid_pair(False)
    st = ViewerState()
    st.add_layer(base, "t1")
    lay = st.add_layer(ov, "map")
    assert lay.resampled
    for plane in PLANES:
        sl = st.slice_for_view(lay, plane)
        assert sl.array.shape == st.geometry(plane).shape and sl.array.dtype == np.float32
