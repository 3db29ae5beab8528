"""``bodyage register WORKSPACE [--group G] [--subject ID]``: register subjects to their built
group atlas (affine + deformable), resumable; transforms go to ``subjects/<id>/atlas_<group>/``.

Each subject is one task (bodyage_core.cluster); ``--scheduler`` picks where the tasks run."""

from __future__ import annotations

import json

from bodyage_core.errors import ConfigError


def register(sub) -> None:
    from bodyage_core.cluster.cli import add_engine_arguments

    p = sub.add_parser(
        "register", help="register subjects to their group atlas",
        description="Register subjects (water+fat) to the template of their built atlas group: "
                    "affine then deformable. Finished subjects are skipped (resume); transforms "
                    "and quality go to subjects/<id>/atlas_<group>/.")
    p.add_argument("workspace", help="workspace folder")
    p.add_argument("--group", help="only this atlas group (e.g. F_healthy)")
    p.add_argument("--subject", help="only this subject id")
    p.add_argument("--method", choices=("demons", "bspline", "affine"),
                   help="deformable method (default: the one the atlas was built with)")
    p.add_argument("--force", action="store_true", help="re-register even if done")
    p.add_argument("--config", help="JSON file of registration options (RegistrationConfig)")
    add_registration_engine_arguments(p)
    add_engine_arguments(p)
    p.set_defaults(func=run)


def add_registration_engine_arguments(p) -> None:
    """``--engine``, ``--torch-preset``, ``--device``: which registration engine runs (shared
    by ``register`` and ``atlas build``)."""
    from bodyage_core.registration.register import DEFAULT_ENGINE, ENGINES

    p.add_argument("--engine", choices=ENGINES,
                   help=f"registration engine (default {DEFAULT_ENGINE}): sitk = SimpleITK "
                        "demons / B-spline; torch = diffeomorphic stationary-velocity B-spline "
                        "(LNCC on water and fat, bending energy), CPU or CUDA")
    p.add_argument("--torch-preset", choices=("fast", "paper"),
                   help="torch engine preset (default fast: tuned for the CPU; paper: the "
                        "paper's deepali registration, 3 levels, 4 x 4 x 8 control stride at "
                        "2.232 x 2.232 x 3 mm)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="where the torch engine runs (default auto: CUDA when available)")


def registration_config(args):
    from bodyage_core.registration import RegistrationConfig

    opts = {}
    if getattr(args, "config", None):
        try:
            with open(args.config) as fh:
                opts = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read registration options ({exc})", path=args.config,
                              hint="give a JSON object of RegistrationConfig fields") from exc
    if getattr(args, "method", None):
        opts["method"] = args.method
    for arg, key in (("engine", "engine"), ("torch_preset", "torch_preset"),
                     ("device", "torch_device")):
        if getattr(args, arg, None):
            opts[key] = getattr(args, arg)
    if (opts.get("torch_preset") or opts.get("torch_device")) and "engine" not in opts:
        opts["engine"] = "torch"   # a torch option says which engine is meant
    return RegistrationConfig.from_dict(opts) if opts else None


def run(args) -> int:
    from bodyage_core.cluster import RegisterStage
    from bodyage_core.cluster.cli import run_stages
    from bodyage_core.cohort import Workspace

    stage = RegisterStage(group=args.group, subject=args.subject,
                          registration=registration_config(args), force=args.force)
    with Workspace.open(args.workspace) as ws:
        out = run_stages(ws, args, [stage])
    if isinstance(out, int):
        return out
    summary = out[0]
    results = stage.results
    n_ok = sum(r.get("status") == "ok" for r in results)
    reused = sum(bool(r.get("reused")) for r in results)
    engines = sorted({r.get("engine", "sitk") for r in results if not r.get("reused")})
    if engines:
        print(f"registration engine: {', '.join(engines)}")
    print(f"registered {len(results)} subject(s): {n_ok} ok, {len(results) - n_ok} failed "
          f"registration, {reused} reused; {len(summary.skipped)} already registered, "
          f"{len(summary.failed)} task(s) failed [{summary.scheduler}, {summary.workers} "
          "worker(s)]")
    for r in results:
        if r.get("status") != "ok":
            print(f"  FAILED {r['subject_id']} ({r['group']}): {'; '.join(r.get('reasons', []))}")
    for sid, msg in summary.failed.items():
        print(f"  FAILED {sid}: {msg}")
    return 0 if n_ok == len(results) and not summary.failed else 1
