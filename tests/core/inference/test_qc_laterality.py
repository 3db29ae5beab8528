"""The QC score's laterality term (:mod:`bodyage_core.inference.ood`): a left-right mirrored
scan is flagged with its cause, a clean one and one stored in another orientation with a
correct header are not; a training set without a consistent asymmetry gives no term; the
statistics survive saving, are added to an old reference without touching the rest, and a
reference without them still scores (no laterality term)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bodyage_core.inference import ood

torch.set_num_threads(1)
SHAPE = (2, 24, 16, 20)
MESSAGE = "left-right orientation unlike the training scans: check the laterality / the header"


def _body(rng, side: float = 1.0) -> np.ndarray:
    """A two-channel box 'body' with an 'organ' on one side (``side`` +1: +x, the right)."""
    c, nz, ny, nx = SHAPE
    z, y, x = np.meshgrid(*(np.arange(s, dtype=float) for s in (nz, ny, nx)), indexing="ij")
    cx = (nx - 1) / 2 + rng.normal(0, 0.5)
    body = ((x - cx) / 7.5) ** 2 + ((y - 7.5) / 6) ** 2 < 1
    a = np.zeros(SHAPE, np.float32)
    a[0] = body * (1 + 0.1 * rng.normal(size=body.shape))
    a[1] = body * 0.5 * (1 + 0.1 * rng.normal(size=body.shape))
    organ = ((x - cx - side * 4 + rng.normal(0, 0.5)) ** 2 + (y - 8) ** 2
             + (z - 12 + rng.normal(0, 1)) ** 2 / 9) < 9
    a[0][organ] += 1.0 + 0.2 * rng.normal()
    a[1][organ] *= 0.2
    return a


def _stats(arrays) -> dict:
    lat = ood.fit_laterality(arrays)
    assert lat is not None
    return {"laterality": lat, "members": [], "reference_scores": np.array([1.0]), "n": 1}


def test_mirrored_input_is_flagged_and_clean_or_reoriented_ones_are_not():
    rng = np.random.default_rng(0)
    stats = _stats([_body(rng) for _ in range(40)])
    assert ood.separation(stats["laterality"]) > 8        # the organ is always on the right
    clean = _body(rng)
    got = ood.laterality(stats, clean)
    assert not got["flag"] and got["excess"] == 0 and abs(got["z"]) < 3
    mirrored = ood.laterality(stats, clean[..., ::-1].copy())
    assert mirrored["flag"] and mirrored["excess"] > 1
    assert MESSAGE in ood.laterality_flag(mirrored)["message"]
    # the same anatomy stored with x running right-to-left and a header that says so: as clean
    aff = np.diag([-4.0, 4.0, 6.0, 1.0])
    reoriented = ood.laterality(stats, clean[..., ::-1].copy(), aff)
    assert not reoriented["flag"] and reoriented["z"] == pytest.approx(got["z"], abs=1e-6)
    # ... or with y and x swapped in the array (the affine permutes them back)
    perm = np.array([[0, 4.0, 0, 0], [4.0, 0, 0, 0], [0, 0, 6.0, 0], [0, 0, 0, 1]])
    swapped = np.ascontiguousarray(np.swapaxes(clean, 2, 3))
    assert ood.to_ras(swapped, perm).shape == clean.shape
    assert ood.laterality(stats, swapped, perm)["z"] == pytest.approx(got["z"], abs=1e-6)


def test_a_training_set_without_consistent_asymmetry_gives_no_term():
    """Organs on either side at random (like near-symmetric brains): the separation is small,
    the term weighs nothing and nothing is flagged, mirrored or not."""
    rng = np.random.default_rng(1)
    stats = _stats([_body(rng, side=rng.choice([-1.0, 1.0])) for _ in range(40)])
    assert ood.separation(stats["laterality"]) < ood.LAT_WEIGHT_FROM
    for side in (-1.0, 1.0):
        got = ood.laterality(stats, _body(rng, side))
        assert not got["flag"] and got["excess"] == 0 and got["weight"] == 0


def test_laterality_statistics_are_saved_and_added_to_an_old_reference(tmp_path, caplog):
    from safetensors.torch import load_file

    rng = np.random.default_rng(2)
    old = {"members": [{"mean": rng.normal(size=4), "precision": np.eye(4), "median": 2.0}],
           "reference_scores": np.sort(rng.uniform(0.5, 1.5, 30)), "n": 30}
    path = tmp_path / ood.FILE
    ood.save(old, path)
    with caplog.at_level("WARNING"):
        assert ood.load(path)["laterality"] is None             # degrades: no term, said so
    assert "no laterality statistics" in caplog.text
    before = load_file(str(path))
    lat = ood.fit_laterality([_body(rng) for _ in range(20)])
    ood.add_laterality(path, lat)
    after = load_file(str(path))
    for k, v in before.items():                                  # the rest byte for byte
        assert torch.equal(after[k], v) and after[k].dtype == v.dtype
    back = ood.load(path)["laterality"]
    assert back["n"] == 20 and back["input_shape"] == SHAPE
    assert back["t_sd"] == pytest.approx(lat["t_sd"])
    x = _body(rng)[..., ::-1].copy()
    assert ood.laterality({"laterality": back}, x)["z"] == pytest.approx(
        ood.laterality({"laterality": lat}, x)["z"], rel=1e-4)


def test_fit_adds_the_laterality_reference():
    """The reference a run fits when it finishes has the laterality statistics of its unseen
    subjects (3D inputs), and none for 2.5D inputs."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(2, 1)

        def forward(self, x):
            return self.head(x.flatten(2).mean(-1))

    rng = np.random.default_rng(3)
    data = np.stack([_body(rng) for _ in range(24)])
    stats = ood.fit([Net(), Net()], lambda idx: data[idx], [np.arange(12), np.arange(12, 24)])
    assert stats["laterality"]["n"] == 24 and ood.separation(stats["laterality"]) > 4
    flat = ood.fit([Net()], lambda idx: data[idx].mean(axis=2), [np.arange(24)])
    assert flat["laterality"] is None
    # every reference subject also gets its cross-fitted score (what it scores as new)
    assert sorted(stats["held_out_scores"]) == list(range(24))
    assert all(np.isfinite(v) and v > 0 for v in stats["held_out_scores"].values())


