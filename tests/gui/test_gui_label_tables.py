"""Label names come only from the map itself or a table beside it (issue 14 item 1): the real
TotalSegmentator MR map reads "liver" and "stomach" (was "5 (soft_tissue)", "6 (lung_left)"
from the phantom's table), a TPTBox vertebra mask reads numbers only (was "lung_left"), the
command line and File > Add overlay agree; ITK-SNAP, FreeSurfer LUT and JSON tables beside a
map are read; per-label colour, visibility and an outline mode."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6 import QtCore  # noqa: E402

from bodyage_core.cli.cmd_gui import state_from_args  # noqa: E402
from bodyage_core.cli.main import build_parser  # noqa: E402
from bodyage_core.labels import find_label_table, looks_like_label_map  # noqa: E402
from bodyage_core.viewer import ViewerState  # noqa: E402
from bodyage_core.volume import Volume  # noqa: E402
from bodyage_gui.qt_main_window import QtMainWindow  # noqa: E402
from bodyage_gui.views.qt_slice_view import QtSliceView  # noqa: E402

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TS = DATA / "totalsegmentator"
TPT = DATA / "tptbox_pypi_samples"


def _need(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"real data not available: {p}")


@pytest.fixture
def window(qtbot, tmp_path):
    settings = QtCore.QSettings(str(tmp_path / "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = QtMainWindow(show_dialogs=False, settings=settings, enable_3d=False,
                       restore_settings=False)
    qtbot.addWidget(win)
    return win


def _world_of(path: Path, label: int) -> np.ndarray:
    """The world (RAS mm) point of the most central voxel of ``label`` in the file."""
    img = nib.load(str(path))
    ijk = np.argwhere(np.asarray(img.dataobj) == label)
    centre = ijk[np.argmin(((ijk - ijk.mean(axis=0)) ** 2).sum(axis=1))]
    return nib.affines.apply_affine(img.affine, centre)


def _label_at(state: ViewerState, layer_name: str, ras) -> tuple[object, object]:
    state.set_cursor(ras)
    v = next(v for v in state.cursor_readout()["values"] if v["layer"] == layer_name)
    return v["value"], v["label"]


def _ts_mr_state(how: str, window) -> ViewerState:
    mr, seg = TS / "example_mr_sm.nii.gz", TS / "example_seg_mr.nii.gz"
    if how == "cli":
        args = build_parser().parse_args(["gui", str(mr), "--overlay", str(seg)])
        state, _ = state_from_args(args)
        return state
    if how == "add_overlay":
        assert window.open_files([mr]), window.last_error
        assert window.add_overlay(seg), window.last_error
    else:
        assert window.open_files([mr], overlays=[seg]), window.last_error
    return window.state


@pytest.mark.parametrize("how", ["cli", "add_overlay", "open_files"])
def test_totalsegmentator_mr_map_reads_its_own_names(window, how):
    _need(TS / "example_mr_sm.nii.gz", TS / "example_seg_mr.nii.gz")
    state = _ts_mr_state(how, window)
    seg = state.layers[-1]
    assert seg.kind == "labels" and seg.name == "example_seg_mr"
    assert "header" in seg.label_source
    seg.visible = True
    path = TS / "example_seg_mr.nii.gz"
    assert _label_at(state, seg.name, _world_of(path, 5)) == (5, "liver")       # was soft_tissue
    assert _label_at(state, seg.name, _world_of(path, 6)) == (6, "stomach")     # was lung_left
    assert state.cursor_readout()["organ"] == "stomach"
    # the table's own colours: liver is cyan in TotalSegmentator's table
    assert seg.label_colors[5] == (0, 255, 255)


@pytest.mark.parametrize("how", ["cli", "add_overlay"])
def test_foreign_mask_without_a_table_reads_numbers_only(window, how):
    img = TPT / "TPTBox__tests__sample_mri__sub-mri_label-6_T2w.nii.gz"
    vert = TPT / "TPTBox__tests__sample_mri__sub-mri_seg-vert_label-6_msk.nii.gz"
    _need(img, vert)
    assert not looks_like_label_map(img)          # BIDS entity label-6: an image
    if how == "cli":
        state, _ = state_from_args(build_parser().parse_args(["gui", str(img), "--overlay",
                                                              str(vert)]))
    else:
        assert window.open_files([img]) and window.add_overlay(vert), window.last_error
        state = window.state
    lay = state.layers[-1]
    assert lay.kind == "labels" and lay.label_names == {}
    ids = [int(i) for i in np.unique(np.asarray(nib.load(str(vert)).dataobj)) if i]
    value, label = _label_at(state, lay.name, _world_of(vert, ids[0]))
    assert value == ids[0] and label is None                               # was 'lung_left'
    assert f"{lay.name}: {ids[0]}" in state.readout_text()
    assert "(" not in state.readout_text().split(f"{lay.name}: ")[1].split("\n")[0]


def _save_int(path: Path, arr_zyx: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr_zyx.transpose(2, 1, 0)).astype(np.int16),
                             np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


def _lab_volume() -> np.ndarray:
    lab = np.zeros((6, 8, 10), np.int16)
    lab[:, 1:7, 1:5] = 3
    lab[:, 1:7, 5:9] = 7
    return lab


@pytest.mark.parametrize("kind", ["itksnap", "freesurfer", "json", "nnunet", "ts_named",
                                  "none"])
def test_tables_beside_the_map(tmp_path, kind):
    p = _save_int(tmp_path / "organs.nii.gz", _lab_volume())
    if kind == "itksnap":
        (tmp_path / "organs.txt").write_text(
            '# ITK-SNAP Label Description File\n'
            '    0     0    0    0        0  0  0    "Clear Label"\n'
            '    3   255    0    0        1  1  1    "left kidney"\n'
            '    7     0  255    0        1  1  1    "spleen"\n')
    elif kind == "freesurfer":
        (tmp_path / "organs_LUT.txt").write_text(
            "#No. Label Name:  R   G   B   A\n0  Unknown  0 0 0 0\n3  Left-Kidney  255 0 0 0\n"
            "7  Spleen  0 255 0 0\n")
    elif kind == "json":
        (tmp_path / "organs.json").write_text(json.dumps(
            {"labels": {"3": {"name": "left kidney", "color": [255, 0, 0]}, "7": "spleen"}}))
    elif kind == "nnunet":
        (tmp_path / "organs.json").write_text(json.dumps(
            {"labels": {"background": 0, "left kidney": 3, "spleen": 7}}))
    elif kind == "ts_named":
        (tmp_path / "organs.json").write_text(json.dumps(
            {"label_table": "totalsegmentator:total_mr"}))
    table = find_label_table(p)
    if kind == "none":
        assert table is None
        return
    assert table is not None and table.names[7] in ("spleen", "Spleen", "pancreas")
    if kind in ("itksnap", "freesurfer", "json"):
        assert table.colors[3] == (255, 0, 0)
    state = ViewerState()
    state.add_layer(Volume(np.zeros((1, 6, 8, 10), np.float32), np.diag([2.0, 2.0, 3.0, 1.0])),
                    "img")
    from bodyage_core.io import load_labels

    lay = state.add_layer(load_labels(p), path=p)
    assert lay.label_names == table.names and lay.label_source == table.source


def test_a_bids_image_sidecar_is_not_a_label_table(tmp_path):
    p = _save_int(tmp_path / "sub-1_dseg.nii.gz", _lab_volume())
    (tmp_path / "sub-1_dseg.json").write_text(json.dumps({"RepetitionTime": 2.0,
                                                          "Manufacturer": "X"}))
    assert find_label_table(p) is None


def test_synthetic_cohort_labels_keep_the_organ_names(tmp_path):
    from bodyage_core.labels import SYNTHETIC_LABELS

    root = tmp_path / "ws"
    subj = root / "subjects" / "S0"
    subj.mkdir(parents=True)
    p = _save_int(subj / "labels.nii.gz", _lab_volume())
    assert find_label_table(p) is None            # not a workspace made by bodyage synth
    (root / "synth.json").write_text("{}")
    (root / "cohort.sqlite").write_text("")
    assert find_label_table(p).names[12] == SYNTHETIC_LABELS[12] == "liver"


def _label_view(qtbot, lab: np.ndarray, **layer_settings):
    state = ViewerState()
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    state.add_layer(Volume(np.zeros((1, *lab.shape), np.float32), aff), "img")
    lay = state.add_layer(Volume(lab[None], aff, ("labels",)), "organs", kind="labels",
                          opacity=1.0, label_names={3: "kidney", 7: "spleen"},
                          label_colors={3: (255, 0, 0), 7: (0, 0, 255)})
    lay.set(**layer_settings)
    view = QtSliceView(state, "axial")
    qtbot.addWidget(view)
    view.resize(300, 300)
    view.flush()
    return state, lay, view


def _pixels_of(view, state, lab, label):
    """Composite RGB of the screen pixels where the axial slice shows ``label``."""
    sl = state.slice_for_view(state.layers[-1], "axial").array
    rgb = view.composite_rgba()[..., :3]
    return rgb[sl == label], sl


def test_label_colour_visibility_and_outline(qtbot):
    lab = _lab_volume()
    state, lay, view = _label_view(qtbot, lab)
    px, _ = _pixels_of(view, state, lab, 3)
    assert (px == (255, 0, 0)).all()                       # the table's colour
    lay.set(label_colors={**lay.label_colors, 3: (0, 255, 0)})
    view.flush()
    assert (_pixels_of(view, state, lab, 3)[0] == (0, 255, 0)).all()
    lay.set(hidden_labels={3})
    view.flush()
    assert (_pixels_of(view, state, lab, 3)[0] == 0).all()     # hidden: the black image shows
    assert (_pixels_of(view, state, lab, 7)[0] == (0, 0, 255)).all()
    lay.set(hidden_labels=set(), outline=True)
    view.flush()
    px, sl = _pixels_of(view, state, lab, 7)
    rgb = view.composite_rgba()[..., :3]
    inner = np.zeros_like(sl, bool)
    inner[1:-1, 1:-1] = ((sl[1:-1, 1:-1] == 7) & (sl[:-2, 1:-1] == 7) & (sl[2:, 1:-1] == 7)
                         & (sl[1:-1, :-2] == 7) & (sl[1:-1, 2:] == 7))
    edge = (sl == 7) & ~inner
    assert inner.any() and edge.any()
    assert (rgb[inner] == 0).all() and (rgb[edge] == (0, 0, 255)).all()
    # settings travel in the session
    s = lay.settings()
    assert s["outline"] is True and s["label_colors"]["3"] == [0, 255, 0]


def test_layer_panel_label_list_toggles_visibility_and_outline(qtbot, window):
    _need(TS / "example_mr_sm.nii.gz", TS / "example_seg_mr.nii.gz")
    state = _ts_mr_state("add_overlay", window)
    seg = state.layers[-1]
    table = window.layer_panel.label_table
    assert table.isVisibleTo(window.layer_panel)
    names = [table.item(r, 1).text() for r in range(table.rowCount())]
    assert "liver" in names and "stomach" in names
    row = names.index("liver")
    table.item(row, 0).setCheckState(QtCore.Qt.CheckState.Unchecked)
    assert 5 in seg.hidden_labels
    window.layer_panel.outline_check.setChecked(True)
    assert seg.outline
    state.set_active_layer(state.base_layer)
    assert not table.isVisibleTo(window.layer_panel)      # only for label layers
