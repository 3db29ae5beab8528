"""``bodyage export``: a trained run of a workspace as a model bundle to share."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a trained run as a model folder (model.json + safetensors)",
        description="Write run RUN of WORKSPACE as a model folder DIR: the card (architecture, "
                    "input and preprocessing, training cohort, metrics, bias correction and "
                    "calibration, envelope, licence) and one safetensors file per member with "
                    "its sha256. Use it anywhere with --model DIR, or by name once it is in a "
                    "model folder (BODYAGE_MODEL_PATH or ~/.local/share/bodyage/models).")
    p.add_argument("workspace")
    p.add_argument("--run", required=True)
    p.add_argument("dir", metavar="DIR", help="the model folder to write (must not exist)")
    p.add_argument("--name", default=None, help="model name (default: the run's)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--card", default=None, metavar="JSON",
                   help="a JSON file of card fields to add or replace (description, "
                        "intended_use, envelope, licence, attribution, training_cohort...)")
    p.add_argument("--float32", action="store_true",
                   help="store the weights as float32 (default float16: half the size)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run, writes_workspace=False)


def run(args: argparse.Namespace) -> int:
    from bodyage_core.cohort import Workspace
    from bodyage_core.errors import BodyageError
    from bodyage_core.inference.export import export_run, verify_model

    extra = None
    if args.card:
        try:
            extra = json.loads(Path(args.card).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BodyageError(f"cannot read the card fields ({exc})", path=args.card) from None
    with Workspace.open(args.workspace) as ws:
        out = export_run(ws.model_dir(args.run), Path(args.dir), name=args.name,
                         version=args.version, card=extra, float16=not args.float32,
                         overwrite=args.overwrite, workspace=ws)
    for line in verify_model(out):
        print(line)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"exported run {args.run} to {out} ({size / 1e6:.1f} MB)")
    return 0
