"""The viewer's tool screenshots in docs/images/, made the way a user gets there (real data from
``../shared/data/`` and a small synthetic cohort):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/viewer_screenshots.py

* ``lightbox.png``        a synthetic subject's coronal lightbox with its organ label map on top
  (the cohort's own organ table, the default opacity 0.5)
* ``roi_statistics.png``  a ruler, a box and an ellipse region, the liver as a label region
  (Ctrl+L) and the Measurements panel
* ``dicom_browser.png``   the series browser on the TotalSegmentator CT + TCIA MR series
* ``ct_dicom_slab.png``   that CT series opened from the browser: soft tissue W400/L40, the
  20-slice slab whole in the 3D view
* ``ct_soft_tissue.png``  the TotalSegmentator CT (NIfTI, no modality in the header): soft
  tissue from its Hounsfield values, the preset, W/L and the histogram with the window drawn
* ``labels_totalsegmentator.png`` the TotalSegmentator MR with its own label map (names from
  the map's header), outlines, the cursor in the liver

* ``predict_plain_scan.png`` a synthetic subject's water + fat opened as plain files (no
  workspace), Run "Automatic", Predict: the shipped whole-body model, its age panel and its
  Grad-CAM map at the viewer's default display (opacity 0.5, the map's top fifth)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
IMAGES = ROOT / "docs" / "images"


def settle(app, win, seconds: float = 0.6) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        win.scheduler.flush()


def main() -> int:
    from PySide6 import QtCore

    from bodyage_gui.app import application
    from bodyage_gui.qt_main_window import QtMainWindow

    app = application()
    tmp = Path(tempfile.mkdtemp(prefix="bodyage_shots_"))
    settings = QtCore.QSettings(str(tmp / "s.ini"), QtCore.QSettings.Format.IniFormat)
    try:
        from bodyage_core.synth import generate_cohort

        ws = tmp / "ws"
        generate_cohort(ws, n=2, seed=21)
        subj = sorted((ws / "subjects").iterdir())[0]
        # -- lightbox ---------------------------------------------------------------------
        win = QtMainWindow(show_dialogs=False, settings=settings, restore_settings=False)
        win.resize(1500, 950)
        win.show()
        assert win.open_files([subj / "water.nii.gz", subj / "fat.nii.gz"],
                              [subj / "labels.nii.gz"]), win.last_error
        mask = win.state.layers[-1]
        mask.set(outline=True)          # organ outlines: the anatomy stays readable
        win.state.set_lightbox(plane="coronal", rows=3, columns=4, spacing=3)
        win.state.set_layout("lightbox")
        win.state.set_cursor_voxel((90, 43, 56))
        settle(app, win)
        win.save_screenshot(IMAGES / "lightbox.png", whole_window=True)
        # -- ruler and regions ------------------------------------------------------------
        st = win.state
        st.set_layout("axial")
        st.layer(mask.name).visible = False
        st.set_cursor_voxel((95, 43, 56))
        vol = st.base_layer.volume

        def w(z, y, x):
            return vol.voxel_to_world((z, y, x))

        st.add_measurement("ruler", "axial", w(95, 10, 20), w(95, 10, 92))
        st.add_measurement("box", "axial", w(95, 30, 40), w(95, 45, 60))
        st.add_measurement("ellipse", "axial", w(95, 55, 25), w(95, 70, 45))
        # the liver as a label region (Tools > Label region at the cursor)
        liver = next(k for k, v in mask.label_names.items() if v == "liver")
        win.tools.add_label_region(mask, liver)
        win.tools.set_mode("box")
        settle(app, win)
        win.resizeDocks([win.panel_docks["Measurements"]], [250],
                        QtCore.Qt.Orientation.Vertical)
        settle(app, win)
        win.save_screenshot(IMAGES / "roi_statistics.png", whole_window=True)
        win.close()
        # -- Predict on a plain scan (Automatic) -------------------------------------------
        other = sorted((ws / "subjects").iterdir())[1]
        win = QtMainWindow(show_dialogs=False, settings=settings, restore_settings=False)
        win.resize(1600, 1000)
        win.show()
        assert win.open_files([other / "water.nii.gz", other / "fat.nii.gz"]), win.last_error
        panel = win.analysis.prediction_panel
        assert panel.select_auto()
        settle(app, win)
        assert panel.predict(), win.last_error
        t0 = time.perf_counter()
        while panel.is_running() and time.perf_counter() - t0 < 300:
            settle(app, win, 0.2)
        assert panel.result is not None, panel.status_label.text()
        settle(app, win, 1.5)
        win.save_screenshot(IMAGES / "predict_plain_scan.png", whole_window=True)
        win.close()
        # -- DICOM browser and the CT slab ------------------------------------------------
        ct, mr = DATA / "totalsegmentator" / "example_ct_dicom", \
            DATA / "tcia_vs_seg_001_t1_dicom_subset"
        if ct.is_dir() and mr.is_dir():
            study = tmp / "study"
            shutil.copytree(ct, study / "ct")
            shutil.copytree(mr, study / "mr")
            win = QtMainWindow(show_dialogs=False, settings=settings, restore_settings=False)
            win.resize(1280, 760)
            win.show()
            dlg = win.open_dicom_browser(study)
            dlg.wait()
            dlg.resize(820, 380)
            dlg.select("t1_mpr_tra_gk_v4")
            settle(app, win)
            dlg.grab().save(str(IMAGES / "dicom_browser.png"))
            dlg.select("CT Body 3.0")
            dlg.open_selected()
            dlg.close()
            settle(app, win, 1.5)
            win.save_screenshot(IMAGES / "ct_dicom_slab.png", whole_window=True)
            win.close()
        else:
            print("no real DICOM data: dicom_browser.png and ct_dicom_slab.png not made",
                  file=sys.stderr)
        # -- the NIfTI CT and a foreign label map ------------------------------------------
        ts = DATA / "totalsegmentator"
        if (ts / "example_ct.nii.gz").exists():
            win = QtMainWindow(show_dialogs=False, settings=settings, restore_settings=False)
            win.resize(1500, 900)
            win.show()
            assert win.open_files([ts / "example_ct.nii.gz"]), win.last_error
            win.state.set_layout("row")
            settle(app, win, 1.0)
            win.save_screenshot(IMAGES / "ct_soft_tissue.png", whole_window=True)
            win.close()
        mr, seg = ts / "example_mr_sm.nii.gz", ts / "example_seg_mr.nii.gz"
        if mr.exists() and seg.exists():
            import nibabel as nib
            import numpy as np

            win = QtMainWindow(show_dialogs=False, settings=settings, restore_settings=False)
            win.resize(1500, 900)
            win.show()
            assert win.open_files([mr], [seg]), win.last_error
            win.state.layers[-1].set(outline=True)
            img = nib.load(str(seg))
            ijk = np.argwhere(np.asarray(img.dataobj) == 5)                   # liver
            centre = ijk[np.argmin(((ijk - ijk.mean(axis=0)) ** 2).sum(axis=1))]
            win.state.set_cursor(nib.affines.apply_affine(img.affine, centre))
            settle(app, win, 1.0)
            win.save_screenshot(IMAGES / "labels_totalsegmentator.png", whole_window=True)
            win.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"screenshots in {IMAGES}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
