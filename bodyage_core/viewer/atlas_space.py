"""Subject space and atlas space: finding a subject's atlas, warping its layers there and
mapping points both ways (files and numpy only: the viewer runs the warping in a worker thread).

The viewer shows a workspace subject either in its own space (the scan's grid) or in the atlas
space of its group (``atlases/<group>/``, e.g. ``F_healthy``): every layer of the subject (the
image, its label map, its Grad-CAM maps, maps predicted in the viewer) is resampled onto the
atlas grid with the subject's stored registration (``subjects/<id>/atlas_<group>/``, recorded
in the cohort as the image kind ``to_atlas_<group>``;
:class:`~bodyage_core.registration.transform.SubjectTransform`), and the group's population map
(``population_<run>_all_mean.nii.gz``) and template are shown as they are. The cursor goes
through the same transform both ways, so the point under it stays the same piece of anatomy.

Without a registration there is no atlas space: :func:`find_atlas_link` says why and which
command makes one (``bodyage atlas build`` / ``bodyage register``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core import display
from bodyage_core.errors import BodyageError
from bodyage_core.viewer.layers import importance_overlay
from bodyage_core.viewer.space import (
    ATLAS,
    SUBJECT,
    LayerSpec,
    build_state,
    carry_settings,
    snapshot,
)
from bodyage_core.volume import Volume

__all__ = ["ATLAS", "SUBJECT", "AtlasLink", "LayerSpec", "PointMapper", "atlas_to_subject",
           "build_state", "carry_settings", "find_atlas_link", "population_to_subject",
           "snapshot", "subject_to_atlas", "to_atlas"]

NO_WORKSPACE = ("Atlas space needs a workspace subject registered to its group atlas: open a "
                "workspace (File > Open workspace) after `bodyage atlas build WORKSPACE` / "
                "`bodyage register WORKSPACE`")
NO_REGISTRATION = ("{sid} has no registration to a group atlas: run `bodyage atlas build "
                   "WORKSPACE` (builds the atlases and registers their members) or `bodyage "
                   "register WORKSPACE --subject {sid}` first")
TEMPLATE_LAYER = "atlas template"

_LPS = np.array([-1.0, -1.0, 1.0])


@dataclass
class AtlasLink:
    """Where a subject's atlas space lives.

    Attributes
    ----------
    subject_id, group
        The subject and its atlas group (``F_healthy`` ...).
    transform_dir
        The registration folder (``subjects/<id>/atlas_<group>/``).
    atlas_dir
        ``atlases/<group>/``.
    population
        The population map shown in atlas space (None when none was built yet).
    status
        The registration's status in the cohort index (``ok`` / ``failed`` / None).
    """

    subject_id: str
    group: str
    transform_dir: Path
    atlas_dir: Path
    population: Path | None = None
    status: str | None = None

    @property
    def template(self) -> Path | None:
        p = self.atlas_dir / "template.nii.gz"
        return p if p.exists() else None

    @property
    def label(self) -> str:
        return f"atlas space ({self.group})"


def _population_map(atlas_dir: Path, run: str | None) -> Path | None:
    """The group's population map of ``run`` over all its subjects, else the newest one."""
    from bodyage_core.cohort.paths import WorkspacePaths

    if run:
        p = WorkspacePaths(atlas_dir.parent.parent).population_map(atlas_dir.name, run, "all")
        if p.exists():
            return p
    found = sorted(atlas_dir.glob("population_*_all_mean.nii.gz"),
                   key=lambda q: q.stat().st_mtime)
    return found[-1] if found else None


