"""``bodyage demo [WORKSPACE]``: the whole pipeline on the embedded synthetic cohort.

It runs, and prints, the same commands a user would type — synth, train, predict, report,
explain, atlas build, atlas maps, compare, gui — so the demo doubles as a tutorial. Every step
is resumable: running the demo again skips what is done. Headless (no display), the last step
writes a screenshot of the viewer next to the report instead of opening a window.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from bodyage_core.errors import BodyageError

DEMO_EFFECTS = ",".join(f"{name}=2.5" for name in
                        ("spine", "back_muscle", "thigh_muscle", "aorta", "heart", "knee"))


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="run the whole pipeline on a synthetic cohort",
        description="Generate a synthetic whole-body cohort, train a small ensemble with "
                    "cross-validation, predict, report, explain, build atlases and population "
                    "maps, compare accelerated with decelerated agers, then open the viewer "
                    "(or, without a display, save a screenshot).")
    p.add_argument("workspace", nargs="?", default="demo_workspace",
                   help="workspace folder (default: demo_workspace)")
    p.add_argument("--n", type=int, default=72, help="synthetic subjects (default 72)")
    p.add_argument("--grid", default="6,6,8",
                   help="synthetic voxel size x,y,z mm (default 6,6,8: laptop-sized; "
                        "'default' is 4.464 x 4.464 x 6, 'full' the UK Biobank grid)")
    p.add_argument("--effects", default=DEMO_EFFECTS,
                   help="age-effect strengths for `bodyage synth` (default: every effect x2.5, "
                        "so a small ensemble learns from 72 subjects in minutes; 'default' gives "
                        "the documented UK-Biobank-like strengths)")
    p.add_argument("--members", type=int, default=2, help="ensemble members per fold")
    p.add_argument("--folds", type=int, default=3, help="cross-validation folds")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--width", type=int, default=8, help="ResNet base width")
    p.add_argument("--loss", default="l1", choices=("l1", "mse", "meanvar"),
                   help="training loss (default l1; the ensemble spread gives the uncertainty)")
    p.add_argument("--model-spacing", type=float, nargs=3, default=(9.0, 9.0, 9.0),
                   metavar=("Z", "Y", "X"), help="model grid spacing in mm (default 9 9 9)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-gui", action="store_true",
                   help="never open a window; write the report and a screenshot")
    p.set_defaults(func=run)


def demo_commands(args) -> list[list[str]]:
    ws = str(args.workspace)
    run_dir = Path(ws) / "models" / "demo"
    train = ["train", ws, "--run", "demo", "--model", "resnet3d", "--loss", args.loss,
             "--members", str(args.members), "--folds", str(args.folds),
             "--epochs", str(args.epochs), "--width", str(args.width), "--lr", "1e-3",
             "--spacing", *(str(v) for v in args.model_spacing),
             # few subjects: noisy validation MAE, so a fixed schedule beats plateau/early stop
             "--scheduler", "step", "--batch-size", "8", "--early-stopping", "0",
             "--device", args.device]
    # A finished run lives in models/demo/; an interrupted one in models/demo.partial/.
    if run_dir.with_name(run_dir.name + ".partial").exists():
        train.append("--resume")
    headless = args.no_gui or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    gui = ["gui", ws]
    if headless:
        gui += ["--screenshot", str(Path(ws) / "reports" / "viewer.png"), "--whole-window"]
    return [
        ["synth", ws, "--n", str(args.n), "--grid", args.grid, "--effects", args.effects],
        *([] if run_dir.exists() else [train]),
        ["predict", ws, "--run", "demo"],
        ["report", ws, "--run", "demo"],
        ["explain", ws, "--run", "demo"],
        # signed gradient x input: the map whose age trend finds the ageing organs
        ["explain", ws, "--run", "demo", "--method", "gradxinput", "--signed"],
        ["atlas", "build", ws, "--groups", "sex", "--iterations", "1"],
        ["atlas", "maps", ws, "--run", "demo"],
        ["atlas", "maps", ws, "--run", "demo", "--kind", "gradxinput_signed_demo"],
        ["compare", "accelerated", "decelerated", ws, "--run", "demo", "--permutations", "200"],
        gui,
    ]


def run(args) -> int:
    from bodyage_core.cli.main import main as bodyage_main

    t_start = time.perf_counter()
    for argv in demo_commands(args):
        print(f"\n$ bodyage {shlex.join(argv)}", flush=True)
        t0 = time.perf_counter()
        rc = bodyage_main(argv)
        if rc != 0:
            raise BodyageError(f"step `bodyage {argv[0]}` failed (exit {rc}); fix what it said "
                               f"and run the demo again — finished steps are kept")
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\ndemo finished in {(time.perf_counter() - t_start) / 60:.1f} min; "
          f"results in {args.workspace}/reports, open with `bodyage gui {args.workspace}`",
          file=sys.stderr)
    return 0
