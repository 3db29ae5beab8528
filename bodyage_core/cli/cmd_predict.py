"""``bodyage predict``: predict ages with a trained run; store them in cohort.sqlite and a CSV."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="predict ages with a trained run",
        description="Predict every subject (or --subject IDs) with run RUN. Subjects the run "
                    "held out in cross-validation get their out-of-fold prediction. Writes the "
                    "predictions table of cohort.sqlite and reports/predictions_RUN.csv.")
    p.add_argument("workspace")
    p.add_argument("--run", required=True)
    p.add_argument("--subject", nargs="+", default=None, metavar="ID")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--csv", default=None, help="CSV path (default reports/predictions_RUN.csv)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bodyage_core.cohort import Workspace
    from bodyage_core.progress import TerminalProgress
    from bodyage_core.training.workflow import predict_workspace

    ws = Workspace.open(args.workspace)
    rows, csv_path = predict_workspace(ws, args.run, args.subject, args.batch_size, args.device,
                                       csv_path=args.csv, reporter=TerminalProgress())
    if len(rows) <= 10:
        for r in rows:
            gap = f" gap {r['gap']:+.1f}" if r.get("gap") is not None else ""
            print(f"{r['subject_id']}: {r['corrected']:.1f} y (raw {r['mean']:.1f} +/- "
                  f"{r['sigma']:.1f}){gap}")
    print(f"{len(rows)} prediction(s) stored in cohort.sqlite (run {args.run}) and {csv_path}")
    return 0
