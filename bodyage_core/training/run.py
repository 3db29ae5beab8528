"""Train a whole run: k-fold cross-validation x K ensemble members into ``models/<run>/``.

``train_run`` validates the cohort, splits it, trains every member (resumable, member by member
and epoch by epoch), predicts each fold's validation and held-out subjects with that fold's
ensemble, fits variance calibration and bias correction on validation subjects only, and writes
the run directory (layout in :mod:`bodyage_core.models.ensemble`). Training happens in
``<run>.partial/``; only a complete run is renamed to ``<run>/`` (replacing an old one only with
``overwrite``), so an interrupted or failed run never leaves a half-written run behind.

Under ``torchrun`` (a :class:`~bodyage_core.training.distributed.DistContext` passed as
``dist``) the members are spread over the ranks (``members`` mode) or each is trained by all
ranks with DistributedDataParallel (``ddp`` mode); rank 0 alone writes the shared files, after
a barrier, and records who trained what in ``distributed.json``.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.atomic import write_json, write_text
from bodyage_core.errors import BodyageError, CohortError, ConfigError
from bodyage_core.inference.batch import predict_tta
from bodyage_core.inference.ensemble import TEMPLATE_NAME
from bodyage_core.models.ensemble import (
    CONFORMAL_MIN_SUBJECTS,
    CSV_LEVELS,
    MEMBER_FORMAT,
    MIN_FULL_SLOPE,
    RUN_FORMAT,
    apply_bias_correction,
    apply_variance_scale,
    centre_distance,
    combine_members,
    fit_bias_policy,
    fit_intervals,
    fit_variance_calibration,
    interval_table,
    interval_z,
)
from bodyage_core.models.factory import build_model, is_3d, model_config
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.training.data import AgeDataset, InputSpec, SubjectRecord
from bodyage_core.training.distributed import DistContext, check_members_mode
from bodyage_core.training.losses import LOGVAR_RANGE, TargetScaler
from bodyage_core.training.splits import make_folds, split_indices
from bodyage_core.training.trainer import (
    TrainConfig,
    Trainer,
    resolve_device,
    seed_everything,
)


@dataclass
class RunResult:
    run_dir: Path
    oof: list[dict[str, Any]]          # one row per cohort subject (out-of-fold prediction)
    metrics: dict[str, Any]


def validate_cohort(records: Sequence[SubjectRecord], folds: int) -> None:
    """Clear errors for cohorts no age model can be trained on."""
    if not records:
        raise CohortError("the cohort has no subjects with an age and the needed images",
                          hint="import subjects first (`bodyage import` or `bodyage synth`)")
    ages = np.array([np.nan if r.age is None else r.age for r in records], dtype=float)
    bad = [r.subject_id for r, a in zip(records, ages) if not np.isfinite(a)]
    if bad:
        raise CohortError(f"{len(bad)} subject(s) have no valid age (NaN): "
                          f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}",
                          hint="fix their ages in the cohort CSV or remove them")
    if np.ptp(ages) < 1e-6:
        raise CohortError(f"all {len(ages)} subjects have the same age ({ages[0]:g}); an age "
                          "model needs a spread of ages", hint="add subjects of other ages")
    need = max(folds, 1) * 2 if folds > 1 else 6
    if folds > 1 and len(records) < folds:
        raise CohortError(f"{len(records)} subjects are fewer than the {folds} folds asked for",
                          hint=f"use --folds {max(2, len(records) // 2)} or add subjects")
    if len(records) < need:
        raise CohortError(f"{len(records)} subjects are too few to train with "
                          f"{folds} fold(s) (need at least {need})",
                          hint="add subjects or use fewer folds")


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path:
    partial = run_dir.with_name(run_dir.name + ".partial")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if overwrite:
        if partial.exists():
            shutil.rmtree(partial)
        return partial
    if resume:
        if not partial.exists():
            if run_dir.exists():
                raise BodyageError("run is already complete; nothing to resume", path=run_dir,
                                   hint="use --overwrite to train it again")
        return partial
    if run_dir.exists():
        raise BodyageError("run folder already exists", path=run_dir,
                           hint="use --overwrite to replace it, or another --run name")
    if partial.exists():
        raise BodyageError("an interrupted run exists", path=partial,
                           hint="use --resume to continue it or --overwrite to start again")
    return partial


def train_run(records: Sequence[SubjectRecord], run_dir: str | Path, spec: InputSpec,
              model: dict[str, Any] | None = None, train: TrainConfig | None = None,
              folds: int = 5, members: int = 1, split_method: str = "stratified",
              val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
              resume: bool = False, overwrite: bool = False,
              reporter: ProgressReporter | None = None, handlers: dict | None = None,
              dataset: AgeDataset | None = None, _on_start=None,
              dist: DistContext | None = None, init=None) -> RunResult:
    """Train ``folds x members`` networks and write a complete run to ``run_dir``.

    Parameters
    ----------
    records
        The cohort (subjects with ages; their loaders return arrays of ``spec.array_shape``).
    run_dir
        ``workspace/models/<run>``; must not exist unless ``overwrite`` (or ``resume`` of an
        interrupted run).
    folds
        ``>= 2``: k-fold cross-validation, every subject gets an out-of-fold prediction.
        ``1``: one split; ``test_fraction`` of the subjects are held out as fold 0.
    members
        Ensemble members per fold (different seeds).
    handlers
        ``{event: handler}`` attached to every member's :class:`Trainer`.
    dist
        The torchrun context (:func:`~bodyage_core.training.distributed.init_distributed`);
        None trains in this process alone.
    init
        A loaded :class:`~bodyage_core.inference.ensemble.AgeRun` (a model bundle or run) to
        fine-tune: member k starts from its member ``k % n`` and keeps that member's target
        scaling; the architecture and input spec must be the init model's.
    """
    ctx = dist or DistContext()
    rep = ensure_reporter(reporter)
    run_dir = Path(run_dir)
    train = train or TrainConfig()
    mcfg = model_config(model)
    if is_3d(mcfg) != (spec.mode == "3d"):
        raise ConfigError(f"model {mcfg['arch']} does not take {spec.mode} inputs",
                          hint="use resnet3d for 3D volumes, resnet2d/vgg2d for 2.5D")
    mcfg["in_channels"] = len(spec.channels)
    if members < 1 or members > 20:
        raise ConfigError(f"--members must be between 1 and 20, got {members}")
    if folds < 1:
        raise ConfigError(f"--folds must be at least 1, got {folds}")
    resolve_device(train.device)
    validate_cohort(records, folds)
    if ctx.active and ctx.mode == "members":
        check_members_mode(ctx.world_size, max(folds, 1) * members)
    work = run_dir.with_name(run_dir.name + ".partial")
    err: BaseException | None = None
    if ctx.is_main:
        try:
            work = _check_run_dir(run_dir, resume, overwrite)
        except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then raised
            err = exc
    ctx.agree(err)

    ds = dataset if dataset is not None else AgeDataset(records)
    ages = ds.ages
    n = len(ds)
    sex, bmi, site = ds.column("sex"), ds.column("bmi_group"), ds.column("site")
    ids = ds.subject_ids
    if len(set(ids)) != n:
        raise CohortError("subject ids are not unique")
    first = ds.array(0)
    if tuple(first.shape) != spec.array_shape:
        raise BodyageError(f"subject {ids[0]}: input shape {tuple(first.shape)} differs from "
                           f"the model grid {spec.array_shape}")

    # -- splits ----------------------------------------------------------------------------
    if folds > 1:
        fold_of = make_folds(folds, ages, sex, bmi, site, split_method, seed)
    else:
        fold_of = np.full(n, -1)
        _, test = split_indices(np.arange(n), test_fraction, ages, sex, bmi, site,
                                split_method, seed)
        fold_of[test] = 0
    n_fold_models = max(folds, 1)
    plan = []
    val_sets: dict[int, np.ndarray] = {}
    for f in range(n_fold_models):
        trainval = np.where(fold_of != f)[0]
        tr, va = split_indices(trainval, val_fraction, ages, sex, bmi, site, split_method,
                               seed + 7919 * (f + 1))
        val_sets[f] = va
        for k in range(members):
            plan.append({"index": len(plan), "fold": f, "member": k,
                         "seed": int(seed + 1000 * f + k), "train": tr, "val": va})

    config = {
        "format": RUN_FORMAT, "run": run_dir.name, "status": "training",
        "model": mcfg, "train": train.to_dict(), "input": spec.to_dict(),
        "folds": folds, "members_per_fold": members, "split_method": split_method,
        "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
        "subjects": n, "created": time.time(),
        "members": [{"file": f"member_{p['index']}.pt", "fold": p["fold"], "seed": p["seed"]}
                    for p in plan],
        "tta": list(train.tta),
        "init": None if init is None else {"model": init.name, "kind": init.kind,
                                           "sha256": init.sha},
        "files": [TEMPLATE_NAME] if spec.align == "template" else [],
    }
    split_info = {
        "method": split_method,
        "folds": {ids[i]: int(fold_of[i]) for i in range(n) if fold_of[i] >= 0},
        "split": {ids[i]: ("oof" if folds > 1 else "test") for i in range(n) if fold_of[i] >= 0},
        "single_split_roles": {},
        "val": {str(f): [ids[i] for i in v] for f, v in val_sets.items()},
    }
    if folds == 1:   # who trained / validated the single-split members (not held out)
        val0 = set(val_sets[0].tolist())
        split_info["single_split_roles"] = {ids[i]: ("val" if i in val0 else "train")
                                            for i in range(n) if fold_of[i] < 0}
    if ctx.is_main:
        try:
            _start_run(work, config, train, resume, split_info, _on_start)
            if spec.align == "template":
                from bodyage_core.io import save_volume

                if spec.template is None:
                    raise ConfigError("an aligned input spec without its template",
                                      hint="make the spec with make_spec(..., align='template')")
                save_volume(spec.template, work / TEMPLATE_NAME)
        except Exception as exc:  # noqa: BLE001
            err = exc
    ctx.agree(err)   # the barrier after which every rank sees the run folder

    # -- cache inputs (fills the workspace .npy cache on first use; shared out over ranks) ----
    try:
        for i in range(ctx.rank, n, ctx.world_size):
            ds.array(i)
            rep.update("load", i + 1, n, ids[i])
    except Exception as exc:  # noqa: BLE001
        err = exc
    ctx.agree(err)

    # -- members -----------------------------------------------------------------------------
    device = resolve_device(ctx.device if ctx.active else train.device)
    done = ctx.broadcast(sorted(p["index"] for p in plan
                                if (work / f"member_{p['index']}.pt").exists()))
    mine = [p for p in plan if ctx.mode != "members" or p["index"] % ctx.world_size == ctx.rank]
    results: dict[int, tuple[dict[str, Any], np.ndarray | None]] = {}
    trained_here: list[int] = []
    digests: dict[str, str] = {}
    try:
        for p in mine:
            k = p["index"]
            info, out, digest = _member(p, k in done, work, ds, ages, mcfg, spec, train,
                                        members, n_fold_models, device, ctx, rep, handlers,
                                        init)
            if k not in done:
                trained_here.append(k)
            if digest is not None:
                digests[f"member_{k}.pt"] = digest
            results[k] = (info, out)
    except Exception as exc:  # noqa: BLE001
        err = exc
    ctx.agree(err)   # every member is on disk from here on
    gathered = ctx.all_gather({"rank": ctx.rank, "device": str(device),
                               "trained": trained_here,
                               "reused": [p["index"] for p in mine if p["index"] in done],
                               "digests": digests,
                               "results": {k: v for k, v in results.items()
                                           if v[1] is not None}})
    result: RunResult | None = None
    if ctx.is_main:
        try:
            merged: dict[int, tuple[dict[str, Any], np.ndarray]] = {}
            for g in gathered:
                merged.update(g["results"])
            if ctx.active:
                write_json(work / "distributed.json", _distributed_record(ctx, gathered))
            result = _finish_run(work, run_dir, config, plan, merged, ds, spec, train,
                                 val_sets, fold_of, split_info, n_fold_models)
        except Exception as exc:  # noqa: BLE001
            err = exc
    ctx.agree(err)
    if not ctx.active:
        assert result is not None
        return result
    shared = ctx.broadcast(None if result is None else (str(result.run_dir), result.oof,
                                                        result.metrics))
    return RunResult(Path(shared[0]), shared[1], shared[2])


def _distributed_record(ctx: DistContext, gathered: list[dict[str, Any]]) -> dict[str, Any]:
    """``distributed.json``: who trained which member, and (ddp) each rank's weight digest."""
    ranks = {str(g["rank"]): {"device": g["device"], "trained": g["trained"],
                              "reused": g["reused"]} for g in gathered}
    digests: dict[str, dict[str, str]] = {}
    for g in gathered:
        for name, d in g["digests"].items():
            digests.setdefault(name, {})[str(g["rank"])] = d
    return {**ctx.to_dict(), "ranks": ranks, "parameter_sha1": digests,
            "note": "members mode: rank r trains members k with k % world_size == r; ddp mode: "
                    "all ranks train every member together (gradients all-reduced)"}


