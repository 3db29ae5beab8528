"""``bodyage synth``: generate the synthetic neck-to-knee Dixon cohort into a workspace."""

from __future__ import annotations

import time
from collections import Counter


def register(sub) -> None:
    p = sub.add_parser(
        "synth", help="generate the synthetic whole-body Dixon cohort into a workspace",
        description="Generate synthetic neck-to-knee Dixon subjects (water, fat, organ labels, "
                    "age-effect mask, ground truth) into WORKSPACE and register them in its "
                    "cohort index. Resumable: subjects already written are skipped.")
    p.add_argument("workspace", metavar="WORKSPACE", help="workspace folder (created if missing)")
    p.add_argument("--n", type=int, default=200, help="number of subjects (default 200)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--start", type=int, default=0,
                   help="index of the first subject (to extend or split a cohort)")
    p.add_argument("--grid", default="default",
                   help="default (4.464x4.464x6 mm), full (2.232x2.232x3 mm, UK Biobank) or a "
                        "spacing in mm like 6,6,8")
    p.add_argument("--effects", default=None,
                   help="age-effect strengths, e.g. spine=1,back_muscle=0.5,liver=1; "
                        "'only:heart,knee' (just these organs age); 'none'. Effects: spine, "
                        "back_muscle, thigh_muscle, aorta, heart, knee, liver (off by default)")
    p.add_argument("--acquisition", default=None, metavar="NAME=RATE[@STRENGTH],...",
                   help="acquisition degradations, each hitting RATE (0-1) of the subjects: "
                        "noise (@noise SD multiple, default 2), ghost (@amplitude, 0.15), bias "
                        "(@log-field SD, 0.3), swap (fat/water in one station), truncate (@mm "
                        "cut off knees or neck, 60), shift (@mm, one station in-plane, 4); "
                        "e.g. noise=0.3@2,ghost=0.2,swap=0.05; 'typical' for UK Biobank-like "
                        "rates. Off by default; recorded in truth.json and cohort.sqlite")
    p.add_argument("--accelerate", default=None, metavar="ORGAN=+YEARS@FRACTION,...",
                   help="organ-specific accelerated ageing: FRACTION (0-1) of the subjects have "
                        "ORGAN (an effect name) aged YEARS more (negative: less) than the rest "
                        "of their body, e.g. heart=+10@0.15. Off by default; recorded in "
                        "truth.json and cohort.sqlite")
    p.add_argument("--gap-sd", type=float, default=None, metavar="YEARS",
                   help="SD of the whole-body biological-age gap (default 2.5 years); 0: none, "
                        "so planted organ ageing (--accelerate) is the only ageing that differs "
                        "between subjects of one age")
    p.add_argument("--natural", action="store_true",
                   help="draw sex and BMI freely instead of balancing sex x BMI group")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate subjects that exist / change the settings of a workspace")
    p.add_argument("--no-register", action="store_true",
                   help="write the files and participants.csv only, not the cohort index")
    p.add_argument("--wait", action="store_true", dest="wait_lock",
                   help="if another run holds the workspace, wait for it instead of refusing")
    p.set_defaults(func=run)


def run(args) -> int:
    from bodyage_core.errors import ConfigError
    from bodyage_core.progress import TerminalProgress
    from bodyage_core.synth.acceleration import Acceleration
    from bodyage_core.synth.acquisition import Acquisition
    from bodyage_core.synth.cohort import generate_cohort
    from bodyage_core.synth.effects import AgeEffects
    from bodyage_core.synth.params import sample_subject
    from bodyage_core.synth.phantom import SynthGrid

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    effects = AgeEffects.parse(args.effects)
    acq = Acquisition.parse(args.acquisition)
    acc = Acceleration.parse(args.accelerate)
    grid = SynthGrid.resolve(args.grid)
    t0 = time.perf_counter()
    ids = generate_cohort(args.workspace, args.n, seed=args.seed, grid=grid, effects=effects,
                          reporter=TerminalProgress(), overwrite=args.overwrite,
                          start=args.start, balanced=not args.natural,
                          register=not args.no_register, acquisition=acq, accelerate=acc,
                          gap_sd=args.gap_sd)
    dt = time.perf_counter() - t0
    params = [sample_subject(args.seed, args.start + i, balanced=not args.natural,
                             acquisition=acq, accelerate=acc, gap_sd=args.gap_sd)
              for i in range(len(ids))]
    ages = [p.age for p in params]
    groups = Counter(f"{p.sex}_{p.bmi_group}" for p in params)
    sx, sy, sz = grid.spacing
    nz, ny, nx = grid.shape
    print(f"synthetic cohort: {len(ids)} subjects in {args.workspace} ({dt:.1f} s)")
    print(f"  grid      {nx} x {ny} x {nz} voxels at {sx:g} x {sy:g} x {sz:g} mm (x, y, z)")
    print(f"  ages      {min(ages):.1f} - {max(ages):.1f} (mean {sum(ages) / len(ages):.1f})")
    print("  groups    " + ", ".join(f"{k} {v}" for k, v in sorted(groups.items())))
    on = [f"{n}={s:g}" for n, s in effects.to_dict().items() if s > 0]
    print(f"  effects   {', '.join(on) if on else 'none'}")
    if acq:
        hit = Counter(k for p in params for k in (p.acquisition or {}))
        print(f"  acquisition {acq.to_text()}: "
              + (", ".join(f"{k} {v}" for k, v in hit.items()) or "no subject hit"))
    if acc:
        hit = Counter(k for p in params for k in (p.acceleration or {}))
        print(f"  accelerate  {acc.to_text()}: "
              + (", ".join(f"{k} {v} subject(s)" for k, v in hit.items()) or "no subject chosen"))
    if args.gap_sd is not None:
        print(f"  gap SD    {args.gap_sd:g} years (whole-body biological-age gap)")
    print(f"  ids       {ids[0]} .. {ids[-1]}")
    if not args.no_register:
        print("  registered in cohort.sqlite; images: water, fat, labels, age_mask")
    return 0
