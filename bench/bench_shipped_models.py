"""The shipped models, evaluated as a user gets them: through ``bodyage predict`` and the model
folder in ``resources/models/``.

``wholebody``: ``wholebody-synthetic`` on a fresh synthetic cohort it never saw (seed 21, 250
subjects, the default effects; ``scripts/train_shipped_models.sh wholebody`` makes it), against
the generator's noise floor (oracle MAE) and ridge baselines trained on the model's own 1,000
training subjects (mean age; ridge on intensity histograms; ridge on 2x-downsampled voxels of the
model's input grid). Targets (issue "ready to use"): MAE <= 1.15x the noise floor, and >= 25 %
below ridge on voxels.

``brain``: ``brain-t1-ixi``'s 5-fold cross-validated figures (the run's out-of-fold predictions,
raw and bias-corrected, with the baselines on the same folds from ``bodyage report``) and the
seconds ``bodyage predict`` takes for one real IXI file.

Each writes ``bench/results/shipped_<what>.json`` and the figures into the model's card
(``metrics``), then re-verifies the model::

    .venv/bin/python bench/bench_shipped_models.py wholebody [--work bench/_work]
    .venv/bin/python bench/bench_shipped_models.py brain
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine  # noqa: E402

from bodyage_core.atomic import write_json  # noqa: E402
from bodyage_core.evaluation.metrics import regression_metrics, uncertainty_metrics  # noqa: E402

BODYAGE = str(ROOT / ".venv" / "bin" / "bodyage")
MODELS = ROOT / "resources" / "models"


def _predict(targets: list[str], model: str, csv_path: Path, ages: Path | None) -> float:
    cmd = [BODYAGE, "predict", *targets, "--model", model, "--csv", str(csv_path),
           "--no-qc-png"]
    if ages is not None:
        cmd += ["--ages", str(ages)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _rows(path: Path) -> list[dict[str, str]]:
    return [r for r in csv.DictReader(path.open()) if r["status"] == "ok"]


def _update_card(name: str, key: str, value) -> None:
    card_path = MODELS / name / "model.json"
    card = json.loads(card_path.read_text())
    card.setdefault("metrics", {})[key] = value
    write_json(card_path, card)
    subprocess.run([BODYAGE, "models", "verify", str(MODELS / name)], check=True,
                   stdout=subprocess.DEVNULL)


def wholebody(work: Path) -> dict:
    from bodyage_core.cohort import Workspace
    from bodyage_core.evaluation.report import compute_baselines
    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.synth.oracle import noise_floor
    from bodyage_core.training.data import AgeDataset, records_from_workspace

    name = "wholebody-synthetic"
    ev = work / "wb_eval"
    out_csv = work / "shipped_wholebody_predictions.csv"
    seconds = _predict([str(ev / "subjects")], name, out_csv, ev / "participants.csv")
    rows = _rows(out_csv)
    age = np.array([float(r["chronological_age"]) for r in rows])
    raw = np.array([float(r["predicted_age_raw"]) for r in rows])
    cor = np.array([float(r["predicted_age"]) for r in rows])
    sig = np.array([float(r["sigma"]) for r in rows])
    floor = noise_floor(n=6000)["oracle_mae"]
    # ridge baselines: trained on the model's training subjects, tested on the fresh cohort
    spec = AgeRun(MODELS / name).spec
    with Workspace.open(work / "wb_train") as tr, Workspace.open(ev) as te:
        recs = records_from_workspace(tr, spec) + records_from_workspace(te, spec)
        n_train = len(tr.db.subjects())
    ds = AgeDataset(recs, cache=False)
    fold_of = np.array([-1] * n_train + [0] * (len(recs) - n_train))
    base = compute_baselines(ds, fold_of)
    by_id = {r.subject_id: i for i, r in enumerate(recs)}
    assert all(r["id"] in by_id for r in rows)
    res = {
        "model": name, "n_test": len(rows), "cohort": "bodyage synth --n 250 --seed 21",
        "noise_floor_oracle_mae": floor,
        "raw": regression_metrics(age, raw), "corrected": regression_metrics(age, cor),
        "uncertainty": {k: v for k, v in uncertainty_metrics(age, cor, sig).items()
                        if k != "sparsification"},
        "baselines": {k: v["metrics"] for k, v in base.items()},
        "predict_seconds_per_scan": seconds / max(len(rows), 1),
    }
    ridge = res["baselines"]["ridge_voxels"]["mae"]
    res["targets"] = {
        "mae_within_1.15x_floor": bool(res["raw"]["mae"] <= 1.15 * floor),
        "beats_ridge_voxels_by_25pct": bool(res["raw"]["mae"] <= 0.75 * ridge),
        "ratio_to_floor": res["raw"]["mae"] / floor,
        "ratio_to_ridge_voxels": res["raw"]["mae"] / ridge,
    }
    _update_card(name, "fresh_cohort", {k: res[k] for k in (
        "cohort", "n_test", "noise_floor_oracle_mae", "raw", "corrected", "uncertainty",
        "baselines")})
    return res


def brain(work: Path) -> dict:
    name = "brain-t1-ixi"
    ws = work / "ixi_ws"
    metrics = json.loads((ws / "models" / name / "metrics.json").read_text())
    report = json.loads((ws / "reports" / f"{name}_metrics.json").read_text())
    ixi = ROOT.parent / "shared" / "data" / "ixi_t1_2mm" / "t1"
    one = sorted(ixi.glob("*.nii.gz"))[:3]
    out_csv = work / "shipped_brain_predictions.csv"
    seconds = _predict([str(p) for p in one], name, out_csv, ixi.parent / "participants.csv")
    res = {"model": name, "n": metrics["n_out_of_fold"], "cross_validation": "5-fold",
           "raw": metrics["raw"], "corrected": metrics["corrected"],
           "baselines": {r["method"].removeprefix("baseline: "): {k: r[k] for k in (
               "n", "mae", "rmse", "pearson_r")} for r in report["summary"]
               if r["method"].startswith("baseline")},
           "uncertainty": {k: v for k, v in report.get("uncertainty", {}).items()
                           if k != "sparsification"},
           "predict_seconds_per_scan_3_files": seconds / len(one)}
    res["targets"] = {"oof_raw_mae_le_6.5": bool(metrics["raw"]["mae"] <= 6.5)}
    _update_card(name, "cross_validated", {k: res[k] for k in (
        "n", "cross_validation", "raw", "corrected", "baselines", "uncertainty")})
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("wholebody", "brain"))
    ap.add_argument("--work", default=str(ROOT / "bench" / "_work"))
    ap.add_argument("--card-only", action="store_true",
                    help="write the figures of bench/results/shipped_<what>.json into the card "
                         "again (after a re-export) without measuring")
    args = ap.parse_args(argv)
    if args.card_only:
        res = json.loads((ROOT / "bench" / "results" / f"shipped_{args.what}.json").read_text())
        if args.what == "wholebody":
            _update_card("wholebody-synthetic", "fresh_cohort", {k: res[k] for k in (
                "cohort", "n_test", "noise_floor_oracle_mae", "raw", "corrected",
                "uncertainty", "baselines")})
        else:
            _update_card("brain-t1-ixi", "cross_validated", {k: res[k] for k in (
                "n", "cross_validation", "raw", "corrected", "baselines", "uncertainty")})
        return 0
    t0 = time.perf_counter()
    res = wholebody(Path(args.work)) if args.what == "wholebody" else brain(Path(args.work))
    res["time_s"] = time.perf_counter() - t0
    res["machine"] = machine()
    out = ROOT / "bench" / "results" / f"shipped_{args.what}.json"
    write_json(out, res)
    print(f"{'figure':<40} value")
    for k in ("raw", "corrected"):
        print(f"{'MAE ' + k:<40} {res[k]['mae']:.2f} (r {res[k]['pearson_r']:.2f})")
    for k, v in (res.get("baselines") or {}).items():
        m = v.get("mae") if isinstance(v, dict) else v
        if isinstance(m, float):
            print(f"{'baseline ' + k:<40} {m:.2f}")
    for k, v in res.get("targets", {}).items():
        print(f"{k:<40} {v}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
