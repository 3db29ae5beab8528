"""Atlas stages on a cohort workspace: build atlases, register subjects, warp their maps into
atlas space. Thin I/O around :mod:`bodyage_core.atlas.build`; the population maps and the
accelerated-vs-decelerated comparison built on them are in :mod:`~bodyage_core.atlas.cohort_maps`.

Files (workspace layout)::

    atlases/<group>/template.nii.gz, labels.nii.gz, body_mask.nii.gz, members.json,
                    quality.json, quality/<id>.json, iterations/...
    atlases/<group>/population_<run>_<subgroup>_mean.nii.gz / _std.nii.gz
                    (subgroups: all, age_lt60, age_60-70, age_ge70, accelerated, aligned,
                    decelerated)
    atlases/<group>/population_<run>.json            counts, subjects, thresholds, scores
    atlases/<group>/regions_<run>.csv/.json/.png     share of importance per region
    atlases/<group>/compare_<run>_accelerated_vs_decelerated_{diff,t,p_fwe,p_uncorrected}.nii.gz
                    and .json
    subjects/<id>/atlas_<group>/  affine.tfm, warp.nii.gz, inverse_warp.nii.gz, transform.json,
                    quality.json, gradcam_<run>.nii.gz (the map in atlas space, cached)
    reports/regions_<run>.csv/.json/.png              all groups side by side

The cohort index records every registration (``registrations`` table: status, metric, Dice,
reason, transform folder) and the image kind ``to_atlas_<group>`` -> the transform folder.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.atlas.build import (
    AtlasConfig,
    AtlasMember,
    build_atlas,
    load_atlas,
    load_image,
    load_label_map,
    save_image,
)
from bodyage_core.atomic import write_json
from bodyage_core.errors import BodyageError, CohortError
from bodyage_core.io.nifti import read_provenance
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.registration.register import RegistrationConfig, register
from bodyage_core.registration.transform import (
    LABEL_INTERPOLATIONS,
    SubjectTransform,
    warp_map,
)
from bodyage_core.volume import Volume

DEFAULT_BY = ("sex", "bmi_group")
IMAGE_CHANNELS = ("water", "fat")


# -- grouping ---------------------------------------------------------------------------------
def group_name(subject, by: Sequence[str] = DEFAULT_BY) -> str | None:
    """``'F_healthy'`` for ``by=('sex', 'bmi_group')``; any subject attribute or meta key
    works. None when a value is missing."""
    parts = []
    for col in by:
        v = getattr(subject, col, None)
        if v is None:
            v = (getattr(subject, "meta", None) or {}).get(col)
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return None
        parts.append(str(v))
    return "_".join(parts) if parts else "all"


def atlas_groups(ws, by: Sequence[str] = DEFAULT_BY, only: Sequence[str] | None = None
                 ) -> tuple[dict[str, list], list[str]]:
    """``({group: [Subject...]}, [ids without a group])`` of the cohort."""
    from bodyage_core.cohort.workspace import safe_name
    from bodyage_core.names import fold_key

    groups: dict[str, list] = {}
    missing: list[str] = []
    raw_of: dict[str, str] = {}      # folder key -> the group value it came from
    for s in ws.db.subjects():
        g = group_name(s, by)
        if g is None:
            missing.append(s.subject_id)
            continue
        name = safe_name(g)
        other = raw_of.setdefault(fold_key(name), g)
        if other != g:
            # two values made one folder name ('Guys Hospital' / 'Guys_Hospital'): refuse
            # rather than average two groups into one atlas
            raise CohortError(f"atlas groups {other!r} and {g!r} (by {'+'.join(by)}) would "
                              f"share the folder atlases/{name}", ws.root / "cohort.sqlite",
                              "make the values differ in letters or digits (re-import the "
                              "CSV) or group by other columns")
        groups.setdefault(name, []).append(s)
    if only:
        unknown = [g for g in only if g not in groups]
        if unknown:
            raise CohortError(f"no subjects in group(s) {', '.join(unknown)}",
                              hint=f"groups by {'+'.join(by)} are: {', '.join(sorted(groups))}")
        groups = {g: groups[g] for g in only}
    return groups, missing


def _member(ws, subject) -> AtlasMember:
    imgs = subject.images
    chans = {c: ws.resolve(imgs[c]) for c in IMAGE_CHANNELS if c in imgs}
    if not chans:
        for k in ("t1", "input"):
            if k in imgs:
                chans = {k: ws.resolve(imgs[k])}
                break
    if not chans:
        raise CohortError(f"subject {subject.subject_id} has no water/fat or t1 image "
                          f"(has: {', '.join(sorted(imgs)) or 'none'})",
                          hint="import its images first")
    labels = ws.resolve(imgs["labels"]) if "labels" in imgs else None
    return AtlasMember(subject.subject_id, chans, labels,
                       meta={"age": subject.age, "sex": subject.sex, "bmi": subject.bmi})


def transform_folder(ws, subject_id: str, group: str) -> Path:
    return ws.transform_folder(subject_id, group)


def transform_current(folder: Path, fingerprint: str | None) -> bool:
    """Whether ``folder`` holds a complete transform (and quality.json) made against the atlas
    of ``fingerprint`` (reusable without registering again)."""
    if not (SubjectTransform.exists(folder) and (folder / "quality.json").exists()):
        return False
    try:
        info = json.loads((folder / "transform.json").read_text()).get("info", {})
    except (OSError, ValueError):
        return False
    return info.get("atlas_fingerprint", info.get("fingerprint")) == fingerprint


def _record(ws, sid: str, group: str, q: dict[str, Any], folder: Path,
            has_transform: bool | None = None) -> None:
    """Store one registration's quality dict ``q`` (and its transform image, when there is one:
    ``has_transform``, or else whether ``folder`` holds a transform.json)."""
    ws.db.set_registration(
        sid, group, q.get("status", "failed"), metric=_num(q.get("metric")),
        dice_body=_num(q.get("dice_body")), dice_labels=_num(q.get("dice_labels_mean")),
        reason="; ".join(q.get("reasons") or []) or None,
        forward=ws.relative(folder), inverse=ws.relative(folder / "inverse_warp.nii.gz"))
    if has_transform is None:
        has_transform = (folder / "transform.json").exists()
    if has_transform:
        ws.db.set_image(sid, f"to_atlas_{group}", ws.relative(folder))


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def built_atlases(ws) -> list[str]:
    root = ws.root / "atlases"
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "members.json").exists())


# -- stages -----------------------------------------------------------------------------------
def build_atlases(ws, by: Sequence[str] = DEFAULT_BY, groups: Sequence[str] | None = None,
                  iterations: int = 2, min_subjects: int = 3,
                  registration: RegistrationConfig | None = None,
                  reporter: ProgressReporter | None = None) -> dict[str, dict[str, Any]]:
    """Build one atlas per group (resumable per subject). A group that cannot be built (too few
    subjects, too many failures) gets ``{"error": message}``; the others go on. Asking for one
    group explicitly (``groups=[g]``) raises instead."""
    reporter = ensure_reporter(reporter)
    grouped, _missing = atlas_groups(ws, by, groups)
    if not grouped:
        raise CohortError("no subject has the grouping columns " + ", ".join(by),
                          hint="fill sex/BMI in the cohort or choose --groups columns")
    cfg = AtlasConfig(iterations=iterations, min_subjects=min_subjects,
                      registration=registration or RegistrationConfig())
    out: dict[str, dict[str, Any]] = {}
    for g, subjects in grouped.items():
        try:
            members = [_member(ws, s) for s in subjects]
            summary = build_atlas(
                members, ws.atlas_dir(g), g, cfg,
                transform_dir=lambda sid, g=g: transform_folder(ws, sid, g),
                reporter=reporter, extra={"by": list(by)})
        except BodyageError as err:
            if groups and len(groups) == 1:
                raise
            out[g] = {"error": str(err), "n_subjects": len(subjects)}
            continue
        for sid, q in summary["quality"].items():
            _record(ws, sid, g, q, transform_folder(ws, sid, g))
        out[g] = {k: v for k, v in summary.items() if k != "quality"}
    return out


def registration_jobs(ws, group: str | None = None, subject: str | None = None
                      ) -> list[tuple[str, Any, dict[str, Any]]]:
    """``(atlas group, Subject, the atlas's members.json)`` for every subject to register: the
    subjects of each built atlas's group (of ``group`` only, of ``subject`` only, when given);
    ``subject`` and ``group`` together register that subject to that atlas whatever its group.
    A CohortError when there is no such atlas or the subject belongs to none."""
    atlases = built_atlases(ws)
    if group is not None:
        if group not in atlases:
            raise CohortError(f"no atlas {group!r} in this workspace"
                              + (f" (built: {', '.join(atlases)})" if atlases else ""),
                              hint="build it with `bodyage atlas build WORKSPACE`")
        atlases = [group]
    if not atlases:
        raise CohortError("no atlas built yet", ws.root,
                          "build them first with `bodyage atlas build WORKSPACE`")
    subjects = ws.db.subjects(ids=[subject] if subject else None)
    jobs = []
    for g in atlases:
        info = json.loads((ws.atlas_dir(g) / "members.json").read_text())
        # an empty list is a grouping too: the single atlas "all" (atlas build --groups "")
        by = info.get("by", list(DEFAULT_BY))
        for s in subjects:
            if group_name(s, by) == g or (subject is not None and group is not None):
                jobs.append((g, s, info))
    if subject is not None and not jobs:
        raise CohortError(f"subject {subject} belongs to no built atlas",
                          hint="pass --group to choose the atlas")
    return jobs


def register_or_reuse(ws, group: str, subject, info: dict[str, Any],
                      registration: RegistrationConfig | None = None, force: bool = False,
                      atlas: Callable[[str], dict[str, Any]] | None = None,
                      guard=None) -> dict[str, Any]:
    """Register ``subject`` to the atlas of ``group`` (``info``: its members.json), or, unless
    ``force``, reuse the transform already made against this atlas (``"reused": True``).
    Returns the quality dict, also written to the transform folder's quality.json and the
    atlas's ``quality/<id>.json``.

    ``registration`` replaces the atlas's own registration options. ``atlas(group)`` gives the
    loaded atlas (callers cache it; default: load it). ``guard(path)`` is entered around each
    write (the cluster's :func:`~bodyage_core.cluster.tasks.writing`)."""
    guard = guard or (lambda _path: contextlib.nullcontext())
    sid = subject.subject_id
    folder = transform_folder(ws, sid, group)
    qpath = folder / "quality.json"
    fingerprint = info.get("fingerprint")
    if not force and transform_current(folder, fingerprint):
        q = json.loads(qpath.read_text())
        q["reused"] = True
        return q
    loaded = atlas(group) if atlas is not None else load_atlas(ws.atlas_dir(group))
    if registration is None:
        registration = RegistrationConfig.from_dict(
            (info.get("config") or {}).get("registration"))
    member = _member(ws, subject)
    res = register(member.load(), loaded["template"], registration,
                   moving_labels=member.load_labels(), fixed_labels=loaded["labels"],
                   fixed_mask=loaded["body_mask"])
    q = dict(res.quality)
    q["subject_id"] = sid
    if res.transform is not None:
        res.transform.info.update({"group": group, "iteration": "final",
                                   "fingerprint": fingerprint, "atlas_fingerprint": fingerprint})
        with guard(folder):
            res.transform.save(folder)
    with guard(qpath):
        write_json(qpath, q)
    qcopy = ws.atlas_dir(group) / "quality" / f"{sid}.json"
    with guard(qcopy):
        write_json(qcopy, q)
    return q


def register_subjects(ws, group: str | None = None, subject: str | None = None,
                      registration: RegistrationConfig | None = None, force: bool = False,
                      reporter: ProgressReporter | None = None) -> list[dict[str, Any]]:
    """Register subjects to their (built) group atlas: the atlas members are skipped when their
    transform is current (resume), new subjects of the group are registered. Returns one quality
    dict per subject (``subject_id``, ``group``, ``status``, ``reused``...)."""
    reporter = ensure_reporter(reporter)
    jobs = registration_jobs(ws, group, subject)
    atlas = functools.cache(lambda g: load_atlas(ws.atlas_dir(g)))
    results = []
    for i, (g, s, info) in enumerate(jobs):
        q = register_or_reuse(ws, g, s, info, registration, force, atlas)
        _record(ws, s.subject_id, g, q, transform_folder(ws, s.subject_id, g))
        q["group"] = g
        results.append(q)
        reporter.update("register", i + 1, len(jobs), subject=s.subject_id,
                        status=q.get("status"))
    return results


def registered_group(ws, subject_id: str, group: str | None = None) -> str:
    """The atlas group ``subject_id`` is registered to (successfully), from the cohort index;
    ``group`` checks a given one. One clear error when there is none, or several and none was
    given."""
    groups = sorted({r["atlas_group"] for r in ws.db.registrations()
                     if r["subject_id"] == subject_id and r["status"] == "ok"})
    if group is not None:
        if group not in groups:
            raise CohortError(f"subject {subject_id} has no successful registration to atlas "
                              f"{group!r}" + (f" (it has: {', '.join(groups)})" if groups else ""),
                              hint=f"run `bodyage register {ws.root} --group {group}` first")
        return group
    if not groups:
        raise CohortError(f"subject {subject_id} is not registered to any atlas, so there is no "
                          "atlas reference for it",
                          hint=f"run `bodyage atlas install` or `atlas build`, then `bodyage "
                               f"register {ws.root}`, before explaining against the atlas")
    if len(groups) > 1:
        raise CohortError(f"subject {subject_id} is registered to several atlases "
                          f"({', '.join(groups)})", hint="say which with --reference-group")
    return groups[0]


def template_on_subject(ws, subject_id: str, grid: tuple[tuple[int, int, int], np.ndarray],
                        group: str) -> Volume:
    """The template of atlas ``group`` warped onto the subject's ``grid`` (``(shape_zyx,
    affine)``) through the inverse of the subject's registration to it: the population's average
    anatomy in the subject's own shape, the reference of atlas-referenced gradient x input
    (:func:`registered_group` finds the group). Needs only the workspace's files."""
    folder = transform_folder(ws, subject_id, group)
    if not SubjectTransform.exists(folder):
        raise CohortError(f"subject {subject_id} has no registration to atlas {group!r}",
                          path=folder, hint=f"run `bodyage register {ws.root}` first")
    atlas = load_atlas(ws.atlas_dir(group))
    warped = warp_map(atlas["template"], SubjectTransform.load(folder), grid, "linear",
                      inverse=True)
    return Volume(warped.data, np.asarray(grid[1], float), atlas["template"].channels)


def _registered_ok(ws, group: str) -> list[str]:
    return [r["subject_id"] for r in ws.db.registrations(group) if r["status"] == "ok"]


def warped_map_current(cache: Path, src: Path, folder: Path,
                       interpolation: str | None = None) -> bool:
    """Whether ``cache``, the map ``src`` warped with the transform in ``folder``, is still
    good: newer than both and, when ``interpolation`` is given, warped with it (a cache made
    with another label interpolation, or before it was recorded, is made again). A missing
    file (the transform's included) means it is not."""
    try:
        if cache.stat().st_mtime < max(src.stat().st_mtime,
                                       (folder / "transform.json").stat().st_mtime):
            return False
    except OSError:
        return False
    return interpolation is None or read_provenance(cache).get("interpolation") == interpolation


def warped_maps(ws, group: str, kind: str, interpolation: str = "linear",
                reporter: ProgressReporter | None = None
                ) -> tuple[list[str], np.ndarray | None, dict[str, str]]:
    """Subject maps of image kind ``kind`` warped into the atlas of ``group`` (cached as
    ``subjects/<id>/atlas_<group>/<kind>.nii.gz``). Only subjects registered ``ok`` count.

    Returns ``(ids, maps (N, Z, Y, X) or None, skipped {id: reason})``.
    """
    reporter = ensure_reporter(reporter)
    ok = _registered_ok(ws, group)
    subjects = {s.subject_id: s for s in ws.db.subjects(ids=ok)} if ok else {}
    skipped: dict[str, str] = {}
    ids, maps = [], []
    for r in ws.db.registrations(group):
        if r["status"] != "ok":
            skipped[r["subject_id"]] = f"registration failed: {r.get('reason')}"
    for i, sid in enumerate(ok):
        s = subjects[sid]
        if kind not in s.images:
            skipped[sid] = f"no {kind} image"
            continue
        src = ws.resolve(s.images[kind])
        folder = transform_folder(ws, sid, group)
        cache = folder / f"{kind}.nii.gz"
        vol = None
        if warped_map_current(cache, src, folder, interpolation):
            vol = (load_label_map(cache) if interpolation in LABEL_INTERPOLATIONS
                   else load_image(cache))
        if vol is None:
            tx = SubjectTransform.load(folder)
            m = load_label_map(src) if interpolation in LABEL_INTERPOLATIONS else load_image(src)
            vol = warp_map(m.with_data(m.data[:1], channels=(m.channels[0],)), tx, None,
                           interpolation)
            save_image(vol, cache)
        ids.append(sid)
        maps.append(np.asarray(vol.data[0]))
        reporter.update(f"warp {kind}", i + 1, len(ok), subject=sid)
    return ids, (np.stack(maps) if maps else None), skipped