def test_cross_fitted_scores_are_those_of_new_inputs():
    """In-sample distances are deflated (the covariance is fitted to them); a subject left
    out of the fit scores like a new input from the same population. A variance model on the
    QC score fitted to in-sample scores would overstate every new subject's sigma."""
    rng = np.random.default_rng(4)
    feats, new = rng.normal(size=(60, 30)), rng.normal(size=(2000, 30))
    mu, prec, dist = ood._fit_member(feats)
    med = float(np.median(dist))
    as_new = float(np.median(ood._distances(new, mu, prec) / med))
    held = float(np.median(ood._cross_fitted(feats)))
    assert as_new > 1.1                                 # the in-sample median is 1
    assert held == pytest.approx(as_new, rel=0.06)


# -- the shipped whole-body model -------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    from bodyage_core.inference.bundle import find_model
    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.synth.cohort import generate_cohort

    ws = tmp_path_factory.mktemp("lat") / "ws"
    ids = generate_cohort(ws, 1, seed=98)
    return AgeRun(find_model("wholebody-synthetic")), ws / "subjects" / ids[0]


def _flags(p) -> set[str]:
    return {f["flag"] for f in p.qc}


def test_shipped_model_flags_a_mirrored_scan_and_names_the_cause(shipped, tmp_path):
    from bodyage_core.inference.subject import predict_subject
    from bodyage_core.io import load_channels
    from bodyage_core.volume import Volume

    run, subj = shipped
    assert run.qc_stats["laterality"] is not None
    files = {c: subj / f"{c}.nii.gz" for c in ("water", "fat")}
    vol = load_channels(files)
    clean = predict_subject(run, vol, subject_id="clean", out_of_fold=False)
    assert not _flags(clean) & {"laterality", "unlike_training"}
    # mirrored data under the same header: heart and liver on the wrong side
    mirrored = predict_subject(run, vol.with_data(vol.data[..., ::-1].copy()),
                               subject_id="mirrored", out_of_fold=False)
    assert "laterality" in _flags(mirrored)
    flag = next(f for f in mirrored.qc if f["flag"] == "laterality")
    assert MESSAGE in flag["message"] and flag["severity"] == "warning"
    assert mirrored.qc_score > clean.qc_score + 1
    # water and fat swapped also turn the asymmetry's sign; its cause is the contrast
    swapped = predict_subject(run, vol.with_data(vol.data[::-1].copy()), subject_id="swap",
                              out_of_fold=False)
    assert _flags(swapped) & {"laterality", "unlike_training"} == {"unlike_training"}
    # the same scan stored right-to-left with a header that says so: not a flip
    for c, path in files.items():
        img = nib.load(str(path))
        nx = img.shape[0]
        flip = np.array([[-1, 0, 0, nx - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine @ flip),
                 str(tmp_path / f"{c}.nii.gz"))
    stored = load_channels({c: tmp_path / f"{c}.nii.gz" for c in files})
    again = predict_subject(run, stored, subject_id="stored_rl", out_of_fold=False)
    assert "laterality" not in _flags(again)
    assert again.qc_score == pytest.approx(clean.qc_score, abs=1e-3)
    # ... and a Volume handed over in that orientation without the loader's reorientation
    aff = vol.affine @ np.array([[-1, 0, 0, vol.shape[-1] - 1], [0, 1, 0, 0], [0, 0, 1, 0],
                                 [0, 0, 0, 1.0]])
    raw = Volume(vol.data[..., ::-1].copy(), aff, vol.channels)
    assert "laterality" not in _flags(predict_subject(run, raw, subject_id="raw_rl",
                                                      out_of_fold=False))


def test_shipped_brain_model_does_not_flag_a_real_brain():
    """Brains are near-symmetric; the brain model's term must not flag a real IXI brain."""
    from bodyage_core.inference.bundle import find_model
    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.inference.subject import predict_subject
    from bodyage_core.io import load_volume

    ixi = (Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ixi_t1_2mm" / "t1"
           / "IXI013-HH-1212_T1.nii.gz")
    if not ixi.exists():
        pytest.skip("IXI data not present")
    run = AgeRun(find_model("brain-t1-ixi"))
    lat = run.qc_stats["laterality"]
    assert lat is not None
    v = load_volume(ixi)
    p = predict_subject(run, v.with_data(v.data, channels=("t1",)), subject_id="IXI013",
                        out_of_fold=False)
    assert "laterality" not in _flags(p)
