"""The stitcher's pieces on their own: resampling fast paths against the general trilinear one,
the settings, the blend weights and the cut of a long overlap (Langner's 8-slice cap)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bodyage_core.errors import ConfigError
from bodyage_core.io.ukbb_stitch import (
    UKBB_SPACING_XYZ,
    StationGeometry,
    StitchSettings,
    plan_stitch,
    resample_into,
    resolve_settings,
)


def _trilinear(xyz, aff, out_aff, shape_xyz):
    """The general path, written out: output index -> station index, order-1 interpolation."""
    m = np.linalg.inv(aff) @ out_aff
    rev = np.eye(4)[[2, 1, 0, 3]]
    m = rev @ m @ rev
    src = np.transpose(xyz, (2, 1, 0)).astype(np.float64)
    return ndimage.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=shape_xyz[::-1],
                                    order=1, mode="nearest", prefilter=False)


@pytest.mark.parametrize("z_step, z_shift", [(3.0, 0.0), (4.5, 0.0), (4.5, 1.7), (2.0, -0.5)])
def test_fast_resampling_paths_match_trilinear(z_step, z_shift):
    rng = np.random.default_rng(1)
    xyz = rng.uniform(0, 100, (9, 7, 12)).astype(np.float32)
    aff = np.diag([2.2321429, 2.2321429, z_step, 1.0])
    aff[:3, 3] = [10.0, -4.0, 50.0]
    out = np.diag([*UKBB_SPACING_XYZ, 1.0])
    out[:3, 3] = aff[:3, 3] + [2 * aff[0, 0], aff[1, 1], z_step + z_shift]   # inside the station
    n_z = int((11 * z_step - z_step - z_shift) // 3.0)
    shape = (6, 5, n_z)
    got = resample_into(xyz, aff, out, shape)
    want = _trilinear(xyz, aff, out, shape)
    assert got.shape == shape[::-1] and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-3)
    if z_step == 3.0 and z_shift == 0.0:   # the same grid: a copy
        np.testing.assert_array_equal(got, np.transpose(xyz[2:8, 1:6, 1:1 + n_z], (2, 1, 0)))


def test_oblique_station_uses_trilinear():
    rng = np.random.default_rng(2)
    xyz = rng.uniform(0, 100, (10, 10, 10)).astype(np.float32)
    c, s = np.cos(0.1), np.sin(0.1)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) * 2.0
    out = np.diag([2.0, 2.0, 2.0, 1.0])
    out[:3, 3] = [4.0, 4.0, 4.0]
    np.testing.assert_allclose(resample_into(xyz, aff, out, (4, 4, 4)),
                               _trilinear(xyz, aff, out, (4, 4, 4)), atol=1e-3)


def test_settings_defaults_plain_and_errors():
    d = StitchSettings()
    assert d.spacing_xyz == UKBB_SPACING_XYZ and d.trim_volume_ends == 4
    assert d.max_blend_slices == 8 and d.intensity_correction and d.repeats == "newest"
    p = StitchSettings.plain()
    assert p.spacing_xyz is None and p.trim_volume_ends == 0 and p.max_blend_slices is None
    assert not p.intensity_correction
    assert resolve_settings({"trim_volume_ends": 2}, {"swap_check": "flag"}).as_dict()[
        "trim_volume_ends"] == 2
    for bad in ({"max_blend_slices": 0}, {"repeats": "oldest"}, {"swap_check": "maybe"},
                {"spacing_xyz": (1, 2)}, {"repeat_overlap": 1.5}):
        with pytest.raises(ConfigError):
            StitchSettings().updated(**bad)
    with pytest.raises(ConfigError, match="unknown stitch setting"):
        StitchSettings().updated(margin=3)


def _station(label, group, z0, n, role="primary"):
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[:3, 3] = [0.0, 0.0, z0]
    geo = {"water": ((4, 4, n), aff)}
    return StationGeometry(label, group, geo, role, 3.0)


def test_blend_weights_cap_and_newest_wins():
    """Two stations overlapping by 12 slices: cut to 8 (the upper loses 2, the lower 2), the
    cross-fade weights rise 1/9 ... 8/9 and sum to one; an older acquisition fills only the
    slices the newest does not reach."""
    upper = _station("station 1", 1, 60.0, 30)       # slices at z 60 ... 147
    lower = _station("station 2", 2, 0.0, 32)        # z 0 ... 93: 12 slices shared
    plan = plan_stitch([upper, lower], ("water",), StitchSettings(trim_volume_ends=0))
    assert plan.overlaps == [{"stations": ["station 2", "station 1"], "slices": 12, "cut": 4,
                              "blended": 8}]
    w_up, w_lo = plan.placed[0].weights, plan.placed[1].weights
    ov = np.nonzero((w_up > 0) & (w_lo > 0))[0]
    assert len(ov) == 8 and ov[0] == 20 + 2           # the upper station starts 2 slices later
    np.testing.assert_allclose(w_up[ov], np.arange(1, 9) / 9, atol=1e-6)
    np.testing.assert_allclose((w_up + w_lo)[:plan.shape_xyz[2]], 1.0, atol=1e-6)

    newest = _station("station 1", 1, 60.0, 30)
    older = _station("station 1 (older acquisition 1)", 1, 51.0, 30, role="older")
    low = _station("station 2", 2, 0.0, 17)           # z 0 ... 48: the newest leaves 51 ... 57
    plan = plan_stitch([newest, older, low], ("water",), StitchSettings(trim_volume_ends=0))
    w_new, w_old, w_low = (p.weights for p in plan.placed)
    only_old = np.nonzero(w_old > 0.999)[0]
    assert list(only_old) == [17, 18, 19]             # z 51, 54, 57
    np.testing.assert_allclose((w_new + w_old + w_low)[:plan.shape_xyz[2]], 1.0, atol=1e-6)
    assert w_old[30:].max() == 0                      # never where the newest is, past the blend
