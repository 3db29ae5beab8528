"""``bodyage predict``: predict ages with a trained run; store them in cohort.sqlite and a CSV.

Each subject is one task (bodyage_core.cluster): finished subjects are skipped, failed ones
retried, then recorded failed; ``--scheduler`` picks where the tasks run."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from bodyage_core.cluster.cli import add_engine_arguments

    p = sub.add_parser(
        "predict", help="predict ages with a trained run",
        description="Predict every subject (or --subject IDs) with run RUN. Subjects the run "
                    "held out in cross-validation get their out-of-fold prediction. Writes the "
                    "predictions table of cohort.sqlite, subjects/<id>/prediction_RUN.json and "
                    "reports/predictions_RUN.csv. Resumable: subjects already predicted are "
                    "skipped unless --overwrite.")
    p.add_argument("workspace")
    p.add_argument("--run", required=True)
    p.add_argument("--subject", nargs="+", default=None, metavar="ID")
    p.add_argument("--batch-size", type=int, default=8,
                   help="(kept for compatibility: subjects are predicted one per task)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--csv", default=None, help="CSV path (default reports/predictions_RUN.csv)")
    p.add_argument("--overwrite", action="store_true", help="predict finished subjects again")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bodyage_core.cluster import PredictStage
    from bodyage_core.cluster.cli import run_stages
    from bodyage_core.cohort import Workspace

    ws = Workspace.open(args.workspace)
    try:
        stage = PredictStage(args.run, args.subject, device=args.device,
                             overwrite=args.overwrite, csv_path=args.csv)
        out = run_stages(ws, args, [stage])
        if isinstance(out, int):
            return out
        summary = out[0]
        rows = summary.rows
        if len(rows) <= 10:
            for r in rows:
                gap = f" gap {r['gap']:+.1f}" if r.get("gap") is not None else ""
                print(f"{r['subject_id']}: {r['corrected']:.1f} y (raw {r['mean']:.1f} +/- "
                      f"{r['sigma']:.1f}){gap}")
        for line in summary.lines():
            print(line)
        print(f"{len(rows)} prediction(s) stored in cohort.sqlite (run {args.run}) and "
              f"{stage.csv_written}")
        return 1 if summary.failed else 0
    finally:
        ws.close()
