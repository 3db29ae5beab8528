"""A workspace imported straight from UK Biobank zips (``bodyage import --ukbb-folder``) opens
in the viewer with water and fat taken from the subject's one zip."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from bodyage_core.cli.main import main  # noqa: E402
from bodyage_core.io import load_volume  # noqa: E402
from bodyage_core.io.ukbb_fake import write_ukbb_zip  # noqa: E402
from bodyage_core.volume import Volume  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402


def test_streamed_subject_shows_its_water_and_fat(qtbot, tmp_path):
    nz, ny, nx = 30, 12, 14
    z = np.arange(nz, dtype=np.float64)[:, None, None] * np.ones((nz, ny, nx))
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    vol = Volume(np.stack([10 * z + 5, 200 - 2 * z]), aff, ("water", "fat"))
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    zip_path = bulk / "1000001_20201_2_0.zip"
    write_ukbb_zip(vol, zip_path, channels=("water", "fat"))
    (tmp_path / "c.csv").write_text("eid,age,sex,bmi\n1000001,61,F,22\n")
    assert main(["import", str(tmp_path / "ws"), "--ukbb-folder", str(bulk),
                 "--csv", str(tmp_path / "c.csv")]) == 0
    win = QtMainWindow(show_dialogs=False, enable_3d=False, restore_settings=False)
    qtbot.addWidget(win)
    assert win.open_workspace(tmp_path / "ws", wait=True), win.last_error
    shown = win.navigator.load_payload("1000001")["image"]
    ref = load_volume(zip_path, channels=("water", "fat"))
    assert shown.channels == ("water", "fat")
    np.testing.assert_allclose(shown.channel("fat"), ref.channel("fat"))
    assert not np.allclose(shown.channel("water"), shown.channel("fat"))
