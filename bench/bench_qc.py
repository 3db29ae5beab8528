"""Does the QC score (and the envelope before it) catch inputs the model was not made for?

Clean synthetic subjects the shipped ``wholebody-synthetic`` model never saw (a fresh cohort),
and the same subjects corrupted at test time: water and fat swapped, head-foot and left-right
flips, noise x5, a quarter of the field of view blanked (truncated), a station's worth of slices
missing; plus real files of other kinds (a brain T1 from IXI, the TotalSegmentator CT), a
constant and a NaN image. Each input goes through ``predict_subject`` as ``bodyage predict``
does: refused by the checks or the envelope counts as caught (score +inf); otherwise its QC
score (the feature distance plus the laterality term of ``inference.ood``). Per corruption
type: AUROC of the score between clean and corrupted, the share flagged (``unlike_training`` or
``laterality``) or refused, and the share with the ``laterality`` flag. Writes
``bench/results/qc.json``::

    .venv/bin/python bench/bench_qc.py [--n 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import auroc, machine  # noqa: E402

from bodyage_core.atomic import write_json  # noqa: E402
from bodyage_core.errors import BodyageError  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--work", default=str(ROOT / "bench" / "_work" / "qc_ws"))
    args = ap.parse_args(argv)
    from bodyage_core.inference.bundle import find_model
    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.inference.subject import predict_subject
    from bodyage_core.io import load_channels, load_volume
    from bodyage_core.synth.cohort import generate_cohort

    t0 = time.perf_counter()
    ws = Path(args.work)
    if ws.exists():
        shutil.rmtree(ws)
    generate_cohort(ws, args.n, seed=77)
    run = AgeRun(find_model("wholebody-synthetic"))
    rng = np.random.default_rng(0)

    def score(vol) -> tuple[float, bool, bool]:
        """(QC score, flagged by it or refused, flagged for its laterality)"""
        try:
            p = predict_subject(run, vol, subject_id="x", out_of_fold=False)
        except BodyageError:
            return float("inf"), True, False
        got = {f["flag"] for f in p.qc}
        return (float(p.qc_score), bool(got & {"unlike_training", "laterality"}),
                "laterality" in got)

    def corrupt(v, kind):
        d = np.asarray(v.data, dtype=np.float32)
        z = d.shape[1]
        if kind == "fat_water_swap":
            return v.with_data(d[::-1].copy())
        if kind == "head_foot_flip":
            return v.with_data(d[:, ::-1].copy())
        if kind == "left_right_flip":
            return v.with_data(d[..., ::-1].copy())
        if kind == "noise_x5":
            noise = np.std(d - np.roll(d, 1, axis=-1)) / np.sqrt(2)   # the image's own noise
            return v.with_data(d + rng.normal(0, 4 * noise, d.shape).astype(np.float32))
        if kind == "truncated_fov":
            out = d.copy()
            out[:, : z // 4] = 0                                       # knees cut
            return v.with_data(out)
        if kind == "missing_station":
            out = d.copy()
            out[:, z // 2: z // 2 + z // 6] = 0
            return v.with_data(out)
        if kind == "constant":
            return v.with_data(np.full_like(d, 100.0))
        raise ValueError(kind)

    kinds = ("fat_water_swap", "head_foot_flip", "left_right_flip", "noise_x5",
             "truncated_fov", "missing_station", "constant")
    scores: dict[str, list[float]] = {"clean": [], **{k: [] for k in kinds}}
    flagged: dict[str, list[bool]] = {k: [] for k in scores}
    laterality: dict[str, list[bool]] = {k: [] for k in scores}
    for d in sorted((ws / "subjects").iterdir()):
        v = load_channels({"water": d / "water.nii.gz", "fat": d / "fat.nii.gz"})
        for k in ("clean", *kinds):
            s, f, lat = score(v if k == "clean" else corrupt(v, k))
            scores[k].append(s)
            flagged[k].append(f or not np.isfinite(s))
            laterality[k].append(lat)
    real = {"brain_t1_ixi": DATA / "ixi_t1_2mm" / "t1" / "IXI013-HH-1212_T1.nii.gz",
            "ct_totalsegmentator": DATA / "totalsegmentator" / "example_ct.nii.gz"}
    for name, path in real.items():
        if path.exists():
            v = load_volume(path)
            two = v.with_data(np.concatenate([v.data, v.data]), channels=("water", "fat"))
            s, f, lat = score(two)              # even given as a water/fat pair
            scores[name], flagged[name] = [s], [f or not np.isfinite(s)]
            laterality[name] = [lat]
    rows = []
    for k, v in scores.items():
        row = {"input": k, "n": len(v), "median_score": float(np.median(v)),
               "flagged_or_refused": float(np.mean(flagged[k])),
               "laterality_flagged": float(np.mean(laterality[k]))}
        if k != "clean":
            row["auroc_vs_clean"] = auroc(scores["clean"], v)
        rows.append(row)
    res = {"model": "wholebody-synthetic", "n_clean": len(scores["clean"]), "rows": rows,
           "scores": scores, "time_s": time.perf_counter() - t0, "machine": machine(),
           "target": "AUROC >= 0.95 per corruption that changes the anatomy or contrast"}
    out = ROOT / "bench" / "results" / "qc.json"
    write_json(out, res)
    print(f"{'input':<22} {'n':>3} {'median score':>13} {'flagged':>8} {'lat.':>5} "
          f"{'AUROC':>6}")
    for r in rows:
        au = f"{r['auroc_vs_clean']:.2f}" if "auroc_vs_clean" in r else ""
        print(f"{r['input']:<22} {r['n']:>3} {r['median_score']:>13.2f} "
              f"{r['flagged_or_refused']:>8.2f} {r['laterality_flagged']:>5.2f} {au:>6}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
