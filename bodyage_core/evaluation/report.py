"""``bodyage report``: the evaluation of a run on its out-of-fold predictions, with baselines
on the same folds, written to ``workspace/reports/`` as CSV, JSON and PNG."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.atomic import write_json, write_text
from bodyage_core.errors import BodyageError
from bodyage_core.evaluation.metrics import (
    error_by_acquisition,
    regression_metrics,
    subgroup_table,
    uncertainty_metrics,
)
from bodyage_core.evaluation.plots import (
    plot_error_vs_uncertainty,
    plot_pred_vs_age,
    plot_reliability,
    plot_sparsification,
)
from bodyage_core.models.ensemble import csv_interval_table
from bodyage_core.progress import ProgressReporter, ensure_reporter


def evaluate_predictions(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Figures of merit of prediction rows (``age, mean, corrected, sigma, sex, bmi_group``;
    ``acquisition``, the planted acquisition effects of a synthetic subject, when known)."""
    rows = [r for r in rows if r.get("age") is not None and np.isfinite(r["age"])]
    if not rows:
        raise BodyageError("no predictions with a known age to evaluate",
                           hint="train the run (bodyage train) or predict subjects with ages")
    age = np.array([r["age"] for r in rows], dtype=float)
    raw = np.array([r["mean"] for r in rows], dtype=float)
    corr = np.array([r["corrected"] if r.get("corrected") is not None else r["mean"]
                     for r in rows], dtype=float)
    sig = np.array([r["sigma"] if r.get("sigma") is not None else np.nan for r in rows],
                   dtype=float)
    tables = [r.get("interval_z") for r in rows]
    return {
        "n": len(rows),
        "raw": regression_metrics(age, raw),
        "corrected": regression_metrics(age, corr),
        "uncertainty": uncertainty_metrics(age, corr, sig, tables),
        "uncertainty_raw": uncertainty_metrics(age, raw, sig),
        "subgroups": subgroup_table(age, raw, [r.get("sex") for r in rows],
                                    [r.get("bmi_group") for r in rows], corr),
        "qc_flags": qc_flag_counts(rows),
        "by_acquisition": error_by_acquisition(age, corr, sig,
                                               [r.get("acquisition") for r in rows],
                                               [r.get("qc_score") for r in rows]),
    }


