"""Registration engines side by side on the same synthetic pairs with organ labels.

Rows: bodyage's torch engine on the CPU (one subject per call, and all the pairs in one
``register_batch`` call), bodyage's SimpleITK engine (the default: affine + demons), ANTs SyN
(antspyx) when an interpreter with it is found, and the torch engine on CUDA when a GPU is
there (the ``fast`` preset one subject per call and batched, and the ``paper`` preset).

For each grid (``default``: 4.464 x 4.464 x 6 mm, 112 x 87 x 185 voxels; ``groundtruth``: the
ground-truth benchmark's 6 x 6 x 8 mm, 83 x 65 x 139) ``--pairs`` subjects of one group
(``bodyage_core.synth``, F, healthy BMI, as bench_registration.py) are registered to a reference
subject. Columns: mean organ-label Dice (the subject's labels warped onto the reference grid
against the reference's, mean over organs, then over pairs; the lowest pair's too), the folded
fraction (Jacobian determinant <= 0 inside the reference's body mask, the worst pair), wall and
CPU seconds per pair (CPU: the process's user + system time over all its threads, which is what
compares engines on a shared machine; wall depends on the load, recorded per row), peak
resident memory (and its rise over the process's size before the first timed registration),
peak CUDA memory.

Every engine runs in a child process of its own (its own peak memory and thread settings) with
``--threads`` threads (default 1), after one untimed warm-up registration on a small grid.

ANTs: antspyx pins numpy < 2.4 and scipy < 1.16, so it lives in an environment of its own
(``python -m venv E && E/bin/pip install antspyx``, or the project's ``bench`` extra);
``--ants-python`` (or ``BODYAGE_ANTS_PYTHON``) names its interpreter, else this interpreter is
used when it imports ``ants``. The images travel as .npy files; its Dice (labels warped with its
``genericLabel`` interpolation) and folding (the Jacobian of its warp field) are computed here
with bodyage's functions.

    .venv/bin/python bench/bench_registration_engines.py [--pairs 4] [--seed 0]
        [--grids default,groundtruth]
        [--engines torch,torch_batch,sitk,ants,cuda,cuda_batch,cuda_paper]
        [--threads 1] [--ants-python PATH] [--out registration_engines]

Writes ``bench/results/<out>.json``. About 8 minutes on the 2-core machine at the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GRIDS = {"default": "default", "groundtruth": (6.0, 6.0, 8.0)}
WARMUP_GRID = (14.0, 14.0, 18.0)
BODYAGE_ENGINES = ("torch", "torch_batch", "sitk", "cuda", "cuda_batch", "cuda_paper",
                   "torch_paper")
DEFAULT_ENGINES = "torch,torch_batch,sitk,ants,cuda,cuda_batch,cuda_paper"
LABEL = {"torch": "bodyage torch CPU (fast)", "torch_batch": "bodyage torch CPU, batched",
         "sitk": "bodyage SimpleITK (demons)", "ants": "ANTs SyN (antspyx)",
         "cuda": "bodyage torch CUDA (fast)", "cuda_batch": "bodyage torch CUDA, batched",
         "cuda_paper": "bodyage torch CUDA (paper)",
         "torch_paper": "bodyage torch CPU (paper)"}


def _rss_mb() -> float:
    """Resident memory now, MB (Linux /proc; the peak so far elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _grid(name: str):
    return GRIDS[name] if name in GRIDS else tuple(float(v) for v in name.split("x"))


# -- children: bodyage engines ----------------------------------------------------------------
def _subjects(grid, n: int, seed: int):
    """Reference + ``n`` subjects: ``(id, Volume water+fat, labels (Z, Y, X))``."""
    from bodyage_core.synth.params import sample_subject
    from bodyage_core.synth.phantom import generate_subject
    from bodyage_core.volume import Volume

    out = []
    for i in range(n + 1):
        s = generate_subject(sample_subject(seed, 6 * i), grid=grid)  # index % 6 == 0: F healthy
        vol = Volume(np.concatenate([s.water.data, s.fat.data]), s.water.affine,
                     channels=("water", "fat"))
        out.append((s.subject_id, vol, np.asarray(s.labels.data[0])))
    return out


def _config(engine: str, threads: int):
    from bodyage_core.registration import RegistrationConfig

    if engine == "sitk":
        return RegistrationConfig(threads=threads)
    device = "cuda" if engine.startswith("cuda") else "cpu"
    preset = "paper" if engine.endswith("_paper") else "fast"
    return RegistrationConfig(engine="torch", torch_device=device, torch_preset=preset,
                              threads=threads)


def _pair_row(sid: str, ref_id: str, q: dict, wall: float, cpu: float) -> dict:
    return {"case": f"{sid}->{ref_id}", "status": q.get("status"),
            "dice": q.get("dice_labels_mean"), "folding_fraction": q.get("folding_fraction"),
            "jacobian_min": q.get("jacobian_min"), "dice_body": q.get("dice_body"),
            "wall_s": wall, "cpu_s": cpu,
            "timings": {k: round(v, 3) for k, v in (q.get("timings") or {}).items()}}


def child_bodyage(engine: str, grid_name: str, pairs: int, seed: int, threads: int) -> dict:
    import torch

    from bodyage_core.registration import register
    from bodyage_core.registration.torch_engine import register_batch

    cfg = _config(engine, threads)
    cuda = engine.startswith("cuda")
    subjects = _subjects(_grid(grid_name), pairs, seed)
    ref_id, ref, ref_lab = subjects[0]
    # untimed warm-up on a small grid (library start-up, thread pools, first allocations)
    small = _subjects(WARMUP_GRID, 2, seed)
    if engine.endswith("_batch"):
        register_batch([small[1][1], small[2][1]], small[0][1], cfg,
                       [small[1][2], small[2][2]], small[0][2])
    else:
        register(small[1][1], small[0][1], cfg, moving_labels=small[1][2],
                 fixed_labels=small[0][2])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    rows = []
    if engine.endswith("_batch"):
        w0, c0 = time.perf_counter(), time.process_time()
        res = register_batch([s[1] for s in subjects[1:]], ref, cfg,
                             [s[2] for s in subjects[1:]], ref_lab)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        for (sid, _, _), r in zip(subjects[1:], res):
            rows.append(_pair_row(sid, ref_id, r.quality, wall / pairs, cpu / pairs))
    else:
        for sid, vol, lab in subjects[1:]:
            w0, c0 = time.perf_counter(), time.process_time()
            r = register(vol, ref, cfg, moving_labels=lab, fixed_labels=ref_lab)
            if cuda:
                torch.cuda.synchronize()
            rows.append(_pair_row(sid, ref_id, r.quality, time.perf_counter() - w0,
                                  time.process_time() - c0))
            print(f"    {engine} {sid}: Dice {rows[-1]['dice']:.4f}, "
                  f"{rows[-1]['cpu_s']:.1f} s CPU", file=sys.stderr, flush=True)
    out = {"pairs": rows, "rss_before_mb": rss0, "peak_rss_mb": _peak_mb(),
           "grid_shape_zyx": list(ref.shape), "grid_spacing_xyz": list(ref.spacing),
           "torch_threads": torch.get_num_threads(), "config": cfg.to_dict()}
    if cfg.engine == "torch":
        from bodyage_core.registration.config import config_summary

        out["torch_config"] = config_summary(cfg)
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        out["cuda_device"] = torch.cuda.get_device_name(0)
    return out


# -- children: ANTs (no bodyage import: its own environment) ---------------------------------
_FLIP = np.diag([-1.0, -1.0, 1.0])


def _ants_image(ants, a: np.ndarray, affine: np.ndarray):
    """A (Z, Y, X) array on a RAS voxel -> world affine as an ANTs (LPS, x-fastest) image."""
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    return ants.from_numpy(np.ascontiguousarray(a.transpose(2, 1, 0)).astype(np.float32),
                           origin=tuple(float(v) for v in _FLIP @ affine[:3, 3]),
                           spacing=tuple(float(v) for v in sp),
                           direction=_FLIP @ (affine[:3, :3] / sp))


def child_ants(data: Path, threads: int) -> dict:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import ants

    meta = json.loads((data / "meta.json").read_text())
    fixed = _ants_image(ants, np.load(data / "fixed.npy"), np.array(meta["fixed_affine"]))
    # warm-up: the same registration on a 4x coarser grid
    small = ants.resample_image(fixed, (4, 4, 4), use_voxels=False)
    ants.registration(small, small, type_of_transform="SyN")
    rss0 = _rss_mb()
    rows = []
    for i, case in enumerate(meta["cases"]):
        aff = np.array(case["affine"])
        moving = _ants_image(ants, np.load(data / f"moving{i}.npy"), aff)
        labels = _ants_image(ants, np.load(data / f"labels{i}.npy").astype(np.float32), aff)
        w0, c0 = time.perf_counter(), time.process_time()
        reg = ants.registration(fixed, moving, type_of_transform="SyN")
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        warped = ants.apply_transforms(fixed, labels, reg["fwdtransforms"],
                                       interpolator="genericLabel")
        np.save(data / f"warped_labels{i}.npy",
                np.rint(warped.numpy()).astype(np.int16).transpose(2, 1, 0))
        warp = [t for t in reg["fwdtransforms"] if t.endswith((".nii", ".nii.gz"))]
        if warp:
            shutil.copy(warp[0], data / f"warp{i}.nii.gz")
        rows.append({"case": case["case"], "wall_s": wall, "cpu_s": cpu})
        print(f"    ants {case['case']}: {cpu:.1f} s CPU", file=sys.stderr, flush=True)
    return {"pairs": rows, "rss_before_mb": rss0, "peak_rss_mb": _peak_mb(),
            "ants_version": getattr(ants, "__version__", None),
            "type_of_transform": "SyN (antspyx defaults: affine + SyN, mutual information)"}


def _ants_python(arg: str | None) -> str | None:
    cand = arg or os.environ.get("BODYAGE_ANTS_PYTHON")
    if cand:
        return cand if Path(cand).exists() else None
    probe = subprocess.run([sys.executable, "-c", "import ants"], capture_output=True)
    return sys.executable if probe.returncode == 0 else None


def _ants_data(grid_name: str, pairs: int, seed: int, data: Path) -> tuple:
    """Write the pairs for the ANTs child; return what the parent needs to score them."""
    from bodyage_core.registration.quality import body_mask, combined_intensity

    subjects = _subjects(_grid(grid_name), pairs, seed)
    weights = {"water": 1.0, "fat": 1.0}
    ref_id, ref, ref_lab = subjects[0]
    fixed_c = combined_intensity(ref, weights)
    np.save(data / "fixed.npy", fixed_c)
    cases = []
    for i, (sid, vol, lab) in enumerate(subjects[1:]):
        np.save(data / f"moving{i}.npy", combined_intensity(vol, weights))
        np.save(data / f"labels{i}.npy", lab.astype(np.int16))
        cases.append({"case": f"{sid}->{ref_id}", "affine": np.asarray(vol.affine).tolist()})
    (data / "meta.json").write_text(json.dumps(
        {"fixed_affine": np.asarray(ref.affine).tolist(), "cases": cases}))
    return ref, ref_lab, body_mask(fixed_c)


def _score_ants(out: dict, data: Path, ref, ref_lab, fmask) -> dict:
    import SimpleITK as sitk

    from bodyage_core.registration.quality import jacobian_stats, label_dice

    for i, row in enumerate(out["pairs"]):
        warped = np.load(data / f"warped_labels{i}.npy")
        per = label_dice(warped, ref_lab)
        row["dice"] = float(np.mean(list(per.values())))
        row["status"] = "ok"
        warp = data / f"warp{i}.nii.gz"
        if warp.exists():
            field = sitk.ReadImage(str(warp))
            if tuple(field.GetSize()[::-1]) == tuple(ref.shape):
                js = jacobian_stats(field, fmask)
                row["folding_fraction"] = js["folding_fraction"]
                row["jacobian_min"] = js["jacobian_min"]
    out["grid_shape_zyx"] = list(ref.shape)
    return out


# -- parent -----------------------------------------------------------------------------------
def _run_child(cmd: list[str], threads: int, timeout: float) -> dict | str:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[k] = str(threads)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out_path = tmp.name
    try:
        proc = subprocess.run([*cmd, "--json", out_path], env=env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=None, text=True)
        if proc.returncode != 0:
            return f"exit {proc.returncode}"
        return json.loads(Path(out_path).read_text())
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    finally:
        Path(out_path).unlink(missing_ok=True)


def _summary(grid: str, engine: str, res: dict, load: tuple) -> dict:
    pairs = res["pairs"]
    dice = [p["dice"] for p in pairs if p.get("dice") is not None]
    fold = [p["folding_fraction"] for p in pairs if p.get("folding_fraction") is not None]
    jmin = [p["jacobian_min"] for p in pairs if p.get("jacobian_min") is not None]
    return {
        "grid": grid, "engine": engine, "label": LABEL[engine], "pairs": len(pairs),
        "failed": sum(p.get("status") != "ok" for p in pairs),
        "dice_mean": float(np.mean(dice)) if dice else None,
        "dice_min": float(np.min(dice)) if dice else None,
        "folding_max": float(np.max(fold)) if fold else None,
        "jacobian_min": float(np.min(jmin)) if jmin else None,
        "wall_s": float(np.mean([p["wall_s"] for p in pairs])),
        "cpu_s": float(np.mean([p["cpu_s"] for p in pairs])),
        "peak_rss_mb": res.get("peak_rss_mb"),
        "rss_rise_mb": (res["peak_rss_mb"] - res["rss_before_mb"])
        if res.get("peak_rss_mb") is not None else None,
        "cuda_peak_mb": res.get("cuda_peak_mb"),
        "loadavg_1min": load[0],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="synthetic cohort seed")
    ap.add_argument("--grids", default="default,groundtruth",
                    help="comma-separated: default, groundtruth or a spacing like 6x6x8 (mm)")
    ap.add_argument("--engines", default=DEFAULT_ENGINES,
                    help=f"of {', '.join(BODYAGE_ENGINES + ('ants',))}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ants-python", default=None)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per engine and grid")
    ap.add_argument("--out", default="registration_engines")
    # child modes
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--grid", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        res = child_ants(Path(args.data), args.threads) if args.child == "ants" else \
            child_bodyage(args.child, args.grid, args.pairs, args.seed, args.threads)
        Path(args.json).write_text(json.dumps(res))
        return 0

    sys.path.insert(0, str(HERE))
    import torch
    from _common import print_table, write_results

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    grids = [g.strip() for g in args.grids.split(",") if g.strip()]
    skipped: dict[str, str] = {}
    if not torch.cuda.is_available():
        for e in ("cuda", "cuda_batch", "cuda_paper"):
            if e in engines:
                engines.remove(e)
                skipped[e] = "torch.cuda.is_available() is False"
    ants_py = _ants_python(args.ants_python) if "ants" in engines else None
    if "ants" in engines and ants_py is None:
        engines.remove("ants")
        skipped["ants"] = ("no interpreter with antspyx (--ants-python, BODYAGE_ANTS_PYTHON, "
                           "or this one)")
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    summaries, details = [], []
    for grid in grids:
        for engine in engines:
            print(f"== {grid}: {LABEL[engine]} ({args.pairs} pairs, {args.threads} thread(s))",
                  flush=True)
            l0 = os.getloadavg()
            if engine == "ants":
                with tempfile.TemporaryDirectory() as tmp:
                    data = Path(tmp)
                    ref, ref_lab, fmask = _ants_data(grid, args.pairs, args.seed, data)
                    res = _run_child([ants_py, str(Path(__file__).resolve()), "--child", "ants",
                                      "--data", str(data), "--threads", str(args.threads)],
                                     args.threads, args.timeout)
                    if isinstance(res, dict):
                        res = _score_ants(res, data, ref, ref_lab, fmask)
            else:
                res = _run_child([sys.executable, str(Path(__file__).resolve()), "--child",
                                  engine, "--grid", grid, "--pairs", str(args.pairs),
                                  "--seed", str(args.seed), "--threads", str(args.threads)],
                                 args.threads, args.timeout)
            l1 = os.getloadavg()
            if isinstance(res, str):
                print(f"   failed: {res}", flush=True)
                skipped[f"{grid}:{engine}"] = res
                continue
            s = _summary(grid, engine, res, l1)
            s["loadavg_start"], s["loadavg_end"] = list(l0), list(l1)
            summaries.append(s)
            details.append({"grid": grid, "engine": engine, **res})
            print(f"   Dice {s['dice_mean']:.4f} (lowest pair {s['dice_min']:.4f}), "
                  f"{s['cpu_s']:.1f} s CPU / {s['wall_s']:.1f} s wall per pair, "
                  f"load {l1[0]:.2f}", flush=True)
    # relative to the SimpleITK engine on the same grid
    for s in summaries:
        ref = next((r for r in summaries if r["grid"] == s["grid"] and r["engine"] == "sitk"),
                   None)
        if ref is not None:
            s["cpu_vs_sitk"] = s["cpu_s"] / ref["cpu_s"]
            s["dice_minus_sitk"] = s["dice_mean"] - ref["dice_mean"]
    print()
    print_table(summaries, ["grid", "label", "pairs", "failed", "dice_mean", "dice_min",
                            "folding_max", "jacobian_min", "wall_s", "cpu_s", "cpu_vs_sitk",
                            "peak_rss_mb", "rss_rise_mb", "cuda_peak_mb", "loadavg_1min"])
    for s in summaries:
        if s["engine"] == "torch" and "cpu_vs_sitk" in s:
            met = s["dice_minus_sitk"] >= 0 and (s["folding_max"] or 0) == 0 \
                and s["cpu_vs_sitk"] <= 0.5
            s["target_met"] = bool(met)
            print(f"{s['grid']}: torch fast vs SimpleITK: Dice {s['dice_minus_sitk']:+.4f}, "
                  f"CPU x{s['cpu_vs_sitk']:.2f}, folding {s['folding_max']}: target "
                  f"(Dice >= sitk, no folding, <= 1/2 CPU) {'met' if met else 'NOT met'}")
    extra = {
        "pairs": args.pairs, "seed": args.seed, "threads": args.threads, "grids": grids,
        "engines": engines, "skipped": skipped, "loadavg_start": list(load0),
        "loadavg_end": list(os.getloadavg()), "total_s": time.perf_counter() - t_start,
        "ants_python": ants_py, "details": details,
        "note": "each engine in its own child process, threads as given, after an untimed "
                "warm-up registration on a 14 x 14 x 18 mm grid; CPU seconds are the child's "
                "user + system time over all its threads (time.process_time), wall seconds "
                "depend on the machine's load (loadavg per row); peak RSS is the child's "
                "ru_maxrss, rss_rise_mb its rise over the size before the first timed "
                "registration; Dice: bodyage engines warp labels with label_linear, ANTs with "
                "genericLabel; the same label_dice either way",
    }
    out = write_results(args.out, summaries, extra)
    print(f"\nwrote {out} ({(time.perf_counter() - t_start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
