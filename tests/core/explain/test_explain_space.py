"""Maps from the model grid back to the subject grid, and writing them as NIfTI."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bodyage_core.errors import BodyageError
from bodyage_core.explain import load_map, map_to_subject_space, resample_map, save_map
from bodyage_core.volume import Volume


def rotation(axis: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


@pytest.fixture
def subject() -> Volume:
    """Anisotropic (1.5, 2.0, 3.0) mm, x axis flipped (to Left), rotated 25 deg about S and
    10 deg about R: a non-trivially oriented grid."""
    shape_zyx = (20, 24, 18)
    lin = rotation(2, 25) @ rotation(0, 10) @ np.diag([-1.5, 2.0, 3.0])
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = (40.0, -30.0, 12.0)
    data = np.random.default_rng(0).normal(size=shape_zyx).astype(np.float32)
    return Volume(data, aff, channels=("water",))


def model_grid_for(subject: Volume, spacing: float = 2.0):
    """An RAS-aligned isotropic grid covering the subject's bounding box (like a resampler)."""
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in subject.shape], indexing="ij"))
    world = subject.voxel_to_world(corners.reshape(3, -1).T)
    lo, hi = world.min(0), world.max(0)
    shape_xyz = np.ceil((hi - lo) / spacing).astype(int) + 1
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = lo
    return tuple(int(v) for v in shape_xyz[::-1]), aff


def blob(shape_zyx, centre_zyx, sigma):
    grid = np.indices(shape_zyx).astype(float)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre_zyx))
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def test_blob_lands_at_the_same_world_position(subject):
    shape_m, aff_m = model_grid_for(subject)
    model = Volume(np.zeros(shape_m, np.float32), aff_m)
    p_world = subject.voxel_to_world((10.0, 11.0, 8.0))  # a point well inside the subject
    centre_m = model.world_to_voxel(p_world)
    m = blob(shape_m, centre_m, sigma=2.0) * 3.5

    out = map_to_subject_space(m, aff_m, subject)
    assert out.shape == subject.shape
    assert np.allclose(out.affine, subject.affine)
    assert out.data.dtype == np.float32
    # Raw values kept: the peak is close to the blob's amplitude, not normalised to 1.
    assert 2.8 < out.array.max() <= 3.5 + 1e-5

    w = out.array
    zyx = np.indices(subject.shape).reshape(3, -1).T
    com_world = (subject.voxel_to_world(zyx) * w.reshape(-1, 1)).sum(0) / w.sum()
    assert np.linalg.norm(com_world - p_world) < 1.0
    peak = np.unravel_index(np.argmax(w), w.shape)
    assert np.linalg.norm(subject.voxel_to_world(peak) - p_world) < 3.0  # within ~a voxel

    # and back onto the model grid: the blob is where it was
    back = resample_map(w, subject.affine, shape_m, aff_m)
    inside = m > 0.5 * m.max()
    assert np.corrcoef(back[inside], m[inside])[0, 1] > 0.95


def test_outside_model_grid_is_zero(subject):
    aff_small = np.diag([2.0, 2.0, 2.0, 1.0])
    aff_small[:3, 3] = subject.voxel_to_world(np.array(subject.shape) / 2.0) - 4.0
    small = (5, 5, 5)
    out = map_to_subject_space(np.ones(small, np.float32), aff_small, subject)
    assert out.array.min() == 0.0
    assert 0 < (out.array > 0).sum() < out.array.size


def test_identity_grid_is_exact(subject):
    m = np.random.default_rng(1).normal(size=subject.shape).astype(np.float32)
    out = map_to_subject_space(m, subject.affine, (subject.shape, subject.affine))
    np.testing.assert_allclose(out.array, m, atol=1e-5)


def test_save_map_nifti_affine_and_values(subject, tmp_path):
    m = np.random.default_rng(2).normal(size=subject.shape).astype(np.float32) * 1e-3
    path = save_map(subject.with_data(m[None], channels=("map",)),
                    tmp_path / "sub" / "gradcam_run1.nii.gz", description="gradcam layer3")
    assert path.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["gradcam_run1.nii.gz"]
    img = nib.load(str(path))
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, subject.affine, atol=1e-5)
    assert int(img.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), m)
    vol = load_map(path)
    np.testing.assert_array_equal(vol.array, m)
    assert vol.orientation == subject.orientation
    # plain array + affine, overwriting atomically
    save_map(m * 2, path, affine=subject.affine)
    np.testing.assert_allclose(load_map(path).array, m * 2)


def test_save_map_rejects_other_formats(tmp_path, subject):
    with pytest.raises(BodyageError, match="NIfTI"):
        save_map(np.zeros((2, 2, 2)), tmp_path / "x.png", affine=np.eye(4))
