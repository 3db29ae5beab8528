"""``bodyage demo [WORKSPACE]``: what bodyage is for, in about ten minutes on a laptop.

It runs, and prints, the commands a user would type, on a fresh synthetic cohort the shipped
model never saw: a short training run (training works: the code the wizard uses), predict with
the shipped whole-body model, report it against the baselines, explain every subject
(Grad-CAM), register each subject once to the shipped atlas of its sex, signed gradient x input
against that atlas's template, population maps with their age trend, the accelerated-vs-
decelerated comparison, then the viewer on the shipped model's predictions (or, headless, a
screenshot). ``reports/demo_summary.md`` / ``.json`` say what was shown and, honestly, where a
figure missed its target. Every step is resumable.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from bodyage_core.errors import BodyageError

MODEL = "wholebody-synthetic"


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="the whole product on a synthetic cohort in about ten minutes",
        description="Generate a fresh synthetic whole-body cohort, predict it with the shipped "
                    "model, report, explain, register to the shipped atlas, population maps "
                    "and their age trend, compare accelerated with decelerated agers, train a "
                    "small model to show training works, then open the viewer (or, without a "
                    "display, save a screenshot). Writes reports/demo_summary.md.")
    p.add_argument("workspace", nargs="?", default="demo_workspace",
                   help="workspace folder (default: demo_workspace)")
    p.add_argument("--n", type=int, default=80, help="synthetic subjects (default 80)")
    p.add_argument("--seed", type=int, default=7,
                   help="cohort seed (default 7; the shipped model was trained on seed 20)")
    p.add_argument("--grid", default="default",
                   help="synthetic grid (default: 4.464 x 4.464 x 6 mm, the shipped model's)")
    p.add_argument("--model", default=MODEL, help=f"model to predict with (default {MODEL})")
    p.add_argument("--atlas", default=MODEL, help=f"shipped atlas (default {MODEL})")
    p.add_argument("--permutations", type=int, default=200,
                   help="permutations of the accelerated-vs-decelerated test (default 200)")
    p.add_argument("--train-epochs", type=int, default=40,
                   help="epochs of the short training run (default 40: ~2 min on 2 cores)")
    p.add_argument("--train-width", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-gui", action="store_true",
                   help="never open a window; write the report and a screenshot")
    p.set_defaults(func=run)


def demo_commands(args) -> list[tuple[str, list[str]]]:
    """``(what it shows, bodyage argv)`` for every step."""
    from bodyage_core.cohort.paths import WorkspacePaths
    from bodyage_core.evaluation.demo_summary import trend_kind

    ws = str(args.workspace)
    paths = WorkspacePaths(ws)
    m = args.model
    run_dir = paths.model_dir("demo-training")
    train = ["train", ws, "--run", "demo-training", "--folds", "2", "--members", "1",
             "--epochs", str(args.train_epochs), "--width", str(args.train_width),
             "--batch-size", "4",
             "--device", args.device]
    if paths.partial_model_dir("demo-training").exists():
        train.append("--resume")
    headless = args.no_gui or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    gui = ["gui", ws]
    if headless:
        gui += ["--screenshot", str(paths.root / "reports" / "viewer.png"), "--whole-window"]
    steps = [
        ("a fresh synthetic cohort", ["synth", ws, "--n", str(args.n), "--seed",
                                      str(args.seed), "--grid", args.grid]),
    ]
    # the short training run goes first: the viewer (now and when the workspace is opened
    # later) shows the run with the latest predictions, which must be the shipped model's
    if not run_dir.exists():
        steps.append(("training works: a short run (the wizard's code)", train))
    steps += [
        ("ages from the shipped model", ["predict", ws, "--model", m, "--device", args.device]),
        ("the model against the noise floor and the baselines", ["report", ws, "--run", m]),
        ("where the evidence lies: Grad-CAM", ["explain", ws, "--run", m]),
    ]
    if not any((paths.atlas_dir(g) / "members.json").exists() for g in ("F", "M")):
        steps.append(("the shipped atlas of each sex", ["atlas", "install", ws, args.atlas]))
    steps += [
        ("every subject registered once to its atlas", ["register", ws]),
        ("signed gradient x input against the atlas template (its age trend finds the ageing "
         "organs)", ["explain", ws, "--run", m, "--method", "gradxinput", "--signed",
                     "--reference", "atlas"]),
        ("population maps", ["atlas", "maps", ws, "--run", m]),
        ("the age trend of the signed maps",
         ["atlas", "maps", ws, "--run", m, "--kind", trend_kind(m)]),
        ("accelerated vs decelerated agers",
         ["compare", "accelerated", "decelerated", ws, "--run", m, "--permutations",
          str(args.permutations)]),
    ]
    steps.append(("the viewer", gui))
    return steps


def run(args) -> int:
    from bodyage_core.cli.main import main as bodyage_main
    from bodyage_core.evaluation.demo_summary import write_demo_summary

    t_start = time.perf_counter()
    timings = []
    for what, argv in demo_commands(args):
        print(f"\n# {what}\n$ bodyage {shlex.join(argv)}", flush=True)
        t0 = time.perf_counter()
        rc = bodyage_main(argv)
        if rc != 0:
            raise BodyageError(f"step `bodyage {argv[0]}` failed (exit {rc}); fix what it said "
                               f"and run the demo again — finished steps are kept")
        dt = time.perf_counter() - t0
        timings.append({"step": " ".join(argv[:2] if argv[0] == "atlas" else argv[:1]),
                        "what": what, "seconds": round(dt, 1)})
        print(f"  ({dt:.0f} s)", flush=True)
    total = time.perf_counter() - t_start
    summary = write_demo_summary(Path(args.workspace), args.model, timings, total)
    print("\n" + summary["text"])
    print(f"\ndemo finished in {total / 60:.1f} min; results in {args.workspace}/reports "
          f"(demo_summary.md), open with `bodyage gui {args.workspace}`", file=sys.stderr)
    return 0
