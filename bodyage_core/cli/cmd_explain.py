"""``bodyage explain``: per-subject Grad-CAM / occlusion maps of a trained run, in subject space.

Each subject is one task (bodyage_core.cluster); ``--scheduler`` picks where the tasks run."""

from __future__ import annotations

from bodyage_core.errors import ConfigError


def register(sub) -> None:
    from bodyage_core.cluster.cli import add_engine_arguments

    p = sub.add_parser(
        "explain", help="per-subject Grad-CAM or occlusion maps of a trained run",
        description="Write subjects/<id>/gradcam_<run>.nii.gz (or gradcam_signed_<run>, "
                    "occlusion_<run>) for every subject: the ensemble-mean map resampled to the "
                    "subject's original image grid, raw values, with that image's affine. "
                    "Resumable: existing maps are skipped unless --overwrite.")
    p.add_argument("workspace", help="workspace folder")
    p.add_argument("--run", required=True, help="trained run under models/<run>/")
    p.add_argument("--subject", action="append", dest="subjects", metavar="ID",
                   help="explain only this subject (repeatable; default: all)")
    p.add_argument("--method", choices=("gradcam", "occlusion", "gradxinput"), default="gradcam",
                   help="gradcam (default), occlusion, or gradxinput (gradient x input at the "
                        "input's resolution)")
    p.add_argument("--layer", default="layer3",
                   help="Grad-CAM layer (default layer3; ResNet stages: stem, layer1..layer4)")
    p.add_argument("--signed", action="store_true",
                   help="signed Grad-CAM / gradient x input (+ evidence for older, - for "
                        "younger) instead of ReLU")
    p.add_argument("--abs", action="store_true",
                   help="gradxinput only: the magnitude (either direction)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--patch", type=int, default=8,
                   help="occlusion patch size in model-grid voxels (default 8)")
    p.add_argument("--stride", type=int, default=None,
                   help="occlusion stride in voxels (default half the patch)")
    p.add_argument("--baseline", default="zero",
                   help="occlusion baseline: zero (default), mean, or a number")
    p.add_argument("--reference", choices=("zero", "atlas"), default="zero",
                   help="gradient x input relative to: zero (default), or the template of the "
                        "atlas the subject is registered to, warped onto it (run `bodyage "
                        "register` first): voxels that look like the population get no "
                        "evidence, so the population age trend stays in the ageing organs; "
                        "the maps are named gradxinput_<variant>_vs_atlas_<run>")
    p.add_argument("--reference-group", metavar="GROUP",
                   help="the atlas group of the reference, for subjects registered to several")
    p.add_argument("--members", action="store_true",
                   help="also write each ensemble member's map (<kind>_member<k>.nii.gz)")
    p.add_argument("--overwrite", action="store_true", help="recompute existing maps")
    p.add_argument("--sanity-check", action="store_true",
                   help="also run the model-randomisation check (Adebayo et al. 2018) on the "
                        "first subject; writes reports/explain_sanity_<run>.json")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def _baseline(text: str) -> str | float:
    if text in ("zero", "mean"):
        return text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--baseline must be zero, mean or a number, got {text!r}") from None


def run(args) -> int:
    from bodyage_core.cluster import ExplainStage
    from bodyage_core.cluster.cli import run_stages
    from bodyage_core.cohort import Workspace

    if args.signed and args.method == "occlusion":
        raise ConfigError("--signed applies to --method gradcam or gradxinput",
                          hint="occlusion maps are always signed")
    if args.abs and args.method != "gradxinput":
        raise ConfigError("--abs applies to --method gradxinput only")
    if args.abs and args.signed:
        raise ConfigError("choose one of --signed and --abs")
    variant = "signed" if args.signed else "abs" if args.abs else "relu"
    stage = ExplainStage(
        args.run, subject_ids=args.subjects, method=args.method, layer=args.layer,
        variant=variant, device=args.device,
        overwrite=args.overwrite, occlusion_patch=args.patch, occlusion_stride=args.stride,
        occlusion_baseline=_baseline(args.baseline), save_members=args.members,
        reference=args.reference, reference_group=args.reference_group)
    with Workspace.open(args.workspace) as ws:
        out = run_stages(ws, args, [stage])
    if isinstance(out, int):
        return out
    summary = out[0]
    print(f"{stage.kind}: {len(summary.done)} written, {len(summary.skipped)} skipped "
          f"(map exists; --overwrite to redo), {len(summary.failed)} failed "
          f"in {summary.seconds:.1f} s [{summary.scheduler}, {summary.workers} worker(s)]")
    for sid, msg in summary.failed.items():
        print(f"  failed {sid}: {msg}")
    if stage.no_prediction:
        ids = ", ".join(stage.no_prediction[:5]) + (" ..." if len(stage.no_prediction) > 5
                                                    else "")
        print(f"  note: {len(stage.no_prediction)} subject(s) have no stored prediction of run "
              f"{args.run!r} ({ids}); the maps do not need one — run `bodyage predict` to get "
              "their ages")
    if args.sanity_check:
        from bodyage_core.explain.pipeline import sanity_report

        rep = sanity_report(args.workspace, args.run,
                            subject_id=args.subjects[0] if args.subjects else None,
                            layer=args.layer, variant="signed" if args.signed else "relu",
                            device=args.device)
        print(f"sanity check ({rep['subject_id']}): {rep['message']}")
        if rep["flagged"]:
            return 1
    return 1 if summary.failed else 0
