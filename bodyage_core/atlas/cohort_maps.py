"""Population maps and the accelerated-vs-decelerated comparison on a cohort workspace: the
run's per-subject maps warped into each atlas (:func:`~bodyage_core.atlas.workspace.warped_maps`),
then :mod:`~bodyage_core.atlas.population`, :mod:`~bodyage_core.atlas.stats` and
:mod:`~bodyage_core.atlas.regions`. The files they write are listed in
:mod:`bodyage_core.atlas.workspace`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.atlas.build import (
    load_atlas,
    save_image,
)
from bodyage_core.atlas.population import normalise_maps, population_maps
from bodyage_core.atlas.regions import importance_inside_mask, uniform_baseline, write_shares
from bodyage_core.atlas.stats import age_trend, describe_gap_rule, gap_classes, permutation_test
from bodyage_core.atlas.workspace import built_atlases, warped_maps
from bodyage_core.atomic import write_json
from bodyage_core.cohort.paths import check_versus
from bodyage_core.errors import CohortError, ConfigError
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.registration.transform import (
    LABEL_INTERPOLATION,
)
from bodyage_core.volume import Volume


def _run_predictions(ws, run: str) -> dict[str, dict[str, Any]]:
    preds = {p["subject_id"]: p for p in ws.db.predictions(run)}
    if not preds:
        runs = sorted({p["run_id"] for p in ws.db.predictions()})
        raise CohortError(f"no predictions for run {run!r}"
                          + (f" (runs with predictions: {', '.join(runs)})" if runs else ""),
                          hint="run `bodyage predict WORKSPACE --run RUN` first")
    return preds


def _label_names(atlas_dir: Path, names: dict[int, str] | None) -> dict[int, str]:
    if names:
        return {int(k): v for k, v in names.items()}
    p = atlas_dir / "label_names.json"
    if p.exists():
        return {int(k): v for k, v in json.loads(p.read_text()).items()}
    from bodyage_core.labels import SYNTHETIC_LABELS

    return {int(k): v for k, v in SYNTHETIC_LABELS.items() if int(k) != 0}


def _atlas_age_mask(ws, group: str, ids: list[str]) -> np.ndarray | None:
    """Majority of the members' age-effect masks warped to the atlas (synthetic cohort)."""
    mids, masks, _ = warped_maps(ws, group, "age_mask", LABEL_INTERPOLATION)
    if masks is None:
        return None
    return (np.mean(masks > 0, axis=0) >= 0.5)


def _maps_inputs(ws, run: str, groups: Sequence[str] | None
                 ) -> tuple[dict[str, dict[str, Any]], str, list[str]]:
    """What population maps and comparisons start from: the run's predictions, the map kind
    and the atlases to use (all built ones by default)."""
    preds = _run_predictions(ws, run)
    atlases = list(groups) if groups else built_atlases(ws)
    if not atlases:
        raise CohortError("no atlas built yet", ws.root, "run `bodyage atlas build` first")
    return preds, f"gradcam_{run}", atlases


