"""GPU throughput of the cohort pipeline at the full UK Biobank grid, on synthetic data made on
the spot: ensemble prediction from the input cache, Grad-CAM, a training epoch, FLOPs and the
share of the device's peak reached.

    .venv/bin/python bench/bench_gpu.py [--device auto|cpu|cuda] [--smoke] [--compile]
                                        [--subjects 64] [--batch 16] [--width 32] [--out PATH]

What each figure is (all through the product's own code):

* **predict**: ``subjects`` phantom inputs (water + fat, 2 x 370 x 174 x 224) are written to a
  :class:`~bodyage_core.preprocess.cache.PreprocessCache` (float16, as a workspace's cache), then
  read back and predicted by a 5-member ensemble with
  :func:`~bodyage_core.inference.subject.predict_subjects` (the cohort path of ``bodyage predict
  WORKSPACE``: the next batches read by background threads into pinned memory while the current
  one runs, all members on each on-device batch, bfloat16 autocast and ``channels_last_3d`` on
  CUDA). ``read_subjects_per_s``: the cache read alone (one thread); ``compute_subjects_per_s``:
  the ensemble alone on a batch already on the device; ``pipeline_subjects_per_s``: both
  together, the second of two passes over the subjects (the first, also recorded, page-locks
  the host buffers that torch then keeps for the rest of a cohort run). The files were just
  written, so reads come from the page cache: a cold disk is slower (the figure to compare is
  its read bandwidth against ``bytes_per_subject`` x subjects/s).
* **gradcam**: :func:`~bodyage_core.explain.gradcam.gradcam` of the 5 members at ``layer3`` for
  a batch of subjects on the device (one backward per member for the batch), and for one
  subject at a time, as ``bodyage explain`` does per subject task (the ensemble's mean map
  only, summed on the device: ``members=False``).
* **train**: a few optimiser steps of :class:`~bodyage_core.training.trainer.Trainer` (the
  3D defaults of :mod:`bodyage_core.training.presets`: mean-variance loss, shifts and intensity
  jitter on the device, bfloat16 autocast on CUDA) on float16 inputs held in memory, timed after
  a warm-up step; ``seconds_per_epoch_1536`` = seconds per step x ceil(1536 / batch).
* **flops**: :class:`torch.utils.flop_counter.FlopCounterMode` on the network (meta tensors: no
  compute), per subject for a forward pass and for a training step (forward + backward); the
  achieved rate is FLOPs x subjects/s, and its ratio to the device's dense bfloat16 peak (a table
  of datasheet figures by device name; none for a CPU).

``--smoke``: a 2 x 24 x 20 x 16 grid, width 4, a handful of subjects: checks on any CPU in
seconds that the script works (the test suite runs it). Writes
``bench/results/gpu_<device>.json`` (``gpu_<device>_smoke.json`` with ``--smoke``).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine  # noqa: E402

from bodyage_core.atomic import write_json  # noqa: E402

FULL = {"shape_zyx": (370, 174, 224), "spacing_zyx": (3.0, 2.232, 2.232)}
SMOKE = {"shape_zyx": (24, 20, 16), "spacing_zyx": (46.25, 19.4, 31.2)}
EPOCH_SUBJECTS = 1536
MEMBERS = 5

#: Dense (no sparsity) bfloat16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s, matched
#: against torch.cuda.get_device_name in this order (the first pattern that matches).
PEAK_BF16_TFLOPS = (
    (r"H200 NVL", 835.0), (r"H200", 989.0), (r"GH200", 989.0),
    (r"H100 NVL", 835.0), (r"H100 PCIe", 756.0), (r"H100", 989.0), (r"H800", 989.0),
    (r"B200", 2250.0), (r"A100", 312.0), (r"A800", 312.0), (r"L40S", 362.0),
    (r"L40\b", 181.0), (r"A40\b", 149.7), (r"A10G", 70.0), (r"A10\b", 125.0),
    (r"\bL4\b", 121.0), (r"RTX 6000 Ada", 364.0), (r"A6000", 154.8),
)


def peak_tflops(name: str | None) -> float | None:
    if not name:
        return None
    for pattern, value in PEAK_BF16_TFLOPS:
        if re.search(pattern, name):
            return value
    return None


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def phantom(shape_czyx, seed: int) -> np.ndarray:
    """A body-like float16 input: water inside an elliptic body, fat in its shell, texture,
    noise; foreground mean 1 per channel (the cache's normalised inputs)."""
    rng = np.random.default_rng(seed)
    _c, z, y, x = shape_czyx
    zz = np.linspace(-1, 1, z, dtype=np.float32)[:, None, None]
    yy = np.linspace(-1, 1, y, dtype=np.float32)[None, :, None]
    xx = np.linspace(-1, 1, x, dtype=np.float32)[None, None, :]
    r2 = (yy / np.float32(0.6 + 0.05 * rng.random())) ** 2 + \
        (xx / np.float32(0.8 + 0.05 * rng.random())) ** 2
    body = (r2 < 1) & (np.abs(zz) < 0.95)
    shell = body & (r2 > 0.7)
    tex = (np.sin(3 * zz + np.float32(rng.random() * 6)) * np.cos(4 * xx) * 0.2).astype(
        np.float32)
    noise = rng.standard_normal((z, y, x), dtype=np.float32) * np.float32(0.05)
    water = np.where(body & ~shell, 1 + tex + noise, np.float32(0.2) * body)
    fat = np.where(shell, 1 + tex * 0.5 + noise, np.float32(0.1) * body)
    out = np.stack([water, fat]).astype(np.float32)
    out *= body
    for ch in out:
        ch /= ch[body].mean()
    return out.astype(np.float16)


def make_run(folder: Path, spec, width: int, members: int):
    """A complete run folder with ``members`` randomly initialised networks (what the timing
    needs: the product's loading and prediction code, not trained weights)."""
    from bodyage_core.inference.weights import save_torch_file
    from bodyage_core.models import build_model
    from bodyage_core.models.ensemble import MEMBER_FORMAT, RUN_FORMAT

    mcfg = {"arch": "resnet3d", "width": width, "in_channels": 2, "depth": 18, "hidden": 256,
            "dropout": 0.0, "norm": "batch", "weights": None}
    info = []
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(members):
        torch.manual_seed(k)
        net = build_model(mcfg)
        save_torch_file({"format": MEMBER_FORMAT, "model_config": mcfg,
                         "state_dict": net.state_dict(), "input": spec.to_dict()},
                        folder / f"member_{k}.pt")
        info.append({"file": f"member_{k}.pt", "fold": None, "seed": k, "target_mean": 60.0,
                     "target_std": 8.0})
    write_json(folder / "config.json", {
        "format": RUN_FORMAT, "status": "complete", "run": "bench", "members": info,
        "model": mcfg, "input": spec.to_dict(), "train": {"loss": "meanvar"}, "tta": []})
    write_json(folder / "bias_correction.json", {"global": {"a": 1.0, "b": 0.0, "n": 0}})
    write_json(folder / "calibration.json", {"global": {"scale": 1.0, "floor": 0.0}})
    return mcfg


def count_flops(mcfg: dict, shape_czyx) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from bodyage_core.models import build_model

    net = build_model(mcfg).to("meta")
    x = torch.empty(1, *shape_czyx, device="meta")
    net.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(x)
    fwd = fc.get_total_flops()
    net.train()
    x2 = torch.empty(2, *shape_czyx, device="meta")
    with FlopCounterMode(display=False) as fc:
        net(x2).sum().backward()
    return {"forward_per_subject": int(fwd), "train_step_per_subject": int(fc.get_total_flops()
                                                                         // 2),
            "note": "FlopCounterMode: a multiply-add counts 2; convolutions and matrix products "
                    "only (normalisation, activations and pooling are not counted)"}


def bench_predict(run, cache_root: Path, spec, n: int, batch: int, dev, reps: int) -> dict:
    from bodyage_core.inference.device import to_device
    from bodyage_core.inference.subject import CohortInput, predict_subjects
    from bodyage_core.preprocess.cache import PreprocessCache

    shape = spec.array_shape
    distinct = [phantom(shape, s) for s in range(min(4, n))]
    cache = PreprocessCache(cache_root, "bench", dtype="float16")
    src = cache_root / "src"
    src.mkdir(parents=True, exist_ok=True)
    ids = [f"s{i:05d}" for i in range(n)]
    t0 = time.perf_counter()
    for i, sid in enumerate(ids):
        p = src / sid
        p.write_bytes(b"x")
        cache.store(sid, [p], distinct[i % len(distinct)])
    write_s = time.perf_counter() - t0
    nbytes = (cache.dir / f"{ids[0]}.npy").stat().st_size

    def loader(sid):
        return lambda: cache.lookup(sid, [src / sid], shape)

    def loader_into(sid):
        return lambda row: cache.lookup(sid, [src / sid], shape, out=row)

    t0 = time.perf_counter()
    for sid in ids:
        assert loader(sid)() is not None
    read_s = time.perf_counter() - t0

    x = to_device(np.stack([distinct[i % len(distinct)] for i in range(batch)]), dev)
    run.member_outputs(x, batch_size=batch)               # warm-up: cuDNN autotuning, compile
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        run.member_outputs(x, batch_size=batch)
    sync(dev)
    compute_s = (time.perf_counter() - t0) / (reps * batch)

    inputs = [CohortInput(sid, loader(sid), 50.0, load_into=loader_into(sid)) for sid in ids]
    predict_subjects(run, inputs[:batch], batch_size=batch, check=False)   # warm-up
    sync(dev)
    # twice: the first pass also page-locks a host buffer for each batch in flight (~0.9 GB at
    # batch 16 on this grid), which torch's host allocator then keeps; a cohort run, one long
    # process, pays that once, so the second pass is the rate it sees
    passes = []
    for _ in range(2):
        t0 = time.perf_counter()
        out = predict_subjects(run, inputs, batch_size=batch, check=False)
        sync(dev)
        passes.append(time.perf_counter() - t0)
        bad = [o for o in out if isinstance(o, Exception)]
        if bad:
            raise bad[0]
    first_s, pipe_s = passes
    return {"subjects": n, "batch": batch, "members": run.n_members, "bytes_per_subject": nbytes,
            "cache_dtype": "float16", "cache_write_s": write_s,
            "read_subjects_per_s": n / read_s, "read_gb_per_s": n * nbytes / read_s / 1e9,
            "compute_subjects_per_s": 1.0 / compute_s,
            "pipeline_subjects_per_s": n / pipe_s, "pipeline_seconds": pipe_s,
            "pipeline_first_pass_subjects_per_s": n / first_s,
            "bound": "input (read)" if n / read_s < 1.0 / compute_s else "compute"}


def bench_gradcam(run, spec, batch: int, dev, reps: int) -> dict:
    from bodyage_core.explain.gradcam import gradcam
    from bodyage_core.inference.device import to_device

    nets = run.load_members()
    shape = spec.array_shape
    xs = to_device(np.stack([phantom(shape, 100 + i) for i in range(batch)]), dev)
    out = {}
    for b in sorted({1, batch}):
        # as `bodyage explain` calls it: the ensemble's mean map, without each member's
        gradcam(nets, xs[:b], layer="layer3", variant="relu", members=False)      # warm-up
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(reps):
            gradcam(nets, xs[:b], layer="layer3", variant="relu", members=False)
        sync(dev)
        dt = (time.perf_counter() - t0) / reps
        out[f"batch_{b}"] = {"seconds_per_call": dt, "subjects_per_s": b / dt}
    best = max(out.values(), key=lambda r: r["subjects_per_s"])
    return {"members": len(nets), "layer": "layer3", **out,
            "subjects_per_s": best["subjects_per_s"],
            "note": "the ensemble's mean map copied back to the host (N x the input grid, "
                    "float32), as `bodyage explain` without --members"}


def bench_train(mcfg: dict, spec, batch: int, steps: int, dev) -> dict:
    from bodyage_core.models import build_model
    from bodyage_core.training.data import AgeDataset, records_from_arrays
    from bodyage_core.training.presets import train_config
    from bodyage_core.training.trainer import Trainer

    shape = spec.array_shape
    n = max(2 * batch, 4)
    base = [phantom(shape, 200 + i) for i in range(min(n, 4))]
    arrays = [base[i % len(base)] for i in range(n)]
    ages = np.linspace(45, 80, n)
    ds = AgeDataset(records_from_arrays(arrays, ages))
    cfg = train_config("3d", device=dev.type, batch_size=batch, epochs=1, precise_bn=0)
    torch.manual_seed(0)
    trainer = Trainer(build_model(mcfg), ds, np.arange(n), [], cfg, handlers=[])
    trainer.model.train()
    gen = torch.Generator().manual_seed(0)
    idx = np.arange(n)

    def step(i: int) -> None:
        sel = idx[(i * batch) % n:(i * batch) % n + batch]
        if len(sel) < batch:
            sel = idx[:batch]
        trainer._train_step(sel, gen)
        trainer._optimizer_step()

    step(0)                                               # warm-up (autotuning, allocations)
    sync(dev)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    sync(dev)
    dt = (time.perf_counter() - t0) / steps
    return {"batch": batch, "steps_timed": steps, "seconds_per_step": dt,
            "subjects_per_s": batch / dt, "amp": bool(cfg.amp and dev.type == "cuda"),
            "seconds_per_epoch_1536": dt * math.ceil(EPOCH_SUBJECTS / batch),
            "augment": cfg.augment.to_dict()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny grid and network: checks the script (seconds on a CPU)")
    ap.add_argument("--subjects", type=int, default=None,
                    help="subjects to predict from the cache (default 64 on a GPU, 4 on a "
                         "CPU, 6 smoke)")
    ap.add_argument("--batch", type=int, default=None,
                    help="subjects per batch on the device (default 16 GPU, 1 CPU, 2 smoke)")
    ap.add_argument("--train-batch", type=int, default=None,
                    help="training batch (default the 3D preset's 8 on a GPU, 2 on a CPU)")
    ap.add_argument("--train-steps", type=int, default=None,
                    help="timed training steps after a warm-up (default 10 GPU, 1 CPU)")
    ap.add_argument("--width", type=int, default=None,
                    help="ResNet width (default the 3D preset's for the device: 32 GPU, 8 CPU; "
                         "4 smoke)")
    ap.add_argument("--compile", action="store_true",
                    help="predict through torch.compile (BODYAGE_COMPILE); the compile time "
                         "is in the warm-up")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="result JSON (default "
                                                "bench/results/gpu_<device>[_smoke].json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from bodyage_core.inference.device import resolve_device
    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.preprocess.spec import InputSpec
    from bodyage_core.training.presets import defaults_for

    dev = resolve_device(args.device)
    gpu = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if gpu else "cpu"
    grid = SMOKE if args.smoke else FULL
    spec = InputSpec(channels=("water", "fat"), mode="3d", spacing_zyx=grid["spacing_zyx"],
                     shape_zyx=grid["shape_zyx"])
    width = args.width or (4 if args.smoke else defaults_for("3d").width(dev.type))
    n = args.subjects or (6 if args.smoke else 64 if gpu else 4)
    batch = args.batch or (2 if args.smoke else 16 if gpu else 1)
    tbatch = args.train_batch or (2 if args.smoke or not gpu else
                                  int(defaults_for("3d").train["batch_size"]))
    tsteps = args.train_steps or (1 if args.smoke or not gpu else 10)
    reps = 3 if gpu else 1
    t_start = time.perf_counter()
    res: dict = {"benchmark": "gpu", "smoke": bool(args.smoke), "machine": machine(),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                 "device": {"type": dev.type, "name": name,
                            "peak_bf16_dense_tflops": peak_tflops(name) if gpu else None},
                 "grid": {"shape_zyx": list(spec.shape_zyx), "channels": 2,
                          "spacing_zyx": list(spec.spacing_zyx)},
                 "width": width, "compile": bool(args.compile), "torch": torch.__version__}
    if gpu:
        props = torch.cuda.get_device_properties(dev)
        res["device"].update(memory_gb=props.total_memory / 1e9,
                             multiprocessors=props.multi_processor_count)
    with tempfile.TemporaryDirectory(prefix="bodyage-bench-gpu-") as tmp:
        tmp = Path(tmp)
        mcfg = make_run(tmp / "run", spec, width, MEMBERS)
        res["flops"] = count_flops(mcfg, spec.array_shape)
        run = AgeRun(tmp / "run", device=str(dev), compile=args.compile)
        run.load_members()
        print(f"device {name}, grid {spec.shape_zyx} x 2, width {width}, "
              f"{MEMBERS} members, batch {batch}", flush=True)
        res["predict"] = bench_predict(run, tmp / "cache", spec, n, batch, dev, reps)
        p = res["predict"]
        print(f"predict: read {p['read_subjects_per_s']:.1f} subj/s "
              f"({p['read_gb_per_s']:.2f} GB/s), compute {p['compute_subjects_per_s']:.2f}, "
              f"pipeline {p['pipeline_subjects_per_s']:.2f} subj/s ({p['bound']}-bound; "
              f"first pass {p['pipeline_first_pass_subjects_per_s']:.2f})",
              flush=True)
        res["gradcam"] = bench_gradcam(run, spec, min(batch, 8), dev, reps)
        print(f"gradcam: {res['gradcam']['subjects_per_s']:.2f} subj/s", flush=True)
        del run
        if gpu:
            torch.cuda.empty_cache()
        res["train"] = bench_train(mcfg, spec, tbatch, tsteps, dev)
        t = res["train"]
        print(f"train: {t['seconds_per_step']:.3f} s/step (batch {tbatch}), "
              f"{t['seconds_per_epoch_1536']:.0f} s per epoch of {EPOCH_SUBJECTS}", flush=True)
    f = res["flops"]
    views = 1
    rate = {
        "predict_compute": f["forward_per_subject"] * MEMBERS * views
        * res["predict"]["compute_subjects_per_s"],
        "predict_pipeline": f["forward_per_subject"] * MEMBERS * views
        * res["predict"]["pipeline_subjects_per_s"],
        "train": f["train_step_per_subject"] * res["train"]["subjects_per_s"],
    }
    peak = res["device"]["peak_bf16_dense_tflops"]
    res["achieved_tflops"] = {k: v / 1e12 for k, v in rate.items()}
    res["fraction_of_peak"] = ({k: v / 1e12 / peak for k, v in rate.items()} if peak
                               else None)
    if gpu:
        res["device"]["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
    res["seconds"] = time.perf_counter() - t_start
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / \
        f"gpu_{slug(name)}{'_smoke' if args.smoke else ''}.json"
    write_json(out, res)
    for k, v in res["achieved_tflops"].items():
        frac = res["fraction_of_peak"][k] if res["fraction_of_peak"] else None
        print(f"{k}: {v:.3g} TFLOP/s" + (f" = {100 * frac:.1f} % of {peak:g}" if frac else ""))
    print(f"wrote {out} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
