"""``bodyage compare accelerated decelerated|aligned WORKSPACE --run RUN``: voxel-wise
permutation test of accelerated vs decelerated (or aligned) agers' maps (Grad-CAM, or --kind) in
atlas space (FWE by max-statistic), behind the gate of
:func:`~bodyage_core.atlas.cohort_maps.gap_gate` (more subjects outside their own interval than
chance)."""

from __future__ import annotations

from bodyage_core.cohort.paths import COMPARE_VERSUS
from bodyage_core.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare accelerated with decelerated agers in atlas space",
        description="Difference of population maps (accelerated minus decelerated, or aligned, "
                    "agers, by bias-corrected gap) with a voxel-wise permutation test; "
                    "family-wise error by the max-statistic. The voxels count only when more "
                    "of the group's subjects lie outside their own 95 % interval than chance "
                    "(--gate). Writes NIfTI maps under atlases/<group>/.")
    p.add_argument("group_a", choices=("accelerated",), help="accelerated")
    p.add_argument("group_b", choices=COMPARE_VERSUS,
                   help="decelerated, or aligned (the subjects in neither group)")
    p.add_argument("workspace")
    p.add_argument("--run", required=True)
    p.add_argument("--group", action="append", help="only these atlas groups")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="|gap| in years (gap >= Y accelerated, "
                                                   "gap <= -Y decelerated)")
    g.add_argument("--quantile", type=float, help="top/bottom fraction (default 0.25)")
    g.add_argument("--interval", type=float,
                   help="coverage, e.g. 0.95: accelerated when the chronological age lies below "
                        "the subject's own interval, decelerated when above (only gaps the "
                        "model's uncertainty does not explain)")
    p.add_argument("--kind", help="subject map kind to compare (default gradcam_<run>; e.g. "
                                  "gradxinput_signed_vs_atlas_<run> from `bodyage explain "
                                  "--method gradxinput --signed --reference atlas`)")
    p.add_argument("--permutations", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--gate", type=float, default=0.95,
                   help="test the voxels only when more subjects than chance lie outside their "
                        "own interval of this coverage (default 0.95; 0 tests the voxels alone, "
                        "which in a cohort without true acceleration still finds where the "
                        "model reads age)")
    p.add_argument("--wait", action="store_true", dest="wait_lock",
                   help="if another run holds the workspace, wait for it instead of refusing")
    p.set_defaults(func=run)


def run(args) -> int:
    from bodyage_core.atlas.cohort_maps import compare_gap_groups
    from bodyage_core.cohort import Workspace
    from bodyage_core.progress import TerminalProgress

    if args.permutations < 1:
        raise ConfigError("--permutations must be >= 1")
    if not 0 <= args.gate < 1:
        raise ConfigError(f"--gate must be a coverage in [0, 1), e.g. 0.95; got {args.gate}")
    ws = Workspace.open(args.workspace)
    try:
        out = compare_gap_groups(ws, args.run, groups=args.group, threshold=args.threshold,
                                 quantile=args.quantile, permutations=args.permutations,
                                 seed=args.seed, alpha=args.alpha, reporter=TerminalProgress(),
                                 kind=args.kind, interval=args.interval,
                                 versus=args.group_b, gate=args.gate or None)
    finally:
        ws.close()
    print(out["rule"])
    b = args.group_b
    for g, s in out["groups"].items():
        gate = f"\n  gate: {s['gate']['reason']}" if s.get("gate") else ""
        if "error" in s:
            print(f"{g}: {s['error']}{gate}")
            continue
        ungated = ("" if s["significant_voxels_ungated"] == s["significant_voxels"] else
                   f" ({s['significant_voxels_ungated']} without the gate)")
        print(f"{g} ({s['kind']}): {s['n_accelerated']} accelerated vs {len(s[b])} {b}; "
              f"max |t| {s['max_stat']:.2f}, min p(FWE) {s['min_p_fwe']:.3f}, "
              f"{s['significant_voxels']} voxel(s) at p(FWE) <= {s['alpha']}{ungated}; "
              f"maps: {s['diff']}{gate}")
    return 0
