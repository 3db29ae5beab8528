"""Viewer speed: slice change -> repaint done, and opening a subject from .nii.gz.

A 224 x 174 x 370 (x, y, z) two-channel (water, fat) volume with two overlays: a Grad-CAM-like
heat map on the same grid and a population map on a coarser atlas grid (resampled to the
subject grid through world coordinates on the fly). The main window runs on the offscreen Qt
platform (2D views; the 3D view needs OpenGL and is not part of these figures).

* ``slice step``: wheel-like step of the axial slice; one view re-slices 3 layers, the other two
  move their crosshair; time from the state change to all three views repainted
  (``viewport().repaint()``, synchronous).
* ``cursor jump``: a click-like cursor move to a random voxel: all three views re-slice.
* ``cpu_*``: CPU time of the main thread for the repaints (of the process, all threads, for
  opening) (on a shared, loaded machine the
  wall-clock figures include waiting for a core; CPU time is what the work itself costs).
* ``longest event-loop stall``: while water + fat open in the background (File > Open), the
  longest gap between ticks of a 5 ms timer on the GUI thread (includes showing the result).
* ``open``: reading water.nii.gz + fat.nii.gz (int16 with scl_slope, as UK Biobank) with
  ``bodyage_core.io`` and building the state and a new window with its first frame; also with
  the two overlays.
* ``open a workspace subject``: what the subject browser does in the open window (water + fat
  as two channels and the subject's Grad-CAM, read in the background, not preloaded) until the
  three views are repainted.
* ``switch to atlas space``: View > Atlas space for that subject (warped in the background onto
  a default-resolution atlas grid through an affine + displacement-field registration); its
  ``cpu_*`` figures are the GUI thread's part (building the layers and the first frame).

The prediction modules (torch) are imported before the timings: the viewer imports them in a
background thread after start-up, and an import running at the same time competes for the GIL
(a one-off at start-up, measured by ``bench_gui_stall.py``), which is not what these rows are
about. Wall-clock figures measured while other work loads the machine are upper bounds: the
JSON records the load average before and after.

Targets: median and p95 repaint < 16 ms; open < 1 s.

    .venv/bin/python bench/bench_viewer.py [--steps 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from _common import print_table, write_results  # noqa: E402

SHAPE_XYZ = (224, 174, 370)
SPACING = (2.232, 2.232, 3.0)


def make_files(folder: Path) -> dict[str, Path]:
    from bodyage_gui.demo import demo_subject

    dixon, labels, blob = demo_subject("full")      # 224 x 174 x 370 at 2.232 x 2.232 x 3 mm
    assert dixon.shape[::-1] == SHAPE_XYZ
    paths = {}
    for i, ch in enumerate(("water", "fat")):
        arr = dixon.data[i].transpose(2, 1, 0)
        img = nib.Nifti1Image(np.round(arr / 0.5).astype(np.int16), dixon.affine)
        img.header.set_slope_inter(0.5, 0)
        paths[ch] = folder / f"{ch}.nii.gz"
        nib.save(img, str(paths[ch]))
    paths["gradcam"] = folder / "gradcam.nii.gz"
    nib.save(nib.Nifti1Image(blob.data[0].transpose(2, 1, 0), blob.affine), str(paths["gradcam"]))
    # population map on a coarser atlas grid (3 mm isotropic), shifted by 10 mm
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    aff[:3, 3] = dixon.affine[:3, 3] + 10.0
    shape = tuple(int(n * s / 3.0) for n, s in zip(SHAPE_XYZ, SPACING))
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij", sparse=True)
    pop = np.exp(-((x / 0.3) ** 2 + (y / 0.4) ** 2 + ((z - 0.2) / 0.3) ** 2)).astype(np.float32)
    paths["population"] = folder / "population.nii.gz"
    nib.save(nib.Nifti1Image(pop, aff), str(paths["population"]))
    return paths


def open_subject(paths: dict[str, Path], overlays: bool):
    from bodyage_core.viewer import ViewerState
    from bodyage_core.volume import Volume
    from bodyage_gui.loading import load_many

    names = ["water", "fat"] + (["gradcam", "population"] if overlays else [])
    vols = load_many([paths[n] for n in names])
    w, f = vols[:2]
    state = ViewerState()
    state.add_layer(Volume(np.concatenate([w.data, f.data]), w.affine, ("water", "fat")),
                    "subject")
    if overlays:
        state.add_layer(vols[2], "gradcam", threshold=0.2)
        state.add_layer(vols[3], "population", threshold=0.3, colormap="hot")
    return state


def open_in_window(app, folder: Path, paths: dict[str, Path], repeats: int = 5) -> dict:
    """Open workspace subjects (water + fat + Grad-CAM) in one window, as the subject browser
    does, with preloading turned off: from the request to the three views repainted."""
    from bodyage_core.cohort import Workspace
    from bodyage_gui.qt_main_window import QtMainWindow

    root = folder / "ws"
    ws = Workspace.create(root)
    images = {"water": str(paths["water"]), "fat": str(paths["fat"]),
              "gradcam_r": str(paths["gradcam"])}
    ws.db.add_subjects([{"subject_id": sid, "sex": "F", "bmi": 22.0, "age": 60.0,
                         "images": images} for sid in ("A", "B")])
    ws.close()
    win = QtMainWindow(show_dialogs=False, enable_3d=False, restore_settings=False)
    win.resize(1400, 900)
    win.show()
    win.preloader.preload = lambda *_a, **_k: None  # measure a read, not a preloaded subject
    assert win.open_workspace(root, wait=True), win.last_error
    times, cpu = [], []
    for i in range(repeats):
        sid = "B" if i % 2 == 0 else "A"
        win.preloader.clear()
        app.processEvents()
        t0, c0 = time.perf_counter(), time.process_time()
        assert win.open_subject(sid, wait=True), win.last_error
        win.scheduler.flush()
        for v in win.slice_views.values():
            v.graphics_view.viewport().repaint()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    atlas_row = switch_to_atlas(app, win, root, paths)
    win.close()
    return [{"measure": "open a workspace subject in the window (water+fat+Grad-CAM)",
            "median_ms": 1000 * statistics.median(times), "p95_ms": 1000 * max(times),
            "cpu_median_ms": 1000 * statistics.median(cpu), "cpu_p95_ms": 1000 * max(cpu),
            "n": len(times), "target_ms": 1000}, atlas_row]


def switch_to_atlas(app, win, root: Path, paths: dict[str, Path], repeats: int = 3) -> dict:
    """View > Atlas space on the open subject: its two channels and Grad-CAM warped (in the
    background) onto an atlas grid of the default resolution (4.464 x 4.464 x 6 mm) through an
    affine + displacement-field registration; wall time to the repainted views, and the GUI
    thread's own part (``cpu_*``). The warp is recomputed each time (cache cleared)."""
    import SimpleITK as sitk

    from bodyage_core.cohort import Workspace
    from bodyage_core.registration.transform import SubjectTransform, array_to_field
    from bodyage_core.volume import Volume
    from bodyage_gui.loading import load_for_viewer

    w = load_for_viewer(paths["water"])
    ref_shape = (185, 87, 112)
    ref_aff = np.diag([4.464, 4.464, 6.0, 1.0])
    ref_aff[:3, 3] = w.affine[:3, 3]
    rng = np.random.default_rng(0)
    fld = np.zeros((*ref_shape, 3))
    fld[..., 0] = 2.0 + rng.normal(0, 0.1, ref_shape)
    tx = SubjectTransform(sitk.AffineTransform(3), ref_shape, ref_aff,
                          array_to_field(fld, (ref_shape, ref_aff)),
                          array_to_field(-fld, (ref_shape, ref_aff)))
    with Workspace.open(root) as ws:
        adir = ws.atlas_dir("G")
        adir.mkdir(parents=True, exist_ok=True)
        from bodyage_core.io import save_volume

        pop = np.zeros(ref_shape, np.float32)
        pop[80:110, 30:60, 40:70] = 1.0
        save_volume(Volume(pop[None], ref_aff, ("map",)), adir / "population_r_all_mean.nii.gz")
        for sid in ("A", "B"):
            folder = ws.subject_dir(sid, create=True) / "atlas_G"
            tx.save(folder)
            ws.db.set_registration(sid, "G", "ok", forward=ws.relative(folder))
            ws.db.set_image(sid, "to_atlas_G", ws.relative(folder))
    assert win.open_subject(win.current_subject, wait=True), win.last_error
    win.space_switch.reset(win.current_subject)
    times, cpu = [], []
    for _ in range(repeats):
        win.space_switch.clear_cache()
        assert win.set_display_space("subject")
        app.processEvents()
        t0 = time.perf_counter()
        assert win.set_display_space("atlas"), win.last_error
        fut = win.space_switch.load.future
        fut.exception(300)
        c0 = time.thread_time()
        assert win.wait_for_space(), win.last_error
        win.scheduler.flush()
        for v in win.slice_views.values():
            v.graphics_view.viewport().repaint()
        cpu.append(time.thread_time() - c0)
        times.append(time.perf_counter() - t0)
    assert win.display_space == "atlas"
    win.set_display_space("subject")
    return {"measure": "switch to atlas space (2 channels + Grad-CAM warped, background)",
            "median_ms": 1000 * statistics.median(times), "p95_ms": 1000 * max(times),
            "cpu_median_ms": 1000 * statistics.median(cpu), "cpu_p95_ms": 1000 * max(cpu),
            "n": len(times), "target_ms": None}


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def _fast_gzip() -> bool:
    from bodyage_gui.loading import use_fast_gzip

    return use_fast_gzip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args(argv)

    from PySide6 import QtWidgets

    from bodyage_gui.app import application
    from bodyage_gui.qt_main_window import QtMainWindow

    app = application()
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_viewer_") as tmp:
        t0 = time.perf_counter()
        paths = make_files(Path(tmp))
        print(f"(wrote test files in {time.perf_counter() - t0:.1f} s: "
              f"{sum(p.stat().st_size for p in paths.values()) / 1e6:.0f} MB)", flush=True)

        from bodyage_gui.workers.prediction import warm_up_imports

        t0 = time.perf_counter()
        open_subject(paths, False)  # imports and first-touch costs, reported separately
        cold = time.perf_counter() - t0
        warm_up_imports()  # torch etc. now, not in a thread competing with the timings
        open_times = {False: [], True: []}
        open_cpu = {False: [], True: []}
        win = None
        for overlays in (False, True):
            for _ in range(3):
                t0, c0 = time.perf_counter(), time.process_time()
                state = open_subject(paths, overlays)
                if win is not None:
                    win.close()
                    win.deleteLater()
                win = QtMainWindow(state, show_dialogs=False, enable_3d=False)
                win.resize(1400, 900)
                win.show()
                win.scheduler.flush()
                for v in win.slice_views.values():
                    v.graphics_view.viewport().repaint()
                open_times[overlays].append(time.perf_counter() - t0)
                open_cpu[overlays].append(time.process_time() - c0)
                app.processEvents()
        for overlays, times in open_times.items():
            rows.append({"measure": "open .nii.gz water+fat" + (" + 2 overlays" if overlays
                                                               else ""),
                         "median_ms": 1000 * statistics.median(times),
                         "p95_ms": 1000 * max(times),
                         "cpu_median_ms": 1000 * statistics.median(open_cpu[overlays]),
                         "cpu_p95_ms": 1000 * max(open_cpu[overlays]),
                         "n": len(times), "target_ms": 1000})

        rows.append({"measure": "first open in a fresh process (imports io)",
                     "median_ms": 1000 * cold, "p95_ms": 1000 * cold, "n": 1,
                     "target_ms": None})
        rows.extend(open_in_window(app, Path(tmp), paths))
        state = win.state
        views = list(win.slice_views.values())

        def repaint_all():
            win.scheduler.flush()
            for v in views:
                v.graphics_view.viewport().repaint()

        for _ in range(5):  # warm up
            state.step_slice("axial", 1)
            repaint_all()
        step_times, step_cpu = [], []
        direction = 1
        for i in range(args.steps):
            if i % 40 == 0:
                direction = -direction
            t0, c0 = time.perf_counter(), time.thread_time()
            state.step_slice("axial", direction)
            repaint_all()
            step_times.append(time.perf_counter() - t0)
            step_cpu.append(time.thread_time() - c0)
            app.processEvents()
        rng = np.random.default_rng(0)
        jump_times, jump_cpu = [], []
        shape = np.array(state.base_layer.volume.shape)
        for _ in range(args.steps):
            zyx = (rng.random(3) * (shape - 1)).astype(int)
            t0, c0 = time.perf_counter(), time.thread_time()
            state.set_cursor_voxel(zyx)
            repaint_all()
            jump_times.append(time.perf_counter() - t0)
            jump_cpu.append(time.thread_time() - c0)
            app.processEvents()
        for name, times, cpu in (("slice step (axial, 3 layers)", step_times, step_cpu),
                                 ("cursor jump (3 views re-slice)", jump_times, jump_cpu)):
            rows.append({"measure": name, "median_ms": 1000 * statistics.median(times),
                         "p95_ms": 1000 * percentile(times, 95),
                         "cpu_median_ms": 1000 * statistics.median(cpu),
                         "cpu_p95_ms": 1000 * percentile(cpu, 95), "n": len(times),
                         "target_ms": 16})
        # the event loop while a subject opens in the background (File > Open path)
        from PySide6 import QtCore

        stalls = []
        for _ in range(3):
            ticks = []
            timer = QtCore.QTimer()
            timer.setInterval(5)
            timer.timeout.connect(lambda ticks=ticks: ticks.append(time.perf_counter()))
            timer.start()
            win.open_files([paths["water"], paths["fat"]], wait=False)
            t_end = time.perf_counter() + 30
            while win.files.load.pending and time.perf_counter() < t_end:
                app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 5)
            timer.stop()
            gaps = np.diff(ticks) if len(ticks) > 1 else np.array([0.0])
            stalls.append(float(gaps.max()))
        rows.append({"measure": "longest event-loop stall, background open",
                     "median_ms": 1000 * statistics.median(stalls),
                     "p95_ms": 1000 * max(stalls), "n": len(stalls), "target_ms": 50})
        state = win.state
        geom = {p: state.geometry(p).shape for p in ("axial", "coronal", "sagittal")}
        win.close()
        QtWidgets.QApplication.processEvents()

    print_table(rows, ["measure", "median_ms", "p95_ms", "cpu_median_ms", "cpu_p95_ms", "n",
                       "target_ms"])
    out = write_results("viewer", rows, {
        "volume_xyz": list(SHAPE_XYZ), "spacing_mm": list(SPACING), "channels": 2,
        "overlays": ["gradcam (same grid)", "population (3 mm grid, resampled)"],
        "slice_shapes": {k: list(v) for k, v in geom.items()},
        "qt_platform": os.environ.get("QT_QPA_PLATFORM"), "window": [1400, 900],
        "load_average_1min": os.getloadavg()[0], "load_average_1min_before": load_before,
        "fast_gzip": _fast_gzip(),
        "note": "wall-clock figures on a shared machine under this load are upper bounds; "
                "cpu_* columns are the work itself (main thread for repaints, process for "
                "opening)"})
    print(f"(load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores;"
          " figures on a shared machine are upper bounds)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
