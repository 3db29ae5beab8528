"""Real UK Biobank Dixon zips, trait by trait (issue 17): every variant is a real zip written by
``bodyage_core.io.ukbb_fake`` and read back with pydicom through ``load_volume``.

The body phantom (``body_phantom``: a trunk and two legs, lean cores in a subcutaneous-fat shell)
is written on the UK Biobank grid itself (2.23214293 mm in-plane, 3 mm slices), so the stitched
volume can be compared with it voxel for voxel.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from bodyage_core.errors import LoadError
from bodyage_core.io import load_volume
from bodyage_core.io.ukbb_fake import (
    Repeat,
    body_phantom,
    real_layout,
    station_ranges,
    write_ukbb_zip,
)
from bodyage_core.io.ukbb_stitch import UKBB_SPACING_XYZ
from bodyage_core.volume import Volume

NZ, NY, NX = 60, 24, 32


@pytest.fixture(scope="module")
def body() -> Volume:
    return body_phantom(NZ, NY, NX)


def write(tmp_path, vol, name="s.zip", **kw):
    kw.setdefault("channels", ("water", "fat"))
    return write_ukbb_zip(vol, tmp_path / name, **kw)


def on_grid(v: Volume, ref: Volume) -> np.ndarray:
    """``ref``'s data on the voxels of ``v`` (the grids must be aligned: same spacing)."""
    o = ref.world_to_voxel(v.voxel_to_world((0, 0, 0)))
    oi = np.round(o).astype(int)
    assert np.allclose(o, oi, atol=0.05) and np.allclose(v.spacing, ref.spacing)
    nz, ny, nx = v.shape
    return ref.data[:, oi[0]:oi[0] + nz, oi[1]:oi[1] + ny, oi[2]:oi[2] + nx]


def z_of(v: Volume, ref: Volume) -> int:
    """Index of ``v``'s first slice in ``ref``."""
    return int(round(ref.world_to_voxel(v.voxel_to_world((0, 0, 0)))[0]))


def rel_error(v: Volume, ref_data: np.ndarray) -> np.ndarray:
    """Per-voxel |stitched - truth| / (water + fat of the truth), inside the body."""
    total = ref_data[0] + ref_data[1]
    body = total > 100
    err = np.abs(v.data - ref_data).max(axis=0) / np.maximum(total, 1)
    return np.where(body, err, 0.0)


def flags(v: Volume) -> dict[str, str]:
    return {f["flag"]: f["message"] for f in v.provenance["qc"]}


def ratio(v: Volume, ref_data: np.ndarray, k: int, c: int = 0) -> float:
    """Stitched / true signal of channel ``c`` in slice ``k`` (body voxels)."""
    m = (ref_data[0, k] + ref_data[1, k]) > 100
    return float(v.data[c, k][m].sum() / ref_data[c, k][m].sum())


# -- 1. stations of different matrices, origins and slice steps ---------------------------------

def test_real_layout_matrices_origins_and_grid(tmp_path, body):
    lay = real_layout(NZ, NY, overlap=4)
    path = write(tmp_path, body, **lay)
    with zipfile.ZipFile(path) as zf:
        heads = [pydicom.dcmread(zf.open(n), stop_before_pixels=True)
                 for n in zf.namelist() if n.endswith(".dcm")]
    first = {}
    for h in heads:
        first.setdefault(int(h.SeriesNumber), h)
    rows = {int(h.Rows) for h in first.values()}
    origins_y = {round(float(h.ImagePositionPatient[1]), 3) for h in first.values()}
    steps = {float(h.SliceThickness) for h in first.values()}
    assert len(rows) >= 3 and len(origins_y) >= 3 and steps == {3.0, 4.5}   # really differ

    v = load_volume(path)
    assert v.spacing == pytest.approx(UKBB_SPACING_XYZ)
    assert v.shape == (NZ - 8, NY, NX)           # union of the stations, 4 slices off each end
    assert z_of(v, body) == 4
    assert flags(v) == {}
    matrices = {tuple(s["matrix_xyz"]["water"]) for s in v.provenance["stations"]}
    assert len(matrices) >= 3
    # The 4.5 mm stations, written and read by linear interpolation, and the noise move the
    # body by up to 3 %; Langner's overlap correction, which takes the slice means to run
    # linearly across an overlap, moves this phantom's overlaps (its texture has a 51 mm
    # period along z) by up to 6.5 % more.
    plain = load_volume(path, intensity_correction=False)
    err = rel_error(plain, on_grid(plain, body))
    assert err.max() < 0.035
    err = rel_error(v, on_grid(v, body))
    assert np.percentile(err[err > 0], 99) < 0.05 and err.max() < 0.08