def find_atlas_link(ws: Any, subject_id: str, run: str | None = None
                    ) -> tuple[AtlasLink | None, str]:
    """The subject's atlas space, or ``(None, why not)`` (reads the cohort index and checks the
    files exist; cheap enough for the GUI thread)."""
    from bodyage_core.registration.transform import SubjectTransform

    if ws is None:
        return None, NO_WORKSPACE
    try:
        subj = ws.db.get_subject(subject_id)
    except BodyageError as err:
        return None, str(err)
    regs = {r["atlas_group"]: r for r in ws.db.registrations()
            if r["subject_id"] == subject_id}
    groups = [k[len("to_atlas_"):] for k in subj.images if k.startswith("to_atlas_")]
    groups.sort(key=lambda g: (regs.get(g, {}).get("status") != "ok", g))
    for g in groups:
        folder = ws.resolve(subj.images[f"to_atlas_{g}"])
        if not SubjectTransform.exists(folder):
            continue
        adir = ws.atlas_dir(g)
        return AtlasLink(subject_id, g, folder, adir, _population_map(adir, run),
                         regs.get(g, {}).get("status")), ""
    return None, NO_REGISTRATION.format(sid=subject_id)


# -- points -------------------------------------------------------------------------------------
class PointMapper:
    """Maps single points between a subject's space and its atlas space (RAS mm).

    Building the SimpleITK transforms copies the displacement fields (tens of MB for a
    whole-body grid, ~0.1 s), so it happens once, in the worker thread that warps the layers;
    mapping a point is then microseconds on the GUI thread."""

    def __init__(self, transform: Any):
        self._to_atlas = self._to_subject = None
        try:
            self._to_atlas = transform.to_subject()      # subject point -> reference point
        except (BodyageError, RuntimeError):
            pass                                         # no inverse field
        self._to_subject = transform.to_reference()      # reference point -> subject point

    @staticmethod
    def _map(tx: Any, ras: np.ndarray) -> np.ndarray:
        if tx is None:
            raise BodyageError("this registration has no inverse displacement field",
                               hint="re-run the registration to compute it")
        p = tx.TransformPoint(tuple(float(v) for v in np.asarray(ras, dtype=float) * _LPS))
        return np.asarray(p, dtype=float) * _LPS

    def to_atlas(self, ras: np.ndarray) -> np.ndarray:
        return self._map(self._to_atlas, ras)

    def to_subject(self, ras: np.ndarray) -> np.ndarray:
        return self._map(self._to_subject, ras)


def subject_to_atlas(transform: Any, ras: np.ndarray) -> np.ndarray:
    """A subject-space point (RAS mm) in atlas space (the inverse registration);
    ``transform`` is a SubjectTransform or a :class:`PointMapper`."""
    mapper = transform if isinstance(transform, PointMapper) else PointMapper(transform)
    return mapper.to_atlas(ras)


def atlas_to_subject(transform: Any, ras: np.ndarray) -> np.ndarray:
    """An atlas-space point (RAS mm) in the subject's space (the forward registration)."""
    mapper = transform if isinstance(transform, PointMapper) else PointMapper(transform)
    return mapper.to_subject(ras)