def build_population_maps(ws, run: str, groups: Sequence[str] | None = None,
                          age_edges: Sequence[float] = (60.0, 70.0),
                          gap_threshold: float | None = None, gap_quantile: float | None = None,
                          min_n: int = 1, label_names: dict[int, str] | None = None,
                          reporter: ProgressReporter | None = None, kind: str | None = None,
                          normalise: str = "none", tag: str | None = None,
                          trend_p: float | None = 0.01, trend_correction: str = "none",
                          trend_permutations: int = 1000,
                          gap_interval: float | None = None) -> dict[str, Any]:
    """Population maps (mean, std) per atlas group, per age band and per gap class of ``run``
    (by ``gap_threshold``, ``gap_quantile`` or the subjects' own ``gap_interval``),
    the age trend (:func:`~bodyage_core.atlas.stats.age_trend`: where the maps change with
    chronological age, kept where p < ``trend_p``, voxel-wise or, with ``trend_correction=
    "tfce"``, family-wise by TFCE over ``trend_permutations`` permutations; written as
    ``population_<tag>_age_trend.nii.gz`` with its unthresholded ``_cov`` and ``_t`` maps),
    region shares (when the atlas has labels) and, when subjects have an ``age_mask``, the
    fraction of importance inside the (warped) age-effect mask against a uniform map.

    ``kind`` is the subjects' map kind (default ``gradcam_<run>``), ``normalise`` the
    per-subject normalisation before averaging (:func:`~bodyage_core.atlas.population.
    normalise_maps`: ``"none"``, the published raw mean, or ``"sum"``), ``tag`` the name in the
    output files (``population_<tag>...``, ``regions_<tag>...``; default ``run``)."""
    reporter = ensure_reporter(reporter)
    preds, default_kind, atlases = _maps_inputs(ws, run, groups)
    kind = kind or default_kind
    normalise_maps(np.zeros((1, 1, 1, 1)), None, normalise)  # unknown method: fail early
    run_tag = run
    run = tag or run
    summary: dict[str, Any] = {"run": run_tag, "kind": kind, "normalise": normalise,
                               "groups": {}}
    shares_all: dict[str, list] = {}
    for g in atlases:
        adir = ws.atlas_dir(g)
        atlas = load_atlas(adir)
        ids, maps, skipped = warped_maps(ws, g, kind, "linear", reporter)
        if maps is None:
            summary["groups"][g] = {"error": f"no subject of {g} has a registered {kind} map",
                                    "skipped": skipped}
            continue
        atlas_body = np.asarray(atlas["body_mask"], bool) \
            if atlas["body_mask"] is not None else None
        maps = normalise_maps(maps, atlas_body, normalise)
        ages = [preds[s]["age"] if s in preds else None for s in ids]
        gaps = [preds[s]["gap"] if s in preds else None for s in ids]
        sigmas = [preds[s].get("sigma") if s in preds else None for s in ids]
        tables = [preds[s].get("interval_z") if s in preds else None for s in ids]
        for s in ids:
            if s not in preds:
                skipped[s] = f"no prediction in run {run_tag} (left out of gap classes)"
        pm = population_maps(maps, ages, gaps, age_edges, gap_threshold, gap_quantile, min_n,
                             gap_interval, sigmas, tables)
        gsum: dict[str, Any] = {"subgroups": {}, "skipped": skipped,
                                "age_edges": list(age_edges),
                                "gap_threshold": gap_threshold, "gap_quantile": gap_quantile,
                                "gap_interval": gap_interval}
        names = _label_names(adir, label_names)
        labels = atlas["labels"].data[0] if atlas["labels"] is not None else None
        body = atlas["body_mask"]
        age_mask = _atlas_age_mask(ws, g, ids)
        shares: dict[str, list] = {}
        trend = _age_trend_maps(ws, adir, run, ids, maps, atlas, trend_p, trend_correction,
                                trend_permutations)
        if isinstance(trend, str):
            gsum["age_trend_error"] = trend
        else:
            pm["age_trend"] = trend
        for sub, entry in pm.items():
            info = {"n": entry["n"], "subjects": [ids[i] for i in entry["index"]]}
            if sub == "age_trend":
                info.update({k: entry[k] for k in ("files", "p_threshold", "correction",
                                                   "voxels_kept")})
            if entry["mean"] is not None:
                # the age trend's files are written by _age_trend_maps (no std)
                for stat in ("mean", "std") if sub != "age_trend" else ():
                    path = ws.population_map(g, run, sub, stat)
                    save_image(Volume(entry[stat], atlas["template"].affine,
                                      channels=(f"{sub}_{stat}",)), path)
                    info[stat] = ws.relative(path)
                if labels is not None and names:
                    from bodyage_core.atlas.regions import region_shares

                    shares[sub] = region_shares(entry["mean"], labels, names, body)
                if age_mask is not None:
                    info["importance_in_age_mask"] = importance_inside_mask(
                        entry["mean"], age_mask, body)
                    info["uniform_baseline"] = uniform_baseline(age_mask, body)
            gsum["subgroups"][sub] = info
        if shares:
            paths = write_shares(shares, ws.regions_stem(run, g))
            gsum["regions"] = {k: ws.relative(v) for k, v in paths.items()}
            if "age_trend" in shares:
                gsum["top_regions_age_trend"] = [(r["region"], round(r["share"], 4))
                                                 for r in shares["age_trend"][:5]]
            if "all" in shares:
                shares_all[g] = shares["all"]
                gsum["top_regions"] = [(r["region"], round(r["share"], 4))
                                       for r in shares["all"][:5]]
        write_json(ws.population_json(g, run), gsum)
        summary["groups"][g] = gsum
    if shares_all:
        paths = write_shares(shares_all, ws.regions_stem(run))
        summary["regions"] = {k: ws.relative(v) for k, v in paths.items()}
    return summary


