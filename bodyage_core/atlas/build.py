"""Group templates by iterative registration and averaging (Starck et al.).

Algorithm (per group)::

    template_0 = the member whose body volume is closest to the group median
    for k in 1..iterations:
        register every member to template_{k-1}  (affine + deformable)
        M   = mean of the members warped onto template_{k-1} (failed registrations left out)
        T̄  = mean affine A̅ and mean forward displacement ū of the successful members
        template_k(q) = M(T̄^-1(q))          # removes the drift towards the start reference
    final pass: register every member to template_N; save per-subject transforms and quality;
    labels.nii.gz = majority vote of the members' warped label maps (when they have labels)

Everything is resumable per subject: a member's transform for an iteration (or the final pass)
is reused when its folder exists and was made with the same members and settings.

Layout written under ``out_dir`` (``atlases/<group>/`` in a workspace)::

    template.nii.gz           water+fat template (4D, channels named), atlas grid
    labels.nii.gz             majority-vote organ labels (when members have labels)
    body_mask.nii.gz          body mask of the template
    members.json              group, reference subject, members used, failed members + reasons,
                              settings, timings
    quality.json              per-subject quality of the final pass
    quality/<id>.json         the same, one file per subject
    iterations/<k>/template.nii.gz, iterations/<k>/<id>/...   intermediate (resume)

and per subject (``transform_dir(subject_id)``, ``subjects/<id>/atlas_<group>/`` in a
workspace): ``affine.tfm``, ``warp.nii.gz``, ``inverse_warp.nii.gz``, ``transform.json``,
``quality.json`` (see :mod:`bodyage_core.registration.transform`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from bodyage_core.atomic import write_json
from bodyage_core.errors import BodyageError, LoadError
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.registration.convert import reference_image
from bodyage_core.registration.quality import body_mask, combined_intensity
from bodyage_core.registration.register import RegistrationConfig, register
from bodyage_core.registration.transform import LABEL_INTERPOLATION, SubjectTransform, warp_map
from bodyage_core.volume import Volume

DEFAULT_MIN_SUBJECTS = 3


@dataclass
class AtlasMember:
    """One subject of a group: image paths (water[, fat], optional labels) or loaded Volumes."""

    subject_id: str
    image_paths: dict[str, Path] = field(default_factory=dict)   # channel name -> file
    labels_path: Path | None = None
    volume: Volume | None = None
    labels: np.ndarray | Volume | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Volume:
        if self.volume is not None:
            return self.volume
        if not self.image_paths:
            raise BodyageError(f"subject {self.subject_id} has no image to register",
                               hint="import its water/fat (or t1) image first")
        from bodyage_core.io import load_channels

        for path in self.image_paths.values():
            _require(path)
        vol = load_channels(self.image_paths)
        return Volume(vol.data, vol.affine, channels=vol.channels,
                      provenance={"subject_id": self.subject_id})

    def load_labels(self) -> np.ndarray | Volume | None:
        if self.labels is not None:
            return self.labels
        if self.labels_path is None:
            return None
        return load_label_map(self.labels_path)


def load_image(path: str | Path) -> Volume:
    """Load an image with :func:`bodyage_core.io.load_volume` (RAS, float32)."""
    from bodyage_core.io import load_volume

    return load_volume(_require(path))


def _require(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise LoadError("image not found", path=path,
                        hint="check the image path recorded for the subject in the cohort "
                             "(re-import it if the file moved)")
    return path


def load_label_map(path: str | Path) -> Volume:
    from bodyage_core.io import load_labels

    path = Path(path)
    if not path.exists():
        raise LoadError("label map not found", path=path, hint="check the cohort's labels path")
    return load_labels(path)


def save_image(volume: Volume | np.ndarray, path: Path, affine: np.ndarray | None = None,
               channels: tuple[str, ...] | None = None) -> Path:
    """Write NIfTI atomically via :func:`bodyage_core.io.save_volume`."""
    from bodyage_core.io import save_volume

    if not isinstance(volume, Volume):
        arr = np.asarray(volume)
        volume = Volume(arr, affine, channels=channels or ("image",))
    return save_volume(volume, path)


@dataclass
class AtlasConfig:
    """Template-building settings."""

    iterations: int = 2
    min_subjects: int = DEFAULT_MIN_SUBJECTS
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    remove_drift: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["registration"] = self.registration.to_dict()
        return d


def choose_reference(volumes_ml: dict[str, float]) -> str:
    """The subject whose body volume is closest to the group median (ties: smallest id)."""
    med = float(np.median(list(volumes_ml.values())))
    return min(sorted(volumes_ml), key=lambda s: abs(volumes_ml[s] - med))


def _fingerprint(members: Sequence[str], cfg: AtlasConfig) -> str:
    blob = json.dumps({"members": sorted(members), "config": cfg.to_dict()}, sort_keys=True,
                      default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class DriftAccumulator:
    """Running sums of the members' affine matrices and forward displacement fields (so an
    atlas of hundreds of subjects never holds all their fields at once)."""

    def __init__(self) -> None:
        self.n = 0
        self.n_fields = 0
        self.affine_sum = np.zeros((4, 4))
        self.field_sum: np.ndarray | None = None
        self.like: sitk.Image | None = None

    def add(self, tx: SubjectTransform) -> None:
        self.n += 1
        self.affine_sum += tx.affine_matrix
        if tx.forward_field is not None:
            arr = sitk.GetArrayViewFromImage(tx.forward_field)
            if self.field_sum is None:
                self.field_sum = np.zeros(arr.shape, np.float64)
                self.like = tx.forward_field
            self.field_sum += arr
            self.n_fields += 1

    def transform(self) -> sitk.Transform:
        """Inverse of the mean transform (see :func:`drift_transform`)."""
        mats = self.affine_sum / max(self.n, 1)
        mean_aff = sitk.AffineTransform(3)
        mean_aff.SetMatrix(tuple(mats[:3, :3].ravel()))
        mean_aff.SetTranslation(tuple(mats[:3, 3]))
        comp = sitk.CompositeTransform(3)
        if self.field_sum is not None and self.n_fields == self.n:
            u_img = sitk.GetImageFromArray(self.field_sum / self.n, isVector=True)
            u_img.CopyInformation(self.like)
            inv = sitk.InvertDisplacementField(u_img, maximumNumberOfIterations=20,
                                               maxErrorToleranceThreshold=0.1,
                                               meanErrorToleranceThreshold=0.001,
                                               enforceBoundaryCondition=True)
            comp.AddTransform(sitk.DisplacementFieldTransform(inv))
        comp.AddTransform(sitk.AffineTransform(mean_aff.GetInverse()))  # applied first
        return comp


def drift_transform(transforms: list[SubjectTransform]) -> sitk.Transform:
    """The inverse of the members' mean transform (mean affine, mean forward displacement):
    maps points of the drift-free template to the current template (ITK resampling sense)."""
    acc = DriftAccumulator()
    for t in transforms:
        acc.add(t)
    return acc.transform()


def remove_drift(image: Volume, transforms: list[SubjectTransform] | None = None,
                 drift: sitk.Transform | None = None, labels: bool = False) -> Volume:
    """Resample the average of warped members by the inverse of the members' mean transform,
    so the template sits at the members' mean shape and position (not the start reference's).
    ``labels=True`` resamples with nearest neighbour."""
    if drift is None:
        if not transforms:
            return image
        drift = drift_transform(transforms)
    ref = reference_image(image)
    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = []
    for c in range(image.n_channels):
        arr = image.data[c]
        img = sitk.GetImageFromArray(np.ascontiguousarray(
            arr.astype(np.int32) if labels else arr.astype(np.float32)))
        img.CopyInformation(ref)
        out.append(sitk.GetArrayFromImage(sitk.Resample(img, ref, drift, interp, 0)).astype(
            arr.dtype))
    return image.with_data(np.stack(out), drift_removed=True)


class LabelVote:
    """Incremental voxel-wise label counts; :meth:`result` is the majority vote (ties: the
    smaller id)."""

    def __init__(self) -> None:
        self.counts: dict[int, np.ndarray] = {}
        self.shape: tuple[int, ...] | None = None
        self.dtype = None
        self.n = 0

    def add(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        if self.shape is None:
            self.shape, self.dtype = labels.shape, labels.dtype
        for i in np.unique(labels):
            c = self.counts.setdefault(int(i), np.zeros(self.shape, np.uint16))
            c += labels == i
        self.n += 1

    def result(self) -> np.ndarray:
        ids = sorted(self.counts)
        best = np.full(self.shape, ids[0], dtype=self.dtype)
        best_n = self.counts[ids[0]].copy()
        for i in ids[1:]:
            upd = self.counts[i] > best_n
            best[upd] = i
            best_n[upd] = self.counts[i][upd]
        return best


def majority_vote(label_maps: list[np.ndarray]) -> np.ndarray:
    """Voxel-wise most frequent label (ties: the smaller id) of equally shaped maps."""
    vote = LabelVote()
    for m in label_maps:
        vote.add(m)
    return vote.result()


def _register_member(member: AtlasMember, vol: Volume, template: Volume,
                     template_labels, template_mask, folder: Path, info: dict[str, Any],
                     cfg: RegistrationConfig, reporter: ProgressReporter
                     ) -> tuple[SubjectTransform | None, dict[str, Any], Volume | None,
                                Volume | None]:
    """Register (or reuse a finished transform of) one member; returns transform, quality,
    warped image and warped labels."""
    labels = member.load_labels()
    qpath = folder / "quality.json"
    if SubjectTransform.exists(folder) and qpath.exists():
        try:
            tx = SubjectTransform.load(folder)
            q = json.loads(qpath.read_text())
        except (LoadError, ValueError):
            tx, q = None, None
        if tx is not None and tx.info.get("fingerprint") == info["fingerprint"]:
            q["reused"] = True
            if q.get("status") != "ok":
                return tx, q, None, None
            warped = warp_map(vol, tx, template, "linear")
            wl = None
            if labels is not None:
                lab = labels if isinstance(labels, Volume) else Volume(
                    np.asarray(labels), vol.affine, channels=("labels",))
                wl = warp_map(lab, tx, template, LABEL_INTERPOLATION)
            return tx, q, warped, wl
    res = register(vol, template, cfg, moving_labels=labels, fixed_labels=template_labels,
                   fixed_mask=template_mask, reporter=None)
    q = dict(res.quality)
    q["subject_id"] = member.subject_id
    if res.transform is not None:
        res.transform.info.update(info)
        res.transform.save(folder)
    write_json(qpath, q)
    reporter.check()
    return res.transform, q, res.warped, res.warped_labels


def build_atlas(members: Sequence[AtlasMember], out_dir: str | Path, group: str = "all",
                config: AtlasConfig | None = None,
                transform_dir: Callable[[str], Path] | None = None,
                reporter: ProgressReporter | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build one group template; see the module docstring for the algorithm and the files.

    Parameters
    ----------
    members
        The group's subjects (:class:`AtlasMember`).
    out_dir
        The atlas folder (``atlases/<group>``).
    group
        Group name (recorded in ``members.json``).
    config
        :class:`AtlasConfig`.
    transform_dir
        Where the final per-subject transform goes (``subject_id -> folder``); default
        ``out_dir / "subjects" / <id>``.
    reporter
        Progress (stage ``"atlas <group>"``, one unit per subject registration) and cancel.
    extra
        More facts to record in ``members.json`` (e.g. the grouping columns).

    Returns
    -------
    The ``members.json`` content (plus ``"quality"``: per-subject quality of the final pass).

    Raises
    ------
    BodyageError
        Fewer members than ``config.min_subjects``, or fewer than that many registering well.
    """
    cfg = config or AtlasConfig()
    cfg.registration.validate()
    reporter = ensure_reporter(reporter)
    out_dir = Path(out_dir)
    members = list(members)
    ids = [m.subject_id for m in members]
    if len(set(ids)) != len(ids):
        raise BodyageError(f"group {group}: duplicate subject ids")
    if len(members) < cfg.min_subjects:
        raise BodyageError(
            f"group {group} has {len(members)} subject(s); an atlas needs at least "
            f"{cfg.min_subjects}", hint=f"add {cfg.min_subjects - len(members)} more subject(s) "
            "to the group, merge groups (--groups sex), or lower --min-subjects")
    if transform_dir is None:
        def transform_dir(sid: str) -> Path:
            return out_dir / "subjects" / sid
    t_start = time.perf_counter()
    fp = _fingerprint(ids, cfg)
    stage = f"atlas {group}"
    total = len(members) * (cfg.iterations + 1) + len(members)
    done = 0

    # Reference: body volume closest to the median.
    vols_ml: dict[str, float] = {}
    for m in members:
        v = m.load()
        vols_ml[m.subject_id] = float(
            body_mask(combined_intensity(v, cfg.registration.channel_weights)).sum()
            * np.prod(v.spacing) / 1000.0)
        done += 1
        reporter.update(stage, done, total, message="body sizes")
    ref_id = choose_reference(vols_ml)
    by_id = {m.subject_id: m for m in members}
    template = by_id[ref_id].load()
    template = template.with_data(template.data.astype(np.float32))
    ref_labels = by_id[ref_id].load_labels()
    template_labels = None
    if ref_labels is not None:
        template_labels = np.asarray(ref_labels.data[0] if isinstance(ref_labels, Volume)
                                     else ref_labels)

    history = []
    final_quality: dict[str, dict[str, Any]] = {}
    for it in range(1, cfg.iterations + 2):
        final = it == cfg.iterations + 1
        it_dir = out_dir / "iterations" / str(it)
        tmask = body_mask(combined_intensity(template, cfg.registration.channel_weights))
        sums = np.zeros_like(template.data, dtype=np.float64)
        drift_acc = DriftAccumulator()
        n_ok = 0
        vote = LabelVote()
        qualities: dict[str, dict[str, Any]] = {}
        for m in members:
            folder = transform_dir(m.subject_id) if final else it_dir / m.subject_id
            info = {"group": group, "iteration": "final" if final else it, "fingerprint": fp,
                    "reference_subject": ref_id}
            vol = m.load()
            tx, q, warped, wl = _register_member(m, vol, template, template_labels, tmask,
                                                 folder, info, cfg.registration, reporter)
            qualities[m.subject_id] = q
            if q.get("status") == "ok" and warped is not None:
                sums += _match_channels(warped, template).data
                drift_acc.add(tx)
                n_ok += 1
                if wl is not None:
                    vote.add(wl.data[0])
            done += 1
            reporter.update(stage, done, total, message=f"iteration {it}" if not final
                            else "final", subject=m.subject_id, status=q.get("status"))
        history.append({"iteration": "final" if final else it, "ok": n_ok,
                        "failed": len(members) - n_ok})
        if n_ok < cfg.min_subjects:
            bad = {s: q.get("reasons") for s, q in qualities.items() if q.get("status") != "ok"}
            raise BodyageError(
                f"group {group}: only {n_ok} of {len(members)} subjects registered well "
                f"(iteration {it}); an atlas needs at least {cfg.min_subjects}",
                path=out_dir, hint=f"failures: {json.dumps(bad)[:400]}")
        if final:
            final_quality = qualities
            if vote.n:
                template_labels = vote.result()
            break
        mean = template.with_data((sums / n_ok).astype(np.float32))
        drift = drift_acc.transform() if cfg.remove_drift else None
        new_t = remove_drift(mean, drift=drift) if drift is not None else mean
        save_image(new_t, it_dir / "template.nii.gz")
        template = new_t
        if vote.n:
            # Labels of the template for the next pass (Dice against it), drift-corrected too.
            lab = Volume(vote.result(), template.affine, channels=("labels",))
            if drift is not None:
                lab = remove_drift(lab, drift=drift, labels=True)
            template_labels = lab.data[0]

    # Write the atlas.
    save_image(template, out_dir / "template.nii.gz")
    tmask = body_mask(combined_intensity(template, cfg.registration.channel_weights))
    save_image(Volume(tmask.astype(np.uint8), template.affine, channels=("body_mask",)),
               out_dir / "body_mask.nii.gz")
    if template_labels is not None:
        save_image(Volume(template_labels.astype(np.int16), template.affine,
                          channels=("labels",)), out_dir / "labels.nii.gz")
    for sid, q in final_quality.items():
        write_json(out_dir / "quality" / f"{sid}.json", q)
    write_json(out_dir / "quality.json", final_quality)
    ok_ids = [s for s, q in final_quality.items() if q.get("status") == "ok"]
    summary = {
        "group": group,
        "reference_subject": ref_id,
        "members": ok_ids,
        "failed": {s: q.get("reasons", []) for s, q in final_quality.items()
                   if q.get("status") != "ok"},
        "n_subjects": len(members),
        "iterations": cfg.iterations,
        "history": history,
        "fingerprint": fp,
        "config": cfg.to_dict(),
        "body_volume_ml": vols_ml,
        "seconds": time.perf_counter() - t_start,
        "shape_zyx": list(template.shape),
        "affine": template.affine.tolist(),
        "has_labels": template_labels is not None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    dl = [q["dice_labels_mean"] for q in final_quality.values()
          if q.get("status") == "ok" and q.get("dice_labels_mean") is not None]
    summary["dice_labels_mean"] = float(np.mean(dl)) if dl else None
    summary["dice_body_mean"] = float(np.mean([final_quality[s]["dice_body"] for s in ok_ids]))
    summary.update(extra or {})
    write_json(out_dir / "members.json", summary)
    summary["quality"] = final_quality
    return summary


def _match_channels(warped: Volume, template: Volume) -> Volume:
    if warped.channels == template.channels:
        return warped
    try:
        return warped.with_data(np.stack([warped.channel(c) for c in template.channels]),
                                channels=template.channels)
    except KeyError as exc:
        raise BodyageError(f"subject channels {warped.channels} differ from the template's "
                           f"{template.channels}", hint="give every member the same channels"
                           ) from exc


def load_atlas(atlas_dir: str | Path) -> dict[str, Any]:
    """``members.json`` of a built atlas plus loaded ``template`` (Volume), ``labels``
    (Volume or None) and ``body_mask`` (bool array)."""
    atlas_dir = Path(atlas_dir)
    mpath = atlas_dir / "members.json"
    if not mpath.exists():
        raise BodyageError("no atlas here (members.json missing)", path=atlas_dir,
                           hint="build it first with `bodyage atlas build WORKSPACE`")
    info = json.loads(mpath.read_text())
    info["template"] = load_image(atlas_dir / "template.nii.gz")
    lp = atlas_dir / "labels.nii.gz"
    info["labels"] = load_label_map(lp) if lp.exists() else None
    bp = atlas_dir / "body_mask.nii.gz"
    info["body_mask"] = (load_label_map(bp).data[0] > 0) if bp.exists() else body_mask(
        info["template"])
    return info
