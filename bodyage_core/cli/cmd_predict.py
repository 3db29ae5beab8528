"""``bodyage predict``: ages for scans on disk, or for the subjects of a workspace.

``bodyage predict FILE|FOLDER ... [--model NAME|DIR]``: no workspace needed; one CSV row per
scan, a QC PNG per scan, Grad-CAM NIfTI with ``--explain`` (:mod:`bodyage_core.inference.files`).

``bodyage predict WORKSPACE --run RUN`` (or ``--model NAME|DIR``): every subject (or
``--subject IDs``) is one job (:mod:`bodyage_core.cluster`): finished subjects are skipped,
failed ones retried, then recorded failed; ``--scheduler`` picks where the tasks run. On a GPU
a task predicts ``--batch-size`` subjects at once (default 16)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bodyage_core.cohort.paths import WorkspacePaths


class _Targets(argparse.Action):
    """One target that is a workspace (has cohort.sqlite) becomes ``args.workspace`` (the
    dispatcher then takes its lock); anything else is a list of scans."""

    def __call__(self, parser, namespace, values, option_string=None):
        values = list(values)
        setattr(namespace, self.dest, values)
        if len(values) == 1 and WorkspacePaths.is_workspace(Path(values[0]).expanduser()):
            namespace.workspace = values[0]


def register(sub) -> None:
    from bodyage_core.cluster.cli import add_engine_arguments

    p = sub.add_parser(
        "predict", help="predict ages: of scans (files, folders, DICOM) or a workspace's subjects",
        description="Scans: bodyage predict FILE|FOLDER ... [--model NAME|DIR] writes one CSV "
                    "row per scan (predicted age raw and bias-corrected, sigma, 95 %% "
                    "interval, chronological age when the header or --ages has it, gap, QC "
                    "flags, model name, version and sha) and a QC picture per scan; without "
                    "--model the shipped model whose envelope fits each scan is used. "
                    "Workspace: bodyage predict WORKSPACE --run RUN (or --model) predicts "
                    "every subject (or --subject IDs); subjects the run held out in "
                    "cross-validation get their out-of-fold prediction; writes the "
                    "predictions table of cohort.sqlite, subjects/<id>/prediction_RUN.json and "
                    "reports/predictions_RUN.csv, resumable.")
    p.add_argument("targets", nargs="+", action=_Targets, metavar="TARGET",
                   help="image files, DICOM folders, folders with water and fat images (or "
                        "folders of these), or one workspace")
    p.add_argument("--model", default=None, metavar="NAME|DIR",
                   help="a model bundle: a name from `bodyage models list` or a folder")
    p.add_argument("--run", default=None, help="workspace: a trained run of the workspace")
    p.add_argument("--csv", default=None,
                   help="CSV path (scans: default ./bodyage_predictions.csv; workspace: "
                        "reports/predictions_RUN.csv)")
    p.add_argument("--out-dir", default=None,
                   help="scans: folder for the QC pictures and maps (default: the CSV's)")
    p.add_argument("--explain", action="store_true",
                   help="scans: also write each scan's Grad-CAM map as NIfTI")
    p.add_argument("--no-qc-png", dest="qc_png", action="store_false",
                   help="scans: no QC pictures")
    p.add_argument("--ages", default=None, metavar="CSV",
                   help="scans: chronological ages (columns id/subject_id/MRID/eid and age)")
    p.add_argument("--subject", nargs="+", default=None, metavar="ID")
    p.add_argument("--batch-size", type=int, default=None,
                   help="workspace: subjects per batch on the device, 4 batches per task "
                        "(the next batch's cached inputs read while one runs; all members on "
                        "each batch); default 16 with a CUDA device, else 1: one subject per "
                        "task")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--compile", action="store_true",
                   help="run the networks through torch.compile (also BODYAGE_COMPILE=1; off "
                        "by default: tens of seconds to compile, worth it for a cohort on a "
                        "GPU)")
    p.add_argument("--overwrite", action="store_true", help="predict finished subjects again")
    add_engine_arguments(p)
    p.set_defaults(func=run, workspace=None)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "compile", False):
        import os

        from bodyage_core.inference.device import ENV_COMPILE

        os.environ[ENV_COMPILE] = "1"        # this process and the workers it starts
    if args.workspace:
        return _workspace(args)
    return _scans(args)


def _scans(args: argparse.Namespace) -> int:
    from bodyage_core.errors import ConfigError
    from bodyage_core.inference.files import discover_scans, predict_scans, read_ages
    from bodyage_core.progress import TerminalProgress

    if args.run:
        raise ConfigError("--run names a run of a workspace; the targets are not a workspace",
                          hint="use --model NAME|DIR for scans (see `bodyage models list`)")
    scans = discover_scans(args.targets)
    csv_path = Path(args.csv or "bodyage_predictions.csv")
    ages = read_ages(args.ages) if args.ages else None
    rows = predict_scans(scans, args.model, csv_path, Path(args.out_dir) if args.out_dir
                         else None, explain=args.explain, qc_png=args.qc_png, ages=ages,
                         device=args.device, reporter=TerminalProgress())
    chosen = sorted({r["message"] for r in rows if str(r.get("message", "")).startswith(
        "model chosen")})
    for line in chosen:
        print(line)
    for r in rows[:20]:
        if r.get("status") != "ok":
            print(f"{r['id']}: {r['status']} — {r.get('message')}")
            continue
        chrono = (f", chronological {r['chronological_age']:.1f}, gap {r['gap']:+.1f}"
                  if r.get("chronological_age") is not None else "")
        flags = f"  [QC: {r['qc_flags']}]" if r.get("qc_flags") else ""
        print(f"{r['id']}: {r['predicted_age']:.1f} y (95 % {r['ci95_low']:.1f}-"
              f"{r['ci95_high']:.1f}; sigma {r['sigma']:.1f} = 1 SD){chrono}{flags}")
    if len(rows) > 20:
        print(f"... {len(rows) - 20} more in the CSV")
    for how in sorted({r["intervals"] for r in rows if r.get("intervals")}):
        print(f"intervals: {how}")
    ok = sum(r.get("status") == "ok" for r in rows)
    print(f"{ok} of {len(rows)} scan(s) predicted; {csv_path}")
    return 0 if ok == len(rows) else 1


def _workspace(args: argparse.Namespace) -> int:
    from bodyage_core.cluster import PredictStage
    from bodyage_core.cluster.cli import run_stages
    from bodyage_core.cohort import Workspace
    from bodyage_core.errors import ConfigError

    if bool(args.run) == bool(args.model):
        raise ConfigError("give --run RUN (a run of this workspace) or --model NAME|DIR")
    model_dir, name = None, args.run
    if args.model:
        from bodyage_core.inference.bundle import find_model, read_card

        model_dir = find_model(args.model)
        name = read_card(model_dir)["name"]
    ws = Workspace.open(args.workspace)
    try:
        stage = PredictStage(name, args.subject, device=args.device,
                             overwrite=args.overwrite, csv_path=args.csv, model_dir=model_dir,
                             batch_size=args.batch_size)
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
        print(f"{len(rows)} prediction(s) stored in cohort.sqlite (run {name}) and "
              f"{stage.csv_written}")
        return 1 if summary.failed else 0
    finally:
        ws.close()
