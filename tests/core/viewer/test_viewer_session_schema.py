"""Viewer sessions are validated against a versioned schema (issue 12 item 9): odd values
(``display_range: [5]``, ``zoom: "NaN"``, a layer that is a string ...) are skipped and
reported, the rest of the session is restored, and ``bodyage gui --session`` never ends in a
traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bodyage_core.errors import BodyageError
from bodyage_core.viewer import SESSION_VERSION, ViewerState
from bodyage_core.viewer.session import validate_session


def _image(tmp_path, name="t1.nii.gz"):
    data = np.arange(8 * 9 * 10, dtype=np.float32).reshape(10, 9, 8)
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


def _odd_session(tmp_path) -> dict:
    img = _image(tmp_path)
    over = _image(tmp_path, "map.nii.gz")
    return {
        "bodyage_session": 1,
        "convention": "sideways",
        "layout": 3,
        "cursor_mm": [1.0, "x"],
        "views": {"axial": {"zoom": "NaN", "pan": [0, 1]}, "coronal": "big",
                  "sagittal": {"zoom": 2.0, "pan": [float("inf"), 0]}},
        "layers": [
            "t1.nii.gz",                                      # a layer that is a string
            {"name": "t1", "path": str(img), "kind": "image", "display_range": [5],
             "opacity": "opaque", "visible": "yes", "base": True},
            {"name": "map", "path": str(over), "kind": "blob", "threshold": "high",
             "colormap": "no-such-map", "display_range": [0, 1], "opacity": 0.4},
            {"name": "ghost"},                                # no file
        ],
    }


def test_validate_session_reports_every_odd_value(tmp_path):
    clean, problems = validate_session(_odd_session(tmp_path))
    text = "\n".join(problems)
    for what in ("convention", "layout", "cursor_mm", "views.axial.zoom", "views.coronal",
                 "views.sagittal.pan", "layer 1", "display_range", "opacity", "visible",
                 "kind", "threshold", "colormap", "ghost"):
        assert what in text, (what, text)
    assert [s["name"] for s in clean["layers"]] == ["t1", "map"]
    t1, mp = clean["layers"]
    assert "display_range" not in t1 and "opacity" not in t1 and "visible" not in t1
    assert mp["display_range"] == [0.0, 1.0] and mp["opacity"] == 0.4
    assert "kind" not in mp and "threshold" not in mp and "colormap" not in mp
    assert clean["views"] == {"axial": {"pan": [0.0, 1.0]}, "sagittal": {"zoom": 2.0}}
    assert "convention" not in clean and "cursor_mm" not in clean


def test_restore_skips_odd_values_and_says_so(tmp_path):
    state = ViewerState()
    report = state.restore(_odd_session(tmp_path))
    assert [lay.name for lay in state.layers] == ["t1", "map"]
    t1 = state.layers[0]
    assert np.isfinite(t1.vmin) and t1.vmax > t1.vmin          # default range, not [5]
    assert t1.opacity == 1.0 and t1.visible
    assert state.views["axial"].zoom == 1.0 and state.views["sagittal"].zoom == 2.0
    assert state.convention == "radiological" and state.layout == "grid"
    assert np.all(np.isfinite(state.cursor))
    assert any("display_range" in r for r in report) and any("ghost" in r for r in report)


@pytest.mark.parametrize("bad", [[], "layers", {"layers": "x"}, {"layers": [1, "a", None]},
                                 {"bodyage_session": "two", "layers": []},
                                 {"bodyage_session": SESSION_VERSION + 1, "layers": []}])
def test_hopeless_sessions_are_one_clear_error(bad):
    with pytest.raises(BodyageError):
        ViewerState().restore(bad)


def test_sessions_carry_the_schema_version(tmp_path):
    state = ViewerState()
    img = _image(tmp_path)
    from bodyage_core.io import load_volume

    state.add_layer(load_volume(img), path=img)
    d = state.to_dict()
    assert d["bodyage_session"] == SESSION_VERSION
    clean, problems = validate_session(json.loads(json.dumps(d)))
    assert problems == []


def _gui(args, tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    env.pop("DISPLAY", None)
    return subprocess.run([sys.executable, "-m", "bodyage_core.cli.main", "gui", *args,
                           "--screenshot", str(tmp_path / "out.png"), "--size", "700x400"],
                          capture_output=True, text=True, env=env, timeout=180)


def test_cli_session_with_odd_values_opens_and_reports(tmp_path):
    pytest.importorskip("PySide6")
    js = tmp_path / "odd.json"
    js.write_text(json.dumps(_odd_session(tmp_path)))
    r = _gui(["--session", str(js)], tmp_path)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    assert "display_range" in r.stderr and "skipped" in r.stderr
    assert (tmp_path / "out.png").stat().st_size > 1000
    # nothing usable: one line, exit 2
    js.write_text(json.dumps({"bodyage_session": 1, "layers": ["a", 3]}))
    r = _gui(["--session", str(js)], tmp_path)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2 and "odd.json" in r.stderr
