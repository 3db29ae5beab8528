"""Do the maps point at the right organs? Ground truth from the synthetic cohort (issue 4).

On a workspace where the pipeline has run (``bodyage demo`` makes one; or pass
``--run-pipeline`` to make it here), for every atlas group and the run's population maps:

* the fraction of population importance inside the generator's age-effect mask, warped to
  atlas space, against what a uniform map over the body would score;
* the share of importance per planted effect (mask id) and the rank of each effect;
* the registration Dice of organ labels in atlas space.

    .venv/bin/python bench/bench_groundtruth.py [WORKSPACE] [--run demo] [--run-pipeline]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_results  # noqa: E402

from bodyage_core.cohort import Workspace  # noqa: E402
from bodyage_core.io import load_labels, load_volume  # noqa: E402
from bodyage_core.synth import EFFECT_NAMES  # noqa: E402


def effect_shares(ws: Workspace, group: str, run: str, ids: list[str]) -> dict[str, float]:
    """Mean over subjects of the share of each subject's atlas-space map inside each effect."""
    sums: dict[int, list[float]] = {}
    for sid in ids:
        folder = ws.subject_dir(sid) / f"atlas_{group}"
        cam_p, mask_p = folder / f"gradcam_{run}.nii.gz", folder / "age_mask.nii.gz"
        if not (cam_p.exists() and mask_p.exists()):
            continue
        cam = np.clip(load_volume(cam_p).data[0], 0, None)
        mask = load_labels(mask_p).data[0]
        total = float(cam.sum()) or 1.0
        for eid in np.unique(mask[mask > 0]):
            sums.setdefault(int(eid), []).append(float(cam[mask == eid].sum()) / total)
    return {EFFECT_NAMES.get(k, str(k)): float(np.mean(v)) for k, v in sorted(sums.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace", nargs="?", default="demo_workspace")
    ap.add_argument("--run", default="demo")
    ap.add_argument("--run-pipeline", action="store_true",
                    help="run `bodyage demo --no-gui` on the workspace first")
    args = ap.parse_args(argv)
    if args.run_pipeline:
        from bodyage_core.cli.main import main as bodyage

        if bodyage(["demo", args.workspace, "--no-gui"]) != 0:
            return 1
    ws = Workspace.open(args.workspace)
    rows = []
    for pop in sorted(ws.root.glob(f"atlases/*/population_{args.run}.json")):
        group = pop.parent.name
        info = json.loads(pop.read_text())["subgroups"]["all"]
        quality = json.loads((pop.parent / "quality.json").read_text()) \
            if (pop.parent / "quality.json").exists() else {}
        shares = effect_shares(ws, group, args.run, info["subjects"])
        ranked = sorted(shares, key=shares.get, reverse=True)
        rows.append({
            "group": group, "n": info["n"],
            "importance_in_age_mask": info.get("importance_in_age_mask"),
            "uniform_map": info.get("uniform_baseline"),
            "dice_labels_atlas": _mean_dice(quality),
            "effect_ranking": " > ".join(f"{k} {shares[k]:.2f}" for k in ranked),
        })
    if not rows:
        print(f"no population maps for run {args.run!r} in {ws.root}: run `bodyage demo` first",
              file=sys.stderr)
        return 1
    print_table(rows)
    preds = ws.db.predictions(args.run)
    mae = float(np.mean([abs(p["mean"] - p["age"]) for p in preds])) if preds else None
    print("wrote", write_results("groundtruth", rows, {
        "workspace": str(ws.root), "run": args.run, "n_subjects": ws.db.count(),
        "oof_mae_raw": mae, "target": "importance in age-effect mask >= 0.6; Dice >= 0.8"}))
    return 0


def _mean_dice(quality: dict) -> float | None:
    vals = [float(q["dice_labels_mean"]) for q in quality.values()
            if isinstance(q, dict) and q.get("dice_labels_mean") is not None]
    return float(np.mean(vals)) if vals else None


if __name__ == "__main__":
    sys.exit(main())
