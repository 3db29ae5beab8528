"""Training and inference throughput (subjects per second) of the age networks on this machine.

3D ResNet-18 and the 2.5D ResNet50 / VGG16-bn at the default grid (4.464 x 4.464 x 6 mm,
185 x 87 x 112) and the full UK Biobank grid (2.232 x 2.232 x 3 mm, 370 x 174 x 224) — the 2.5D
networks always see 2 x 256 x 256 projection images, whatever grid they were projected from —
for one model and an ensemble of 5 (members run one after the other: the ensemble figure is
5 x one model's time, or measured by running 5 models with ``--measure-ensembles``). Writes ``bench/results/models_speed.json``.

    .venv/bin/python bench/bench_models_speed.py [--device cpu|cuda] [--width 64] [--quick]

Published reference points: 3D 0.286 s/subject inference on an A40 (Starck); 2.5D 0.024 s
(Langner); 30,000 subjects in < 10 min with a 2.5D ensemble on an RTX 2080 Ti.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bodyage_core.atomic import write_json  # noqa: E402
from bodyage_core.inference.device import autocast as _autocast  # noqa: E402
from bodyage_core.inference.device import prepare_model as _prepare_model  # noqa: E402
from bodyage_core.inference.device import to_device as _to_device  # noqa: E402
from bodyage_core.models import build_model  # noqa: E402
from bodyage_core.training.losses import get_loss  # noqa: E402

GRIDS = {"default": (185, 87, 112), "full": (370, 174, 224)}
REFERENCE_S_PER_SUBJECT = {"resnet3d": 0.286, "resnet2d": 0.024, "vgg2d": 0.024}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def measure(arch: str, shape: tuple, batch: int, dev: torch.device, width: int, members: int,
            train: bool, reps: int, amp: bool = True) -> dict:
    models = []
    for k in range(members):
        torch.manual_seed(k)
        cfg = {"arch": arch, "width": width, "in_channels": 2}
        if arch == "resnet2d":
            cfg["depth"] = 50
        models.append(_prepare_model(build_model(cfg), dev))
    x = _to_device(torch.rand(batch, 2, *shape), dev)
    y = torch.zeros(batch, device=dev)
    loss_fn = get_loss("meanvar")
    opts = [torch.optim.Adam(m.parameters(), 1e-4) for m in models]

    def step():
        for m, opt in zip(models, opts):
            if train:
                m.train()
                with _autocast(dev, amp):
                    out = m(x)
                loss_fn(out.float(), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                m.eval()
                with torch.no_grad(), _autocast(dev, amp):
                    m(x)
        _sync(dev)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    dt = (time.perf_counter() - t0) / reps
    return {"arch": arch, "input": [2, *shape], "batch": batch, "members": members,
            "mode": "train" if train else "infer", "seconds_per_batch": dt,
            "seconds_per_subject": dt / batch, "subjects_per_second": batch / dt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="default grid only, one repetition")
    ap.add_argument("--measure-ensembles", action="store_true",
                    help="run 5 models for the ensemble figures (default: 5 x one model)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "models_speed.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cpu = dev.type == "cpu"
    cases = []
    grids = ["default"] if args.quick else ["default", "full"]
    ens = (1, 5) if args.measure_ensembles else (1,)
    for grid in grids:
        shape3 = GRIDS[grid]
        b3 = 1 if cpu or grid == "full" else 4
        for members in ens:
            for train in (False, True):
                if cpu and grid == "full" and train:
                    continue  # minutes per step on a shared CPU
                cases.append(("resnet3d", shape3, b3, members, train, grid))
    for arch in ("resnet2d", "vgg2d"):
        for members in ens:
            for train in (False, True):
                cases.append((arch, (256, 256), 8 if cpu else 64, members, train, "any"))
    results = []
    for arch, shape, batch, members, train, grid in cases:
        reps = 1 if (args.quick or cpu) else 3
        t0 = time.perf_counter()
        try:
            r = measure(arch, shape, batch, dev, args.width, members, train, reps)
        except Exception as exc:  # noqa: BLE001 - out of memory etc.: record and go on
            r = {"arch": arch, "input": [2, *shape], "members": members,
                 "mode": "train" if train else "infer", "error": f"{type(exc).__name__}: {exc}"}
        r["grid"] = grid
        ref = REFERENCE_S_PER_SUBJECT[arch]
        if "seconds_per_subject" in r and not train:
            r["reference_s_per_subject"] = ref * members
            r["speed_vs_reference"] = ref * members / r["seconds_per_subject"]
        results.append(r)
        if not args.measure_ensembles and "seconds_per_subject" in r:
            # members run one after the other: an ensemble of 5 takes 5 times as long
            d = dict(r, members=5, derived_from_single_model=True,
                     seconds_per_batch=r["seconds_per_batch"] * 5,
                     seconds_per_subject=r["seconds_per_subject"] * 5,
                     subjects_per_second=r["subjects_per_second"] / 5)
            if "speed_vs_reference" in r:
                d["reference_s_per_subject"] = ref * 5
                d["speed_vs_reference"] = r["speed_vs_reference"]
            results.append(d)
        sps = r.get("subjects_per_second")
        print(f"{arch:9s} {grid:8s} {r['mode']:5s} members={members} batch={batch:3d} "
              f"{f'{sps:.3f} subj/s' if sps else r.get('error', '')}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    out = {"device": str(dev), "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "width": args.width,
           "amp": dev.type == "cuda", "results": results,
           "note": "2.5D networks take 2 x 256 x 256 projections at any grid; ensembles run "
                   "their members one after the other; CPU is shared with other work"}
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