# -- layers -------------------------------------------------------------------------------------
def to_atlas(link: AtlasLink, specs: list[LayerSpec]) -> dict[str, Any]:
    """Warp a subject's layers into its atlas space and add the template and the population
    map (runs in a worker thread: files and numpy only).

    Returns ``{"specs": [...], "transform": SubjectTransform, "points": PointMapper}``: label
    maps are warped with ``LABEL_INTERPOLATION``, everything else linearly; a map file already warped
    by the atlas stage (``subjects/<id>/atlas_<group>/<kind>.nii.gz``, newer than the map and
    the transform) is read instead of warped again.
    """
    from bodyage_core.atlas.build import load_image, load_label_map
    from bodyage_core.atlas.workspace import warped_map_current
    from bodyage_core.registration.transform import LABEL_INTERPOLATION, SubjectTransform, warp_map

    tx = SubjectTransform.load(link.transform_dir)
    out: list[LayerSpec] = []
    for s in specs:
        prov = s.volume.provenance
        if prov.get("atlas") == link.group and prov.get("space") == "subject":
            continue  # the population map warped onto the subject: shown as it is below
        labels = s.settings.get("kind") == "labels"
        interp = LABEL_INTERPOLATION if labels else "linear"
        vol = None
        path = s.settings.get("path")
        if path and not labels:
            cache = link.transform_dir / Path(str(path)).name
            if cache != Path(str(path)) and warped_map_current(cache, Path(str(path)),
                                                               link.transform_dir):
                try:
                    vol = load_image(cache)
                    if vol.channels != s.volume.channels and vol.n_channels == \
                            s.volume.n_channels:
                        vol = vol.with_data(vol.data, channels=s.volume.channels)
                except BodyageError:
                    vol = None
        if vol is None:
            vol = warp_map(s.volume, tx, None, interp)
        prov = dict(vol.provenance)
        prov.update({"space": link.label, "subject": link.subject_id})
        vol = Volume(vol.data, vol.affine, s.volume.channels, prov, dict(vol.metadata))
        settings = dict(s.settings)
        settings["path"] = None  # an in-memory resampling, not the file
        out.append(LayerSpec(vol, settings, s.label_names, s.base, s.active))
    if link.template is not None:
        tpl = load_image(link.template)
        out.insert(1 if out else 0, LayerSpec(
            tpl.with_data(tpl.data[:1], channels=(tpl.channels[0],)),
            {"name": TEMPLATE_LAYER, "kind": "image", "colormap": "grey",
             "display_range": list(display.robust_range(tpl.data[0], 1.0, 99.5)),
             "visible": False, "opacity": 1.0, "path": str(link.template)}))
    lp = link.atlas_dir / "labels.nii.gz"
    if lp.exists() and not any(s.settings.get("kind") == "labels" for s in out):
        lab = load_label_map(lp)
        names = _atlas_label_names(link.atlas_dir)
        out.append(LayerSpec(lab, {"name": "atlas labels", "kind": "labels",
                                   "colormap": "labels", "visible": False, "opacity": 0.35,
                                   "path": str(lp)}, names))
    if link.population is not None:
        pop = load_image(link.population)
        pop = pop.with_data(pop.data[:1], channels=(pop.channels[0],))
        disp = importance_overlay(pop.data[0])
        name = link.population.name.replace(".nii.gz", "").replace("_mean", "")
        for s in out:
            s.active = False
        out.append(LayerSpec(pop, {"name": f"{name} ({link.group})", "kind": "overlay",
                                   "colormap": disp["colormap"],
                                   "display_range": list(disp["display_range"]),
                                   "threshold": disp["threshold"], "opacity": disp["opacity"],
                                   "visible": True, "path": str(link.population)},
                             active=True))
    return {"specs": out, "transform": tx, "points": PointMapper(tx)}


def _atlas_label_names(atlas_dir: Path) -> dict[int, str]:
    p = atlas_dir / "label_names.json"
    if p.exists():
        try:
            return {int(k): str(v) for k, v in json.loads(p.read_text()).items()}
        except (OSError, ValueError):
            pass
    return {}


def population_to_subject(link: AtlasLink, subject: Volume) -> tuple[Volume, dict[str, Any], str]:
    """The group's population map warped back onto the subject's grid through the inverse of
    its registration (worker thread). Returns ``(volume, display settings, layer name)``."""
    from bodyage_core.atlas.build import load_image
    from bodyage_core.registration.transform import SubjectTransform, warp_map

    if link.population is None:
        raise BodyageError(f"no population map built for atlas {link.group!r} yet",
                           path=link.atlas_dir,
                           hint="run `bodyage atlas maps WORKSPACE --run RUN` first")
    tx = SubjectTransform.load(link.transform_dir)
    pop = load_image(link.population)
    pop = pop.with_data(pop.data[:1], channels=(pop.channels[0],))
    vol = warp_map(pop, tx, (subject.shape, subject.affine), "linear", inverse=True)
    prov = dict(vol.provenance)
    prov.update({"space": "subject", "subject": link.subject_id, "atlas": link.group})
    vol = Volume(vol.data, vol.affine, vol.channels, prov, dict(vol.metadata))
    disp = importance_overlay(vol.data[0])
    stem = link.population.name.replace(".nii.gz", "").replace("_mean", "")
    return vol, disp, f"{stem} ({link.group}, on the subject)"