def _start_run(work: Path, config: dict[str, Any], train: TrainConfig, resume: bool,
               split_info: dict[str, Any], _on_start) -> None:
    """Rank 0: check a resumed run's options, write ``config.json`` and ``splits.json``."""
    work.mkdir(parents=True, exist_ok=True)
    old_cfg_path = work / "config.json"
    if resume and old_cfg_path.exists():
        import json
        old = json.loads(old_cfg_path.read_text())
        for key in ("model", "input", "folds", "members_per_fold", "split_method", "seed"):
            if old.get(key) != json.loads(json.dumps(config[key])):
                raise ConfigError(f"--resume with a different {key} than the interrupted run",
                                  path=old_cfg_path, hint="repeat the original options or use "
                                                          "--overwrite")
        tr_old, tr_new = dict(old.get("train", {})), train.to_dict()
        tr_old.pop("device", None)
        tr_new.pop("device", None)
        tr_new = json.loads(json.dumps(tr_new))
        if tr_old != tr_new:
            changed = sorted(k for k in set(tr_old) | set(tr_new) if tr_old.get(k) != tr_new.get(k))
            raise ConfigError("--resume with different training options than the interrupted "
                              f"run ({', '.join(changed)})", path=old_cfg_path,
                              hint="repeat the original options or use --overwrite")
    write_json(work / "config.json", config)
    if _on_start is not None:
        _on_start()
    write_json(work / "splits.json", split_info)


