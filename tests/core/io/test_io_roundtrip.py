"""save_volume / save_array write NIfTI atomically and round-trip exactly with load_volume."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bodyage_core.io import load_labels, load_volume, save_array, save_volume
from bodyage_core.volume import Volume


def oblique_affine() -> np.ndarray:
    a = np.deg2rad(12.0)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.25, 1.5, 3.1])
    aff[:3, 3] = [-40.123456789, 17.3, -250.0000001]
    return aff


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_volume_round_trip_exact(tmp_path, name):
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(2, 7, 9, 11)).astype(np.float32), oblique_affine(),
                 ("water", "fat"), {"note": "x"}, {"age": 61.5, "sex": "F"})
    path = save_volume(vol, tmp_path / name)
    back = load_volume(path)
    assert back.channels == ("water", "fat")
    assert back.data.dtype == np.float32
    assert np.array_equal(back.data, vol.data)
    assert np.array_equal(back.affine, vol.affine)
    assert back.metadata == {"age": 61.5, "sex": "F"}
    assert back.provenance["note"] == "x"
    assert back.is_oblique
    # other readers see the same geometry (sform)
    img = nib.load(str(path))
    assert int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.affine, vol.affine, atol=1e-4)
    assert img.shape == (11, 9, 7, 2)
    # channel selection
    fat = load_volume(path, channels="fat")
    assert fat.channels == ("fat",) and np.array_equal(fat.array, vol.data[1])
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_save_array_signature_and_labels(tmp_path):
    lab = np.zeros((5, 6, 7), np.int16)
    lab[1:3, 2:4, 3:6] = 42
    lab[4, 5, 6] = 7
    path = save_array(lab, np.diag([2.0, 2.0, 2.0, 1.0]), tmp_path / "lab.nii.gz", dtype=np.uint8)
    assert nib.load(str(path)).get_data_dtype() == np.uint8
    back = load_labels(path)
    assert back.data.dtype == np.uint8
    assert np.array_equal(back.array, lab)
    # three-argument save_volume form (the contract in docs/DEVELOPING.md)
    p2 = save_volume(lab.astype(np.float64), np.eye(4), tmp_path / "f.nii.gz")
    assert nib.load(str(p2)).get_data_dtype() == np.float32


def test_non_canonical_volume_lands_in_same_world_place(tmp_path):
    aff = np.array([[0, 0, -2.0, 10], [-1.5, 0, 0, 20], [0, 3.0, 0, -5], [0, 0, 0, 1]])
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    vol = Volume(data, aff, ("image",))
    back = load_volume(save_volume(vol, tmp_path / "lps.nii.gz"))
    assert back.orientation == "RAS"
    assert back.provenance["orientation"] == vol.orientation
    zyx = np.array([1, 3, 2])
    world = vol.voxel_to_world(zyx)
    idx = np.round(back.world_to_voxel(world)).astype(int)
    assert back.array[tuple(idx)] == data[tuple(zyx)]


def test_load_channels_pairs_water_and_fat(tmp_path):
    from bodyage_core.errors import LoadError
    from bodyage_core.io import load_channels

    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    w = save_array(np.full((4, 5, 6), 1.0, np.float32), aff, tmp_path / "water.nii.gz")
    f = save_array(np.full((4, 5, 6), 2.0, np.float32), aff, tmp_path / "fat.nii.gz")
    v = load_channels({"water": w, "fat": f})
    assert v.channels == ("water", "fat") and v.data.shape == (2, 4, 5, 6)
    assert float(v.channel("fat").mean()) == 2.0
    other = save_array(np.zeros((4, 5, 7), np.float32), aff, tmp_path / "other.nii.gz")
    with pytest.raises(LoadError, match="not on the grid"):
        load_channels({"water": w, "fat": other})
