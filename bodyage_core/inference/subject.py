"""Predict (and explain) one subject: the one function every caller uses.

``bodyage predict`` on files, the workspace stage (:mod:`bodyage_core.cluster.model_stages`),
``bodyage explain`` and the viewer's Predict all call :func:`predict_subject`: input checks and
the model's envelope, the model input with its grid's affine, the ensemble's prediction
(out-of-fold for a subject a run held out), and, when asked, importance maps back in the
subject's space. A cohort (the workspace's predict tasks, several subjects each) goes through
:func:`predict_subjects`: the next batch's cached inputs read in the background, the ensemble
run once per batch on the device, then :func:`predict_subject` per subject with its row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bodyage_core.errors import BodyageError
from bodyage_core.models.ensemble import centre_distance, interval_z, variance_terms
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.volume import Volume

#: Map methods: ``"gradcam"`` (at ``layer``), ``"gradxinput"``, ``"occlusion"``; variants
#: ``relu`` / ``signed`` (gradient x input also ``abs``).
MAP_UNITS = {"gradcam": "(d age / d activation) x activation, years",
             "gradxinput": "(d age / d input) x input, years",
             "occlusion": "change of predicted age, years"}


@dataclass
class MapRequest:
    """One importance map to compute: method, variant and (Grad-CAM) layer; options for
    occlusion (patch, stride, baseline, batch size)."""

    method: str = "gradcam"
    variant: str = "relu"
    layer: str = "layer3"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.method}:{self.variant}"


@dataclass
class SubjectPrediction:
    """One subject's prediction (years) and, when asked, its maps in subject space."""

    subject_id: str
    model: str                         # run or model name
    model_kind: str                    # "run" | "model"
    model_version: str | None
    model_sha: str | None
    mean: float                        # raw ensemble mean
    sigma: float                       # calibrated predictive SD (1 SD) of the corrected age
    corrected: float                   # bias-corrected age
    age: float | None
    member_mu: list[float]
    member_sigma: list[float]
    members_used: list[int]
    fold: int | None
    split: str
    qc: list[dict[str, str]] = field(default_factory=list)
    maps: dict[str, Volume] = field(default_factory=dict)
    map_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_grid_affine: np.ndarray | None = None
    #: how unlike the model's training images the input is (1 = typical) and the share of
    #: the model's validation subjects below it (None: the model has no QC reference)
    qc_score: float | None = None
    qc_percentile: float | None = None
    #: the multipliers of sigma per coverage (``{"0.95": z, ...}``: the model's split-conformal
    #: ones; None: Gaussian)
    interval_z: dict[str, float] | None = None
    seconds: float = 0.0

    @property
    def gap(self) -> float | None:
        return None if self.age is None else self.corrected - self.age

    @property
    def raw_gap(self) -> float | None:
        return None if self.age is None else self.mean - self.age

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The interval of coverage ``level`` around the corrected age: corrected +- z sigma,
        z the model's own multiplier (:attr:`interval_z`) or the Gaussian one."""
        z = interval_z(level, self.interval_z)
        return (self.corrected - z * self.sigma, self.corrected + z * self.sigma)

    @property
    def interval95(self) -> tuple[float, float]:
        """The 95 % interval around the corrected age."""
        return self.interval(0.95)

    def row(self) -> dict[str, Any]:
        """The prediction row (the shape ``CohortDB.add_predictions`` and the CSVs take)."""
        r: dict[str, Any] = {
            "subject_id": self.subject_id, "fold": self.fold, "split": self.split,
            "members": [{"mu": m, "sigma": s} for m, s in zip(self.member_mu,
                                                              self.member_sigma)],
            "mean": self.mean, "sigma": self.sigma, "corrected": self.corrected,
        }
        if self.age is not None:
            r["age"] = self.age
            r["gap"] = self.gap
        if self.qc:
            r["qc"] = [dict(f) for f in self.qc]
        if self.qc_score is not None:
            r["qc_score"] = self.qc_score
            r["qc_percentile"] = self.qc_percentile
        if self.interval_z:
            r["interval_z"] = dict(self.interval_z)
        return r


