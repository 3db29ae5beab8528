"""The atlas stages: ``register`` (a subject onto its group's atlas) and ``warp`` (a subject's
map into atlas space, the per-subject part of ``atlas maps``), as
:class:`~bodyage_core.cluster.tasks.Stage` s."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bodyage_core.cluster.tasks import Job, Stage, SubjectTask, _Paths, cached_atlas, writing
from bodyage_core.names import check_name

# -- register --------------------------------------------------------------------------------


def register_one(root: str, group: str, subject, atlas_info: dict[str, Any],
                 registration: dict[str, Any] | None, force: bool) -> dict[str, Any]:
    """Worker: register one subject to the template of ``group`` (affine + deformable), or
    reuse its current transform; writes ``subjects/<id>/atlas_<group>/``."""
    from bodyage_core.atlas.workspace import register_or_reuse, transform_folder
    from bodyage_core.registration.register import RegistrationConfig

    ws = _Paths(root)
    rcfg = RegistrationConfig.from_dict(registration) if registration is not None else None
    q = register_or_reuse(ws, group, subject, atlas_info, rcfg, force,
                          atlas=lambda g: cached_atlas(ws.atlas_dir(g)), guard=writing)
    q["group"] = group
    q["has_transform"] = (transform_folder(ws, subject.subject_id, group)
                          / "transform.json").exists()
    return {"quality": _jsonable(q)}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


class RegisterStage(Stage):
    """``bodyage register`` per subject: to the template of its built group atlas."""

    name = "register"

    def __init__(self, group: str | None = None, subject: str | None = None,
                 registration=None, force: bool = False):
        self.group = None if group is None else check_name(group, "atlas group")
        self.subject = None if subject is None else check_name(subject, "subject id")
        self.registration = registration.to_dict() if registration is not None else None
        self.force = force
        self._infos: dict[str, dict[str, Any]] = {}
        self._registered: dict[tuple[str, str], dict[str, Any]] = {}
        self.results: list[dict[str, Any]] = []

    def describe(self) -> str:
        return "register" + (f" {self.group}" if self.group else "")

    def jobs(self, ws) -> list[Job]:
        from bodyage_core.atlas.workspace import registration_jobs

        jobs = []
        for g, s, info in registration_jobs(ws, self.group, self.subject):
            # what the task needs of members.json (it travels with every job)
            self._infos[g] = {k: info.get(k) for k in ("fingerprint", "config", "by")}
            jobs.append(Job(g, s.subject_id, {"subject": s}))
        self._registered = {(r["atlas_group"], r["subject_id"]): r
                            for r in ws.db.registrations()}
        return jobs

    def is_done(self, ws, job, row) -> bool:
        from bodyage_core.atlas.workspace import transform_current, transform_folder

        if self.force or (job.key, job.subject_id) not in self._registered:
            return False
        if row is not None and row.get("status") != "done":
            return False
        return transform_current(transform_folder(ws, job.subject_id, job.key),
                                  self._infos[job.key].get("fingerprint"))

    def task(self, ws, job) -> SubjectTask:
        return SubjectTask(register_one, {
            "root": str(ws.root), "group": job.key, "subject": job.payload["subject"],
            "atlas_info": self._infos[job.key], "registration": self.registration,
            "force": self.force}, folder=str(ws.subject_dir(job.subject_id)))

    def record(self, ws, job, out) -> None:
        from bodyage_core.atlas.workspace import _record, transform_folder

        q = out["quality"]
        # the worker saw the transform folder; record what it saw
        _record(ws, job.subject_id, job.key, q, transform_folder(ws, job.subject_id, job.key),
                has_transform=bool(q.get("has_transform")))
        self.results.append(q)


# -- warp maps into atlas space (the per-subject part of `atlas maps`) ------------------------


def warp_one(root: str, group: str, subject_id: str, kind: str, src: str,
             interpolation: str) -> dict[str, Any]:
    """Worker: warp one subject map into the atlas of ``group``; cached as
    ``subjects/<id>/atlas_<group>/<kind>.nii.gz`` (what ``atlas maps`` reads)."""
    from bodyage_core.atlas.build import load_image, load_label_map, save_image
    from bodyage_core.atlas.workspace import transform_folder, warped_map_current
    from bodyage_core.registration.transform import (
        LABEL_INTERPOLATIONS,
        SubjectTransform,
        warp_map,
    )

    ws = _Paths(root)
    folder = transform_folder(ws, subject_id, group)
    cache = folder / f"{kind}.nii.gz"
    srcp = ws.resolve(src)
    if warped_map_current(cache, srcp, folder, interpolation):
        return {"path": ws.relative(cache), "reused": True}
    tx = SubjectTransform.load(folder)
    m = load_label_map(srcp) if interpolation in LABEL_INTERPOLATIONS else load_image(srcp)
    vol = warp_map(m.with_data(m.data[:1], channels=(m.channels[0],)), tx, None, interpolation)
    with writing(cache):
        save_image(vol, cache)
    return {"path": ws.relative(cache), "reused": False}


class WarpStage(Stage):
    """Warp every registered subject's map of ``kinds`` into its atlas (cached), so that
    ``atlas maps`` only averages. Kinds default to ``gradcam_<run>`` and, when subjects have
    one, ``age_mask`` (``LABEL_INTERPOLATION``)."""

    name = "warp"

    def __init__(self, run: str, groups: Sequence[str] | None = None,
                 kinds: Sequence[str] | None = None):
        self.run = check_name(run, "run name")
        self.groups = [check_name(g, "atlas group") for g in groups] if groups else None
        self.kinds = [check_name(k, "map kind") for k in kinds] if kinds else None

    def describe(self) -> str:
        return f"warp {(self.kinds or [f'gradcam_{self.run}'])[0]}"

    def jobs(self, ws) -> list[Job]:
        from bodyage_core.atlas.cohort_maps import _run_predictions
        from bodyage_core.atlas.workspace import _registered_ok, built_atlases
        from bodyage_core.errors import CohortError
        from bodyage_core.registration.transform import LABEL_INTERPOLATION

        _run_predictions(ws, self.run)   # raises when the run has none
        atlases = self.groups or built_atlases(ws)
        if not atlases:
            raise CohortError("no atlas built yet", ws.root, "run `bodyage atlas build` first")
        kinds = self.kinds or [f"gradcam_{self.run}", "age_mask"]
        jobs = []
        for g in atlases:
            ok = _registered_ok(ws, g)
            if not ok:
                continue
            for s in ws.db.subjects(ids=ok):
                for kind in kinds:
                    if kind in s.images:
                        interp = (LABEL_INTERPOLATION if kind in ("age_mask", "labels")
                                  else "linear")
                        jobs.append(Job(f"{g}/{kind}", s.subject_id,
                                        {"group": g, "kind": kind, "src": s.images[kind],
                                         "interpolation": interp}))
        return jobs

    def is_done(self, ws, job, row) -> bool:
        from bodyage_core.atlas.workspace import transform_folder, warped_map_current

        p = job.payload
        folder = transform_folder(ws, job.subject_id, p["group"])
        return warped_map_current(folder / f"{p['kind']}.nii.gz", ws.resolve(p["src"]), folder,
                                  p["interpolation"])

    def task(self, ws, job) -> SubjectTask:
        p = job.payload
        return SubjectTask(warp_one, {"root": str(ws.root), "group": p["group"],
                                      "subject_id": job.subject_id, "kind": p["kind"],
                                      "src": p["src"], "interpolation": p["interpolation"]},
                           folder=str(ws.subject_dir(job.subject_id)))

