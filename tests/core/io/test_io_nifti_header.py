"""NIfTI header precedence: sform (code > 0) before qform before pixdim; scaling applied."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bodyage_core.errors import LoadError
from bodyage_core.io import load_labels, load_volume


def _img(sform_code: int, qform_code: int) -> nib.Nifti1Image:
    data = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    qaff = np.diag([2.0, 2.0, 2.0, 1.0])
    qaff[:3, 3] = [1, 2, 3]
    saff = np.diag([-3.0, 3.0, 3.0, 1.0])
    saff[:3, 3] = [10, 20, 30]
    img = nib.Nifti1Image(data, None)
    img.set_qform(qaff, code=qform_code)
    img.set_sform(saff, code=sform_code)
    return img


def test_sform_preferred_then_qform(tmp_path):
    for s_code, q_code, source, sx in [(2, 1, "sform", 3.0), (0, 1, "qform", 2.0)]:
        path = tmp_path / f"s{s_code}q{q_code}.nii.gz"
        nib.save(_img(s_code, q_code), str(path))
        v = load_volume(path)
        assert v.provenance["affine_source"] == source
        assert v.spacing[0] == sx


def test_slope_and_intercept(tmp_path):
    img = _img(1, 1)
    img.header.set_slope_inter(0.5, -3.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, str(path))
    v = load_volume(path)
    raw = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    # sform flips x (-3): canonical array is raw reversed along x, then (z, y, x)
    expected = (raw[::-1] * 0.5 - 3.0).transpose(2, 1, 0)
    np.testing.assert_allclose(v.array, expected)
    assert v.provenance["orientation"] == "LAS"
    with pytest.raises(LoadError, match="not a label map"):
        load_labels(path)  # half-integers after scaling are not labels
    img.header.set_slope_inter(2.0, 1.0)
    nib.save(img, str(path))
    lab = load_labels(path)
    assert lab.data.dtype.kind in "iu"
    np.testing.assert_array_equal(lab.array, (raw[::-1] * 2 + 1).transpose(2, 1, 0))
