"""Benchmark the synthetic cohort generator: one subject at the default and the full grid.

Reports the median seconds of ``generate_subject`` (repeats in one process, after a warm-up),
the seconds to generate *and* write one subject's four NIfTI files, and the peak memory: the
peak of traced allocations (tracemalloc, numpy included) and the peak resident set size of a
fresh process that generates one subject. Also records the oracle noise floor.

    .venv/bin/python bench/bench_synth.py [--repeats 5] [--skip-full] [--no-floor]
                                          [--image-floor 300]

Writes ``bench/results/synth.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bodyage_core.synth import generate_subject, sample_subject  # noqa: E402
from bodyage_core.synth.cohort import DISK_DTYPES, IMAGE_KINDS, save_nifti  # noqa: E402
from bodyage_core.synth.phantom import SynthGrid  # noqa: E402

# VmHWM (peak resident set of this process image; ru_maxrss can carry the parent's peak over
# fork + exec on Linux)
_RSS_SNIPPET = """
import sys
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1])
from bodyage_core.synth import generate_subject, sample_subject
base = hwm()
generate_subject(sample_subject(0, 1), sys.argv[1])
print(base, hwm())
"""


def bench_grid(name: str, repeats: int) -> dict:
    grid = SynthGrid.resolve(name)
    params = [sample_subject(0, i) for i in range(repeats + 1)]
    generate_subject(params[0], grid)                                 # warm-up
    times = []
    for p in params[1:]:
        t0 = time.perf_counter()
        generate_subject(p, grid)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    subj = generate_subject(params[1], grid)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s2 = generate_subject(params[1], grid)
        for kind in IMAGE_KINDS:
            save_nifti(getattr(s2, kind), Path(tmp) / f"{kind}.nii.gz",
                       dtype=DISK_DTYPES.get(kind))
        t_write = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in Path(tmp).iterdir())
    out = subprocess.run([sys.executable, "-c", _RSS_SNIPPET, name], capture_output=True,
                         text=True, cwd=HERE.parent, check=True)
    base_kb, peak_kb = (int(v) for v in out.stdout.split())
    nz, ny, nx = grid.shape
    return {
        "grid": name, "spacing_xyz_mm": list(grid.spacing), "shape_xyz": [nx, ny, nz],
        "voxels": nx * ny * nz, "repeats": repeats,
        "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
        "generate_and_write_s": t_write, "disk_mb_per_subject": disk / 1e6,
        "traced_peak_mb": traced_peak / 1e6,
        "process_peak_rss_mb": peak_kb / 1024, "process_rss_after_import_mb": base_kb / 1024,
        "subject_bytes_mb": sum(getattr(subj, k).data.nbytes for k in IMAGE_KINDS) / 1e6,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--image-floor", type=int, default=300, metavar="N",
                    help="subjects for the image-feature oracle at the default grid (0: skip)")
    ap.add_argument("--out", default=str(HERE / "results" / "synth.json"))
    args = ap.parse_args(argv)
    rows = [bench_grid("default", args.repeats)]
    if not args.skip_full:
        rows.append(bench_grid("full", max(3, args.repeats // 2 + 1)))
    result = {
        "benchmark": "synthetic subject generation",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": __import__("os").cpu_count()},
        "grids": rows,
    }
    if not args.no_floor:
        from bodyage_core.synth.oracle import noise_floor, per_effect_floor

        floor = noise_floor(n=6000, seed=12345)
        floor.pop("features")
        floor["single_effect_oracle_mae"] = per_effect_floor(n=3000, seed=12345)
        result["noise_floor"] = floor
    if args.image_floor:
        from bodyage_core.synth.oracle import image_noise_floor

        result["image_noise_floor"] = image_noise_floor(n=args.image_floor, grid="default")
    print(f"{'grid':8} {'voxels (x y z)':>18} {'median s':>9} {'gen+write s':>11} "
          f"{'traced MB':>10} {'RSS MB':>8} {'disk MB':>8}")
    for r in rows:
        x, y, z = r["shape_xyz"]
        print(f"{r['grid']:8} {f'{x} x {y} x {z}':>18} {r['median_s']:9.3f} "
              f"{r['generate_and_write_s']:11.2f} {r['traced_peak_mb']:10.0f} "
              f"{r['process_peak_rss_mb']:8.0f} {r['disk_mb_per_subject']:8.1f}")
    if "noise_floor" in result:
        f = result["noise_floor"]
        print(f"noise floor (oracle on true effect parameters, n={f['n']}): MAE "
              f"{f['oracle_mae']:.2f} y, RMSE {f['oracle_rmse']:.2f} y (mean predictor MAE "
              f"{f['mean_predictor_mae']:.2f} y; knowing the biological age exactly: "
              f"{f['bio_age_known_mae']:.2f} y)")
    if "image_noise_floor" in result:
        f = result["image_noise_floor"]
        print(f"image-feature oracle (label-based measurements on {f['n']} generated subjects, "
              f"default grid): MAE {f['image_oracle_mae']:.2f} y, RMSE "
              f"{f['image_oracle_rmse']:.2f} y")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from bodyage_core.atomic import write_json

    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
