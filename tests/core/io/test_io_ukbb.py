"""UK Biobank Dixon station-zip stitcher on synthetic zips written with pydicom.

The ramp volumes here are uniform in-plane, so the stitched values can be checked exactly; the
real-data traits (matrices, repeats, swaps, folds, intensity steps ...) are in
``test_ukbb_traits.py``."""

from __future__ import annotations

import zipfile

import numpy as np
import pydicom
import pytest

from bodyage_core.errors import LoadError
from bodyage_core.io import load_volume
from bodyage_core.io.ukbb import load_ukbb_zip
from bodyage_core.io.ukbb_fake import station_ranges, write_ukbb_zip
from bodyage_core.io.ukbb_stitch import UKBB_SPACING_XYZ
from bodyage_core.io.ukbb_zip import dixon_channel
from bodyage_core.volume import Volume

NZ, NY, NX = 48, 10, 12


def ramp_volume() -> Volume:
    """water = 10 * z_index + 5 (a ramp along z), fat = 200 - 2 * z_index, on a 2.2/2.2/3 mm grid."""
    z = np.arange(NZ, dtype=np.float64)[:, None, None] * np.ones((NZ, NY, NX))
    aff = np.diag([2.2, 2.2, 3.0, 1.0])
    aff[:3, 3] = [-12.0, -8.0, -300.0]
    return Volume(np.stack([10 * z + 5, 200 - 2 * z]), aff, ("water", "fat"))


@pytest.fixture(scope="module")
def full_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("ukb") / "1000001_20201_2_0.zip"
    write_ukbb_zip(ramp_volume(), path, overlap=3, age=63, sex="F")
    return path


def test_zip_looks_like_ukbb(full_zip):
    with zipfile.ZipFile(full_zip) as zf:
        names = zf.namelist()
        assert "manifest.cvs" in names  # sic, as in the real zips
        dcm = [n for n in names if n.endswith(".dcm")]
        descs = {}
        for n in dcm:
            ds = pydicom.dcmread(zf.open(n), stop_before_pixels=True)
            descs.setdefault(ds.SeriesDescription, set()).add(int(ds.SeriesNumber))
            assert list(map(float, ds.ImageOrientationPatient)) == [1, 0, 0, 0, 1, 0]
    # 6 stations x 4 series; stations 2-4 breath-hold
    assert sum(len(v) for v in descs.values()) == 24
    assert {"Dixon_noBH_W", "Dixon_BH_17s_F", "Dixon_noBH_in", "Dixon_BH_17s_opp"} <= set(descs)
    assert len(descs["Dixon_BH_17s_W"]) == 3 and len(descs["Dixon_noBH_W"]) == 3


def test_channel_mapping():
    assert dixon_channel("Dixon_BH_17s_W") == "water"
    assert dixon_channel("Dixon_noBH_F") == "fat"
    assert dixon_channel("Dixon_noBH_in") == "in"
    assert dixon_channel("Dixon_BH_17s_opp") == "opp"
    assert dixon_channel("localizer") is None
    assert dixon_channel("Dixon_noBH_W_stitched") is None


def test_stitched_shape_geometry_and_ramp(full_zip):
    """On the stations' own grid with nothing trimmed, the ramp comes back exactly."""
    ref = ramp_volume()
    v = load_volume(full_zip, spacing_xyz="native", trim_volume_ends=0)
    assert v.channels == ("water", "fat")
    assert v.shape == (NZ, NY, NX)
    np.testing.assert_allclose(v.affine, ref.affine, atol=1e-4)
    np.testing.assert_allclose(v.data, ref.data.astype(np.float32), atol=0.02)
    assert v.metadata == {"age": 63.0, "sex": "F"}
    assert v.provenance["n_stations"] == 6
    assert v.provenance["orientation"] == "LPS"
    st = v.provenance["stations"]
    assert [s["station"] for s in st] == [1, 2, 3, 4, 5, 6]
    assert st[0]["z_mm"][1] > st[-1]["z_mm"][1]  # station 1 is the most superior
    assert v.provenance["qc"] == []


def test_default_grid_is_the_seeds_and_ends_are_trimmed(full_zip):
    """Default: the seeds' 2.232 x 2.232 x 3.0 mm grid (said in the provenance), 4 slices
    trimmed at each end of the fused volume (Langner), the ramp unchanged where it is kept."""
    ref = ramp_volume()
    v = load_volume(full_zip)
    assert v.spacing == pytest.approx(UKBB_SPACING_XYZ)
    assert UKBB_SPACING_XYZ[0] == pytest.approx(2.232, abs=5e-4)
    assert "2.232 x 2.232 x 3.0 mm" in v.provenance["grid"]
    assert v.shape[0] == NZ - 8                      # 4 slices off each end
    assert v.shape[1:] == (9, 11)                    # 10 x 2.2 mm rows, 12 x 2.2 mm columns
    top = v.voxel_to_world((v.shape[0] - 1, 0, 0))[2]
    assert top == pytest.approx(ref.voxel_to_world((NZ - 1 - 4, 0, 0))[2])
    zyx = np.stack(np.meshgrid(np.arange(v.shape[0]), [3], [4], indexing="ij"), -1).reshape(-1, 3)
    expected = 10 * ref.world_to_voxel(v.voxel_to_world(zyx))[:, 0] + 5
    np.testing.assert_allclose(v.channel("water")[:, 3, 4], expected, atol=0.05)
    ukbb = v.provenance["ukbb"]
    assert ukbb["settings"]["max_blend_slices"] == 8 and ukbb["trimmed"]["volume_end_slices"] == 4
    # a linear ramp is left alone by the overlap intensity correction
    for o in ukbb["overlaps"]:
        assert o["intensity_factors"]["water"] == pytest.approx([1.0] * o["blended"], abs=1e-3)


