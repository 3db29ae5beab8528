"""Under a virtual X server: the whole main window with a synthetic body, an importance-map
overlay and the VTK 3D view, saved as docs/images/viewer.png (the README's screenshot).

Run with ``xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -m xvfb tests``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore, QtGui  # noqa: E402

from bodyage_core.viewer import ViewerState  # noqa: E402
from bodyage_core.volume import Volume  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "docs" / "images"


def synthetic_subject() -> tuple[Volume, Volume, Volume, dict[int, str]]:
    """(dixon water+fat, labels, importance map, label names): the project's synthetic phantom
    when available (importance = the smoothed ground-truth age mask), else the GUI demo body."""
    try:
        from scipy.ndimage import gaussian_filter

        from bodyage_core.synth.anatomy import LABELS
        from bodyage_core.synth.params import sample_subject
        from bodyage_core.synth.phantom import generate_subject

        s = generate_subject(sample_subject(0, 0, age=72), "default")
        dixon = Volume(np.concatenate([s.water.data, s.fat.data]), s.water.affine,
                       ("water", "fat"))
        imp = gaussian_filter((s.age_mask.data[0] > 0).astype(np.float32), 2.0)
        return dixon, s.labels, s.water.with_data(imp[None], channels=("importance",)), \
            dict(LABELS)
    except ImportError:
        from bodyage_gui.demo import DEMO_LABELS, demo_subject

        d, lab, blob = demo_subject()
        return d, lab, blob, DEMO_LABELS


@pytest.mark.xvfb
def test_main_window_screenshot_with_3d(qtbot, tmp_path):
    from bodyage_gui.qt_main_window import QtMainWindow
    from bodyage_gui.views.qt_volume_view import QtVolumeView

    dixon, labels, imp, names = synthetic_subject()
    state = ViewerState()
    state.add_layer(dixon, "subject (water/fat)")
    state.add_layer(labels, "organs", kind="labels", label_names=names, visible=False,
                    opacity=0.35)
    lay = state.add_layer(imp, "importance", threshold=0.25, colormap="heat", opacity=0.75,
                          display_range=(0.0, 1.0))
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(state, show_dialogs=False, settings=settings)
    qtbot.addWidget(win)
    win.resize(1500, 950)
    win.show()
    qtbot.waitExposed(win)
    vv = win.volume_view
    assert isinstance(vv, QtVolumeView) and vv.available, getattr(vv, "reason", "")
    # put the cursor in the middle of the importance map
    zyx = np.unravel_index(np.argmax(imp.data[0]), imp.shape)
    state.set_cursor_voxel(zyx)
    qtbot.wait(200)
    win.scheduler.flush()
    # the 3D cursor follows the state
    np.testing.assert_allclose(vv.sphere.GetCenter(), state.cursor, atol=1e-6)
    state.step_slice("axial", 3)
    win.scheduler.flush()
    np.testing.assert_allclose(vv.sphere.GetCenter(), state.cursor, atol=1e-6)
    # large volumes are downsampled in this view only, and it says so
    if max(dixon.shape) > 128:
        assert vv.factor > 1 and "downsampled" in vv.note_label.text()
    # a display-setting change of the heat map only updates the transfer functions
    actor, n = vv.volume_actor, vv.n_transfer_updates
    lay.threshold = 0.3
    win.scheduler.flush()
    assert vv.volume_actor is actor and vv.n_transfer_updates == n + 1
    lay.threshold = 0.25
    # the layer panel in front of the (empty, no workspace) cohort panel it shares a tab with
    win.panel_docks["Layers"].raise_()
    qtbot.wait(50)
    shot = vv.render_image()
    arr = _qimage_array(shot)
    assert arr.std() > 5  # something was rendered, not a blank window
    # an R/L A/P S/I cube in the corner says which side is which (QA pass: there was none)
    marker = vv.orientation_marker
    assert marker is not None and marker.GetEnabled()
    cube = marker.GetOrientationMarker()
    assert (cube.GetXPlusFaceText(), cube.GetYPlusFaceText(), cube.GetZPlusFaceText()) == \
        ("R", "A", "S")
    corner = arr[-arr.shape[0] // 6:, : arr.shape[1] // 6]
    assert corner.std() > 5  # drawn in the lower-left corner of the 3D view
    # the whole height of the body is in the 3D view after a reset (head and knees were cut
    # off in a wide view by a fixed zoom)
    lo, hi = vv._bounds
    c = (lo + hi) / 2
    ren = vv.renderer
    w, h = vv.vtk_widget.GetRenderWindow().GetSize()
    for z in (lo[2], hi[2]):
        ren.SetWorldPoint(c[0], c[1], z, 1.0)
        ren.WorldToDisplay()
        x, y, _ = ren.GetDisplayPoint()
        assert 0 <= x <= w and 0 <= y <= h, (z, x, y, w, h)
    IMAGES.mkdir(parents=True, exist_ok=True)
    out = IMAGES / "viewer.png"
    assert win.save_screenshot(out, whole_window=True), win.last_error
    assert win.save_screenshot(IMAGES / "viewer_views.png"), win.last_error
    img = QtGui.QImage(str(out))
    assert img.width() >= 1400
    assert state.active_layer is lay
    win.close()


def _qimage_array(img: QtGui.QImage) -> np.ndarray:
    img = img.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    ptr = img.constBits()
    arr = np.frombuffer(ptr, np.uint8, img.bytesPerLine() * img.height())
    return arr.reshape(img.height(), img.bytesPerLine())[:, : img.width() * 3]
