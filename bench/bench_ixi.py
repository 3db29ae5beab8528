"""Real-data benchmark: 5-fold cross-validated ensembles of small 3D ResNets on the 141 IXI T1
brains (../shared/data/ixi_t1_2mm), with the mean and ridge baselines on the same folds.

Default input (``--crop aligned``): every head is affine-registered to the cohort
(``bench/_ixi_align.py``: Mattes MI to the median-size subject, then to the cohort median
template; images only, no ages, cached under ``bench/_work/``, ~4.5 min the first time),
block-averaged to 4 mm, cropped to the common head-top box (44 x 52 x 40) and normalised by
the foreground mean. The network settings are fixed in advance (never chosen on the test
folds); 10 % of each training fold is the inner validation set (bias-correction fit).
Baselines on the same folds: mean, ridge on intensity histograms, ridge on 8 mm voxels of the
aligned input and of the previous unaligned vertex crop.

Run (background; ~15 min with one torch thread on the shared 2-core machine -- two threads
are several times slower there while another process holds a core)::

    nohup .venv/bin/python bench/bench_ixi.py > bench/_work/ixi.log 2>&1 &

Prints a table and writes ``bench/results/ixi.json`` (and the report tables / plots of the
run under ``bench/results/ixi_report/``); ``--out`` / ``--report-dir`` change both.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ixi_t1_2mm"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bodyage_core.atomic import write_json  # noqa: E402
from bodyage_core.evaluation.report import compute_baselines, write_report  # noqa: E402
from bodyage_core.io import load_volume  # noqa: E402
from bodyage_core.progress import ProgressReporter  # noqa: E402
from bodyage_core.training import (  # noqa: E402
    AgeDataset,
    AugmentConfig,
    InputSpec,
    TrainConfig,
    records_from_arrays,
)
from bodyage_core.training.data import prepare_input  # noqa: E402
from bodyage_core.training.run import train_run  # noqa: E402


def brain_crop(vol, spacing: float, shape_zyx) -> np.ndarray:
    """IXI heads come with varying amounts of neck: align on the vertex instead of the centre.

    Block-average the (canonical RAS, 2 mm) head to ``spacing``, take ``shape_zyx[0]`` slices
    down from the top of the head (z is superior) and centre y/x on that slab's foreground;
    foreground-mean intensity normalisation. Returns ``(1, Z, Y, X)`` float32.
    """
    from bodyage_core.training.data import normalise_foreground_mean

    f = max(1, int(round(spacing / vol.spacing_zyx[0])))
    a = vol.data[0].astype(np.float32)
    a = a[: a.shape[0] // f * f, : a.shape[1] // f * f, : a.shape[2] // f * f]
    a = a.reshape(a.shape[0] // f, f, a.shape[1] // f, f, a.shape[2] // f, f).mean((1, 3, 5))
    fg = a > 0.1 * np.percentile(a, 99)
    rows = np.where(fg.sum(axis=(1, 2)) > 0.002 * fg[0].size)[0]
    top = int(rows.max()) + 2 if len(rows) else a.shape[0]
    nz, ny, nx = shape_zyx
    z0 = top - nz
    slab = fg[max(z0, 0):top]
    yy, xx = np.nonzero(slab.sum(axis=0))
    w = slab.sum(axis=0)[yy, xx]
    cy = int(round(np.average(yy, weights=w))) if len(yy) else a.shape[1] // 2
    cx = int(round(np.average(xx, weights=w))) if len(xx) else a.shape[2] // 2
    out = np.zeros(shape_zyx, np.float32)
    starts = (z0, cy - ny // 2, cx - nx // 2)
    src, dst = [], []
    for st, n, size in zip(starts, shape_zyx, a.shape):
        s0, s1 = max(st, 0), min(st + n, size)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - st, s1 - st))
    out[tuple(dst)] = a[tuple(src)]
    return normalise_foreground_mean(out)[None]


def load_ixi(spec: InputSpec, limit: int | None = None, crop: str = "brain",
             align_rounds: int = 2, log=print):
    rows = list(csv.DictReader(open(DATA / "participants.csv")))
    ids, ages, sex, arrays, vols = [], [], [], [], []
    for r in rows[:limit]:
        path = DATA / "t1" / f"{r['MRID']}_T1.nii.gz"
        if not path.exists():
            continue
        vol = load_volume(path)
        vol = vol.with_data(vol.data, channels=("t1",))
        if crop == "brain":
            arrays.append(brain_crop(vol, spec.spacing_zyx[0], spec.shape_zyx))
        elif crop == "aligned":
            vols.append(vol)
        else:
            arrays.append(prepare_input(vol, spec))
        ids.append(r["MRID"])
        ages.append(float(r["Age"]))
        sex.append(r["Sex"])
    info = None
    if crop == "aligned":
        arrays, info = aligned_inputs(vols, spec, align_rounds, log)
        unaligned = np.stack([brain_crop(v, spec.spacing_zyx[0], (40, 52, 40)) for v in vols])
        info["unaligned"] = unaligned
    return ids, np.array(ages), sex, np.stack(arrays), info


def aligned_inputs(vols, spec: InputSpec, rounds: int, log=print):
    """Affine-align every head to the cohort (bench/_ixi_align.py, images only, no ages),
    block-average the 2 mm result to ``spec.spacing``, centre-crop/pad the common head-top box
    to ``spec.shape_zyx`` and normalise each brain by its foreground mean."""
    import SimpleITK as sitk
    from _ixi_align import align_cohort

    from bodyage_core.training.data import normalise_foreground_mean

    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(2)
    info = align_cohort([v.data[0] for v in vols], [v.affine for v in vols],
                        ROOT / "bench" / "_work" / f"ixi_aligned_r{rounds}", rounds=rounds,
                        log=log)
    al = info.pop("aligned")
    f = max(1, int(round(spec.spacing_zyx[0] / 2.0)))
    al = al[:, : al.shape[1] // f * f, : al.shape[2] // f * f, : al.shape[3] // f * f]
    n, z, y, x = al.shape
    al = al.reshape(n, z // f, f, y // f, f, x // f, f).mean((2, 4, 6))
    out = np.zeros((n,) + tuple(spec.shape_zyx), np.float32)
    src, dst = [], []
    for size, want, top in zip(al.shape[1:], spec.shape_zyx, (True, False, False)):
        # z: keep the top (vertex) of the box; y/x: centre
        st = size - want if top else (size - want) // 2
        s0, s1 = max(st, 0), min(st + want, size)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - st, s1 - st))
    out[(slice(None),) + tuple(dst)] = al[(slice(None),) + tuple(src)]
    arrays = [normalise_foreground_mean(a)[None] for a in out]
    info["box_4mm"] = list(al.shape[1:])
    return arrays, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=36)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--norm", default="batch", choices=("batch", "group", "instance"))
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                    help="default 44 52 40 (aligned), 40 52 40 (brain crop) or 56 56 44 (head)")
    ap.add_argument("--crop", default="aligned", choices=("aligned", "brain", "head"),
                    help="aligned: affine registration of every head to the cohort "
                         "(bench/_ixi_align.py); brain: align on the vertex (bench-only); "
                         "head: the generic prepare_input (body centred), as `bodyage "
                         "train` does")
    ap.add_argument("--align-rounds", type=int, default=2,
                    help="1: register to the median-size subject; 2: then again to the "
                         "cohort median template")
    ap.add_argument("--translate", type=float, default=2.0,
                    help="augmentation shift in voxels")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--loss", default="l1")
    ap.add_argument("--scheduler", default="step", choices=("plateau", "step", "none"),
                    help="step: lr/10 for the last sixth of the epochs (steadier than "
                         "ReduceLROnPlateau on 17 validation subjects)")
    ap.add_argument("--early-stopping", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.1,
                    help="share of each training fold held out for validation / bias fit")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--limit", type=int, default=None, help="use the first N subjects only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ixi.json"))
    ap.add_argument("--report-dir", default=str(ROOT / "bench" / "results" / "ixi_report"))
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"IXI data not found at {DATA}; skipping")
        return 0
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    shape = tuple(args.shape or {"aligned": (44, 52, 40), "brain": (40, 52, 40),
                                 "head": (56, 56, 44)}[args.crop])
    spec = InputSpec(channels=("t1",), mode="3d", spacing_zyx=(args.spacing,) * 3,
                     shape_zyx=shape, normalise="foreground_mean")
    ids, ages, sex, arrays, align_info = load_ixi(
        spec, args.limit, args.crop, args.align_rounds,
        log=lambda m: print(f"[{time.perf_counter() - t0:6.0f}s] {m}", flush=True))
    t_load = time.perf_counter() - t0
    print(f"loaded {len(ids)} subjects, input {arrays.shape[1:]}, ages {ages.min():.1f}-"
          f"{ages.max():.1f}, {t_load:.0f} s", flush=True)
    recs = records_from_arrays(list(arrays), ages, ids, sex=sex,
                               bmi_group=[None] * len(ids), site=["Guys"] * len(ids))
    ds = AgeDataset(recs)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, loss=args.loss,
                      scheduler=args.scheduler, plateau_patience=3, plateau_factor=0.5,
                      early_stopping=args.early_stopping, warmup_epochs=2, weight_decay=1e-4, seed=args.seed,
                      augment=AugmentConfig(translate=args.translate, rotate_deg=0, scale=0, gain=0.1,
                                            offset=0.05, flip=True), device="cpu")
    last = {"t": 0.0}

    def show(ev):
        now = time.perf_counter()
        if now - last["t"] > 30 or (ev.total and ev.done >= ev.total and ev.stage == "train"):
            last["t"] = now
            vals = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in ev.values.items())
            print(f"[{now - t0:6.0f}s] {ev.stage} {ev.done:g}/{ev.total or 0:g} {ev.message} "
                  f"{vals}", flush=True)

    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "_work" if (ROOT / "bench" / "_work")
                                     .exists() else None) as tmp:
        t1 = time.perf_counter()
        res = train_run(recs, Path(tmp) / "models" / "ixi", spec,
                        {"arch": "resnet3d", "width": args.width, "norm": args.norm}, cfg,
                        folds=args.folds,
                        members=args.members, split_method="stratified", seed=args.seed,
                        val_fraction=args.val_fraction,
                        reporter=ProgressReporter(show), dataset=ds)
        t_train = time.perf_counter() - t1
        member_epochs = [m["epochs_run"] for m in res.metrics["members"]]
    fold_of = np.array([next(r["fold"] for r in res.oof if r["subject_id"] == i) for i in ids])
    base = compute_baselines(ds, fold_of)
    if align_info is not None:
        # the same ridge on the unaligned vertex crop (the previous input), same folds
        ds_un = AgeDataset(records_from_arrays(
            list(align_info.pop("unaligned")), ages, ids, sex=sex,
            bmi_group=[None] * len(ids), site=["Guys"] * len(ids)))
        base_un = compute_baselines(ds_un, fold_of)
        base = {("ridge_voxels_aligned" if k == "ridge_voxels" else
                 "ridge_histogram_aligned" if k == "ridge_histogram" else k): v
                for k, v in base.items()}
        base["ridge_histogram"] = base_un["ridge_histogram"]
        base["ridge_voxels_unaligned"] = base_un["ridge_voxels"]
    report_dir = Path(args.report_dir)
    paths = write_report(res.oof, report_dir, "ixi", base)
    from bodyage_core.atomic import write_text
    from bodyage_core.training.run import predictions_csv
    write_text(report_dir / "ixi_oof_predictions.csv", predictions_csv(res.oof))
    rep = json.loads(Path(paths["metrics"]).read_text())
    table = [("model: 3D ResNet-18 ensemble (raw)", res.metrics["raw"]),
             ("model: 3D ResNet-18 ensemble (bias-corrected)", res.metrics["corrected"])]
    table += [(f"baseline: {k}", v["metrics"]) for k, v in base.items()]
    print(f"\n{'method':<48} {'MAE':>6} {'RMSE':>6} {'R2':>6} {'r':>6}")
    for name, m in table:
        print(f"{name:<48} {m['mae']:6.2f} {m['rmse']:6.2f} {m['r2']:6.2f} "
              f"{m['pearson_r']:6.2f}")
    unc = rep["uncertainty"]
    print(f"uncertainty: spearman(sigma,|err|) {unc['spearman_sigma_abs_error']:.2f}, coverage "
          f"68% {unc['coverage_68']:.2f}, 95% {unc['coverage_95']:.2f}, AUSE "
          f"{unc['sparsification']['ause']:.2f}")
    total = time.perf_counter() - t0
    print(f"time: load {t_load:.0f} s, train+predict {t_train:.0f} s, total {total:.0f} s "
          f"on {args.threads} thread(s)")
    result = {
        "dataset": "IXI T1 (NiChart 2 mm subset), Guy's", "n_subjects": len(ids),
        "input": spec.to_dict(), "crop": args.crop,
        "alignment": ({k: v for k, v in align_info.items() if k != "metric"}
                      if align_info is not None else None), "model": {"arch": "resnet3d", "width": args.width, "norm": args.norm},
        "train": cfg.to_dict(), "folds": args.folds, "members_per_fold": args.members,
        "val_fraction": args.val_fraction,
        "results": {name: m for name, m in table},
        "mae_raw": res.metrics["raw"]["mae"], "mae_corrected": res.metrics["corrected"]["mae"],
        "mae_mean_baseline": base["mean"]["metrics"]["mae"],
        "uncertainty": {k: v for k, v in unc.items() if k != "sparsification"},
        "ause": unc["sparsification"]["ause"],
        "subgroups_by_sex": [r for r in rep["subgroups"] if r["bmi_group"] == "all"],
        "member_epochs": member_epochs,
        "time_s": {"load": t_load, "train_predict": t_train, "total": total},
        "threads": args.threads, "torch": torch.__version__,
        "target": "MAE <= 6.0 years (stretch 5.0)",
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
