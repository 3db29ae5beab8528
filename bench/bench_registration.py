"""Registration / atlas benchmark at the default synthetic grid (4.464 x 4.464 x 6 mm,
112 x 87 x 185 voxels, water + fat) on the CPU threads given (default 2).

* registration seconds per subject (wall and CPU) with a stage breakdown, organ-label Dice
  before (identity) and after, for ``--pairs`` subjects registered to one reference;
* atlas build time for ``--atlas-n`` subjects of one group (``--iterations`` template
  iterations + the final pass), extrapolated to 100 subjects (linear in subjects);
* organ-label Dice in atlas space: every member's warped labels against the atlas's
  majority-vote labels (mean over organs, per organ).

Uses ``bodyage_core.synth`` (generate_subject) when present, else the small registration
phantom on a similar grid. Writes ``bench/results/registration.json``.

    .venv/bin/python bench/bench_registration.py [--pairs 3] [--atlas-n 10] [--iterations 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, print_table, write_results  # noqa: E402

from bodyage_core.atlas import AtlasConfig, AtlasMember, build_atlas  # noqa: E402
from bodyage_core.registration import (  # noqa: E402
    RegistrationConfig,
    label_dice,
    register,
)
from bodyage_core.volume import Volume  # noqa: E402


def make_subjects(n: int, seed: int = 0):
    """``n`` subjects of one group (F, healthy BMI): ``(id, Volume water+fat, labels, names)``."""
    try:
        from bodyage_core.synth.anatomy import LABELS
        from bodyage_core.synth.params import sample_subject
        from bodyage_core.synth.phantom import generate_subject
    except ImportError:
        generate_subject = None
    out = []
    if generate_subject is not None:
        names = {k: v for k, v in LABELS.items() if k}
        for i in range(n):
            s = generate_subject(sample_subject(seed, 6 * i))  # index % 6 == 0: F healthy
            vol = Volume(np.concatenate([s.water.data, s.fat.data]), s.water.affine,
                         channels=("water", "fat"))
            out.append((s.subject_id, vol, np.asarray(s.labels.data[0]), names))
        return out, "bodyage_core.synth.generate_subject (default grid)"
    from bodyage_core.registration.phantom import LABELS as PL
    from bodyage_core.registration.phantom import (
        apply_transform,
        make_phantom,
        smooth_deformation,
    )

    for i in range(n):
        v, lab = make_phantom((185, 87, 112), (4.464, 4.464, 6.0), size=0.9 + 0.03 * (i % 7),
                              fat=0.8 + 0.1 * (i % 5), seed=i)
        v, lab = apply_transform(v, lab, smooth_deformation(v, 6.0, seed=100 + i))
        out.append((f"p{i:03d}", v, lab, PL))
    return out, "registration.phantom (fallback, synth not available)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--atlas-n", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", default="demons")
    ap.add_argument("--out", default="registration", help="results name (bench/results/NAME.json)")
    args = ap.parse_args(argv)

    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    cfg = RegistrationConfig(method=args.method, threads=args.threads)
    n_needed = max(args.pairs + 1, args.atlas_n)
    t0 = time.perf_counter()
    subjects, source = make_subjects(n_needed)
    gen_s = time.perf_counter() - t0
    names = subjects[0][3]
    load0 = os.getloadavg()

    # -- pairwise registration timing ---------------------------------------------------------
    rows = []
    ref_id, ref, ref_lab, _ = subjects[0]
    for sid, vol, lab, _ in subjects[1:args.pairs + 1]:
        before = label_dice(lab, ref_lab) if lab.shape == ref_lab.shape else {}
        w0, c0 = time.perf_counter(), time.process_time()
        res = register(vol, ref, cfg, moving_labels=lab, fixed_labels=ref_lab)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        q = res.quality
        rows.append({"case": f"{sid}->{ref_id}", "status": q["status"], "wall_s": wall,
                     "cpu_s": cpu, **{f"{k}_s": v for k, v in q.get("timings", {}).items()},
                     "dice_labels_before": float(np.mean(list(before.values())))
                     if before else None,
                     "dice_labels_after": q.get("dice_labels_mean"),
                     "dice_body": q.get("dice_body")})
        print(f"  registered {sid}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
              f"Dice {rows[-1]['dice_labels_before']} -> {q.get('dice_labels_mean')}",
              flush=True)
    print_table(rows, ["case", "status", "wall_s", "cpu_s", "affine_s", "deformable_s",
                       "inverse_s", "quality_s", "dice_labels_before", "dice_labels_after"])
    reg_wall = float(np.median([r["wall_s"] for r in rows])) if rows else None
    reg_cpu = float(np.median([r["cpu_s"] for r in rows])) if rows else None

    # -- atlas build ---------------------------------------------------------------------------
    members = [AtlasMember(sid, volume=vol, labels=lab)
               for sid, vol, lab, _ in subjects[:args.atlas_n]]
    with tempfile.TemporaryDirectory() as tmp:
        w0, c0 = time.perf_counter(), time.process_time()
        summary = build_atlas(members, Path(tmp) / "atlas", "F_healthy",
                              AtlasConfig(iterations=args.iterations, registration=cfg))
        atlas_wall, atlas_cpu = time.perf_counter() - w0, time.process_time() - c0
    q = summary["quality"]
    ok = [s for s, v in q.items() if v.get("status") == "ok"]
    per_organ: dict[str, list[float]] = {}
    for s in ok:
        for k, v in (q[s].get("dice_labels") or {}).items():
            per_organ.setdefault(names.get(int(k), k), []).append(v)
    organ_rows = sorted(({"organ": k, "dice_mean": float(np.mean(v)), "n": len(v)}
                         for k, v in per_organ.items()), key=lambda r: -r["dice_mean"])
    n_reg = args.atlas_n * (args.iterations + 1)
    per_subject_pass = atlas_wall / n_reg
    extrap_100 = per_subject_pass * 100 * (args.iterations + 1)
    atlas = {
        "n_subjects": args.atlas_n, "iterations": args.iterations, "registrations": n_reg,
        "wall_s": atlas_wall, "cpu_s": atlas_cpu, "failed": len(q) - len(ok),
        "seconds_per_registration": per_subject_pass,
        "extrapolated_100_subjects_s": extrap_100,
        "cpu_s_per_registration": atlas_cpu / n_reg,
        "extrapolated_100_subjects_cpu_s": atlas_cpu / n_reg * 100 * (args.iterations + 1),
        "extrapolation": "linear in subjects: wall / (n * (iterations + 1)) * 100 * "
                         "(iterations + 1)" if args.atlas_n != 100 else "measured",
        "dice_labels_atlas_mean": summary.get("dice_labels_mean"),
        "dice_body_atlas_mean": summary.get("dice_body_mean"),
    }
    print()
    print_table([atlas])
    print()
    print_table(organ_rows)
    load1 = os.getloadavg()
    extra = {
        "source": source, "generate_s": gen_s, "threads": args.threads, "method": args.method,
        "grid_shape_zyx": list(ref.shape), "grid_spacing_xyz": list(ref.spacing),
        "registration_wall_s_median": reg_wall, "registration_cpu_s_median": reg_cpu,
        "atlas": atlas, "dice_per_organ": organ_rows, "loadavg_start": load0,
        "loadavg_end": load1, "peak_rss_mb": peak_rss_mb(),
        "config": cfg.to_dict(),
        "note": "wall times measured on a shared 2-core machine (see loadavg); CPU seconds are "
                "the process's user+system time over all its threads",
    }
    out = write_results(args.out, rows, extra)
    print(f"\nregistration per subject: median {reg_wall:.1f} s wall, {reg_cpu:.1f} s CPU "
          f"({args.threads} threads; load average {load0[0]:.1f} -> {load1[0]:.1f})")
    print(f"atlas of {args.atlas_n} subjects, {args.iterations} iteration(s): "
          f"{atlas_wall:.0f} s wall, {atlas_cpu:.0f} s CPU; 100 subjects extrapolated: "
          f"{extrap_100 / 60:.0f} min wall here, "
          f"{atlas['extrapolated_100_subjects_cpu_s'] / 60:.0f} min CPU")
    print(f"organ-label Dice in atlas space: {atlas['dice_labels_atlas_mean']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
