"""``bodyage info``: text and JSON output, one-line errors."""

from __future__ import annotations

import json

import numpy as np

from bodyage_core.cli.main import main
from bodyage_core.io import save_volume
from bodyage_core.volume import Volume


def test_info_text_and_json(tmp_path, capsys):
    aff = np.array([[0, 0, 2.0, 0], [-2.0, 0, 0, 0], [0, -3.0, 0, 0], [0, 0, 0, 1]])
    vol = Volume(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), aff, ("t1",),
                 metadata={"age": 50.0, "sex": "F"})
    path = save_volume(vol, tmp_path / "x.nii.gz")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "RAS (file: PIR)" in out and "age=50.0" in out and "t1" in out
    assert main(["info", str(path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["orientation"] == "RAS" and facts["original_orientation"] == "PIR"
    assert sorted(facts["shape_zyx"]) == [4, 5, 6]
    assert facts["value_range"] == [0.0, 119.0]
    assert facts["channels"] == ["t1"]


def test_info_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "Traceback" not in err
