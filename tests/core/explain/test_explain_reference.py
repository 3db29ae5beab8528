"""Gradient x input against a reference image (``bodyage explain --reference atlas``): the map is
the first-order part of mu(x) - mu(reference), so it is zero where the subject equals the
reference and lies where they differ. Checked with the shipped whole-body model on a synthetic
subject whose reference differs from it in one organ (the phantom's label map is the truth)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bodyage_core.errors import ConfigError
from bodyage_core.explain.gradcam import gradient_x_input
from bodyage_core.explain.pipeline import map_kind
from bodyage_core.inference.bundle import find_model
from bodyage_core.inference.ensemble import AgeRun
from bodyage_core.inference.subject import MapRequest, predict_subject
from bodyage_core.models.factory import build_model
from bodyage_core.synth import LABEL_IDS, generate_subject, sample_subject
from bodyage_core.volume import Volume

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def subject():
    s = generate_subject(sample_subject(5, 0, age=70.0), "default")
    vol = Volume(np.concatenate([s.water.data, s.fat.data]), s.water.affine, ("water", "fat"))
    return vol, s.labels.data[0]


def test_reference_changes_what_gradient_x_input_credits():
    torch.manual_seed(0)
    net = build_model({"arch": "resnet3d", "width": 4, "in_channels": 2})
    x = torch.rand(1, 2, 12, 12, 12)
    plain = gradient_x_input(net, x, variant="signed")
    zero_ref = gradient_x_input(net, x, variant="signed", reference=torch.zeros_like(x))
    np.testing.assert_allclose(zero_ref.mean, plain.mean, rtol=1e-6, atol=1e-7)
    same = gradient_x_input(net, x, variant="signed", reference=x.clone())
    assert np.abs(same.mean).max() == 0.0
    assert np.abs(plain.mean).max() > 0
    assert same.info["reference"] and not plain.info["reference"]
    with pytest.raises(ValueError, match="reference of shape"):
        gradient_x_input(net, x, reference=torch.zeros(1, 2, 12, 12, 10))


def test_map_kind_and_reference_rules():
    assert map_kind("gradxinput", "r", "signed", "atlas") == "gradxinput_signed_vs_atlas_r"
    assert map_kind("gradxinput", "r", "signed") == "gradxinput_signed_r"
    with pytest.raises(ConfigError, match="gradxinput only"):
        map_kind("gradcam", "r", "relu", "atlas")
    with pytest.raises(ConfigError, match="unknown map reference"):
        map_kind("gradxinput", "r", "signed", "mean")


def test_map_against_a_reference_lies_where_the_subject_differs(subject):
    """The reference is the subject itself with its back muscles 25 % darker in water: the
    map must sit in the back muscles (a misaligned reference grid would smear it over every
    edge of the body), and against the subject itself it must vanish."""
    vol, labels = subject
    run = AgeRun(find_model("wholebody-synthetic"))
    organ = labels == LABEL_IDS["back_muscles"]
    assert organ.sum() > 500
    ref = vol.data.copy()
    ref[0][organ] *= 0.75
    req = MapRequest("gradxinput", "signed", options={"reference": vol.with_data(ref)})
    pred = predict_subject(run, vol, subject_id="s", maps=[req])
    m = np.abs(pred.maps[req.key].data[0])
    from scipy import ndimage

    near = ndimage.binary_dilation(organ, iterations=2)      # the map is resampled twice
    ratio = m[near].mean() / m[~near].mean()
    # outside the organ the reference differs only by the water channel's normalisation
    # (its foreground mean moved by ~0.5 %), a faint uniform residue: ~700x
    assert ratio > 200, ratio

    itself = MapRequest("gradxinput", "signed", options={"reference": vol})
    same = predict_subject(run, vol, subject_id="s", maps=[itself])
    assert np.abs(same.maps[itself.key].data[0]).max() < 1e-6
    plain = MapRequest("gradxinput", "signed")
    zero = predict_subject(run, vol, subject_id="s", maps=[plain])
    # against zero the map credits the rest of the body too (the back muscles are the
    # model's strongest age organ, so they stand out, but ~20x, not ~700x)
    z = np.abs(zero.maps[plain.key].data[0])
    assert z[near].mean() / z[~near].mean() < ratio / 10


def test_explain_against_the_atlas_says_why_a_subject_has_no_reference(tmp_path, capsys):
    """Subjects not registered to an atlas fail one by one with the reason the index gives (the
    batch workers have no index: the stage looks it up and hands the reason over)."""
    from bodyage_core.cli.main import main

    ws = tmp_path / "ws"
    assert main(["synth", str(ws), "--n", "2", "--grid", "14,14,18"]) == 0
    capsys.readouterr()
    rc = main(["explain", str(ws), "--run", "wholebody-synthetic", "--method", "gradxinput",
               "--signed", "--reference", "atlas"])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.count("is not registered to any atlas") == 2, out