def _member(p: dict[str, Any], exists: bool, work: Path, ds: AgeDataset, ages: np.ndarray,
            mcfg: dict[str, Any], spec: InputSpec, train: TrainConfig, members: int,
            n_fold_models: int, device, ctx: DistContext, rep: ProgressReporter,
            handlers: dict | None, init=None
            ) -> tuple[dict[str, Any], np.ndarray | None, str | None]:
    """Train (or, when its file exists, load) one member; write ``member_<k>.pt`` atomically
    (its owner rank; rank 0 in ddp mode) and predict every subject with it (the writer only).

    Returns the member's info, its raw outputs ``(n, 2)`` (None on ranks that do not write)
    and, when trained with ddp, this rank's parameter digest.
    """

    k = p["index"]
    writer = not ctx.ddp or ctx.is_main
    label = f"fold {p['fold'] + 1}/{n_fold_models} member {p['member'] + 1}/{members}"
    member_path = work / f"member_{k}.pt"
    scaler = TargetScaler.fit(ages[p["train"]])
    seed_everything(p["seed"])
    net = build_model(mcfg)
    if init is not None and not exists:        # fine-tune: start from an init member
        j = k % init.n_members
        net.load_state_dict(init.member_state(j))
        m = init.members[j]
        scaler = TargetScaler(float(m["target_mean"]), float(m["target_std"]))
    digest = None
    if exists:
        if not writer:
            return {}, None, None
        from bodyage_core.inference.weights import load_torch_file
        ck = load_torch_file(member_path, what="ensemble member")
        net.load_state_dict(ck["state_dict"])
        info = ck["info"]
    else:
        over = {"seed": p["seed"]}
        if ctx.active:
            over["device"] = ctx.device
        tcfg = TrainConfig.from_dict(dict(train.to_dict(), **over))
        tr = Trainer(net, ds, p["train"], p["val"], tcfg, scaler,
                     checkpoint=work / "checkpoints" / f"member_{k}.ckpt", reporter=rep,
                     name=label, dist=ctx if ctx.ddp else None,
                     position={"fold": p["fold"] + 1, "folds": n_fold_models,
                               "member": p["member"] + 1, "members": members})
        for ev, h in (handlers or {}).items():
            tr.on(ev, h)
        state = tr.fit(resume=True)
        net = tr.model
        if ctx.active:
            from bodyage_core.training.distributed import parameter_digest

            digest = parameter_digest(net)
        info = {"file": member_path.name, "fold": p["fold"], "seed": p["seed"],
                "target_mean": scaler.mean, "target_std": scaler.std,
                "best_val_mae": state.best_val_mae, "best_epoch": state.best_epoch,
                "epochs_run": state.epoch, "stopped_early": state.stopped_early,
                "n_train": len(p["train"]), "n_val": len(p["val"]),
                "history": state.history}
        if ctx.active:
            info["distributed"] = {"mode": ctx.mode, "world_size": ctx.world_size,
                                   "rank": ctx.rank}
        if writer:
            payload = {"format": MEMBER_FORMAT, "model_config": dict(mcfg, weights=None),
                       "state_dict": {k2: v.detach().cpu() for k2, v in
                                      net.state_dict().items()},
                       "input": spec.to_dict(), "info": info}
            from bodyage_core.inference.weights import save_torch_file

            save_torch_file(payload, member_path)
    net = net.to(device)
    if ctx.ddp and not exists:     # all ranks hold the weights: share the prediction out
        from bodyage_core.training.trainer import sharded_predict

        out = sharded_predict(net, ds, None, ctx, train.eval_batch_size, device, train.amp)
    elif writer:
        out = predict_tta(net, ds, train.tta, None, train.eval_batch_size, device, train.amp,
                          stage="predict")
    return info, (out if writer else None), digest


