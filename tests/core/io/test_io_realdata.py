"""Loaders on the real files in ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from bodyage_core.io import load_labels, load_volume

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def need(rel: str) -> Path:
    p = DATA / rel
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


def _corners_world(shape_xyz, affine) -> np.ndarray:
    n = np.array(shape_xyz) - 1
    c = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])], float)
    w = c @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return w[np.lexsort(np.round(w, 2).T)]


def test_all_48_orientations_give_identical_arrays():
    folder = need("niivue_orientation/nifti_space")
    files = sorted(folder.glob("*.nii.gz"))
    assert len(files) == 48
    ref = load_volume(files[0])
    assert ref.orientation == "RAS"
    origs = set()
    for f in files:
        v = load_volume(f)
        origs.add(v.provenance["orientation"])
        assert v.shape == ref.shape, f.name
        assert np.array_equal(v.data, ref.data), f.name
        assert np.allclose(v.affine, ref.affine, atol=1e-3), f.name
        assert v.provenance["orientation"] == f.name.split(".")[0]
    assert len(origs) == 48


def test_ixi_scl_slope_applied():
    folder = need("ixi_t1_2mm/t1")
    rows = list(csv.DictReader(open(folder.parent / "participants.csv")))
    assert rows
    for f in sorted(folder.glob("*.nii.gz"))[:3]:
        img = nib.load(str(f))
        slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
        assert slope > 1.0
        raw = np.asanyarray(img.dataobj.get_unscaled())
        assert raw.dtype == np.uint8
        v = load_volume(f)
        assert v.provenance["scl_slope"] == pytest.approx(slope)
        assert v.provenance["orientation"] == "PSR"
        assert v.data.dtype == np.float32
        # Reorient nibabel's canonical raw data the same way and compare with raw * slope.
        canon = nib.as_closest_canonical(img)
        ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                               nib.orientations.axcodes2ornt("RAS"))
        raw_c = nib.orientations.apply_orientation(raw, ornt).transpose(2, 1, 0)
        expected = raw_c.astype(np.float64) * slope + inter
        assert np.allclose(v.array, expected, rtol=1e-6, atol=1e-4)
        assert np.allclose(v.affine, canon.affine, atol=1e-4)
        assert v.data.max() > 255  # a loader ignoring the slope would stop at 255


def test_ct_dicom_step_from_positions_not_slice_thickness():
    folder = need("totalsegmentator/example_ct_dicom")
    v = load_volume(folder)
    assert v.shape == (20, 512, 512)
    assert v.spacing[2] == pytest.approx(2.0, abs=1e-4)
    assert v.provenance["slice_thickness"] == pytest.approx(3.0)
    assert v.provenance["orientation"] == "LPS"
    assert v.orientation == "RAS"
    assert v.data.min() == pytest.approx(-1024.0)  # RescaleIntercept applied
    # Geometry and values agree with SimpleITK (GDCM) reading single slices of the series.
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    for k, (x, y) in [(0, (0, 0)), (19, (511, 511)), (7, (100, 300))]:
        img = sitk.ReadImage(names[k])
        arr = sitk.GetArrayFromImage(img)
        ras = np.array(img.TransformIndexToPhysicalPoint((x, y, 0))) * [-1, -1, 1]
        zyx = v.world_to_voxel(ras)
        assert np.allclose(zyx, np.round(zyx), atol=1e-3)
        zyx = np.round(zyx).astype(int)
        assert v.contains_voxel(zyx)
        assert v.array[tuple(zyx)] == pytest.approx(float(arr[0, y, x]))


def test_mr_dicom_age_and_sex():
    folder = need("tcia_vs_seg_001_t1_dicom_subset")
    v = load_volume(folder)
    assert v.metadata["age"] == 60.0
    assert v.metadata["sex"] == "M"
    assert v.shape == (10, 512, 512)
    assert v.spacing[2] == pytest.approx(1.5, abs=1e-3)
    assert v.spacing[0] == pytest.approx(0.41015625, abs=1e-6)
    # One file of the series loads the whole series.
    one = load_volume(sorted(folder.glob("*.dcm"))[3])
    assert one.shape == v.shape


def test_oblique_ct_pitch_keeps_rotation():
    f = need("niivue_images/CT_pitch.nii.gz")
    img = nib.load(str(f))
    v = load_volume(f)
    assert v.is_oblique
    assert v.orientation == "RAS"
    np.testing.assert_allclose(_corners_world(v.shape[::-1], v.affine),
                               _corners_world(img.shape[:3], img.affine), atol=1e-3)
    # Same voxel value at the same world point.
    raw = img.get_fdata()
    ijk = np.array([10, 200, 30])
    ras = img.affine[:3, :3] @ ijk + img.affine[:3, 3]
    zyx = np.round(v.world_to_voxel(ras)).astype(int)
    assert v.array[tuple(zyx)] == pytest.approx(raw[tuple(ijk)])


@pytest.mark.parametrize("rel", ["niivue_orientation/FLAIR.nrrd", "niivue_orientation/mha.mha"])
def test_nrrd_and_metaimage_geometry_matches_simpleitk(rel):
    f = need(rel)
    img = sitk.ReadImage(str(f))
    arr = sitk.GetArrayFromImage(img)
    v = load_volume(f)
    assert v.orientation == "RAS"
    assert sorted(v.shape) == sorted(arr.shape)
    assert sorted(np.round(v.spacing, 4)) == sorted(np.round(img.GetSpacing(), 4))
    size = img.GetSize()
    rng = np.random.default_rng(0)
    idxs = [(0, 0, 0), tuple(s - 1 for s in size)] + [
        tuple(int(rng.integers(0, s)) for s in size) for _ in range(20)]
    for idx in idxs:
        ras = np.array(img.TransformIndexToPhysicalPoint(idx)) * [-1, -1, 1]
        zyx = v.world_to_voxel(ras)
        assert np.allclose(zyx, np.round(zyx), atol=1e-3)
        assert v.array[tuple(np.round(zyx).astype(int))] == pytest.approx(
            float(arr[idx[2], idx[1], idx[0]]))


def test_sform_only_mr_loads_with_sform():
    f = need("totalsegmentator/example_mr_sm.nii.gz")
    img = nib.load(str(f))
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) > 0
    v = load_volume(f)
    assert v.provenance["affine_source"] == "sform"
    assert v.provenance["orientation"] == "LPS"
    np.testing.assert_allclose(_corners_world(v.shape[::-1], v.affine),
                               _corners_world(img.shape, img.header.get_sform()), atol=1e-3)


def test_labels_keep_integers():
    f = need("totalsegmentator/example_seg_mr.nii.gz")
    lab = load_labels(f)
    assert lab.data.dtype.kind in "iu"
    assert lab.channels == ("labels",)
    ref = np.asanyarray(nib.as_closest_canonical(nib.load(str(f))).dataobj)
    assert np.array_equal(lab.array, ref.transpose(2, 1, 0))
    img = load_volume(need("totalsegmentator/example_mr_sm.nii.gz"))
    assert lab.same_grid(img)


def test_pir_spine_mri_and_vertebra_mask_share_a_grid():
    folder = need("tptbox_pypi_samples")
    img = load_volume(folder / "TPTBox__tests__sample_mri__sub-mri_label-6_T2w.nii.gz")
    msk = load_labels(folder / "TPTBox__tests__sample_mri__sub-mri_seg-vert_label-6_msk.nii.gz")
    assert img.provenance["orientation"] == "PIR" and img.orientation == "RAS"
    assert msk.same_grid(img)
    assert msk.data.dtype.kind in "iu" and int(msk.data.max()) > 1
    raw = nib.load(str(folder / "TPTBox__tests__sample_mri__sub-mri_seg-vert_label-6_msk.nii.gz"))
    assert set(np.unique(msk.data)) == set(np.unique(np.asanyarray(raw.dataobj)).astype(int))
