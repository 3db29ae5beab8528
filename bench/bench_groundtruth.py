"""Do the maps point at the right organs? Ground truth from the synthetic cohort (issue 4).

For each cohort (A: the demo's effects, every effect x2.5; B: the same subjects with *other*
organs ageing, the generator option ``--effects``; C: the heart's effect x4, clearly the
strongest), the benchmark generates the cohort, trains a 3-fold ResNet3D ensemble (``bodyage
train``), explains every subject (Grad-CAM at each layer asked for, gradient x input, and its
signed variant; ensemble of the subject's out-of-fold members) and measures against the
generator's age-effect mask:

* **subject space** (no registration): the fraction of each subject's importance (ReLU map,
  within the body) inside its own age-effect mask, mean over subjects, against the volume
  fraction of the mask (what a uniform map scores); the share and enrichment per planted effect
  and per organ;
* **atlas space** (``--atlas-n`` subjects per sex, atlases built with ``--atlas-iterations``,
  then every subject registered, ``--register-all``): the fraction of *population* importance
  inside the majority-voted warped age-effect mask, for the raw mean of the maps (published),
  for per-subject normalised maps and for the age trend of each (``age_trend_summary``: the
  signed gradient x input trend, its effect ranking, strongest first or not); the region summary
  (share per organ) and the rank of every planted effect's organs; the organ-label Dice of every
  member's warped labels against the atlas's majority-vote labels;
* the **strongest planted effect** of each cohort: the effect whose parameters alone let an
  oracle predict age best (``bodyage_core.synth.oracle.noise_floor`` with only that effect on,
  at the cohort's strength), and whether it ranks first.

The "change which organs age" experiment: the top regions of cohort B must be B's ageing organs,
and A's top organs must drop.

    .venv/bin/python bench/bench_groundtruth.py --root /tmp/gt_bench [--n 144] [--epochs 30]
        [--maps gradcam:layer3,gradcam:layer2,gradxinput,gradxinput:signed] [--atlas-n 8]
        [--cohorts A,B,C] [--atlas-cohorts A,C] [--register-all 2]

Writes ``bench/results/groundtruth.json``. Everything is resumable (the workspaces are kept).
About 2.5 h on the 2-core machine from nothing (training 3 x ~15-20 min, explain 4 maps x 144
subjects x 3 cohorts ~15 min, atlases 2 x ~6-15 min, registering 2 x 128 subjects ~15 min each),
13 min when those exist; the recorded file also carries an occlusion cross-check, the
resolution ceiling of each ResNet stage (see docs/SYNTH.md), a randomised-weights control and a
TFCE check of the age trend, measured by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from bodyage_core.cohort import Workspace  # noqa: E402
from bodyage_core.io import load_labels, load_volume  # noqa: E402
from bodyage_core.registration.transform import LABEL_INTERPOLATION  # noqa: E402
from bodyage_core.synth import EFFECT_NAMES, EFFECTS, LABELS, AgeEffects  # noqa: E402

COHORTS = {
    # the demo's setting: every default effect x2.5
    "A": ",".join(f"{e}=2.5" for e in ("spine", "back_muscle", "thigh_muscle", "aorta", "heart",
                                       "knee")),
    # change which organs age: the muscles and the spine stop ageing, the liver starts
    "B": "spine=0,back_muscle=0,thigh_muscle=0,aorta=2.5,heart=2.5,knee=2.5,liver=2.5",
    # one effect clearly the strongest (the heart's, x4; the others at their documented rate):
    # does it rank first, although the heart was a minor region in A?
    "C": "spine=1,back_muscle=1,thigh_muscle=1,aorta=1,heart=4,knee=1",
}
ORGAN_IDS = {v: k for k, v in LABELS.items()}
#: organs smaller than this fraction of the body are left out of the enrichment ranking (a few
#: voxels make a noisy ratio)
MIN_VF = 0.002


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def bodyage(argv: list[str]) -> None:
    from bodyage_core.cli.main import main

    log("$ bodyage", " ".join(argv))
    if main(argv) != 0:
        raise SystemExit(f"bodyage {argv[0]} failed")


# -- pipeline -----------------------------------------------------------------------------------
def prepare(ws_path: Path, effects: str, args) -> None:
    bodyage(["synth", str(ws_path), "--n", str(args.n), "--grid", args.grid,
             "--effects", effects, "--seed", str(args.seed)])
    if not (ws_path / "models" / args.run / "config.json").exists() or \
            json.loads((ws_path / "models" / args.run / "config.json").read_text()).get(
                "status") == "training":
        resume = (ws_path / "models" / f"{args.run}.partial").exists()
        bodyage(["train", str(ws_path), "--run", args.run, "--model", "resnet3d", "--loss", "l1",
                 "--members", "1", "--folds", "3", "--epochs", str(args.epochs),
                 "--width", str(args.width), "--lr", "1e-3",
                 "--spacing", *(str(v) for v in args.spacing), "--scheduler", "step",
                 "--batch-size", "8", "--early-stopping", "0", "--device", "cpu",
                 "--threads", "1", *(["--resume"] if resume else [])])


def map_kinds(args) -> dict[str, tuple[str, str | None, str]]:
    """``{name: (method, layer, variant)}`` of the maps to make: ``gradcam:layer3`` ->
    ``gradcam_layer3``, ``gradxinput`` -> ``gradxinput``, ``gradxinput:signed`` ->
    ``gradxinput_signed`` (the signed variant, for the age trend)."""
    out = {}
    for item in args.maps:
        method, _, layer = item.partition(":")
        if layer == "signed":
            out[f"{method}_signed"] = (method, None, "signed")
        else:
            out[f"{method}_{layer}" if layer else method] = (method, layer or None, "relu")
    return out


def explain(ws: Workspace, args) -> dict[str, float]:
    from bodyage_core.explain import explain_subjects

    secs = {}
    for name, (method, layer, variant) in map_kinds(args).items():
        t0 = time.perf_counter()
        s = explain_subjects(ws, args.run, method=method, layer=layer or "layer3",
                             variant=variant, device="cpu", kind=f"{name}_{args.run}")
        secs[name] = (time.perf_counter() - t0) / max(len(s.written), 1) if s.written else None
        log(f"explain {name}: {len(s.written)} written, {len(s.skipped)} skipped")
    return secs


def subject_space(ws: Workspace, kinds: list[str]) -> dict[str, dict]:
    """Per kind: per-subject fraction inside the own age mask, per-effect and per-organ shares
    (each subject's mask and labels are read once for all kinds)."""
    acc = {k: {"frac": [], "unif": [], "eff": {}, "vol": {}, "organ": {}, "organ_vol": {}}
           for k in kinds}
    for s in ws.db.subjects():
        if not all(k in s.images for k in kinds):
            continue
        mask = load_labels(ws.resolve(s.images["age_mask"])).data[0]
        lab = load_labels(ws.resolve(s.images["labels"])).data[0]
        body = lab > 0
        lab_b, mask_b = lab[body], mask[body]
        nb = float(body.sum())
        for kind in kinds:
            a = acc[kind]
            w = np.clip(load_volume(ws.resolve(s.images[kind])).data[0][body], 0, None)
            tot = float(w.sum())
            if tot <= 0:
                continue
            a["frac"].append(float(w[mask_b > 0].sum()) / tot)
            a["unif"].append(float((mask_b > 0).sum()) / nb)
            per_eff = np.bincount(mask_b, weights=w, minlength=8)
            n_eff = np.bincount(mask_b, minlength=8)
            for eid in np.nonzero(n_eff[1:])[0] + 1:
                name = EFFECT_NAMES[int(eid)]
                a["eff"].setdefault(name, []).append(float(per_eff[eid]) / tot)
                a["vol"].setdefault(name, []).append(float(n_eff[eid]) / nb)
            per = np.bincount(lab_b, weights=w, minlength=len(LABELS))
            n_org = np.bincount(lab_b, minlength=len(LABELS))
            for i in np.nonzero(n_org)[0]:
                a["organ"].setdefault(LABELS[int(i)], []).append(float(per[i]) / tot)
                a["organ_vol"].setdefault(LABELS[int(i)], []).append(float(n_org[i]) / nb)
    out = {}
    for kind, a in acc.items():
        effects = {k: {"share": float(np.mean(v)), "volume_fraction": float(np.mean(a["vol"][k])),
                       "enrichment": float(np.mean(v) / max(np.mean(a["vol"][k]), 1e-12))}
                   for k, v in a["eff"].items()}
        organs = sorted(((k, float(np.mean(v))) for k, v in a["organ"].items()),
                        key=lambda kv: -kv[1])
        enrich = {k: float(np.mean(v) / max(np.mean(a["organ_vol"][k]), 1e-12))
                  for k, v in a["organ"].items() if np.mean(a["organ_vol"][k]) >= MIN_VF}
        out[kind] = {"n": len(a["frac"]),
                     "organ_enrichment_ranking": [(k, round(v, 3)) for k, v in sorted(
                         enrich.items(), key=lambda kv: -kv[1])],
                     "importance_in_age_mask": float(np.mean(a["frac"])) if a["frac"] else None,
                     "uniform_map": float(np.mean(a["unif"])) if a["unif"] else None,
                     "effects": effects, "organ_ranking": [(k, round(v, 4)) for k, v in organs]}
    return out


def build_atlases_subset(ws: Workspace, args) -> dict:
    """Atlases per sex from the first ``atlas_n`` subjects of each sex (resumable)."""
    from bodyage_core.atlas.build import AtlasConfig, build_atlas
    from bodyage_core.atlas.workspace import _member, _record, transform_folder
    from bodyage_core.registration import RegistrationConfig

    reg = RegistrationConfig.from_dict(json.loads(args.registration) if args.registration
                                       else None)
    reg.threads = 1
    cfg = AtlasConfig(iterations=args.atlas_iterations, registration=reg)
    out = {}
    for sex in ("F", "M"):
        subj = [s for s in ws.db.subjects() if s.sex == sex][: args.atlas_n]
        t0 = time.perf_counter()
        c0 = time.process_time()
        summary = build_atlas([_member(ws, s) for s in subj], ws.atlas_dir(sex), sex, cfg,
                              transform_dir=lambda sid, g=sex: transform_folder(ws, sid, g),
                              extra={"by": ["sex"]})
        for sid, q in summary["quality"].items():
            _record(ws, sid, sex, q, transform_folder(ws, sid, sex))
        secs = [q.get("seconds") for q in summary["quality"].values()
                if not q.get("reused") and q.get("seconds")]
        out[sex] = {"n": len(subj), "wall_s": time.perf_counter() - t0,
                    "cpu_s": time.process_time() - c0,
                    "registration_wall_s_median": float(np.median(secs)) if secs else None,
                    "failed": summary.get("failed")}
        log(f"atlas {sex}: {len(subj)} subjects, {out[sex]['wall_s']:.0f} s")
    return out


def atlas_dice(ws: Workspace, group: str, subjects: set[str] | None = None) -> dict:
    """Organ-label Dice of every registered subject's (or of ``subjects``') warped labels
    against the atlas majority labels."""
    from bodyage_core.atlas.workspace import warped_maps
    from bodyage_core.registration import label_dice

    atlas_labels = load_labels(ws.atlas_dir(group) / "labels.nii.gz").data[0]
    ids, labs, _ = warped_maps(ws, group, "labels", LABEL_INTERPOLATION)
    per_subject, per_organ = [], {}
    for sid, lab in zip(ids, labs):
        if subjects is not None and sid not in subjects:
            continue
        d = label_dice(lab, atlas_labels)
        per_subject.append(float(np.mean(list(d.values()))))
        for k, v in d.items():
            per_organ.setdefault(LABELS.get(int(k), str(k)), []).append(float(v))
    return {"dice_labels_mean": float(np.mean(per_subject)),
            "dice_per_organ": {k: round(float(np.mean(v)), 3) for k, v in
                               sorted(per_organ.items(), key=lambda kv: -np.mean(kv[1]))}}


def atlas_space(ws: Workspace, args, kind: str, normalise: str) -> dict:
    from bodyage_core.atlas.build import load_atlas, majority_vote
    from bodyage_core.atlas.cohort_maps import build_population_maps
    from bodyage_core.atlas.regions import importance_inside_mask
    from bodyage_core.atlas.workspace import warped_maps

    tag = f"{kind}_{normalise}"
    summ = build_population_maps(ws, args.run, groups=["F", "M"], kind=kind,
                                 normalise=normalise, tag=tag)
    out = {}
    for g, gs in summ["groups"].items():
        if "error" in gs:
            out[g] = gs
            continue
        atlas = load_atlas(ws.atlas_dir(g))
        _ids, masks, _ = warped_maps(ws, g, "age_mask", LABEL_INTERPOLATION)
        voted = majority_vote([m.astype(np.int16) for m in masks])
        all_regions = json.loads((ws.atlas_dir(g) / f"regions_{tag}.json").read_text())
        res = {}
        for sub, stem in (("all", "all_mean"), ("age_trend", "age_trend")):
            info = gs["subgroups"].get(sub)
            if info is None or sub not in all_regions:
                continue
            pop = load_volume(ws.atlas_dir(g) / f"population_{tag}_{stem}.nii.gz").data[0]
            effects = {}
            for eid in np.unique(voted[voted > 0]):
                name = EFFECT_NAMES[int(eid)]
                sel = voted == eid
                share = importance_inside_mask(pop, sel, atlas["body_mask"])
                vf = float((sel & atlas["body_mask"]).sum() / atlas["body_mask"].sum())
                effects[name] = {"share": share, "volume_fraction": vf,
                                 "enrichment": share / vf if vf else None}
            regions = all_regions[sub]
            res[sub] = {
                "n": info["n"], "importance_in_age_mask": info.get("importance_in_age_mask"),
                "uniform_map": info.get("uniform_baseline"), "effects": effects,
                "effect_ranking": [k for k, _ in sorted(effects.items(),
                                                        key=lambda kv: -kv[1]["share"])],
                "organ_ranking": [(r["region"], round(r["share"], 4)) for r in regions],
                "organ_enrichment_ranking": [
                    (r["region"], round(r["enrichment"], 3)) for r in sorted(
                        (r for r in regions if r["volume_fraction"] >= MIN_VF
                         and r["region"] != "other"), key=lambda r: -r["enrichment"])]}
        out[g] = {**res.get("all", {}), **({"age_trend": res["age_trend"]}
                                            if "age_trend" in res else {})}
    return out


def strongest_effects(effects: str, n: int = 3000) -> list[tuple[str, float]]:
    """Enabled effects ordered by the oracle MAE with only that effect on (best first)."""
    from bodyage_core.synth.oracle import noise_floor

    eff = AgeEffects.parse(effects)
    out = []
    for name in eff.enabled():
        only = AgeEffects.none().with_strength(name, eff.strength(name))
        out.append((name, round(float(noise_floor(n=n, effects=only)["oracle_mae"]), 2)))
    return sorted(out, key=lambda kv: kv[1])


def effect_ranks(organ_ranking: list, effects: str) -> dict[str, int | None]:
    """Best rank, in the organ ranking, of any organ of each enabled effect."""
    eff = AgeEffects.parse(effects)
    order = [r[0] for r in organ_ranking]
    ranks = {}
    for name in eff.enabled():
        rs = [order.index(o) + 1 for o in EFFECTS[name].organs if o in order]
        ranks[name] = min(rs) if rs else None
    return ranks


def trend_summary(res: dict, effects: str, key: str = "gradxinput_signed_none") -> dict:
    """The headline figures: per atlas group, the age trend of the signed gradient x input
    maps -- fraction inside the age-effect mask vs a uniform map, planted effects ordered by
    their share, and whether the oracle's strongest effect comes first."""
    strongest = res["strongest_effects_oracle_mae"][0][0]
    out = {"map": key, "strongest_effect": strongest}
    for g, v in res.get("atlas_space", {}).get(key, {}).items():
        t = v.get("age_trend")
        if not t:
            continue
        out[g] = {"n": t["n"], "inside": round(t["importance_in_age_mask"], 3),
                  "uniform": round(t["uniform_map"], 3),
                  "mean_map_inside": round(v["importance_in_age_mask"], 3),
                  "effect_ranking": t["effect_ranking"],
                  "effect_shares": {k: round(e["share"], 3) for k, e in t["effects"].items()},
                  "strongest_first": bool(t["effect_ranking"])
                  and t["effect_ranking"][0] == strongest,
                  "top_organs": t["organ_ranking"][:5]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/gt_bench", help="where the workspaces go")
    ap.add_argument("--cohorts", default="A,B,C")
    ap.add_argument("--n", type=int, default=144)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", default="6,6,8", help="synthetic grid (the demo's)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--spacing", type=float, nargs=3, default=(9.0, 9.0, 9.0))
    ap.add_argument("--run", default="gt")
    ap.add_argument("--maps", default="gradcam:layer3,gradcam:layer2,gradxinput,"
                    "gradxinput:signed",
                    help="maps to make: gradcam:<layer>, gradxinput (relu variants) or "
                         "gradxinput:signed (the age trend's map)")
    ap.add_argument("--atlas-n", type=int, default=8,
                    help="subjects per sex in the atlases (0: no atlas-space figures)")
    ap.add_argument("--atlas-cohorts", default="A,C", help="cohorts that get atlases")
    ap.add_argument("--register-all", type=int, default=2, metavar="WORKERS",
                    help="after building the atlases, register every subject of the cohort "
                         "to its sex's atlas with this many workers (0: only the atlas "
                         "members count in atlas space)")
    ap.add_argument("--atlas-iterations", type=int, default=2)
    ap.add_argument("--registration", default=None, help="JSON of registration options")
    ap.add_argument("--out", default="groundtruth", help="results file name")
    args = ap.parse_args(argv)
    args.maps = [s for s in args.maps.split(",") if s]
    t_start = time.perf_counter()
    results: dict = {"settings": {k: v for k, v in vars(args).items()},
                     "threads": os.environ.get("OMP_NUM_THREADS"), "cohorts": {}}
    for name in [c for c in args.cohorts.split(",") if c]:
        effects = COHORTS[name]
        ws_path = Path(args.root) / f"cohort_{name}"
        t0 = time.perf_counter()
        prepare(ws_path, effects, args)
        t_train = time.perf_counter() - t0
        ws = Workspace.open(ws_path)
        preds = ws.db.predictions(args.run)
        mae = float(np.mean([abs(p["mean"] - p["age"]) for p in preds])) if preds else None
        mean_mae = float(np.mean(np.abs([p["age"] for p in preds]
                                        - np.mean([p["age"] for p in preds])))) if preds else None
        res: dict = {"effects": effects, "oof_mae_raw": mae, "mean_predictor_mae": mean_mae,
                     "strongest_effects_oracle_mae": strongest_effects(effects),
                     "synth_train_s": t_train}
        res["explain_s_per_subject"] = explain(ws, args)
        res["subject_space"] = {}
        names = list(map_kinds(args))
        per_kind = subject_space(ws, [f"{n}_{args.run}" for n in names])
        for layer in names:
            ss = per_kind[f"{layer}_{args.run}"]
            ss["effect_ranks"] = effect_ranks(ss["organ_ranking"], effects)
            ss["effect_ranks_enrichment"] = effect_ranks(ss["organ_enrichment_ranking"], effects)
            res["subject_space"][layer] = ss
            log(f"cohort {name} {layer} subject space: inside {ss['importance_in_age_mask']:.3f}"
                f" vs uniform {ss['uniform_map']:.3f}; top {ss['organ_ranking'][:4]}")
        if args.atlas_n and name in args.atlas_cohorts.split(","):
            t0 = time.perf_counter()
            res["atlas_build"] = build_atlases_subset(ws, args)
            res["atlas_build_s"] = time.perf_counter() - t0
            if args.register_all:
                t0 = time.perf_counter()
                bodyage(["register", str(ws_path), "--workers", str(args.register_all)])
                res["register_all_s"] = time.perf_counter() - t0
            res["dice"] = {g: atlas_dice(ws, g) for g in ("F", "M")}
            res["atlas_space"] = {}
            for layer in map_kinds(args):
                for norm in ("none", "sum"):
                    kind = f"{layer}_{args.run}"
                    a = atlas_space(ws, args, kind, norm)
                    for g in a.values():
                        for v in (g, g.get("age_trend")):
                            if v and "organ_ranking" in v:
                                v["effect_ranks"] = effect_ranks(v["organ_ranking"], effects)
                                v["effect_ranks_enrichment"] = effect_ranks(
                                    v["organ_enrichment_ranking"], effects)
                    res["atlas_space"][f"{layer}_{norm}"] = a
                    log(f"cohort {name} {layer} {norm} atlas: " + "; ".join(
                        f"{g} inside {v.get('importance_in_age_mask', 0):.3f} vs uniform "
                        f"{v.get('uniform_map', 0):.3f}, age trend "
                        f"{v.get('age_trend', {}).get('importance_in_age_mask', 0):.3f} "
                        f"{v.get('age_trend', {}).get('effect_ranking')}"
                        for g, v in a.items()))
            res["age_trend_summary"] = trend_summary(res, effects)
            log(f"cohort {name} age trend: {res['age_trend_summary']}")
        ws.close()
        results["cohorts"][name] = res
        write_results(args.out, [], {**results, "seconds": time.perf_counter() - t_start})
    results["seconds"] = time.perf_counter() - t_start
    print("wrote", write_results(args.out, [], results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
