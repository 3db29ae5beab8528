"""Which organs does a model read? The predicted-age shift when one organ alone ages.

The synthetic phantom knows each organ's biological age. For every age effect (spine, back
muscle, thigh muscle, aorta, heart, knee) this benchmark makes the same subjects twice with the
product's own commands, once plain and once with that organ aged ``--years`` more than the rest
of the body (whole-body gap switched off, so nothing else differs)::

    bodyage synth WS_control --n N --seed S --gap-sd 0
    bodyage synth WS_<organ> --n N --seed S --gap-sd 0 --accelerate <organ>=+YEARS@1.0
    bodyage predict WS --model MODEL

and reports, per organ, the mean shift of the predicted (bias-corrected) age, in years and as a
fraction of the years planted. A map comparison of accelerated with decelerated agers can only
find an organ whose ageing moves the prediction: this says which (see bench_acceleration.py).

    .venv/bin/python bench/bench_organ_sensitivity.py            # 8 subjects: ~3 min, 2 cores

Writes ``bench/results/organ_sensitivity.json``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine, print_table  # noqa: E402

from bodyage_core.atomic import write_json  # noqa: E402

ORGANS = ("spine", "back_muscle", "thigh_muscle", "aorta", "heart", "knee")


def bodyage(argv: list[str]) -> None:
    from bodyage_core.cli.main import main as bodyage_main

    print(f"$ bodyage {shlex.join(argv)}", flush=True)
    rc = bodyage_main(argv)
    if rc != 0:
        raise SystemExit(f"`bodyage {shlex.join(argv)}` failed (exit {rc})")


def predictions(ws: Path, model: str) -> dict[str, float]:
    from bodyage_core.cohort import Workspace

    with Workspace.open(ws) as w:
        return {r["subject_id"]: float(r["corrected"]) for r in w.db.predictions(model)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="subjects (default 8)")
    ap.add_argument("--seed", type=int, default=77, help="cohort seed (default 77)")
    ap.add_argument("--years", type=float, default=20.0, help="years planted (default 20)")
    ap.add_argument("--model", default="wholebody-synthetic")
    ap.add_argument("--organs", default=",".join(ORGANS))
    ap.add_argument("--work", default=str(ROOT / "bench" / "_work" / "organ_sensitivity"))
    args = ap.parse_args(argv)

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    base = ["--n", str(args.n), "--seed", str(args.seed), "--gap-sd", "0"]
    preds: dict[str, dict[str, float]] = {}
    for organ in ["control", *args.organs.split(",")]:
        ws = work / organ
        extra = [] if organ == "control" else ["--accelerate", f"{organ}=+{args.years:g}@1.0"]
        bodyage(["synth", str(ws), *base, *extra])
        bodyage(["predict", str(ws), "--model", args.model])
        preds[organ] = predictions(ws, args.model)

    rows, per_organ = [], {}
    for organ, p in preds.items():
        if organ == "control":
            continue
        shifts = [p[s] - preds["control"][s] for s in preds["control"]]
        mean = statistics.fmean(shifts)
        per_organ[organ] = {"mean_shift_y": round(mean, 3),
                            "sd_shift_y": round(statistics.stdev(shifts), 3),
                            "fraction_of_planted": round(mean / args.years, 3),
                            "shifts_y": [round(x, 3) for x in shifts]}
        rows.append({"organ": organ, f"shift (y) per +{args.years:g} y": round(mean, 2),
                     "SD": round(statistics.stdev(shifts), 2),
                     "fraction": round(mean / args.years, 3)})
    out = ROOT / "bench" / "results" / "organ_sensitivity.json"
    write_json(out, {"model": args.model, "n": args.n, "seed": args.seed, "years": args.years,
                     "organs": per_organ, "wall_s": round(time.perf_counter() - t0, 1),
                     "machine": machine()})
    print()
    print_table(rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
