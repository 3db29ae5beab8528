"""Synthetic whole-body cohort: 3D ResNet-18 vs 2.5D networks on the same split (the Starck
paper's Table 1 comparison), against the generator's documented noise floor and the baselines.

The full benchmark (issue 3) is >= 600 subjects at the default grid (4.464 x 4.464 x 6 mm);
with the networks on ``bodyage train``'s default input grid (twice the image voxel) and small
networks it takes 30 min with one thread on a shared 2-core CPU
(``bench/results/synth_models_600_default.json``)::

    .venv/bin/python bench/bench_synth_models.py --n 600 --grid default \
        --model-spacing 12 8.928 8.928 --width 8 --epochs 25 --members 2 --image-size 96 96 \
        --depth2d 18 --workspace bench/_work/synth600_default_ws \
        --out bench/results/synth_models_600_default.json

Wider networks at the image grid (``--width 32 --epochs 40``, no ``--model-spacing``) want a
GPU (``--device cuda``). A quicker check: fewer subjects, a coarser synthetic grid, e.g.::

    .venv/bin/python bench/bench_synth_models.py --n 200 --grid 9 --width 8 --epochs 15

``--models 2.5d`` (or ``3d``) trains only that model, e.g. to re-run the 2.5D network on an
existing workspace (the cohort is generated once; the split depends only on it and ``--seed``).

Writes ``bench/results/synth_models.json`` (settings, noise floor, a table of MAE raw and
bias-corrected for 3D, 2.5D and the baselines on the held-out test subjects, and those
subjects' ids).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bodyage_core.atomic import write_json  # noqa: E402
from bodyage_core.cohort import Workspace  # noqa: E402
from bodyage_core.evaluation.metrics import regression_metrics  # noqa: E402
from bodyage_core.evaluation.report import compute_baselines  # noqa: E402
from bodyage_core.progress import ProgressReporter  # noqa: E402
from bodyage_core.training import AugmentConfig, InputSpec, TrainConfig  # noqa: E402
from bodyage_core.training.data import AgeDataset, records_from_workspace  # noqa: E402
from bodyage_core.training.workflow import train_workspace  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--grid", default="default",
                    help="synthetic grid: default, full, or one spacing in mm (e.g. 9)")
    ap.add_argument("--model-spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                    help="3D model grid spacing (default: the synthetic grid's)")
    ap.add_argument("--workspace", default=str(ROOT / "bench" / "_work" / "synth_ws"))
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--width2d", type=int, default=None, help="2.5D width (default: --width)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--loss", default="meanvar", choices=("l1", "mse", "meanvar"))
    ap.add_argument("--image-size", type=int, nargs=2, default=(256, 256))
    ap.add_argument("--arch2d", default="resnet2d", choices=("resnet2d", "vgg2d"))
    ap.add_argument("--depth2d", type=int, default=50)
    ap.add_argument("--models", default="3d,2.5d",
                    help="comma-separated models to train: 3d, 2.5d (default both)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "synth_models.json"))
    args = ap.parse_args(argv)
    which = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    if not which or set(which) - {"3d", "2.5d"}:
        ap.error(f"--models takes 3d and/or 2.5d, got {args.models!r}")
    torch.set_num_threads(args.threads)
    from bodyage_core.synth import generate_cohort
    from bodyage_core.synth.oracle import noise_floor
    from bodyage_core.synth.phantom import SynthGrid

    t0 = time.perf_counter()
    try:
        grid_arg = float(args.grid)
    except ValueError:
        grid_arg = args.grid
    last = {"t": 0.0}

    def show(ev):
        now = time.perf_counter()
        if now - last["t"] > 30:
            last["t"] = now
            print(f"[{now - t0:6.0f}s] {ev.stage} {ev.done:g}/{ev.total or 0:g} {ev.message}",
                  flush=True)

    generate_cohort(args.workspace, args.n, seed=args.seed, grid=grid_arg,
                    reporter=ProgressReporter(show))
    t_gen = time.perf_counter() - t0
    floor = noise_floor(n=6000)
    print(f"cohort of {args.n} in {t_gen:.0f} s; noise floor (oracle MAE) "
          f"{floor['oracle_mae']:.2f} y, mean predictor {floor['mean_predictor_mae']:.2f} y",
          flush=True)
    g = SynthGrid.resolve(grid_arg)
    spacing_zyx = tuple(args.model_spacing) if args.model_spacing else tuple(g.spacing[::-1])
    extent = [n * s for n, s in zip(g.shape, g.spacing[::-1])]
    shape_zyx = tuple(int(np.ceil(e / s)) for e, s in zip(extent, spacing_zyx))
    ws = Workspace.open(args.workspace)
    common = dict(batch_size=args.batch, lr=args.lr, loss=args.loss, early_stopping=0,
                  seed=args.seed, device=args.device, warmup_epochs=1)
    results = {}
    specs = {
        "3d_resnet18": (InputSpec(("water", "fat"), "3d", spacing_zyx, shape_zyx),
                        {"arch": "resnet3d", "width": args.width},
                        TrainConfig(epochs=args.epochs, scheduler="step",
                                    augment=AugmentConfig(translate=3, rotate_deg=0, scale=0,
                                                          gain=0.1, offset=0.05), **common)),
        f"2.5d_{args.arch2d}": (
            InputSpec(("water", "fat"), "2.5d", spacing_zyx, shape_zyx,
                      image_hw=tuple(args.image_size)),
            {"arch": args.arch2d, "width": args.width2d or args.width, "depth": args.depth2d},
            TrainConfig(epochs=args.epochs, scheduler="step",
                        augment=AugmentConfig(translate=8, rotate_deg=0, scale=0, gain=0.1,
                                              offset=0.05), **common)),
    }
    specs = {k: v for k, v in specs.items() if v[0].mode in which}
    test_ids = None
    for name, (spec, model, cfg) in specs.items():
        t1 = time.perf_counter()
        res = train_workspace(ws, f"bench_{name}", spec, model, cfg, folds=1,
                              members=args.members, seed=args.seed, overwrite=True,
                              reporter=ProgressReporter(show))
        oof = res.oof
        ids = sorted(r["subject_id"] for r in oof)
        test_ids = test_ids or ids
        assert ids == test_ids, "the two models must be tested on the same subjects"
        age = [r["age"] for r in oof]
        results[name] = {
            "raw": regression_metrics(age, [r["mean"] for r in oof]),
            "corrected": regression_metrics(age, [r["corrected"] for r in oof]),
            "time_s": time.perf_counter() - t1, "input": spec.to_dict(), "model": model,
        }
        print(f"{name}: test MAE {results[name]['raw']['mae']:.2f} raw, "
              f"{results[name]['corrected']['mae']:.2f} corrected "
              f"({results[name]['time_s']:.0f} s)", flush=True)
    # baselines on the same held-out subjects (3D input)
    spec3 = InputSpec(("water", "fat"), "3d", spacing_zyx, shape_zyx)
    recs = records_from_workspace(ws, spec3)
    test = set(test_ids)
    fold_of = np.array([0 if r.subject_id in test else -1 for r in recs])
    base = compute_baselines(AgeDataset(recs, cache=False), fold_of)
    table = []
    for name, r in results.items():
        for kind in ("raw", "corrected"):
            table.append((f"{name} ({kind})", r[kind]))
    table += [(f"baseline: {k}", v["metrics"]) for k, v in base.items()]
    fl = floor["oracle_mae"]
    print(f"\n{'method':<34} {'n':>4} {'MAE':>6} {'xfloor':>7} {'r':>6}")
    for name, m in table:
        print(f"{name:<34} {m['n']:>4} {m['mae']:6.2f} {m['mae'] / fl:7.2f} "
              f"{m['pearson_r']:6.2f}")
    write_json(args.out, {
        "n_subjects": args.n, "synthetic_grid": {"spacing_xyz": list(g.spacing),
                                                 "shape_zyx": list(g.shape)},
        "n_test": len(test_ids), "test_ids": test_ids, "noise_floor": floor,
        "models": results,
        "table": {k: v for k, v in table}, "target": "MAE within 1.5x of the noise floor",
        "time_s": time.perf_counter() - t0, "threads": args.threads,
        "settings": vars(args)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