# -- 2. repeated stations -----------------------------------------------------------------------

def test_repeat_resolved_to_the_newest(tmp_path, body):
    ranges = station_ranges(NZ, 6, 4)
    only3 = range(ranges[2][1], ranges[4][0])        # slices station 3 alone covers
    path = write(tmp_path, body, repeats=[Repeat(3)])   # the older one at half the signal
    v = load_volume(path)
    ref = on_grid(v, body)
    z0 = z_of(v, body)
    f = flags(v)
    assert "station 3 acquired 2 times: the newest" in f["repeat_resolved"]
    assert "dropped" in f["repeat_resolved"]
    rep = v.provenance["ukbb"]["repeats"]
    assert [r["station"] for r in rep] == [3]
    used = int(rep[0]["used"]["water"].rsplit("#", 1)[1])
    older = [int(s.rsplit("#", 1)[1]) for s in rep[0]["older"]]
    assert used > max(older)
    for k in only3:
        assert ratio(v, ref, k - z0) == pytest.approx(1.0, abs=0.02)

    # newest by time even when the repeat is numbered below the older acquisition
    low = write(tmp_path, body, "low.zip", repeats=[Repeat(3, series_number=3)])
    v = load_volume(low)
    rep = v.provenance["ukbb"]["repeats"][0]
    assert rep["used"]["water"].endswith("#3") and all(not s.endswith("#3") for s in rep["older"])
    for k in only3:
        assert ratio(v, ref, k - z0) == pytest.approx(1.0, abs=0.02)
    # ... which the old rule (highest SeriesNumber) gets wrong: it keeps the spoilt acquisition
    old = load_volume(low, repeats="highest_series_number")
    for k in only3:
        assert ratio(old, ref, k - z0) == pytest.approx(0.5, abs=0.02)


def test_shifted_repeat_older_fills_the_gap(tmp_path, body):
    """A repeat 3 slices up leaves a slice between it and station 4 that only the older
    acquisition covers: it is used there (at its half signal) and nowhere the newest reaches."""
    ranges = station_ranges(NZ, 6, 2)
    gap = ranges[2][1]                               # first slice above station 4
    path = write(tmp_path, body, overlap=2, repeats=[Repeat(3, shift_slices=3)])
    v = load_volume(path)
    f = flags(v)
    assert "used only where the newest leaves a gap" in f["repeat_resolved"]
    assert "station 3: the newest acquisition leaves z" in f["repeat_filled_gap"]
    ref = on_grid(v, body)
    z0 = z_of(v, body)
    assert ratio(v, ref, gap - z0) == pytest.approx(0.5, abs=0.02)
    for k in range(gap + 10, ranges[4][0]):          # the repeat's own slices
        assert ratio(v, ref, k - z0) == pytest.approx(1.0, abs=0.02)


def test_more_than_six_stations_flagged(tmp_path, body):
    path = write(tmp_path, body, n_stations=7, overlap=3)
    v = load_volume(path)
    assert v.provenance["n_stations"] == 7
    assert flags(v)["extra_stations"].startswith("7 stations found, 6 expected")
    assert v.shape == (NZ - 8, NY, NX)
    assert "extra_stations" not in flags(load_volume(path, expected_stations=None))


# -- 3. water and fat of one station differ in size ---------------------------------------------

def yramp() -> Volume:
    nz, ny, nx = 48, 12, 14
    z, y, _ = np.mgrid[:nz, :ny, :nx].astype(np.float64)
    aff = np.diag([*UKBB_SPACING_XYZ, 1.0])
    return Volume(np.stack([100 + 5 * y + z, 50 + 3 * y + 0 * z]), aff, ("water", "fat"))


