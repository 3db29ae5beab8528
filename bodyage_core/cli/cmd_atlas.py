"""``bodyage atlas build|maps|install``: group templates and population importance maps.

``atlas maps`` first warps every registered subject's map into its atlas as per-subject tasks
(bodyage_core.cluster; ``--scheduler`` picks where), then averages them in this process."""

from __future__ import annotations

import sys

from bodyage_core.errors import ConfigError


def register(sub) -> None:
    from bodyage_core.cli.cmd_register import add_registration_engine_arguments
    from bodyage_core.cluster.cli import add_engine_arguments

    p = sub.add_parser("atlas", help="build group atlases and population maps",
                       description="Build group atlases (templates by iterative registration) "
                                   "and population importance maps in atlas space.")
    asub = p.add_subparsers(dest="atlas_command", metavar="ACTION")
    b = asub.add_parser("build", help="build one atlas per group (resumable)")
    b.add_argument("workspace")
    b.add_argument("--groups", default="sex,bmi_group",
                   help="comma-separated grouping columns (default sex,bmi_group; any subject "
                        "column or metadata key)")
    b.add_argument("--group", action="append", help="only these group names (repeatable)")
    b.add_argument("--iterations", type=int, default=2, help="template iterations (default 2)")
    b.add_argument("--min-subjects", type=int, default=3,
                   help="smallest group that gets an atlas (default 3)")
    b.add_argument("--method", choices=("demons", "bspline", "affine"), help="deformable method")
    b.add_argument("--config", help="JSON file of registration options")
    add_registration_engine_arguments(b)
    b.add_argument("--wait", action="store_true", dest="wait_lock",
                   help="if another run holds the workspace, wait for it instead of refusing")
    b.set_defaults(func=run_build)
    m = asub.add_parser("maps", help="population maps of a run's Grad-CAMs per group")
    m.add_argument("workspace")
    m.add_argument("--run", required=True,
                   help="model run (its predictions; its gradcam_<run> maps unless --kind)")
    m.add_argument("--group", action="append", help="only these atlas groups")
    m.add_argument("--kind", default=None,
                   help="subject map kind to average (default gradcam_<run>; e.g. "
                        "gradxinput_signed_vs_atlas_<run> from `bodyage explain --method "
                        "gradxinput --signed --reference atlas`, the map the age trend is best "
                        "read from)")
    m.add_argument("--age-bands", default="60,70", help="age band edges (default 60,70)")
    m.add_argument("--trend-p", type=float, default=0.01,
                   help="keep the age trend where its voxel-wise p-value (uncorrected) is "
                        "below this (default 0.01; 1 keeps every voxel)")
    m.add_argument("--trend-correction", choices=("none", "tfce"), default="none",
                   help="none: voxel-wise p, uncorrected (exploratory, default); tfce: "
                        "family-wise error of the threshold-free cluster enhanced map by "
                        "permuting the ages (about a minute per 100 permutations and group "
                        "on 2 cores)")
    m.add_argument("--trend-permutations", type=int, default=1000,
                   help="permutations for --trend-correction tfce (default 1000)")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="gap (years) for accelerated/decelerated")
    g.add_argument("--quantile", type=float, help="top/bottom gap quantile (default 0.25)")
    g.add_argument("--interval", type=float,
                   help="coverage, e.g. 0.95: accelerated / decelerated when the chronological "
                        "age lies below / above the subject's own interval")
    add_engine_arguments(m)
    m.set_defaults(func=run_maps)
    i = asub.add_parser("install", help="install a shipped atlas (one per group) into the "
                                        "workspace, to register subjects to it directly")
    i.add_argument("workspace")
    i.add_argument("name", nargs="?", default="wholebody-synthetic",
                   help="shipped atlas (default wholebody-synthetic: one per sex, made from "
                        "40 synthetic subjects at 8.9 x 8.9 x 12 mm)")
    i.add_argument("--overwrite", action="store_true")
    i.set_defaults(func=run_install)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _edges(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"--age-bands must be numbers separated by commas, got {text!r}") \
            from exc


def _kind_tag(kind: str | None, run: str) -> str:
    """Output name of a map kind: the run for its Grad-CAMs (the published maps), else the
    kind itself (``population_gradxinput_signed_<run>_...``)."""
    return run if kind in (None, f"gradcam_{run}") else kind


def run_install(args) -> int:
    from bodyage_core.atlas.shipped import install_atlas
    from bodyage_core.cohort import Workspace

    with Workspace.open(args.workspace) as ws:
        groups = install_atlas(ws, args.name, overwrite=args.overwrite)
    print(f"installed atlas {args.name} for group(s) {', '.join(groups)} in "
          f"{args.workspace}/atlases; register the subjects with `bodyage register "
          f"{args.workspace}`")
    return 0