def _age_trend_maps(ws, adir: Path, run: str, ids: list[str], maps: np.ndarray, atlas,
                    p_threshold: float | None, correction: str = "none",
                    permutations: int = 1000) -> dict[str, Any] | str:
    """The age trend of one group's maps, written next to its population maps; a string
    saying why when there is none (too few subjects with an age, all one age)."""
    by_id = {s.subject_id: s.age for s in ws.db.subjects(ids=ids)}
    try:
        tr = age_trend(maps, [by_id.get(s) for s in ids], p_threshold, atlas["body_mask"],
                       correction, permutations)
    except ConfigError as exc:
        return str(exc)
    files = {}
    for key, suffix in (("map", ""), ("cov", "_cov"), ("t", "_t")):
        path = ws.age_trend_map(adir.name, run, suffix.lstrip("_"))
        save_image(Volume(tr[key], atlas["template"].affine, channels=(f"age_trend{suffix}",)),
                   path)
        files[key] = ws.relative(path)
    keep = [i for i, s in enumerate(ids) if by_id.get(s) is not None]
    return {"mean": tr["map"], "n": tr["n"], "index": keep, "files": files,
            "p_threshold": p_threshold, "correction": correction,
            "voxels_kept": int(np.count_nonzero(tr["map"]))}


#: the interval whose exceedances open the comparison (``compare_gap_groups(gate=...)``)
GATE_INTERVAL = 0.95


def compare_gap_groups(ws, run: str, groups: Sequence[str] | None = None,
                       threshold: float | None = None, quantile: float | None = None,
                       permutations: int = 1000, seed: int = 0, statistic: str = "t",
                       alpha: float = 0.05, reporter: ProgressReporter | None = None,
                       kind: str | None = None, interval: float | None = None,
                       versus: str = "decelerated",
                       gate: float | None = GATE_INTERVAL) -> dict[str, Any]:
    """Accelerated minus decelerated (or ``versus="aligned"``) agers per atlas group:
    difference of mean maps, voxel-wise permutation test (Welch t, two-sided) with FWE by
    max-statistic within the atlas body mask. Gap classes come from the run's bias-corrected
    gaps (:func:`~bodyage_core.atlas.stats.gap_classes`: a threshold in years, a quantile, or
    the subjects' own ``interval``). ``kind``: the subject map compared (default the run's
    Grad-CAM), recorded in the result.

    The gate. Choosing subjects by their gap chooses those whose evidence deviates where the
    model reads age, so the two groups' maps differ there even in a cohort without any true
    acceleration: a voxel test alone finds the model's own reading. Hence a hierarchical test
    (:func:`gap_gate`): first, do more of the group's subjects lie outside their own ``gate``
    interval (e.g. 95 %) than chance gives (binomial, one-sided)? Only then can a difference be
    more than selection. The voxels' FWE p-values are adjusted to ``max(p_voxel, p_gate)``
    (the fixed-sequence procedure, which keeps the family-wise error at ``alpha``); the
    unadjusted figures stay in the summary as ``*_ungated``. ``gate=None`` tests the voxels
    alone."""
    reporter = ensure_reporter(reporter)
    preds, default_kind, atlases = _maps_inputs(ws, run, groups)
    kind = kind or default_kind
    check_versus(versus)
    rule = describe_gap_rule(threshold, quantile, interval)
    summary: dict[str, Any] = {"run": run, "kind": kind, "threshold": threshold,
                               "quantile": quantile, "interval": interval, "versus": versus,
                               "rule": rule, "gate_interval": gate,
                               "permutations": permutations, "groups": {}}
    for g in atlases:
        adir = ws.atlas_dir(g)
        atlas = load_atlas(adir)
        ids, maps, skipped = warped_maps(ws, g, kind, "linear", reporter)
        if maps is None:
            summary["groups"][g] = {"error": f"no registered {kind} maps"}
            continue
        keep = [i for i, s in enumerate(ids) if s in preds and preds[s]["gap"] is not None]
        gaps = [preds[ids[i]]["gap"] for i in keep]
        sigmas = [preds[ids[i]].get("sigma") for i in keep]
        tables = [preds[ids[i]].get("interval_z") for i in keep]
        cls = gap_classes(gaps, threshold, quantile, interval, sigmas, tables)
        ia = [keep[j] for j, c in enumerate(cls) if c == "accelerated"]
        ib = [keep[j] for j, c in enumerate(cls) if c == versus]
        gsum: dict[str, Any] = {"kind": kind, "rule": rule, "versus": versus,
                                "n_accelerated": len(ia),
                                "n_decelerated": sum(c == "decelerated" for c in cls),
                                "n_aligned": sum(c == "aligned" for c in cls),
                                "accelerated": [ids[i] for i in ia],
                                versus: [ids[i] for i in ib]}
        p_gate = 0.0
        if gate is not None:
            gsum["gate"] = gap_gate(gaps, sigmas, gate, alpha, tables)
            p_gate = gsum["gate"]["p"] if gsum["gate"]["p"] is not None else 0.0
        if len(ia) < 2 or len(ib) < 2:
            gsum["error"] = (f"too few subjects to compare ({len(ia)} accelerated, {len(ib)} "
                             f"{versus}; need 2 each)")
            write_json(ws.compare_file(g, run, versus=versus), gsum)
            summary["groups"][g] = gsum
            continue
        reporter.update("permutations", 0, 1, group=g)
        res = permutation_test(maps[ia], maps[ib], permutations, seed, atlas["body_mask"],
                               statistic)
        raw_p = res["p_fwe"]
        res["p_fwe"] = np.maximum(raw_p, p_gate).astype(raw_p.dtype)
        aff = atlas["template"].affine
        for key, name in (("diff", "diff"), ("stat", "t" if statistic == "t" else "stat"),
                          ("p_fwe", "p_fwe"), ("p_uncorrected", "p_uncorrected")):
            path = ws.compare_file(g, run, f"_{name}.nii.gz", versus=versus)
            save_image(Volume(res[key], aff, channels=(name,)), path)
            gsum[name] = ws.relative(path)
        gsum.update({
            "min_p_fwe": float(res["p_fwe"].min()),
            "significant_voxels": int((res["p_fwe"] <= alpha).sum()),
            "min_p_fwe_ungated": float(raw_p.min()),
            "significant_voxels_ungated": int((raw_p <= alpha).sum()),
            "alpha": alpha, "statistic": statistic,
            "max_stat": float(np.abs(res["stat"]).max()),
        })
        write_json(ws.compare_file(g, run, versus=versus), gsum)
        summary["groups"][g] = gsum
        reporter.update("permutations", 1, 1, group=g)
    return summary