def test_water_fat_size_mismatch_cropped_to_common_extent(tmp_path):
    """Station 2's fat has one slice and two rows fewer, station 4's water three columns fewer:
    the zip loads (before, the short fat split the station and the zip was refused), each
    station is used on its common extent, and nothing is filled by edge replication."""
    vol = yramp()
    path = write(tmp_path, vol, overlap=3,
                 size_mismatch={(2, "fat"): (1, 2, 0), (4, "water"): (0, 0, 3)})
    v = load_volume(path, trim_volume_ends=0)
    f = flags(v)["water_fat_size_mismatch"]
    assert "station 2: water 14 x 12" in f and "fat 14 x 10" in f and "station 4" in f
    ref = on_grid(v, vol)
    ranges = station_ranges(48, 6, 3)
    only2 = range(ranges[3][1], ranges[5][0])        # station 2 alone
    only4 = range(ranges[1][1], ranges[3][0])        # station 4 alone
    assert len(only2) and len(only4)
    for k in only2:                                  # the 2 posterior rows: no data at all
        assert np.all(v.data[:, k, :2] == 0)
        np.testing.assert_allclose(v.data[:, k, 2:], ref[:, k, 2:], atol=0.05)
    for k in only4:                                  # the 3 patient-left columns: no data
        assert np.all(v.data[:, k, :, :3] == 0)
        np.testing.assert_allclose(v.data[:, k, :, 3:], ref[:, k, :, 3:], atol=0.05)
    mm = v.provenance["ukbb"]["water_fat_mismatch"]
    assert [m["station"] for m in mm] == ["station 2", "station 4"]


# -- 4. fat/water swaps -------------------------------------------------------------------------

def test_swapped_station_and_leg_are_fixed_and_flagged(tmp_path, body):
    clean = load_volume(write(tmp_path, body, "clean.zip"))
    assert not any(k.startswith("fat_water_swap") for k in flags(clean))
    assert all(r["decision"] == "normal" for s in clean.provenance["ukbb"]["swaps"]
               for r in s["results"])

    path = write(tmp_path, body, swaps={3: "whole", 6: "left"})
    v = load_volume(path)
    msg = flags(v)["fat_water_swap_fixed"]
    assert "station 3: fat and water swapped back (fat fraction of subcutaneous fat 0.0" in msg
    assert "station 6, left leg: fat and water swapped back" in msg
    swaps = {s["station"]: s for s in v.provenance["ukbb"]["swaps"]}
    assert swaps["station 3"]["swapped_part"] == "whole"
    assert swaps["station 6"]["swapped_part"] == "left" and swaps["station 6"]["per_leg"]
    assert swaps["station 3"]["results"][0]["shell_fat_fraction"] < 0.3
    np.testing.assert_allclose(v.data, clean.data, atol=0.05)   # as if never swapped