def predict_subject(run, volume: Volume | None = None, *, subject_id: str,
                    age: float | None = None, model_input: np.ndarray | None = None,
                    out_of_fold: bool = True, maps: Sequence[MapRequest] = (),
                    target_grid: tuple[tuple[int, int, int], np.ndarray] | None = None,
                    body_only: bool = True, check: bool = True,
                    reporter: ProgressReporter | None = None,
                    prediction=None) -> SubjectPrediction:
    """Predict one subject with ``run`` (a loaded :class:`~bodyage_core.inference.ensemble.
    AgeRun`, from a workspace run or a model bundle).

    Parameters
    ----------
    volume
        The subject's images (any channels; the model's are picked by name). None when
        ``model_input`` is given (a cached model-grid array: no maps then).
    subject_id, age
        The subject (a run's held-out subject gets its out-of-fold prediction when
        ``out_of_fold``) and its chronological age when known.
    maps
        Importance maps to compute with the members that made the prediction, returned in
        subject space (``target_grid``: ``(shape_zyx, affine)``, default the volume's grid),
        zeroed outside the body when ``body_only``.
    check
        Refuse what no model can give an age for (empty, constant, non-finite, too thin, no
        body) and scans outside the model's envelope (another contrast or body region); the
        warnings are kept in ``qc``.
    prediction
        This subject's :class:`~bodyage_core.models.ensemble.Predictions` when the ensemble
        already ran on it within a batch (:func:`predict_subjects`, which has checked
        ``model_input``, kept as it is: float16 from the cache); None runs it here.
    """
    from bodyage_core.inference.envelope import check_envelope, match_channels, refusals

    rep = ensure_reporter(reporter)
    t0 = time.perf_counter()
    qc: list[dict[str, str]] = []
    mi = None
    spec = run.spec
    what = f"subject {subject_id}"
    if model_input is None:
        if volume is None:
            raise BodyageError("nothing to predict: give an image or a model input")
        where = volume.provenance.get("path") or volume.provenance.get("paths")
        vol, flags = match_channels(volume, tuple(spec.channels))
        if vol is None:
            raise BodyageError(f"{what}: {flags[0]['message']}", path=_one_path(where),
                               hint="give the image(s) this model was trained on, or another "
                                    "model (`bodyage models list`)")
        qc += flags
        if check:
            from bodyage_core.qc.image_checks import check_model_input

            qc += [dict(f, severity=f.get("severity", "warning"))
                   for f in check_model_input(vol, what)]
            env = check_envelope(vol, run.card, age)
            bad = refusals(env)
            if bad:
                raise BodyageError(f"{what}: outside the model's envelope: "
                                   + "; ".join(f["message"] for f in bad),
                                   path=_one_path(where),
                                   hint="use a model made for this kind of scan "
                                        "(`bodyage models list`)")
            qc += env
        rep.update("prepare", 0, 1, "model input")
        from bodyage_core.preprocess.spec import prepare_model_input

        mi = prepare_model_input(vol, spec)
        x = mi.array
        rep.update("prepare", 1, 1)
    else:
        if prediction is not None:   # predict_subjects checked it, in its reader threads
            x = np.asarray(model_input)
        else:
            x = np.asarray(model_input, dtype=np.float32)
            if check and not np.all(np.isfinite(x)):
                raise BodyageError(_NOT_FINITE.format(what=what), hint=_NOT_FINITE_HINT)
    members = run.members_for(subject_id, out_of_fold)
    pred = prediction if prediction is not None else \
        run.predict(x[None], [subject_id], reporter=rep, out_of_fold=out_of_fold)
    mu = pred.member_mu[0]
    card = run.card or {}
    res = SubjectPrediction(
        subject_id=subject_id, model=run.name, model_kind=run.kind,
        model_version=card.get("version"), model_sha=getattr(run, "sha", None),
        mean=float(pred.mean[0]), sigma=float(pred.sigma[0]),
        corrected=float(pred.corrected[0]), age=None if age is None else float(age),
        member_mu=[float(mu[k]) for k in members],
        member_sigma=[float(pred.member_sigma[0][k]) for k in members],
        members_used=members, fold=pred.fold[0] if pred.fold else None,
        split=pred.split[0] if pred.split else "new", qc=qc,
        interval_z=pred.interval_z[0] if pred.interval_z else None)
    stats = run.qc_stats if check else None
    if stats is not None and len(stats["members"]) == run.n_members:
        from bodyage_core.inference import ood

        # the laterality term reads the input in RAS through its grid's affine (a cached
        # model input: made from a RAS volume)
        a = ood.assess(run.load_members(), stats, x, members,
                       affine=None if mi is None else mi.affine)
        res.qc_score, res.qc_percentile = a["score"], a["percentile"]
        res.qc += a["flags"]
    fit = run.calibration_for(res.fold)
    terms = variance_terms(fit)
    if pred.variance is not None and terms:
        from bodyage_core.qc.field_of_view import body_extent

        covs = {"qc": res.qc_score, "extent": body_extent(x) if "extent" in terms else None,
                "centre": centre_distance(res.mean, fit.get("centre_age"))}
        res.sigma = run.calibrated_sigma(float(pred.variance[0]), res.fold, covs)
    if maps:
        if mi is None or spec.mode != "3d":
            raise BodyageError(f"{what}: maps need the subject's 3D image and a 3D model",
                               hint="2.5D models explain on their projection images")
        res.model_grid_affine = mi.affine
        grid = target_grid or (volume.shape, volume.affine)
        _add_maps(run, res, x, mi.affine, maps, grid, body_only, rep)
    res.seconds = time.perf_counter() - t0
    return res