def gap_gate(gaps: Sequence[float], sigmas: Sequence[float | None], interval: float,
             alpha: float = 0.05, tables: Sequence[dict | None] | None = None
             ) -> dict[str, Any]:
    """Do more subjects lie outside their own ``interval`` (corrected age +- z sigma, z from
    each prediction's interval multipliers ``tables`` where the model has them) than the
    ``1 - interval`` chance gives? The one-sided binomial p of the count, and ``open`` when
    ``p <= alpha``. Without a sigma for every subject the gate cannot be judged (``p`` None,
    ``open`` True: the voxels are tested alone, and ``reason`` says so)."""
    from scipy.stats import binom

    cls = gap_classes(gaps, interval=interval, sigmas=list(sigmas), tables=tables)
    judged = [c for c in cls if c is not None]
    out: dict[str, Any] = {"interval": interval, "n": len(judged),
                           "outside": sum(c != "aligned" for c in judged),
                           "above": sum(c == "accelerated" for c in judged),
                           "below": sum(c == "decelerated" for c in judged),
                           "expected": round((1.0 - interval) * len(judged), 2)}
    if len(judged) < len(cls) or not judged:
        out.update({"p": None, "open": True,
                    "reason": f"{len(cls) - len(judged)} subject(s) without a sigma: the gate "
                              "was not applied"})
        return out
    p = float(binom.sf(out["outside"] - 1, len(judged), 1.0 - interval))
    out.update({"p": p, "open": p <= alpha})
    out["reason"] = (f"{out['outside']} of {len(judged)} subjects outside their own "
                     f"{100 * interval:g} % interval ({out['above']} above, {out['below']} "
                     f"below; chance {out['expected']:g}): p = {p:.2g}"
                     + ("" if out["open"] else
                        "; no more than chance, so the difference is what choosing subjects "
                        "by their gap gives (where the model reads age) and no voxel counts "
                        "as significant"))
    return out
