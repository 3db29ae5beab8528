"""Subject-space placement of maps on real files stored in non-RAS / oblique orientations.

A map is made on a model grid (the canonical-RAS image resampled with the preprocess module to
its own voxel size: another grid, same detail), resampled back to the *file's own* voxel grid with :func:`map_to_subject_space` and
saved; it must overlay the original file's voxels (high correlation with the stored data).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bodyage_core.explain import load_map, map_to_subject_space, save_map
from bodyage_core.explain.pipeline import subject_grid

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
FILES = [
    DATA / "ixi_t1_2mm" / "t1" / "IXI013-HH-1212_T1.nii.gz",   # stored PSR
    DATA / "niivue_images" / "CT_pitch.nii.gz",                # oblique (~16 degree pitch)
    DATA / "tptbox_pypi_samples",                              # PIR (first NIfTI inside)
]


def _first_nifti(p: Path) -> Path | None:
    if p.is_file():
        return p
    if p.is_dir():
        found = sorted(p.glob("*.nii.gz"))
        return found[0] if found else None
    return None


@pytest.mark.parametrize("entry", FILES, ids=lambda p: p.name)
def test_map_lands_on_the_original_file_grid(entry, tmp_path):
    path = _first_nifti(entry)
    if path is None:
        pytest.skip(f"real data not found: {entry}")
    from bodyage_core.io import load_volume
    from bodyage_core.preprocess import resample_to_grid

    vol = load_volume(path)                              # canonical RAS
    model = resample_to_grid(vol, vol.spacing, order=1)
    shape, affine = subject_grid(path)                   # the file's own grid
    img = nib.load(str(path))
    assert shape == tuple(int(s) for s in img.shape[:3][::-1])

    out = map_to_subject_space(model.data[0], model.affine, (shape, affine))
    target = tmp_path / "gradcam_test.nii.gz"
    save_map(out, target)
    saved = nib.load(str(target))
    np.testing.assert_allclose(saved.affine, img.affine, atol=1e-4)
    orig = np.asarray(img.dataobj, dtype=np.float32)
    orig = orig.reshape(orig.shape[:3]) if orig.ndim > 3 else orig
    back = np.asarray(saved.dataobj)
    assert back.shape == orig.shape
    inside = load_map(target).array.transpose(2, 1, 0) != 0
    r = np.corrcoef(back[inside], orig[inside])[0, 1]
    assert r > 0.9, r
    # negative control: the same map mirrored left-right in world space lands elsewhere
    flipped = map_to_subject_space(model.data[0][:, :, ::-1], model.affine, (shape, affine))
    fl = flipped.array.transpose(2, 1, 0)
    r_flip = np.corrcoef(fl[inside], orig[inside])[0, 1]
    assert r_flip < r - 0.05, (r, r_flip)