def _finish_run(work: Path, run_dir: Path, config: dict[str, Any], plan: list[dict[str, Any]],
                results: dict[int, tuple[dict[str, Any], np.ndarray]], ds: AgeDataset,
                spec: InputSpec, train: TrainConfig, val_sets: dict[int, np.ndarray],
                fold_of: np.ndarray, split_info: dict[str, Any],
                n_fold_models: int) -> RunResult:
    """Rank 0: combine the members per fold, fit calibration and bias correction on the
    validation subjects, write the run's files and publish ``<run>.partial`` as ``<run>``."""
    ages = ds.ages
    n = len(ds)
    sex, bmi, site = ds.column("sex"), ds.column("bmi_group"), ds.column("site")
    ids = ds.subject_ids
    member_info: list[dict[str, Any]] = []
    histories: dict[str, Any] = {}
    outputs: dict[int, np.ndarray] = {}       # member index -> (n, 2) raw outputs on all
    for p in plan:
        info, out = results[p["index"]]
        member_info.append({key: info[key] for key in info if key != "history"})
        histories[info["file"]] = info.get("history", [])
        outputs[p["index"]] = out

    # -- ensemble per fold, calibration and bias correction on validation ---------------------
    use_var = train.loss == "meanvar"
    mu_all = np.full((len(plan), n), np.nan)
    var_all = np.zeros((len(plan), n))
    for p, info in zip(plan, member_info):
        out = outputs[p["index"]]
        mu_all[p["index"]] = out[:, 0] * info["target_std"] + info["target_mean"]
        if use_var:
            var_all[p["index"]] = np.exp(np.clip(out[:, 1], *LOGVAR_RANGE)) * info["target_std"] ** 2
    member_fold = np.array([p["fold"] for p in plan])
    bias = {"folds": {}}
    calib = {"folds": {}}
    fold_mean = np.full(n, np.nan)
    fold_var = np.full(n, np.nan)
    val_idx, val_mean, val_var = [], [], []
    for f in range(n_fold_models):
        sel = member_fold == f
        mean_f, var_f = combine_members(mu_all[sel], var_all[sel])
        va = val_sets[f]
        val_idx.append(va)
        val_mean.append(mean_f[va])
        val_var.append(var_f[va])
        test = fold_of == f
        fold_mean[test] = mean_f[test]
        fold_var[test] = var_f[test]
    v_idx, v_mean, v_var = (np.concatenate(val_idx), np.concatenate(val_mean),
                            np.concatenate(val_var))
    # the QC reference first: each subject's cross-fitted QC score (what it would score as a
    # new input) lets the calibration make sigma follow it
    config["members"] = member_info
    qc_stats = _fit_qc(work, plan, config, ds, val_sets, fold_of)
    if qc_stats is not None:
        config["files"] = [*config.get("files", []), "ood.safetensors"]
        held = qc_stats["held_out_scores"]
        qc_all = np.array([held.get(i, np.nan) for i in range(n)], dtype=float)
    else:
        qc_all = np.full(n, np.nan)
    # and the body's head-foot extent on the model grid: a truncated scan shows less of it
    from bodyage_core.qc.field_of_view import body_extent

    # of the subjects the calibration is fitted on or applied to (validation, out of fold),
    # not the training-only ones: each reads its input once more
    extent = np.full(n, np.nan)
    for i in np.union1d(v_idx, np.flatnonzero(fold_of >= 0)):
        extent[i] = body_extent(ds.array(int(i), None))

    def covariates(idx, means, centre_age):
        return {"qc": qc_all[idx] if qc_stats is not None else None, "extent": extent[idx],
                "centre": centre_distance(means, centre_age)}

    # mean-variance members: their own variance ranks the subjects, so only a scale is fitted
    # (a floor fitted on ~45 subjects made one IXI fold's sigma a constant)
    calib_how = {"floor": not use_var}
    for f in range(n_fold_models):
        # Pool the validation predictions of every fold's ensemble, leaving out the subjects
        # that fold f holds out for testing: ~folds x more subjects than fold f's own
        # validation set, and no label of fold f's test subjects enters its fits.
        use = fold_of[v_idx] != f
        bias["folds"][str(f)] = fit_bias_policy(ages[v_idx[use]], v_mean[use],
                                                train.bias_correction)
        # sigma is the SD of the corrected age (what the interval is around): fitted on the
        # corrected errors, which shrink less for a prediction near the cohort's centre (a
        # degraded scan regresses there whatever its age)
        centre = float(np.mean(ages[v_idx[use]])) if use.any() else None
        calib["folds"][str(f)] = dict(fit_variance_calibration(
            apply_bias_correction(v_mean[use], bias["folds"][str(f)]) - ages[v_idx[use]],
            v_var[use], covariates(v_idx[use], v_mean[use], centre), **calib_how),
            centre_age=centre)
    bias["global"] = fit_bias_policy(ages[v_idx], v_mean, train.bias_correction)
    bias["note"] = ("fitted on validation subjects only (each fold: the validation "
                    "predictions of all folds' ensembles, without that fold's test subjects): "
                    + ("predicted = a * age + b; corrected = (predicted - b) / a (where the "
                       f"slope a is below {MIN_FULL_SLOPE}, the leave-one-out shrink below; "
                       "'fallback' says so)"
                       if train.bias_correction in ("full", "auto") else
                       "predicted = a_full * age + b_full, shrunk towards the raw prediction "
                       "by 'shrink' chosen by leave-one-out MAE on those subjects; "
                       "corrected = (predicted - b) / a with the effective a, b"))
    bias["method"] = train.bias_correction
    # the validation predictions every fit above was made on (to check or refit a policy)
    write_json(work / "validation_predictions.json", {
        "subject_id": [ids[i] for i in v_idx], "age": ages[v_idx].tolist(),
        "fold_held_out": fold_of[v_idx].tolist(), "mean": v_mean.tolist(),
        "variance": v_var.tolist(),
        "qc_score": None if qc_stats is None else [None if not np.isfinite(v) else float(v)
                                                   for v in qc_all[v_idx]],
        "extent": extent[v_idx].tolist()})
    calib["note"] = ("the variance of the bias-corrected age: calibrated variance = scale * "
                     "ensemble variance"
                     + (" (mean-variance members: scale only, their variance ranks the subjects)"
                        if use_var else " + floor, both by the Gaussian NLL")
                     + " fitted on the corrected validation errors (pooled as for the bias "
                       "fit); where 'terms' are given, times (covariate / median) ** power for "
                       "each (the QC score, the body's head-foot extent on the model grid, the "
                       "raw prediction's distance from 'centre_age' + 1 y), the "
                       "covariate clipped to [low, high], kept where they lowered the held-out "
                       "validation NLL ('chosen', 'why'); the global fit (a new subject's) "
                       "on every held-out prediction: the validation and out-of-fold "
                       "subjects ('pool'). 'intervals': the multipliers of sigma for each "
                       "coverage, split-conformal where there are "
                       f"{CONFORMAL_MIN_SUBJECTS} or more held-out predictions (a fold's: "
                       "the other folds' out-of-fold rows; the global fit's: its pool), "
                       "else Gaussian")

    # -- out-of-fold rows ----------------------------------------------------------------------
    oof = []
    for i in range(n):
        f = int(fold_of[i])
        if f < 0:
            continue
        key = str(f)
        sel = member_fold == f
        var_c = apply_variance_scale(fold_var[i:i + 1], calib["folds"][key],
                                     covariates(slice(i, i + 1), fold_mean[i:i + 1],
                                                calib["folds"][key]["centre_age"]))[0]
        corr = apply_bias_correction(fold_mean[i:i + 1], bias["folds"][key])[0]
        mem = [{"mu": float(mu_all[j, i]), "sigma": float(math.sqrt(var_all[j, i]))}
               for j in np.where(sel)[0]]
        oof.append({"subject_id": ids[i], "fold": f, "split": split_info["split"][ids[i]],
                    "age": float(ages[i]), "sex": sex[i], "bmi_group": bmi[i], "site": site[i],
                    "members": mem, "mean": float(fold_mean[i]), "sigma": float(math.sqrt(var_c)),
                    "corrected": float(corr), "gap": float(corr - ages[i])})

    # -- what a new subject gets: the variance fitted on every held-out prediction -----------
    # (the validation subjects and the out-of-fold ones: with --folds 1, 49 + 58 of 400
    # synthetic subjects instead of 49; each out-of-fold row above kept its fold's own fit)
    oof_idx = np.flatnonzero(fold_of >= 0)          # the rows of ``oof``, in order
    g_idx = np.r_[v_idx, oof_idx]
    g_mean = np.r_[v_mean, fold_mean[oof_idx]]
    g_centre = float(np.mean(ages[v_idx])) if len(v_idx) else None
    g_err = np.r_[apply_bias_correction(v_mean, bias["global"]) - ages[v_idx],
                  np.array([r["corrected"] - r["age"] for r in oof], dtype=float)]
    calib["global"] = dict(fit_variance_calibration(
        g_err, np.r_[v_var, fold_var[oof_idx]], covariates(g_idx, g_mean, g_centre),
        **calib_how), centre_age=g_centre)
    calib["global"]["pool"] = {"validation": int(len(v_idx)), "out_of_fold": int(len(oof_idx))}

    # -- interval multipliers ------------------------------------------------------------------
    _fit_run_intervals(calib, bias, oof, ages, g_idx, g_mean, np.r_[v_var, fold_var[oof_idx]],
                       covariates, n_fold_models)
    for r in oof:
        table = interval_table(calib["folds"][str(r["fold"])])
        if table:
            r["interval_z"] = table

    from bodyage_core.evaluation.metrics import regression_metrics
    metrics = {
        "n_subjects": n, "n_out_of_fold": len(oof),
        "raw": regression_metrics([r["age"] for r in oof], [r["mean"] for r in oof]),
        "corrected": regression_metrics([r["age"] for r in oof], [r["corrected"] for r in oof]),
        "members": member_info, "histories": histories,
    }
    write_json(work / "bias_correction.json", bias)
    write_json(work / "calibration.json", calib)
    write_json(work / "normalisation.json", {
        "input": {"normalise": spec.normalise, "channels": list(spec.channels),
                  "mode": spec.mode},
        "targets": {m["file"]: {"target_mean": m["target_mean"],
                                "target_std": m["target_std"]} for m in member_info}})
    write_text(work / "oof_predictions.csv", predictions_csv(oof))
    write_json(work / "metrics.json", metrics)
    config["status"] = "complete"
    config["finished"] = time.time()
    write_json(work / "config.json", config)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    _publish(work, run_dir)
    return RunResult(run_dir, oof, metrics)