def test_requested_channels_and_order(full_zip):
    v = load_volume(full_zip, channels=("opp", "in", "fat"), spacing_xyz="native",
                    trim_volume_ends=0)
    assert v.channels == ("opp", "in", "fat")
    ref = ramp_volume()
    np.testing.assert_allclose(v.channel("in"), ref.channel("water") + ref.channel("fat"),
                               atol=0.05)


def test_overlap_blended_linearly(tmp_path):
    """Stations with different gains: the overlap is a linear cross-fade, no step."""
    vol = ramp_volume()
    flat = vol.with_data(np.ones_like(vol.data) * 100.0)
    path = tmp_path / "gain.zip"
    gains = [1.0, 1.2, 1.0, 1.2, 1.0, 1.2]
    overlap = 4
    write_ukbb_zip(flat, path, overlap=overlap, channels=("water", "fat"), station_gain=gains)
    v = load_ukbb_zip(path, spacing_xyz="native", trim_volume_ends=0)
    prof = v.channel("water")[:, 3, 3].astype(float)
    assert prof.min() >= 100 - 1e-3 and prof.max() <= 120 + 1e-3
    jumps = np.abs(np.diff(prof))
    # a hard seam would jump by 20; the cross-fade over `overlap` slices moves 20/(overlap+1)
    assert jumps.max() <= 20.0 / (overlap + 1) + 1e-3
    ranges = station_ranges(NZ, 6, overlap)
    # outside overlaps each station keeps its own gain
    lo_station = ranges[0]  # most inferior = station 6, gain 1.2
    assert prof[lo_station[0]] == pytest.approx(120.0, abs=0.01)
    assert prof[ranges[1][0] + overlap] == pytest.approx(100.0, abs=0.01)


def test_resampled_to_requested_spacing(full_zip):
    v = load_ukbb_zip(full_zip, spacing_xyz=(4.4, 4.4, 6.0))
    assert v.spacing == pytest.approx((4.4, 4.4, 6.0))
    ref = ramp_volume()
    zyx = np.array([[5, 2, 2], [3, 1, 1]])
    world = v.voxel_to_world(zyx)
    ref_zyx = ref.world_to_voxel(world)
    expected = 10 * ref_zyx[:, 0] + 5
    got = v.channel("water")[tuple(zyx.T)]
    np.testing.assert_allclose(got, expected, atol=0.05)


@pytest.mark.parametrize("drop, match", [
    ([(3, None)], r"gap in z coverage between station 2 .* and station 3"),
    ([(6, None)], r"5 stations found, 6 expected"),
    ([(1, None)], r"5 stations found, 6 expected"),
    ([(4, "fat")], r"station 4 of 6 .* has no 'fat' series"),
])
def test_missing_station_is_a_clear_error(tmp_path, drop, match):
    path = tmp_path / "incomplete.zip"
    write_ukbb_zip(ramp_volume(), path, overlap=3, channels=("water", "fat"), drop=drop)
    with pytest.raises(LoadError, match=match) as err:
        load_volume(path)
    assert str(path) in str(err.value)


def test_missing_channel_everywhere(full_zip, tmp_path):
    path = tmp_path / "nofat.zip"
    write_ukbb_zip(ramp_volume(), path, overlap=3, channels=("water", "in"))
    with pytest.raises(LoadError, match="no 'fat' series"):
        load_volume(path)
    with pytest.raises(LoadError, match="unknown Dixon channel"):
        load_volume(full_zip, channels=("t1",))


def test_corrupt_zip(tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(LoadError, match="not a readable zip"):
        load_volume(bad)


def test_stations_with_different_slice_steps(tmp_path):
    """Breath-hold stations at 4.5 mm, the others at 3 mm: stitched on a 3 mm grid, ramp kept."""
    path = tmp_path / "steps.zip"
    write_ukbb_zip(ramp_volume(), path, overlap=4, channels=("water", "fat"),
                   station_step=[3.0, 4.5, 4.5, 4.5, 3.0, 3.0])
    v = load_volume(path)
    assert v.spacing == pytest.approx(UKBB_SPACING_XYZ)
    steps = {s["slice_step_mm"] for s in v.provenance["stations"]}
    assert steps == {3.0, 4.5}  # stations really differ
    ref = ramp_volume()
    zyx = np.stack(np.meshgrid(np.arange(v.shape[0]), [4], [5], indexing="ij"), -1).reshape(-1, 3)
    expected = 10 * ref.world_to_voxel(v.voxel_to_world(zyx))[:, 0] + 5
    np.testing.assert_allclose(v.channel("water")[:, 4, 5], expected, atol=0.05)
