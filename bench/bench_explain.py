"""Grad-CAM and occlusion seconds per subject on the default synthetic model grid.

The real 3D ResNet-18 (``bodyage_core.models.ResNet3D``) at widths 32 and 64, two input
channels (water, fat) on the default grid of ``training.data.InputSpec`` (its ``shape_zyx`` at
6 x 4.46 x 4.46 mm), CPU: Grad-CAM at ``layer3`` for one model and for an ensemble of 5
(seconds per subject), and occlusion sensitivity (one model) with non-overlapping patches
(the grid cut into 3 and into 4 parts per axis: 27 and 64 positions).
Occlusion cost is one forward pass per patch position, so it is also given per forward pass.

    .venv/bin/python bench/bench_explain.py [--quick] [--threads N]

Writes ``bench/results/explain.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import peak_rss_mb, print_table, time_repeats, write_results  # noqa: E402

from bodyage_core.explain import gradcam, occlusion_map  # noqa: E402
from bodyage_core.explain.occlusion import patch_starts  # noqa: E402
from bodyage_core.models import ResNet3D  # noqa: E402
from bodyage_core.training.data import InputSpec  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="width 32 only, fewer repeats")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = InputSpec()
    shape = spec.shape_zyx
    x = torch.randn(1, len(spec.channels), *shape)
    widths = (32,) if args.quick else (32, 64)
    repeats = 1 if args.quick else 2
    rows = []
    for width in widths:
        torch.manual_seed(0)
        models = [ResNet3D(len(spec.channels), width=width).eval() for _ in range(5)]
        with torch.no_grad():
            fwd = time_repeats(lambda m=models[0]: m(x), repeats=repeats, warmup=1)
        rows.append({"width": width, "task": "forward pass (reference)", "members": 1,
                     "s_per_subject": fwd["median_s"], "forwards": 1})
        for k in (1, 5):
            t = time_repeats(lambda k=k, ms=models: gradcam(ms[:k], x, layer="layer3"),
                             repeats=repeats, warmup=0)
            rows.append({"width": width, "task": "grad-cam layer3", "members": k,
                         "s_per_subject": t["median_s"], "forwards": k})
            print(f"width {width}: grad-cam x{k}: {t['median_s']:.2f} s", flush=True)
        # non-overlapping patches: the grid cut into 3 (coarse) or 4 (finer) parts per axis
        cuts = (3,) if args.quick else (3, 4)
        patches = [(tuple(-(-s // n) for s in shape),) * 2 for n in cuts]
        for patch, stride in patches:
            strides = stride or tuple(max(1, p // 2) for p in patch)
            n_pos = 1
            for s, p, st in zip(shape, patch, strides):
                n_pos *= len(patch_starts(s, p, st))
            t0 = time.perf_counter()
            occlusion_map(models[0], x, patch=patch, stride=stride, batch_size=4)
            dt = time.perf_counter() - t0
            rows.append({"width": width, "task": f"occlusion {n_pos} patches of {patch}",
                         "members": 1, "s_per_subject": dt, "forwards": n_pos + 1})
            print(f"width {width}: occlusion {patch}: {dt:.1f} s ({n_pos} positions)", flush=True)
    for r in rows:
        r["s_per_forward"] = r["s_per_subject"] / r["forwards"]
    print_table(rows, ["width", "task", "members", "s_per_subject", "forwards", "s_per_forward"])
    out = write_results("explain", rows, {
        "grid_shape_zyx": list(shape), "channels": list(spec.channels),
        "spacing_zyx_mm": list(spec.spacing_zyx), "device": "cpu", "threads": args.threads,
        "peak_rss_mb": peak_rss_mb(), "load_average_1min": _loadavg(),
        "note": "seconds per subject, median of repeats; Grad-CAM includes the forward pass; "
                "occlusion = one forward per patch position (+1 unoccluded); machine shared",
    })
    print(f"wrote {out}")
    return 0


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    sys.exit(main())
