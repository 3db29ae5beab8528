"""Load benchmark: a 224 x 174 x 370 float32 volume as .nii, .nii.gz, a 370-slice DICOM series
and a UK Biobank-style 6-station Dixon zip (water + fat), plus writing .nii.gz and the two
model-input preparations (3D model grid, Langner 2.5D projections) of that volume.

The zips are stitched with the default settings (docs/UKBB.md: the seeds' grid, 4 end slices
trimmed, 8-slice blend cap, overlap intensity correction, fat/water swap test). The phantom is on
the UK Biobank grid (2.23214293 mm in-plane, as the real stations); a second zip has the real
protocol's layout (per-station matrices shifted in y, the breath-hold stations at 4.5 mm, which
are interpolated onto the 3 mm grid).

Reports the median wall time over a few repeats and the peak Python-heap memory of one extra
(untimed) run measured with tracemalloc (numpy buffers included). Writes
``bench/results/load.json``.

    .venv/bin/python bench/bench_load.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, print_table, time_repeats, write_results  # noqa: E402

from bodyage_core.io import load_volume, save_volume  # noqa: E402
from bodyage_core.io.ukbb_fake import (  # noqa: E402
    real_layout,
    write_dicom_series,
    write_ukbb_zip,
)
from bodyage_core.io.ukbb_stitch import UKBB_SPACING_XYZ  # noqa: E402
from bodyage_core.preprocess import (  # noqa: E402
    ModelGrid,
    prepare_for_model,
    projections_from_volume,
)
from bodyage_core.volume import Volume  # noqa: E402

SHAPE_XYZ = (224, 174, 370)  # Langner's fused UK Biobank grid
SPACING_XYZ = UKBB_SPACING_XYZ  # 2.23214293 x 2.23214293 x 3.0 mm (the seeds' 2.232 x 2.232 x 3)


def phantom() -> Volume:
    """A body-like water/fat pair: an elliptic cylinder with smooth texture and noise."""
    nx, ny, nz = SHAPE_XYZ
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:nz, :ny, :nx]
    r = ((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.40 * ny)) ** 2
    body = (r < 1.0).astype(np.float32)
    inner = (r < 0.7).astype(np.float32)
    texture = (1.0 + 0.2 * np.sin(z / 9.0) * np.cos(x / 13.0)).astype(np.float32)
    water = (300.0 * inner + 80.0 * body) * texture
    fat = 400.0 * (body - inner) * texture + 40.0 * body
    water += rng.normal(0, 8.0, water.shape).astype(np.float32)
    fat += rng.normal(0, 8.0, fat.shape).astype(np.float32)
    aff = np.diag([*SPACING_XYZ, 1.0])
    aff[:3, 3] = [-250.0, -195.0, -1100.0]
    return Volume(np.stack([np.abs(water), np.abs(fat)]).astype(np.float32), aff,
                  ("water", "fat"))


def measure(task: str, fn, repeats: int) -> dict:
    timing = time_repeats(fn, repeats=repeats, warmup=1)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"task": task, "median_s": round(timing["median_s"], 4),
            "min_s": round(timing["min_s"], 4), "repeats": repeats,
            "peak_traced_mb": round(peak / 2**20, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    vol = phantom()
    water = Volume(vol.data[:1], vol.affine, ("water",))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nii, niigz = tmp / "v.nii", tmp / "v.nii.gz"
        save_volume(water, nii)
        rows.append(measure("save .nii.gz (float32)", lambda: save_volume(water, niigz),
                            max(2, args.repeats // 2)))
        rows.append(measure("load .nii", lambda: load_volume(nii), args.repeats))
        rows.append(measure("load .nii.gz", lambda: load_volume(niigz), args.repeats))
        dcm = tmp / "dicom"
        write_dicom_series(water, dcm, description="bench")
        rows.append(measure("load DICOM series (370 slices)", lambda: load_volume(dcm),
                            max(2, args.repeats // 2)))
        z = tmp / "1000000_20201_2_0.zip"
        write_ukbb_zip(vol, z, overlap=5)
        rows.append(measure("load UKB zip (6 stations, water+fat)",
                            lambda: load_volume(z, channels=("water", "fat")),
                            max(2, args.repeats // 2)))
        zr = tmp / "1000001_20201_2_0.zip"
        write_ukbb_zip(vol, zr, **real_layout(SHAPE_XYZ[2], SHAPE_XYZ[1], overlap=6))
        rows.append(measure("load UKB zip, real layout (per-station matrices, 4.5 mm stations)",
                            lambda: load_volume(zr, channels=("water", "fat")),
                            max(2, args.repeats // 2)))
        stitched = load_volume(z, channels=("water", "fat"))
        ukb = {"shape_zyx": list(stitched.shape), "grid": stitched.provenance["grid"],
               "qc": stitched.provenance["qc"]}
        grid = ModelGrid((4.464, 4.464, 6.0), (185, 87, 112))
        rows.append(measure("prepare_for_model (2 ch -> 185x87x112 @ 4.464/4.464/6 mm)",
                            lambda: prepare_for_model(vol, grid), max(2, args.repeats // 2)))
        rows.append(measure("projections_25d (water+fat+fat fraction, 3x256x256)",
                            lambda: projections_from_volume(vol, fat_fraction=True),
                            max(2, args.repeats // 2)))
        sizes = {"nii_mb": round(nii.stat().st_size / 2**20, 1),
                 "nii_gz_mb": round(niigz.stat().st_size / 2**20, 1),
                 "dicom_mb": round(sum(f.stat().st_size for f in dcm.iterdir()) / 2**20, 1),
                 "ukb_zip_mb": round(z.stat().st_size / 2**20, 1),
                 "ukb_zip_real_layout_mb": round(zr.stat().st_size / 2**20, 1)}
    print_table(rows)
    print("load average (1 min) before/after:", round(load_before[0], 2),
          round(os.getloadavg()[0], 2), "on", os.cpu_count(), "cores")
    print("file sizes (MB):", sizes, "| process peak RSS:", round(peak_rss_mb()), "MB")
    out = write_results("load", rows, {"shape_xyz": SHAPE_XYZ, "spacing_xyz": SPACING_XYZ,
                                       "file_sizes_mb": sizes, "ukb_stitched": ukb,
                                       "process_peak_rss_mb": round(peak_rss_mb(), 1),
                                       "load_average_before_after": [
                                           round(load_before[0], 2),
                                           round(os.getloadavg()[0], 2)]})
    print("wrote", out)


if __name__ == "__main__":
    main()