def test_swap_only_flagged_or_suspected(tmp_path, body):
    ranges = station_ranges(NZ, 6, 4)
    only3 = range(ranges[2][1], ranges[4][0])
    path = write(tmp_path, body, swaps={3: "whole"})
    v = load_volume(path, swap_check="flag")
    assert "station 3: fat and water look swapped" in flags(v)["fat_water_swap_detected"]
    ref = on_grid(v, body)
    z0 = z_of(v, body)
    k = only3[0] - z0
    np.testing.assert_allclose(v.channel("water")[k], ref[1, k], rtol=0.01, atol=0.5)  # kept
    off = load_volume(path, swap_check="off")
    assert not any(f.startswith("fat_water") for f in flags(off))
    # one side of a trunk station: suspected, not fixed
    half = load_volume(write(tmp_path, body, "half.zip", swaps={3: "left"}))
    msg = flags(half)["fat_water_swap_suspected"]
    assert "station 3, left side" in msg and "one side only" in msg
    assert "fat_water_swap_fixed" not in flags(half)
    left = slice(0, NX // 2 - 2)
    np.testing.assert_allclose(half.channel("water")[k][:, left], ref[1, k][:, left],
                               rtol=0.01, atol=0.5)


# -- 5. folded end slices -----------------------------------------------------------------------

def test_folded_end_slices_are_trimmed(tmp_path, body):
    path = write(tmp_path, body, overlap=8, fold_slices=3, fold_strength=0.6)
    raw = load_volume(path, trim_volume_ends=0, intensity_correction=False)
    err_raw = rel_error(raw, on_grid(raw, body))
    assert err_raw[-1].max() > 0.2 and err_raw[0].max() > 0.2     # the fold is in the zip
    v = load_volume(path)                      # Langner: 4 slices off each end of the volume
    assert v.shape[0] == NZ - 8 and z_of(v, body) == 4
    err = rel_error(v, on_grid(v, body))
    assert err[:2].max() < 0.03 and err[-2:].max() < 0.03
    g = load_volume(path, trim_station_ends=3)  # Glocker: 3 slices off both ends of every station
    assert g.shape[0] == NZ - 6 - 8 and z_of(g, body) == 3 + 4
    err_g = rel_error(g, on_grid(g, body))
    assert err_g.max() < 0.03 < err.max()      # the folds inside the overlaps are gone too
    assert g.provenance["ukbb"]["trimmed"] == {"volume_end_slices": 4, "station_end_slices": 3}


# -- 6. intensity steps and the blend cap -------------------------------------------------------

def flat_volume(nz=NZ) -> Volume:
    aff = np.diag([*UKBB_SPACING_XYZ, 1.0])
    return Volume(np.full((2, nz, 16, 20), 100.0), aff, ("water", "fat"))


GAINS = [1.0, 1.1, 1.0, 1.1, 1.0, 1.1]


def overlap_steps(v: Volume, ranges, overlap: int) -> list[tuple[float, float]]:
    """For each overlap: (largest slice-to-slice change of the slice mean across it and one
    slice either side, the allowed change |m_above - m_below| / (n + 1) + 0.5 % of the level)."""
    means = v.channel("water").mean(axis=(1, 2))
    out = []
    for lo_st, hi_st in zip(ranges[:-1], ranges[1:]):
        b0, a1 = hi_st[0], lo_st[1] - 1           # overlap slices b0..a1
        prof = means[b0 - 1:a1 + 2]
        allowed = abs(prof[-1] - prof[0]) / (overlap + 1) + 0.005 * prof.mean()
        out.append((float(np.abs(np.diff(prof)).max()), float(allowed)))
    return out


def test_overlap_intensity_step_corrected(tmp_path):
    """Stations 10 % apart in gain with signal loss in their two outermost slices (x0.7, x0.85):
    with the correction the slice means run linearly across every overlap (no slice-to-slice
    change above the gain difference spread over the blend plus 0.5 %); without it there is a
    dip and a step of about 8 %."""
    ranges = station_ranges(NZ, 6, 4)
    path = write(tmp_path, flat_volume(), overlap=4, station_gain=GAINS, end_falloff=(0.7, 0.85))
    v = load_volume(path, trim_volume_ends=0)
    for step, allowed in overlap_steps(v, ranges, 4):
        assert step <= allowed
    raw = load_volume(path, trim_volume_ends=0, intensity_correction=False)
    assert all(step > 2 * allowed for step, allowed in overlap_steps(raw, ranges, 4))
    factors = v.provenance["ukbb"]["overlaps"][0]["intensity_factors"]["water"]
    assert len(factors) == 4 and max(factors) > 1.02


def test_long_overlap_blended_over_eight_slices(tmp_path):
    """A 12-slice overlap is cut symmetrically to 8 (Langner's cap) before the cross-fade."""
    path = write(tmp_path, flat_volume(120), overlap=12, station_gain=GAINS)
    v = load_volume(path, trim_volume_ends=0)
    ov = v.provenance["ukbb"]["overlaps"]
    assert [(o["slices"], o["blended"], o["cut"]) for o in ov] == [(12, 8, 4)] * 5
    means = v.channel("water").mean(axis=(1, 2))
    between = (means > 100.5) & (means < 109.5)
    assert int(between.sum()) == 5 * 8               # each transition spans exactly 8 slices
    whole = load_volume(path, trim_volume_ends=0, max_blend_slices=None)
    means = whole.channel("water").mean(axis=(1, 2))
    assert int(((means > 100.5) & (means < 109.5)).sum()) == 5 * 12


# -- 7. format details --------------------------------------------------------------------------

def test_implicit_vr_and_manifest_cvs(tmp_path, body):
    explicit = write(tmp_path, body, "explicit.zip", manifest_name="manifest.csv")
    implicit = write(tmp_path, body, "implicit.zip", implicit_vr=True)
    with zipfile.ZipFile(implicit) as zf:
        names = zf.namelist()
        assert "manifest.cvs" in names and "manifest.csv" not in names
        ds = pydicom.dcmread(zf.open(next(n for n in names if n.endswith(".dcm"))))
        assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    a, b = load_volume(explicit), load_volume(implicit)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(a.affine, b.affine)


def _first_member(path):
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dcm"))
        return name, zf.read(name)


@pytest.mark.parametrize("implicit", [False, True])
def test_header_cut_inside_pixel_spacing_is_read_whole(tmp_path, body, implicit):
    """A private block puts PixelSpacing across the reader's first 4 kB: a header read from that
    prefix has one PixelSpacing value (the stitcher's IndexError before); the reader reads on."""
    value = b"2.2321429\\2.2321429"
    _, data = _first_member(write(tmp_path, body, "probe.zip", private_header_bytes=3000,
                                  implicit_vr=implicit))
    pad = 3000 + (4096 - data.find(value) - 4)
    pad -= pad % 2                                   # OB values have an even length
    path = write(tmp_path, body, "cut.zip", private_header_bytes=pad, implicit_vr=implicit)
    _, data = _first_member(path)
    cut = 4096 - data.find(value)
    assert 1 <= cut < 9                              # inside the first value
    head = pydicom.dcmread(io.BytesIO(data[:4096]), stop_before_pixels=True,
                           specific_tags=["PixelSpacing"])
    assert isinstance(head.PixelSpacing, float)      # one (cut) value
    v = load_volume(path)
    ref = load_volume(write(tmp_path, body, "plain.zip", implicit_vr=implicit))
    np.testing.assert_array_equal(v.data, ref.data)
    np.testing.assert_allclose(v.affine, ref.affine)


def _replace_member(path, out, name, data):
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zo:
        for info in zin.infolist():
            zo.writestr(info.filename, data if info.filename == name else zin.read(info))
    return out


def test_pixel_spacing_with_one_value_is_a_clear_error(tmp_path, body):
    path = write(tmp_path, body)
    name, data = _first_member(path)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelSpacing = "2.2321429"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    bad = _replace_member(path, tmp_path / "bad.zip", name, buf.getvalue())
    with pytest.raises(LoadError) as err:
        load_volume(bad)
    msg = str(err.value)
    assert str(bad) in msg and name in msg and "PixelSpacing has 1 value (2 needed)" in msg
    assert "\n" not in msg


def test_corrupt_member_names_the_zip_and_member(tmp_path, body):
    path = write(tmp_path, body)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".dcm"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + 5:start + 40] = b"\xff" * 35         # inside the deflate stream
    bad = tmp_path / "corrupt.zip"
    bad.write_bytes(bytes(raw))
    with pytest.raises(LoadError) as err:
        load_volume(bad)
    msg = str(err.value)
    assert str(bad) in msg and info.filename in msg and "fetch it again" in msg


def test_truncated_dicom_member_names_the_zip_and_member(tmp_path, body):
    path = write(tmp_path, body)
    name, data = _first_member(path)
    bad = _replace_member(path, tmp_path / "short.zip", name, data[: len(data) * 2 // 3])
    with pytest.raises(LoadError) as err:
        load_volume(bad)
    msg = str(err.value)
    assert str(bad) in msg and name in msg


def test_bad_settings_are_clear_errors(tmp_path, body):
    path = write(tmp_path, body)
    with pytest.raises(LoadError, match="trim_volume_ends must be a whole number"):
        load_volume(path, trim_volume_ends=-1)
    with pytest.raises(LoadError, match="unknown stitch setting.*blend_slices"):
        load_volume(path, blend_slices=4)
    with pytest.raises(LoadError, match="leaves nothing"):
        load_volume(path, trim_volume_ends=40)
