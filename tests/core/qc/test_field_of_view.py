"""The body's head-foot extent on the model grid, from the synthetic phantom's own geometry."""

from __future__ import annotations

import numpy as np
import pytest

from bodyage_core.qc.field_of_view import body_extent
from bodyage_core.synth.params import sample_subject
from bodyage_core.synth.phantom import generate_subject


@pytest.fixture(scope="module")
def subject():
    s = generate_subject(sample_subject(0, 0), grid=(14.0, 14.0, 18.0))
    x = np.concatenate([s.water.data, s.fat.data]).astype(np.float32)   # (2, Z, Y, X)
    return x, np.asarray(s.labels.data[0]) > 0


def test_extent_is_the_share_of_slices_with_body(subject):
    x, body = subject
    truth = float(np.mean(body.reshape(body.shape[0], -1).any(axis=1)))
    full = body_extent(x)
    assert full == pytest.approx(truth, abs=0.05)
    cut = x.copy()
    k = x.shape[1] // 4
    cut[:, -k:] = 0                                   # a station missing: a quarter of the body
    assert body_extent(cut) == pytest.approx(full - k / x.shape[1], abs=0.03)


def test_extent_does_not_depend_on_the_input_normalisation(subject):
    x, _ = subject
    z = (x - x.mean()) / x.std()                      # background negative after a z-score
    assert body_extent(z) == pytest.approx(body_extent(x), abs=0.02)
    assert body_extent(x.astype(np.float16)) == pytest.approx(body_extent(x), abs=1e-3)


def test_extent_without_body():
    assert body_extent(np.zeros((1, 10, 8, 8), np.float32)) == 0.0
    assert body_extent(np.full((1, 10, 8, 8), np.nan, np.float32)) == 0.0


def test_thinning_the_slices_keeps_the_extent(subject, monkeypatch):
    import bodyage_core.qc.field_of_view as fov

    x, _ = subject
    full = body_extent(x)
    cut = x.copy()
    cut[:, : x.shape[1] // 3] = 0
    monkeypatch.setattr(fov, "MAX_VOXELS", x[0].size // 9)      # every third row and column
    assert body_extent(x) == pytest.approx(full, abs=0.03)
    assert body_extent(cut) == pytest.approx(full - (x.shape[1] // 3) / x.shape[1], abs=0.03)