def qc_flag_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many predictions carry each QC flag (rows stored by ``predict``; the out-of-fold rows
    of a training run carry none)."""
    counts: dict[str, int] = {}
    for r in rows:
        qc = r.get("qc") or []
        for f in {f.get("flag") for f in qc if isinstance(f, dict) and f.get("flag")}:
            counts[f] = counts.get(f, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _csv(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([(f"{r.get(c):.4f}" if isinstance(r.get(c), float) else r.get(c, ""))
                    for c in cols])
    return buf.getvalue()


def write_report(rows: Sequence[dict[str, Any]], out_dir: str | Path, name: str,
                 baselines: dict[str, dict] | None = None,
                 reporter: ProgressReporter | None = None) -> dict[str, Path]:
    """Write ``<name>_metrics.json``, ``<name>_summary.csv`` (model raw / corrected and the
    baselines), ``<name>_subgroups.csv``, ``<name>_sparsification.csv`` and the PNG plots.
    Returns the written paths by key."""
    rep = ensure_reporter(reporter)
    out = Path(out_dir)
    res = evaluate_predictions(rows)
    rows = [r for r in rows if r.get("age") is not None and np.isfinite(r["age"])]
    age = np.array([r["age"] for r in rows], dtype=float)
    raw = np.array([r["mean"] for r in rows], dtype=float)
    corr = np.array([r["corrected"] for r in rows], dtype=float)
    sig = np.array([r["sigma"] for r in rows], dtype=float)
    summary = [dict(method="model (raw)", **res["raw"]),
               dict(method="model (bias-corrected)", **res["corrected"])]
    for bname, b in (baselines or {}).items():
        summary.append(dict(method=f"baseline: {bname}", **b["metrics"]))
    res["summary"] = summary
    paths = {}
    rep.update("report", 1, 5, "tables")
    paths["summary"] = out / f"{name}_summary.csv"
    write_text(paths["summary"], _csv(summary, ["method", "n", "mae", "rmse", "r2",
                                                "pearson_r", "mean_error"]))
    paths["subgroups"] = out / f"{name}_subgroups.csv"
    write_text(paths["subgroups"], _csv(res["subgroups"], ["sex", "bmi_group", "n", "mean_age",
                                                           "mae_raw", "mae_corrected"]))
    sp = res["uncertainty"]["sparsification"]
    paths["sparsification"] = out / f"{name}_sparsification.csv"
    write_text(paths["sparsification"], _csv(
        [{"fraction_removed": f, "mae_by_sigma": a, "mae_oracle": o} for f, a, o in
         zip(sp["fraction_removed"], sp["mae_by_sigma"], sp["mae_oracle"])],
        ["fraction_removed", "mae_by_sigma", "mae_oracle"]))
    if res["by_acquisition"]:
        paths["by_acquisition"] = out / f"{name}_by_acquisition.csv"
        write_text(paths["by_acquisition"], _csv(res["by_acquisition"],
                                                 ["effect", "n", "mae", "mean_sigma",
                                                  "mean_qc_score"]))
    paths["metrics"] = out / f"{name}_metrics.json"
    write_json(paths["metrics"], res)
    rep.update("report", 2, 5, "plots")
    paths["pred_vs_age"] = plot_pred_vs_age(
        age, raw, corr, out / f"{name}_pred_vs_age.png",
        f"{name}: out-of-fold predictions (left raw, right bias-corrected)")
    rep.update("report", 3, 5, "plots")
    if np.isfinite(sig).any():
        paths["error_vs_uncertainty"] = plot_error_vs_uncertainty(
            corr - age, sig, out / f"{name}_error_vs_uncertainty.png",
            f"{name}: bias-corrected error vs sigma")
        paths["sparsification_png"] = plot_sparsification(
            sp, out / f"{name}_sparsification.png")
        paths["reliability_png"] = plot_reliability(
            res["uncertainty"]["reliability"], out / f"{name}_reliability.png",
            f"{name}: reliability of the intervals (bias-corrected, n={res['n']})")
    rep.update("report", 5, 5, "done")
    return paths


def report_run(ws, run: str, with_baselines: bool = True,
               reporter: ProgressReporter | None = None, folds: int = 5) -> dict[str, Path]:
    """Evaluate ``run`` on workspace ``ws``; writes into ``ws.reports_dir``.

    A run trained in this workspace is evaluated on its out-of-fold predictions (the rows
    ``bodyage train`` stored, ``oof_predictions.csv``) with the baselines on the same folds. A
    model bundle (a shipped or exported model, used with ``predict WS --model NAME``) never saw
    these subjects: it is evaluated on its stored predictions of every subject, against
    baselines cross-validated on this cohort (``folds``-fold, stratified), i.e. baselines that
    had the advantage of training on these very subjects' cohort."""
    from bodyage_core.inference.bundle import run_source
    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.training.data import AgeDataset, records_from_workspace

    rep = ensure_reporter(reporter)
    run_dir = run_source(ws, run)
    ar = AgeRun(run_dir)
    if ar.kind == "model":
        rows = [r for r in ws.db.predictions(run) if r.get("age") is not None]
        if not rows:
            raise BodyageError(f"no stored predictions of model {run!r} with an age",
                               path=ws.root, hint=f"run `bodyage predict WORKSPACE --model "
                                                  f"{run}` first")
    else:
        rows = read_predictions_csv(run_dir / "oof_predictions.csv")
    rows = with_acquisition(ws, rows)
    baselines = None
    if with_baselines:
        ids = [r["subject_id"] for r in rows]
        recs = records_from_workspace(ws, ar.spec, ids)
        ds = AgeDataset(recs, cache=False)
        if ar.kind == "model":
            from bodyage_core.training.splits import make_folds

            fold_of = make_folds(min(folds, len(recs)), ds.ages, ds.column("sex"),
                                 ds.column("bmi_group"), None, "stratified", 0)
        else:
            fold_of = np.array([ar.fold_of(r.subject_id) for r in recs], dtype=int)
        baselines = compute_baselines(ds, fold_of, rep)
    return write_report(rows, ws.reports_dir, run, baselines, rep)


def with_acquisition(ws, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with each synthetic subject's planted acquisition effects (``acquisition``: the
    effect names, [] for a clean subject) where the cohort index records them."""
    meta = {s.subject_id: s.meta for s in ws.db.subjects([r["subject_id"] for r in rows])}
    out = []
    for r in rows:
        m = meta.get(r["subject_id"]) or {}
        acq = m.get("acquisition")
        out.append({**r, "acquisition": None if acq is None else sorted(acq)})
    return out


def compute_baselines(ds, fold_of: np.ndarray, reporter: ProgressReporter | None = None,
                      voxel_factor: int = 2) -> dict[str, dict]:
    """Mean / ridge-histogram / ridge-voxel baselines on the folds ``fold_of`` of dataset
    ``ds`` (an :class:`~bodyage_core.training.data.AgeDataset`)."""
    from bodyage_core.evaluation.baselines import (
        baselines_on_folds,
        histogram_features,
        voxel_features,
    )

    rep = ensure_reporter(reporter)
    hist, vox = [], []
    for i in range(len(ds)):
        a = ds.array(i)
        hist.append(histogram_features(a))
        vox.append(voxel_features(a, voxel_factor))
        rep.update("baselines", i + 1, len(ds), "features")
    return baselines_on_folds({"ridge_histogram": np.stack(hist),
                               "ridge_voxels": np.stack(vox)}, ds.ages, fold_of)


def read_predictions_csv(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise BodyageError("no out-of-fold predictions", path=path,
                           hint="train the run with `bodyage train`")
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            d: dict[str, Any] = dict(r)
            for k in ("age", "mean", "sigma", "corrected", "gap"):
                d[k] = float(r[k]) if r.get(k) not in (None, "") else None
            d["fold"] = int(r["fold"]) if r.get("fold") not in (None, "") else None
            for k in ("sex", "bmi_group", "site"):
                d[k] = r.get(k) or None
            d["interval_z"] = csv_interval_table(r)
            rows.append(d)
    return rows