def run_build(args) -> int:
    from bodyage_core.atlas.workspace import build_atlases
    from bodyage_core.cli.cmd_register import registration_config
    from bodyage_core.cohort import Workspace
    from bodyage_core.progress import TerminalProgress

    by = [c.strip() for c in args.groups.split(",") if c.strip()]
    if args.iterations < 0:
        raise ConfigError("--iterations must be >= 0")
    if args.min_subjects < 2:
        raise ConfigError("--min-subjects must be >= 2")
    ws = Workspace.open(args.workspace)
    try:
        out = build_atlases(ws, by=by, groups=args.group, iterations=args.iterations,
                            min_subjects=args.min_subjects,
                            registration=registration_config(args),
                            reporter=TerminalProgress())
    finally:
        ws.close()
    errors = 0
    print(f"{'group':<20} {'members':>8} {'failed':>7} {'Dice body':>10} {'Dice labels':>12}"
          f" {'seconds':>8}")
    for g, s in out.items():
        if "error" in s:
            errors += 1
            print(f"{g:<20} ERROR: {s['error']}")
            continue
        dl = s.get("dice_labels_mean")
        dls = f"{dl:.3f}" if dl is not None else "-"
        print(f"{g:<20} {len(s['members']):>8} {len(s['failed']):>7} "
              f"{s['dice_body_mean']:>10.3f} {dls:>12} "
              f"{s['seconds']:>8.0f}")
        for sid, reasons in s["failed"].items():
            print(f"  failed {sid}: {'; '.join(reasons)}")
    return 2 if errors else 0


def run_maps(args) -> int:
    from bodyage_core.atlas.cohort_maps import build_population_maps
    from bodyage_core.cluster import WarpStage
    from bodyage_core.cluster.cli import run_stages
    from bodyage_core.cohort import Workspace
    from bodyage_core.progress import TerminalProgress

    edges = _edges(args.age_bands)
    if not 0 < args.trend_p <= 1:
        raise ConfigError(f"--trend-p must be in (0, 1], got {args.trend_p}")
    if args.trend_correction == "tfce" and args.trend_permutations < 1:
        raise ConfigError(f"--trend-permutations must be >= 1, got {args.trend_permutations}")
    ws = Workspace.open(args.workspace)
    try:
        kinds = [args.kind, "age_mask"] if args.kind else None
        res = run_stages(ws, args, [WarpStage(args.run, groups=args.group, kinds=kinds)],
                         after=lambda: build_population_maps(
                             ws, args.run, groups=args.group, age_edges=edges,
                             gap_threshold=args.threshold, gap_quantile=args.quantile,
                             gap_interval=args.interval,
                             reporter=TerminalProgress(), kind=args.kind,
                             tag=_kind_tag(args.kind, args.run),
                             trend_p=args.trend_p if args.trend_p < 1 else None,
                             trend_correction=args.trend_correction,
                             trend_permutations=args.trend_permutations))
    finally:
        ws.close()
    if isinstance(res, int):
        return res
    warp, out = res
    for line in warp.lines():
        print(line)
    for g, s in out["groups"].items():
        if "error" in s:
            print(f"{g}: {s['error']}")
            continue
        subs = ", ".join(f"{k} n={v['n']}" for k, v in s["subgroups"].items())
        print(f"{g}: {subs}")
        if s.get("top_regions"):
            print("  " + ", ".join(f"{r} {100 * v:.0f}%" for r, v in s["top_regions"]))
        allg = s["subgroups"].get("all", {})
        if "importance_in_age_mask" in allg:
            print(f"  importance inside age-effect regions {allg['importance_in_age_mask']:.2f} "
                  f"(uniform map {allg['uniform_baseline']:.2f})")
        tr = s["subgroups"].get("age_trend")
        if tr:
            p = tr["p_threshold"]
            fwe = ", FWE by TFCE" if tr.get("correction") == "tfce" else ""
            head = f"  age trend (n={tr['n']}, p < {p if p is not None else 1}{fwe}): "
            if not tr.get("voxels_kept"):
                print(head + "no voxel passes")
                continue
            print(head + ", ".join(f"{r} {100 * v:.0f}%"
                                   for r, v in s.get("top_regions_age_trend", [])))
            if "importance_in_age_mask" in tr:
                print(f"  age trend inside age-effect regions {tr['importance_in_age_mask']:.2f}")
        elif s.get("age_trend_error"):
            print(f"  no age trend: {s['age_trend_error']}")
    if out.get("regions"):
        print(f"region table: {out['regions']['csv']}")
    if out["groups"] and all("error" in s for s in out["groups"].values()):
        kinds = _map_kinds(args.workspace)
        print(f"no population maps written: no group has {out['kind']} maps"
              + (f" (map kinds in this workspace: {', '.join(kinds)})" if kinds else "")
              + "; make them with `bodyage explain`", file=sys.stderr)
        return 2
    return 0


def _map_kinds(workspace) -> list[str]:
    """The explanation map kinds the workspace's subjects have (for a hint)."""
    from bodyage_core.cohort import Workspace

    with Workspace.open(workspace) as ws:
        kinds = {k for s in ws.db.subjects() for k in s.images}
    return sorted(k for k in kinds if k.startswith(("gradcam", "gradxinput", "occlusion")))
