"""``bodyage report``: evaluation tables and plots of a trained run."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="evaluate a run: metrics, baselines, subgroups, uncertainty, plots",
        description="Evaluate RUN on its out-of-fold predictions: MAE/RMSE/R2/r raw and "
                    "bias-corrected, mean and ridge baselines on the same folds, MAE by sex x "
                    "BMI group, uncertainty quality; CSV, JSON and PNG in reports/.")
    p.add_argument("workspace")
    p.add_argument("--run", required=True)
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--wait", action="store_true", dest="wait_lock",
                   help="if another run holds the workspace, wait for it instead of refusing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from bodyage_core.cohort import Workspace
    from bodyage_core.evaluation.report import report_run
    from bodyage_core.progress import TerminalProgress

    ws = Workspace.open(args.workspace)
    paths = report_run(ws, args.run, not args.no_baselines, TerminalProgress())
    res = json.loads(paths["metrics"].read_text())
    print(f"{'method':<32} {'n':>4} {'MAE':>6} {'RMSE':>6} {'R2':>6} {'r':>6}")
    for r in res["summary"]:
        print(f"{r['method']:<32} {r['n']:>4} {r['mae']:6.2f} {r['rmse']:6.2f} {r['r2']:6.2f} "
              f"{r['pearson_r']:6.2f}")
    u = res["uncertainty"]
    print(f"uncertainty: spearman(sigma, |error|) {u['spearman_sigma_abs_error']:.2f}, "
          f"coverage 68% {u['coverage_68']:.2f} / 95% {u['coverage_95']:.2f}, AUSE "
          f"{u['sparsification']['ause']:.2f} (area between removing by sigma and the oracle)")
    if res.get("by_acquisition"):
        print("error by planted acquisition effect (a subject hit by two counts in both):")
    for r in res.get("by_acquisition") or []:
        print(f"  {r['effect']:<10} n {r['n']:>4}  MAE {r['mae']:5.2f}  mean sigma "
              f"{r['mean_sigma']:5.2f}")
    flags = res.get("qc_flags") or {}
    print("QC flags: " + (", ".join(f"{k} {v}" for k, v in flags.items()) if flags else
                          "none among these predictions"))
    print(f"written to {ws.reports_dir}: " + ", ".join(sorted(p.name for p in paths.values())))
    return 0