def _fit_run_intervals(calib, bias, oof, ages, g_idx, g_mean, g_var, covariates,
                       n_fold_models: int) -> None:
    """Each calibration fit gains its ``intervals`` (:func:`fit_intervals`). A fold's come from
    the other folds' out-of-fold rows (corrected and calibrated by their own folds' fits):
    predictions no fit of theirs saw, and none of the fold's own test subjects. (The
    validation subjects are left out there: the bias correction and the scale were fitted on
    them, so their errors look smaller than a new subject's.) The global fit, which a new
    subject gets, takes every held-out prediction it was fitted on: the validation and
    out-of-fold subjects (``g_idx``, with their raw ensemble mean and variance), corrected and
    calibrated by the global fits."""
    oof_fold = np.array([r["fold"] for r in oof], dtype=int)
    oof_err = np.array([r["corrected"] - r["age"] for r in oof], dtype=float)
    oof_sig = np.array([r["sigma"] for r in oof], dtype=float)
    for f in range(n_fold_models):
        other = oof_fold != f
        calib["folds"][str(f)]["intervals"] = fit_intervals(oof_err[other], oof_sig[other])
    g = calib["global"]
    err = apply_bias_correction(g_mean, bias["global"]) - ages[g_idx]
    sig = np.sqrt(apply_variance_scale(g_var, g, covariates(g_idx, g_mean,
                                                          g.get("centre_age"))))
    g["intervals"] = fit_intervals(err, sig)