_NOT_FINITE = "{what}: the model input holds NaN or inf"
_NOT_FINITE_HINT = "rebuild the input cache (delete WORKSPACE/cache)"

#: Threads reading the cache for a CUDA device (page cache and NVMe reads scale with threads;
#: one thread copies ~2-5 GB/s, a batch of 16 full-grid subjects is 0.9 GB in float16)
READERS_CUDA = 4


@dataclass
class CohortInput:
    """One subject of a cohort prediction: id, chronological age (None: unknown) and the loader
    of its model-grid input (the workspace cache's ``.npy``, float16 or float32)."""

    subject_id: str
    load: Callable[[], np.ndarray]
    age: float | None = None
    #: optional: fill the given row of the batch (C-contiguous, float16) and return it, or
    #: return an array of its own (another dtype, e.g. a float32 cache entry) -- saves a copy
    load_into: Callable[[np.ndarray], np.ndarray] | None = None


def predict_subjects(run, subjects: Sequence[CohortInput], *, batch_size: int = 8,
                     out_of_fold: bool = True, check: bool = True, prefetch_depth: int = 2,
                     readers: int | None = None, reporter: ProgressReporter | None = None
                     ) -> list[SubjectPrediction | Exception]:
    """Predict many subjects from their model-grid inputs: the cohort path (``bodyage predict
    WORKSPACE`` and its cluster tasks), the same prediction as :func:`predict_subject` gives
    each subject alone.

    The inputs of the next batches of ``batch_size`` subjects are read by ``readers``
    background threads (:func:`~bodyage_core.inference.loader.prefetch`, ``prefetch_depth``
    batches ahead; default 4 readers for a CUDA device, else 1; ``prefetch_depth=0``: read in
    this thread) while the current batch runs, each straight into its row of the batch (float16,
    pinned memory for a CUDA device: :attr:`CohortInput.load_into`); each batch goes to the
    device once and every member runs on it (:meth:`AgeRun.predict
    <bodyage_core.inference.ensemble.AgeRun.predict>`). Then each subject goes through
    :func:`predict_subject` with its row of that prediction (out-of-fold choice, QC score). A
    non-finite input is found by its non-finite prediction (NaN and inf reach the output of
    their own subject only) and then refused, so finite inputs cost no scan on the host.
    Returns one entry per subject, in order: its :class:`SubjectPrediction`, or the exception
    that its input or its checks raised (the others go on)."""
    from bodyage_core.inference.device import resolve_device
    from bodyage_core.inference.loader import batched, empty_batch, prefetch

    rep = ensure_reporter(reporter)
    subjects = list(subjects)
    pin = resolve_device(run.device).type == "cuda"
    if readers is None:
        readers = READERS_CUDA if pin else 1
    want = tuple(run.spec.array_shape)

    def load(group: list[tuple[int, CohortInput]]):
        buf = empty_batch(len(group), want, np.float16, pin)
        view = buf.numpy()
        ok, failed = [], {}
        for i, s in group:
            try:
                slot = view[len(ok)]
                a = s.load_into(slot) if s.load_into is not None else s.load()
                if a is not slot:
                    a = np.asarray(a)
                    if tuple(a.shape) != want:
                        run.check_input(a[None], source=f"subject {s.subject_id}")
                    if a.dtype != view.dtype and view.dtype == np.float16:
                        wide = empty_batch(len(group), want, np.float32, pin)  # kept float32
                        wide.numpy()[:len(ok)] = view[:len(ok)]
                        buf, view = wide, wide.numpy()
                        slot = view[len(ok)]
                    slot[...] = a
                ok.append(i)
            except Exception as exc:  # noqa: BLE001 - that subject's failure, kept
                failed[i] = exc
        return ok, (buf[:len(ok)] if ok else None), failed

    out: list[SubjectPrediction | Exception | None] = [None] * len(subjects)
    done = 0
    rep.update("predict", 0, len(subjects))
    groups = batched(list(enumerate(subjects)), batch_size)
    batches = prefetch(groups, load, max(prefetch_depth, readers) if prefetch_depth else 0,
                       workers=readers)
    try:
        for group, loaded in batches:
            if isinstance(loaded, BaseException):
                raise loaded
            ok, batch, failed = loaded
            for i, exc in failed.items():
                out[i] = exc
            if batch is not None:
                ids = [subjects[i].subject_id for i in ok]
                pred = run.predict(batch, ids, batch_size=len(ok), out_of_fold=out_of_fold)
                for j, i in enumerate(ok):
                    s = subjects[i]
                    row = pred.subset([j])
                    x = batch[j].numpy()
                    try:
                        if check and not (np.isfinite(row.mean).all()
                                          and np.isfinite(row.sigma).all()) \
                                and not np.isfinite(x).all():
                            raise BodyageError(_NOT_FINITE.format(what=f"subject {s.subject_id}"),
                                               hint=_NOT_FINITE_HINT)
                        out[i] = predict_subject(
                            run, subject_id=s.subject_id, age=s.age, model_input=x,
                            out_of_fold=out_of_fold, check=check, prediction=row)
                    except Exception as exc:  # noqa: BLE001 - that subject's failure, kept
                        out[i] = exc
            done += len(group)
            rep.update("predict", done, len(subjects), subjects[group[-1][0]].subject_id)
    finally:
        batches.close()
    return out  # type: ignore[return-value]


