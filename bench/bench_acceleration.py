"""Does the product find a planted organ-specific accelerated ageing?

Two synthetic cohorts of the same seed and size: one with ``--accelerate heart=+10@0.15`` (15 % of
the subjects have a heart that ages as if 10 years older than the rest of their body), one
without (the control). On each, the product's own commands, called the way ``bodyage demo``
calls them (no pipeline of this benchmark's own)::

    bodyage synth WS --n N --seed S [--accelerate heart=+10@0.15]
    bodyage predict WS --model wholebody-synthetic
    bodyage explain WS --run wholebody-synthetic                  (Grad-CAM)
    bodyage atlas install WS wholebody-synthetic
    bodyage register WS
    bodyage explain WS --run wholebody-synthetic --method gradxinput --signed --reference atlas
    bodyage compare accelerated decelerated WS --run wholebody-synthetic --permutations P
            [--kind gradxinput_signed_vs_atlas_wholebody-synthetic]

then, per atlas group (F, M), from what ``compare`` wrote: the voxels with p(FWE) <= 0.05 and the
fraction of them inside the planted organ (the voxels where the majority of the group's members'
age-effect masks, warped to the atlas as ``atlas maps`` does for ``importance_in_age_mask``,
carry the effect id of the organ: heart = 5), the same with the organ dilated by one voxel, the
fraction of the |difference| map inside the organ, and how many planted subjects the model put
among the accelerated and the decelerated agers. For the control: its significant voxel count.

``--maps`` chooses what is compared: ``gradcam`` (the compare default), ``atlas`` (the signed
gradient x (input - atlas template) maps the demo reads its age trend from: Grad-CAM's layer-3
cells are ~10 cm at the model grid, larger than the heart) or ``both`` (default; the second
comparison costs one permutation test once the maps exist).

``compare`` tests the voxels behind its gate (more subjects outside their own 95 % interval
than chance, ``bodyage_core.atlas.cohort_maps.gap_gate``): without it, choosing subjects by their
gap makes the groups' maps differ where the model reads age in the control too. The table shows
the gate's p and the voxels the test alone would call significant (``ungated``).
``--versus aligned`` and ``--interval 0.95`` choose the groups another way.

Target: >= 0.6 of the significant difference inside the planted organ; the control has no
significant voxel at the same n. A planted organ can only be found where the model reads age
(``bench_organ_sensitivity.py``: the shipped model moves 0.80 y per year of back-muscle ageing,
0.003 per year of heart ageing), hence ``--accelerate back_muscle=+10@0.15`` in docs/RESULTS.md. Writes ``bench/results/acceleration.json`` (or
``acceleration_<tag>.json``) and prints a table::

    .venv/bin/python bench/bench_acceleration.py                 # n 300 a cohort: ~1 h, 2 cores
    .venv/bin/python bench/bench_acceleration.py --n 16 --permutations 50 --tag tiny   # minutes
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine, print_table  # noqa: E402

from bodyage_core.atomic import write_json  # noqa: E402

MODEL = "wholebody-synthetic"
TARGET_INSIDE = 0.6


def map_kinds(maps: str, model: str) -> list[str]:
    atlas = f"gradxinput_signed_vs_atlas_{model}"
    return {"gradcam": [f"gradcam_{model}"], "atlas": [atlas],
            "both": [f"gradcam_{model}", atlas]}[maps]


def commands(ws: str, n: int, seed: int, accelerate: str | None, permutations: int,
             model: str, device: str, kinds: list[str],
             gap_sd: float | None = None) -> list[list[str]]:
    synth = ["synth", ws, "--n", str(n), "--seed", str(seed)]
    if gap_sd is not None:
        synth += ["--gap-sd", f"{gap_sd:g}"]
    if accelerate:
        synth += ["--accelerate", accelerate]
    out = [synth, ["predict", ws, "--model", model, "--device", device]]
    if f"gradcam_{model}" in kinds:
        out.append(["explain", ws, "--run", model])
    if not (Path(ws) / "atlases").is_dir():           # --keep: installed by the earlier run
        out.append(["atlas", "install", ws, model])
    out.append(["register", ws])
    if f"gradxinput_signed_vs_atlas_{model}" in kinds:
        out.append(["explain", ws, "--run", model, "--method", "gradxinput", "--signed",
                    "--reference", "atlas"])
    return out


def compare_command(ws: str, model: str, permutations: int, kind: str,
                    versus: str = "decelerated", interval: float | None = None) -> list[str]:
    out = ["compare", "accelerated", versus, ws, "--run", model, "--permutations",
           str(permutations), "--kind", kind]
    return out + (["--interval", f"{interval:g}"] if interval is not None else [])


def _gate_p(row: dict) -> str:
    gate = row.get("gate") or {}
    return "-" if gate.get("p") is None else f"{gate['p']:.2g}"


def run_product(argvs: list[list[str]], log: list[dict]) -> None:
    from bodyage_core.cli.main import main as bodyage_main

    for argv in argvs:
        print(f"$ bodyage {shlex.join(argv)}", flush=True)
        t0 = time.perf_counter()
        rc = bodyage_main(argv)
        dt = time.perf_counter() - t0
        log.append({"step": " ".join(argv[:2] if argv[0] == "atlas" else argv[:1]),
                    "seconds": round(dt, 1)})
        if rc != 0:
            raise SystemExit(f"`bodyage {shlex.join(argv)}` failed (exit {rc})")


def organ_masks(ws, group: str, effect_id: int):
    """The planted organ in the atlas of ``group``: the majority of the members' warped
    age-effect masks carrying ``effect_id`` (and the union of all effects, for reference)."""
    import numpy as np

    from bodyage_core.atlas.workspace import warped_maps
    from bodyage_core.registration.transform import LABEL_INTERPOLATION

    _, masks, _ = warped_maps(ws, group, "age_mask", LABEL_INTERPOLATION)
    if masks is None:
        return None, None
    return (np.mean(masks == effect_id, axis=0) >= 0.5), (np.mean(masks > 0, axis=0) >= 0.5)


def analyse(ws_path: Path, model: str, organ: str, alpha: float,
            versus: str = "decelerated") -> dict:
    """What the last ``compare`` wrote, against the planted organ."""
    import numpy as np
    from scipy import ndimage

    from bodyage_core.atlas.build import load_image
    from bodyage_core.cohort import Workspace
    from bodyage_core.synth.effects import EFFECTS

    eff_id = EFFECTS[organ].id
    out: dict = {"groups": {}}
    ws = Workspace.open(ws_path)
    try:
        planted = {s.subject_id for s in ws.db.subjects()
                   if (s.meta.get("acceleration") or {}).get(organ)}
        out["n_subjects"] = ws.db.count()
        out["n_planted"] = len(planted)
        for g in ("F", "M"):
            jpath = ws.compare_file(g, model, versus=versus)
            if not jpath.exists():
                out["groups"][g] = {"error": "compare wrote nothing for this group"}
                continue
            cmp_ = json.loads(jpath.read_text())
            row = {"n_accelerated": cmp_.get("n_accelerated"),
                   "n_versus": len(cmp_.get(versus, [])),
                   "planted_in_accelerated": sum(s in planted for s in cmp_.get("accelerated", [])),
                   "planted_in_versus": sum(s in planted for s in cmp_.get(versus, []))}
            for key in ("n_decelerated", "n_aligned", "rule", "gate"):
                if key in cmp_:
                    row[key] = cmp_[key]
            if "error" in cmp_:
                row["error"] = cmp_["error"]
                out["groups"][g] = row
                continue
            p = np.asarray(load_image(ws.resolve(cmp_["p_fwe"])).data[0])
            diff = np.asarray(load_image(ws.resolve(cmp_["diff"])).data[0])
            sig = p <= alpha
            om, union = organ_masks(ws, g, eff_id)
            row.update({"significant_voxels": int(sig.sum()), "min_p_fwe": cmp_["min_p_fwe"],
                        "max_abs_t": cmp_["max_stat"],
                        "significant_voxels_ungated": cmp_.get("significant_voxels_ungated")})
            if om is not None:
                om_d = ndimage.binary_dilation(om, iterations=1)
                n_sig = int(sig.sum())
                row.update({
                    "organ_voxels": int(om.sum()),
                    "inside_organ": float((sig & om).sum() / n_sig) if n_sig else None,
                    "inside_organ_dilated1": float((sig & om_d).sum() / n_sig) if n_sig else None,
                    "inside_any_age_effect": float((sig & union).sum() / n_sig) if n_sig else None,
                    "abs_diff_inside_organ": float(np.abs(diff)[om].sum()
                                                   / max(np.abs(diff).sum(), 1e-12)),
                    "organ_volume_fraction": float(om.sum() / om.size),
                })
            out["groups"][g] = row
    finally:
        ws.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300,
                    help="subjects in each cohort (default 300: about an hour on 2 cores)")
    ap.add_argument("--seed", type=int, default=31,
                    help="cohort seed (default 31; the shipped model was trained on seed 20)")
    ap.add_argument("--accelerate", default="heart=+10@0.15",
                    help="the planted acceleration (one organ; default heart=+10@0.15)")
    ap.add_argument("--gap-sd", type=float, default=0.0,
                    help="SD of the whole-body biological-age gap in both cohorts (default 0: "
                         "the planted organ is the only true ageing difference, so the right "
                         "answer is that organ and the control has none; 2.5 is the synthetic "
                         "cohort's usual gap, which makes accelerated agers older everywhere)")
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default=str(ROOT / "bench" / "_work" / "acceleration"),
                    help="folder for the two workspaces")
    ap.add_argument("--keep", action="store_true", help="resume existing workspaces")
    ap.add_argument("--tag", default=None, help="write acceleration_<tag>.json")
    ap.add_argument("--maps", choices=("gradcam", "atlas", "both"), default="both",
                    help="the subject maps compared (default both)")
    ap.add_argument("--versus", choices=("decelerated", "aligned"), default="decelerated",
                    help="what the accelerated agers are compared with (`bodyage compare "
                         "accelerated VERSUS`)")
    ap.add_argument("--interval", type=float, default=None,
                    help="choose the groups by the subjects' own interval (`compare "
                         "--interval`, e.g. 0.95) instead of compare's default rule")
    args = ap.parse_args(argv)

    from bodyage_core.synth.acceleration import Acceleration

    acc = Acceleration.parse(args.accelerate)
    if len(acc.rules) != 1:
        raise SystemExit("--accelerate must plant exactly one organ, e.g. heart=+10@0.15")
    organ = acc.rules[0].organ
    work = Path(args.work)
    results: dict = {"n": args.n, "seed": args.seed, "accelerate": acc.to_text(),
                     "organ": organ, "model": args.model, "permutations": args.permutations,
                     "alpha": args.alpha, "target_inside": TARGET_INSIDE, "maps": args.maps,
                     "gap_sd": args.gap_sd, "versus": args.versus, "interval": args.interval,
                     "cohorts": {}}
    kinds = map_kinds(args.maps, args.model)
    t_all = time.perf_counter()
    for name, planted in (("accelerated", acc.to_text()), ("control", None)):
        # the control depends only on n, seed and gap SD: --keep reuses it for another organ
        tag = f"n{args.n}_s{args.seed}_gap{args.gap_sd:g}"
        ws = work / (f"{name}_{organ}_{tag}" if planted else f"{name}_{tag}")
        if ws.exists() and not args.keep:
            shutil.rmtree(ws)
        steps: list[dict] = []
        t0 = time.perf_counter()
        run_product(commands(str(ws), args.n, args.seed, planted, args.permutations,
                             args.model, args.device, kinds, args.gap_sd), steps)
        res = {"workspace": str(ws), "steps": steps, "by_kind": {}}
        for kind in kinds:
            run_product([compare_command(str(ws), args.model, args.permutations, kind,
                                         args.versus, args.interval)], steps)
            res["by_kind"][kind] = analyse(ws, args.model, organ, args.alpha, args.versus)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results["cohorts"][name] = res

    rows = []
    results["summary"] = {}
    for kind in kinds:
        a = results["cohorts"]["accelerated"]["by_kind"][kind]
        c = results["cohorts"]["control"]["by_kind"][kind]
        for g in ("F", "M"):
            ra, rc = a["groups"].get(g, {}), c["groups"].get(g, {})
            rows.append({"maps": kind.replace(f"_{args.model}", ""), "atlas": g,
                         f"n acc/{args.versus[:3]}": f"{ra.get('n_accelerated')}/"
                                                     f"{ra.get('n_versus')}",
                         f"planted acc/{args.versus[:3]}": f"{ra.get('planted_in_accelerated')}/"
                                                           f"{ra.get('planted_in_versus')}",
                         "gate p acc/ctrl": f"{_gate_p(ra)}/{_gate_p(rc)}",
                         "sig voxels": ra.get("significant_voxels"),
                         "inside organ": ra.get("inside_organ"),
                         "inside (+1 vox)": ra.get("inside_organ_dilated1"),
                         "|diff| inside": ra.get("abs_diff_inside_organ"),
                         "organ vol frac": ra.get("organ_volume_fraction"),
                         "control sig voxels": rc.get("significant_voxels"),
                         "ungated acc/ctrl": f"{ra.get('significant_voxels_ungated')}/"
                                             f"{rc.get('significant_voxels_ungated')}",
                         "min p acc/ctrl": f"{ra.get('min_p_fwe', float('nan')):.3f}/"
                                           f"{rc.get('min_p_fwe', float('nan')):.3f}"})
        sig_a = sum(r.get("significant_voxels") or 0 for r in a["groups"].values())
        inside = sum((r.get("inside_organ") or 0) * (r.get("significant_voxels") or 0)
                     for r in a["groups"].values())
        ctrl = sum(r.get("significant_voxels") or 0 for r in c["groups"].values())
        results["summary"][kind] = {
            "n_planted": a["n_planted"],
            "significant_voxels": sig_a,
            "inside_organ": inside / sig_a if sig_a else None,
            "control_significant_voxels": ctrl,
            "met_inside": bool(sig_a and inside / sig_a >= TARGET_INSIDE),
            "met_control": ctrl == 0,
        }
    results["wall_s"] = round(time.perf_counter() - t_all, 1)
    results["machine"] = machine()
    out = ROOT / "bench" / "results" / (f"acceleration_{args.tag}.json" if args.tag
                                         else "acceleration.json")
    write_json(out, results)
    print()
    print_table(rows)
    for kind, s in results["summary"].items():
        frac = ("n/a (no significant voxel)" if s["inside_organ"] is None
                else f"{s['inside_organ']:.2f}")
        print(f"\n{kind}: planted {acc.to_text()} (n {args.n} a cohort, {s['n_planted']} "
              f"planted): {s['significant_voxels']} significant voxel(s), {frac} inside the "
              f"{organ} (target >= {TARGET_INSIDE}: {'met' if s['met_inside'] else 'NOT MET'}); "
              f"control {s['control_significant_voxels']} significant voxel(s) (target 0: "
              f"{'met' if s['met_control'] else 'NOT MET'})")
    print(f"{results['wall_s'] / 60:.1f} min")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