def _fit_qc(work: Path, plan, config: dict[str, Any], ds: AgeDataset,
            val_sets: dict[int, np.ndarray], fold_of: np.ndarray) -> dict[str, Any] | None:
    """Fit the QC score's reference (:mod:`bodyage_core.inference.ood`) on the subjects each
    member never trained on; writes ``ood.safetensors`` and returns the statistics (with the
    subjects' cross-fitted ``held_out_scores``). None (no score) for a network without a
    regression head or too few unseen subjects."""
    from bodyage_core.inference import ood
    from bodyage_core.inference.weights import load_torch_file

    nets, unseen = [], []
    for p, m in zip(plan, config["members"]):
        idx = np.union1d(val_sets[p["fold"]], np.where(fold_of == p["fold"])[0])
        if len(idx) < 5:
            return None
        net = build_model(dict(config["model"], weights=None))
        net.load_state_dict(load_torch_file(work / m["file"], what="ensemble member")
                            ["state_dict"])
        if getattr(net, "head", None) is None:
            return None
        nets.append(net.eval())
        unseen.append(idx)
    stats = ood.fit(nets, ds.batch, unseen)
    ood.save(stats, work / ood.FILE)
    return stats


def _publish(work: Path, run_dir: Path) -> None:
    """Rename the finished ``<run>.partial`` onto ``<run>`` (the old run goes only now)."""
    old = None
    if run_dir.exists():
        old = run_dir.with_name(f".{run_dir.name}.old-{int(time.time() * 1000)}")
        run_dir.rename(old)
    work.rename(run_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def predictions_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of prediction rows (members as ``mu_<k>`` / ``sigma_<k>`` columns)."""
    cols = ["subject_id", "fold", "split", "age", "sex", "bmi_group", "site", "mean", "sigma",
            "corrected", "gap"]
    k = max((len(r.get("members") or []) for r in rows), default=0)
    header = (cols + [f"z_{c}" for c in CSV_LEVELS] + [f"mu_{j}" for j in range(k)]
              + [f"sigma_{j}" for j in range(k)])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        mem = r.get("members") or []
        vals = [r.get(c) for c in cols]
        vals += [interval_z(CSV_LEVELS[c], r.get("interval_z")) for c in CSV_LEVELS]
        vals += [m["mu"] for m in mem] + [None] * (k - len(mem))
        vals += [m["sigma"] for m in mem] + [None] * (k - len(mem))
        w.writerow(["" if v is None else (f"{v:.4f}" if isinstance(v, float) else v)
                    for v in vals])
    return buf.getvalue()