def _one_path(where):
    if isinstance(where, dict):
        return next(iter(where.values()), None)
    return where


def _add_maps(run, res: SubjectPrediction, x: np.ndarray, affine: np.ndarray,
              maps: Sequence[MapRequest], grid, body_only: bool, rep: ProgressReporter) -> None:
    from bodyage_core.explain.gradcam import gradcam, gradient_x_input
    from bodyage_core.explain.occlusion import occlusion_map
    from bodyage_core.explain.space import map_to_subject_space

    nets = [run.load_members()[k] for k in res.members_used]
    stds = [float(run.members[k].get("target_std", 1.0)) for k in res.members_used]
    body = model_grid_body(x) if body_only else None
    xb = x[None]
    for i, req in enumerate(maps):
        rep.update("explain", i, len(maps), f"{req.method} {req.variant}")
        if req.method == "gradcam":
            out = gradcam(nets, xb, layer=req.layer, variant=req.variant, target_std=stds,
                          amp=run.amp, members=bool(req.options.get("members")))
        elif req.method == "gradxinput":
            ref = req.options.get("reference")
            rb = None if ref is None else _reference_input(run.spec, ref, affine)[None]
            out = gradient_x_input(nets, xb, variant=req.variant, target_std=stds,
                                   reference=rb)
        elif req.method == "occlusion":
            o = req.options
            out = occlusion_map(nets, xb, patch=o.get("patch", 8), stride=o.get("stride"),
                                baseline=o.get("baseline", "zero"),
                                batch_size=o.get("batch_size", 8), target_std=stds)
        else:
            raise BodyageError(f"unknown map method {req.method!r}")
        mean = _masked(out.mean[0], body)
        vol = map_to_subject_space(mean, affine, grid)
        members = [map_to_subject_space(_masked(out.members[j, 0], body), affine, grid)
                   for j in range(len(nets))] if req.options.get("members") else []
        res.maps[req.key] = Volume(vol.data, vol.affine, (req.key.replace(":", "_"),),
                                   {"units": MAP_UNITS[req.method], "method": req.method,
                                    "variant": req.variant, "model": res.model,
                                    "members": res.members_used})
        res.map_info[req.key] = {
            "method": req.method, "variant": req.variant if req.method != "occlusion"
            else "signed", "layer": req.layer if req.method == "gradcam" else None,
            "units": MAP_UNITS[req.method], "members": res.members_used,
            "occlusion": out.info if req.method == "occlusion" else None,
            "member_maps": members, "body_only": body is not None,
            "member_mu_model": [float(out.mu[j, 0]) for j in range(len(nets))]}
    rep.update("explain", len(maps), len(maps))


