"""``bodyage train``: train an age-model ensemble (k-fold cross-validated) on a workspace."""

from __future__ import annotations

import argparse
import json
import math

from bodyage_core.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train an age-model ensemble with k-fold cross-validation",
        description="Train K ensemble members per fold into WORKSPACE/models/RUN/. Every subject "
                    "gets an out-of-fold prediction (stored in cohort.sqlite, split 'oof'); "
                    "bias correction and variance calibration are fitted on validation "
                    "subjects only.")
    p.add_argument("workspace", help="workspace folder (has cohort.sqlite)")
    p.add_argument("--run", required=True, help="run name (folder under models/)")
    p.add_argument("--model", default="resnet3d",
                   choices=("resnet3d", "sfcn3d", "resnet2d", "vgg2d"))  # models.factory.ARCHS
    p.add_argument("--loss", default=None, choices=("l1", "mse", "meanvar"),
                   help="default meanvar (each member predicts its own sigma)")
    p.add_argument("--members", type=int, default=1, help="ensemble members per fold")
    p.add_argument("--folds", type=int, default=5, help="k-fold CV (1: one held-out test split)")
    p.add_argument("--epochs", type=int, default=None, help="default 30")
    p.add_argument("--batch-size", type=int, default=None, help="default 8")
    p.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, default=None, help="default 1e-3")
    p.add_argument("--warmup", type=float, default=None, metavar="EPOCHS",
                   help="linear learning-rate warm-up (default 1 epoch)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--scheduler", default=None, choices=("plateau", "step", "none"),
                   help="default: step (lr / 10 for the last sixth of the epochs)")
    p.add_argument("--early-stopping", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs without a better validation MAE "
                        "(default 0: off)")
    p.add_argument("--keep", default=None, choices=("best", "last"),
                   help="weights each member ends with: its last epoch (default: the "
                        "validation predictions, which bias correction and calibration are "
                        "fitted on, stay unbiased) or its best validation epoch")
    p.add_argument("--bias-correction", default=None, choices=("auto", "full", "loo"),
                   help="auto (default): the full inverse of predicted = a * age + b fitted on "
                        "validation subjects (the age gap then does not depend on age) unless "
                        "its leave-one-out validation MAE is over 5 %% above the raw "
                        "prediction's, then the loo shrink; train says which it chose. full: "
                        "always the inverse (below a slope of 0.5, which would more than "
                        "double the noise, the loo correction instead); loo: shrunk towards "
                        "the raw prediction by leave-one-out MAE (lower MAE, but young "
                        "subjects keep positive and old ones negative gaps)")
    p.add_argument("--width", type=int, default=None,
                   help="base channel width (default 8 on a CPU, 32 on a GPU)")
    p.add_argument("--depth", type=int, default=None, help="2D ResNet depth (18/34/50)")
    p.add_argument("--norm", default=None, choices=("batch", "group", "instance"),
                   help="3D ResNet normalisation (default batch; group is steadier with the "
                        "small batches of CPU training)")
    p.add_argument("--weights", default=None, help="pretrained 2D weights (state-dict file)")
    p.add_argument("--channels", nargs="+", default=None,
                   help="image kinds as channels (default: water fat, else t1)")
    p.add_argument("--grid", default=None, choices=("default", "full"),
                   help="named model grid (half / full UK Biobank resolution)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="grid spacing in mm (default: twice the image's voxel size)")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    p.add_argument("--init", default=None, metavar="MODEL|RUN",
                   help="fine-tune: start every member from a model (a name from `bodyage "
                        "models list`, a model folder, or a run of this workspace), with its "
                        "input spec; default then 5 epochs at lr 1e-4")
    p.add_argument("--align", default="none", choices=("none", "template"),
                   help="template: affine-align every image to a template built from the "
                        "cohort's own images (no ages) before the model sees it; the template "
                        "is kept with the run and its exported model (brains: 5-fold MAE on "
                        "IXI ~8 -> ~6.3 y). none (default): the body is centred")
    p.add_argument("--tta", default=None, choices=("none", "flip"),
                   help="test-time augmentation: flip averages each member over the image and "
                        "its left-right mirror (validation fits included). Default: flip for "
                        "aligned inputs (left-right symmetric anatomy), else none")
    p.add_argument("--image-size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                   help="2.5D projection image size")
    p.add_argument("--split", default="stratified", choices=("stratified", "random", "site"))
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="share of each training fold kept for validation (early stopping, "
                        "calibration, bias correction; default 0.15)")
    p.add_argument("--test-fraction", type=float, default=0.15,
                   help="with --folds 1: share of the cohort held out as the test set "
                        "(default 0.15)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-amp", action="store_true",
                   help="train in float32 on CUDA too (default: bfloat16 autocast on CUDA; "
                        "CPU always trains in float32)")
    p.add_argument("--distributed", nargs="?", const="members", default=None,
                   choices=("members", "ddp"),
                   help="train under torchrun (one process per GPU, or CPU processes with "
                        "gloo): 'members' (default) deals the ensemble members out to the "
                        "ranks round-robin; 'ddp' trains each member on all ranks with "
                        "DistributedDataParallel. Launch: torchrun --nproc_per_node N -m "
                        "bodyage_core.cli.main -- train ... --distributed (or torchrun "
                        "--no-python bodyage -- train ...)")
    p.add_argument("--cache-size", default=None, metavar="SIZE",
                   help="size limit of the model-grid input cache WORKSPACE/cache/ (e.g. "
                        "20GB, 500MB; 0 = no disk cache; 'none' = no limit); remembered for "
                        "later runs and predictions")
    p.add_argument("--exclude", nargs="+", default=None, metavar="ID",
                   help="leave these subjects out of this run (on top of those flagged with "
                        "`bodyage exclude`); a subject whose image cannot be loaded is left out "
                        "and reported anyway")
    p.add_argument("--wait", action="store_true", dest="wait_lock",
                   help="if another run holds the workspace, wait for it instead of refusing")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted run")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing run (the old one stays until the new completes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from bodyage_core.cohort import Workspace
    from bodyage_core.progress import NullProgress, TerminalProgress
    from bodyage_core.training.distributed import (
        check_members_mode,
        init_distributed,
        torchrun_env,
    )

    check_options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    ws = Workspace.open(args.workspace)
    if args.exclude:
        ws.db.subjects(args.exclude)            # unknown ids: one clear line
        ws.train_exclude = set(args.exclude)
    limit = None
    if args.cache_size is not None:
        from bodyage_core.preprocess.cache import parse_size, set_workspace_limit

        limit = parse_size(args.cache_size)
    dist = None
    if args.distributed:
        env = torchrun_env()
        if env is not None and args.distributed == "members":   # before joining the group
            check_members_mode(int(env["WORLD_SIZE"]), max(args.folds, 1) * args.members)
        dist = init_distributed(args.distributed, args.device)
    if args.cache_size is not None and (dist is None or dist.is_main):
        set_workspace_limit(ws.root, limit)
    if dist is not None:
        dist.barrier()
    reporter = TerminalProgress() if dist is None or dist.is_main else NullProgress()
    ws.progress = reporter
    try:
        return _train(args, ws, dist, reporter)
    except ValueError as err:
        if "Expected more than 1 value per channel" not in str(err):
            raise
        # BatchNorm on a batch of one subject: too few subjects per fold for this batch size
        raise ConfigError(
            f"a training batch held a single subject, which batch normalisation cannot train "
            f"on ({ws.db.count() - len(ws.db.excluded())} subject(s) in {max(args.folds, 1)} "
            "fold(s) leave too few per fold)",
            hint="add subjects, use fewer --folds, or --norm group") from None
    finally:
        if dist is not None:
            dist.close()


def check_options(args: argparse.Namespace) -> None:
    """Numbers a run cannot train with are one clear line (argparse reads 'nan' and '-3')."""
    def finite(name, value, low=None, low_ok=True, high=None):
        if value is None:
            return
        bad = not math.isfinite(value) or (low is not None and (value < low if low_ok
                                                                  else value <= low)) \
            or (high is not None and value >= high)
        if bad:
            rng = (f" > {low:g}" if not low_ok else f" >= {low:g}") if low is not None else ""
            rng += f" and < {high:g}" if high is not None else ""
            raise ConfigError(f"--{name} must be a finite number{rng}, got {value!r}")

    finite("lr", args.lr, 0.0, low_ok=False)
    finite("warmup", args.warmup, 0.0)
    finite("weight-decay", args.weight_decay, 0.0)
    finite("val-fraction", args.val_fraction, 0.0, low_ok=False, high=1.0)
    finite("test-fraction", args.test_fraction, 0.0, low_ok=False, high=1.0)
    for name in ("epochs", "batch_size", "accumulate", "members", "folds", "threads"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if args.early_stopping is not None and args.early_stopping < 0:
        raise ConfigError(f"--early-stopping must be 0 (off) or more, got "
                          f"{args.early_stopping}")
    for name in ("spacing", "shape", "image_size"):
        v = getattr(args, name, None)
        if v is not None and not all(math.isfinite(x) and x > 0 for x in v):
            raise ConfigError(f"--{name.replace('_', '-')} must be positive numbers, got "
                              f"{' '.join(str(x) for x in v)}")


def _train(args, ws, dist, reporter) -> int:
    from bodyage_core.inference.device import resolve_device
    from bodyage_core.training.presets import defaults_for, train_config
    from bodyage_core.training.workflow import make_spec, train_workspace

    init = None
    if args.init:
        from pathlib import Path

        from bodyage_core.inference.bundle import run_source
        from bodyage_core.inference.ensemble import AgeRun

        src = Path(args.init).expanduser()
        init = AgeRun(src if src.is_dir() else run_source(ws, args.init), device="cpu")
        spec = init.spec                       # the init model's input, template included
        tta = "flip" if init.tta else "none"
        model = dict(init.model_config, weights=None)
    else:
        spec = make_spec(ws, args.model, args.channels, args.grid, args.spacing, args.shape,
                         args.image_size, align=args.align, reporter=reporter)
        tta = args.tta or ("flip" if args.align == "template" else "none")
        model = {"arch": args.model}
    defaults = defaults_for(spec.mode)
    for key in ("width", "depth", "weights", "norm"):
        if getattr(args, key) is not None and init is None:
            model[key] = getattr(args, key)
    if "width" not in model:
        model["width"] = defaults.width(resolve_device(args.device).type)
    tuned = {"epochs": 5, "lr": 1e-4, "warmup_epochs": 0} if init is not None else {}
    cfg = train_config(spec.mode, augment=not args.no_augment,
                       epochs=args.epochs or tuned.get("epochs"),
                       batch_size=args.batch_size, accumulate=args.accumulate,
                       lr=args.lr or tuned.get("lr"),
                       loss=args.loss, scheduler=args.scheduler,
                       early_stopping=args.early_stopping,
                       warmup_epochs=args.warmup if args.warmup is not None
                       else tuned.get("warmup_epochs"),
                       weight_decay=args.weight_decay, seed=args.seed, device=args.device,
                       keep=args.keep, amp=not args.no_amp,
                       bias_correction=args.bias_correction,
                       tta=["flip_x"] if tta == "flip" else [])
    if init is not None and (dist is None or dist.is_main):
        print(f"fine-tuning {init.describe()}: each member starts from one of its "
              f"{init.n_members} members, with its input spec and target scaling; "
              f"{cfg.epochs} epochs at lr {cfg.lr:g} unless set")
    if dist is None or dist.is_main:
        print(describe_choice(spec, model, cfg, defaults, args))
    res = train_workspace(ws, args.run, spec, model, cfg, args.folds, args.members, args.split,
                          args.seed, args.resume, args.overwrite, reporter, dist=dist,
                          val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                          init=init)
    if dist is not None and not dist.is_main:
        return 0
    m = res.metrics
    if dist is not None:
        print(f"trained under torchrun: {dist.world_size} rank(s), mode {dist.mode}, "
              f"backend {dist.backend or 'none'} (see {res.run_dir / 'distributed.json'})")
    print(f"run {args.run}: {len(m['members'])} member(s) in {res.run_dir}")
    print(f"out-of-fold MAE {m['raw']['mae']:.2f} y raw, {m['corrected']['mae']:.2f} y "
          f"bias-corrected (n={m['n_out_of_fold']}; r {m['corrected']['pearson_r']:.2f})")
    bias = json.loads((res.run_dir / "bias_correction.json").read_text())
    g = bias.get("global", {})
    if g.get("why") or g.get("fallback"):
        print(f"bias correction ({cfg.bias_correction}): {g.get('why') or g.get('fallback')}")
    cal = json.loads((res.run_dir / "calibration.json").read_text()).get("global", {})
    if cal.get("why"):
        print(f"uncertainty calibration: {cal['why']}")
    fallbacks = [f"fold {f}: {b['fallback']}" for f, b in bias.get("folds", {}).items()
                 if b.get("fallback")]
    if fallbacks:
        print("bias correction not inverted in full (the model tracks age weakly): "
              + "; ".join(fallbacks))
    left_out = ws.db.excluded()
    left_out.update({sid: "--exclude" for sid in ws.train_exclude})
    if left_out:
        print(f"left out {len(left_out)} excluded subject(s): "
              + ", ".join(f"{k} ({v})" for k, v in list(left_out.items())[:5])
              + (" ..." if len(left_out) > 5 else ""))
    for sid, msg in ws.input_failures.items():
        print(f"failed {sid} (left out of the run): {msg}")
    return 0


def describe_choice(spec, model, cfg, defaults, args) -> str:
    """What ``train`` is about to do, and why for every value the user did not set."""
    sp = " x ".join(f"{v:g}" for v in spec.spacing_zyx)
    sh = " x ".join(str(v) for v in spec.shape_zyx)
    lines = [f"training {args.members} member(s) x {max(args.folds, 1)} fold(s) of "
             f"{model['arch']} width {model['width']} on {list(spec.channels)}, "
             f"{spec.mode} grid {sh} voxels at {sp} mm (z, y, x)",
             f"  loss {cfg.loss}, {cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr:g} "
             f"({cfg.scheduler}), keep {cfg.keep}, bias correction {cfg.bias_correction}"
             + (", left-right test-time mirroring" if cfg.tta else "")
             + (", inputs aligned to the cohort template" if spec.align == "template" else "")]
    if any(getattr(args, k) is None for k in ("loss", "epochs", "lr", "keep", "width")):
        lines.append("  defaults (set any option to override):")
        lines += [f"    - {w}" for w in defaults.why]
    return "\n".join(lines)