def _reference_input(spec, reference: Volume, affine: np.ndarray) -> np.ndarray:
    """A reference image (a Volume with the model's channels, e.g. the atlas template warped
    onto the subject) prepared exactly as the subject's input was — resampling, anti-aliasing,
    normalisation — on the subject's model grid ``affine`` (centred there, not on its own body,
    which would shift it against the subject by a voxel or two)."""
    from bodyage_core.preprocess.spec import prepare_model_input

    if spec.align == "template":
        raise BodyageError("a reference image applies to models without input alignment",
                           hint="explain this model against zero (the default)")
    centre_ijk = (np.asarray(spec.shape_zyx[::-1], float) - 1.0) / 2.0
    centre = np.asarray(affine, float) @ np.append(centre_ijk, 1.0)
    ref = prepare_model_input(reference, spec, centre=centre[:3])
    if not np.allclose(ref.affine, affine, atol=1e-4):
        raise BodyageError("the reference image could not be put on the subject's model grid")
    return ref.array


def model_grid_body(x: np.ndarray, dilate: int = 1) -> np.ndarray:
    """Body mask of a model-grid input ``(C, Z, Y, X)``: Otsu on the sum of the channels
    (invariant to the input normalisation), largest component, holes filled, dilated by
    ``dilate`` voxels so the skin keeps its evidence. Grad-CAM's coarse cells and the zero
    padding at the volume's edges otherwise put spurious evidence in the air around the body,
    which population maps then average in."""
    from scipy import ndimage

    from bodyage_core.preprocess.grid import body_mask

    mask = body_mask(np.asarray(x, dtype=np.float32).sum(axis=0))
    if not mask.any():
        return np.ones(mask.shape, bool)
    mask = ndimage.binary_fill_holes(mask)
    return ndimage.binary_dilation(mask, iterations=dilate) if dilate else mask


def _masked(m: np.ndarray, body: np.ndarray | None) -> np.ndarray:
    return m if body is None else np.where(body, m, 0).astype(m.dtype, copy=False)
