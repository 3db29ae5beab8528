"""The analytic neck-to-knee Dixon phantom: one synthetic subject on a chosen grid.

The body is painted into a label map from analytic shapes, in body millimetres (RAS: x to the
subject's Right, y Anterior, z Superior; voxel centres of the grid):

* z-parameterised elliptic cylinders (per-slice centre and semi-axes from profiles along the
  body): trunk, legs, arms, skin / subcutaneous fat / lean layers, cavities, lungs, back muscles,
  the vertebral column following a spine curve (lordosis, kyphosis), psoas;
* ellipsoids: heart, pericardial fat, liver, kidneys, thyroid, knee condyles;
* tubes along sampled 3D curves: aorta (root, arch, descending), trachea, femur.

The parts: :mod:`~bodyage_core.synth.grid` (the grids), :mod:`~bodyage_core.synth.canvas`
(shapes, profiles, curves, noise), :mod:`~bodyage_core.synth.spine` (the spine curve),
:mod:`~bodyage_core.synth.painters` (the anatomy: where each organ goes and how age changes it,
painters per organ group on a shared body frame, called in a fixed order),
:mod:`~bodyage_core.synth.images` (the images) and :mod:`~bodyage_core.synth.age_mask`; this
module calls them in turn and assembles the subject.

The water and fat images are the organs' Dixon signals (``anatomy.TISSUE_SIGNAL``) modulated per
subject (muscle and marrow fat fractions, disc hydration, textures), with sub-voxel partial volume
of discs and the knee joint space computed analytically (so a 1 mm disc height change shows at
6 mm slices), a slight blur (point-spread), a smooth multiplicative bias field with per-station
gain steps, and Rician noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bodyage_core.synth.acquisition import apply_acquisition
from bodyage_core.synth.age_mask import age_effect_mask
from bodyage_core.synth.anatomy import INTENSITY_SCALE
from bodyage_core.synth.grid import FOV_MM, GRIDS, SynthGrid
from bodyage_core.synth.images import dixon_images
from bodyage_core.synth.painters import PAINTERS, Body
from bodyage_core.synth.params import SITES, SubjectParams
from bodyage_core.volume import Volume

__all__ = ["FOV_MM", "GRIDS", "SynthGrid", "SyntheticSubject", "generate_subject"]


@dataclass
class SyntheticSubject:
    """One generated subject: images, organ labels, age-effect mask and the ground truth."""

    params: SubjectParams
    water: Volume
    fat: Volume
    labels: Volume      # uint8 organ ids (anatomy.LABELS)
    age_mask: Volume    # uint8 effect ids (effects.EFFECTS), 0 = no age effect
    truth: dict[str, Any] = field(default_factory=dict)

    @property
    def subject_id(self) -> str:
        return self.params.subject_id


def generate_subject(params: SubjectParams, grid: SynthGrid | str | tuple | None = "default"
                     ) -> SyntheticSubject:
    """Generate one synthetic subject on ``grid``.

    Parameters
    ----------
    params
        From :func:`bodyage_core.synth.params.sample_subject` (age, sex, BMI, anatomy, effect
        baselines and strengths).
    grid
        ``'default'``, ``'full'``, a spacing ``(sx, sy, sz)`` mm or a :class:`SynthGrid`.

    Returns
    -------
    SyntheticSubject
        ``water`` and ``fat`` Volumes (``(1, Z, Y, X)`` float32, RAS affine), ``labels`` (uint8
        organ ids), ``age_mask`` (uint8 effect ids) and ``truth`` (the effect parameters).
    """
    g = SynthGrid.resolve(grid)
    p = params
    body = Body(p, g)
    for paint in PAINTERS:
        paint(body)
    painted = body.painted
    labels = body.cv.labels
    z_knee = body.z_knee
    water, fatimg = dixon_images(p, g, labels, body.rng, pool=painted.pool,
                                 marrow_regions=painted.marrow, joint_regions=painted.joints,
                                 disc_frac=painted.disc_frac,
                                 js=body.ev["knee"]["joint_space_mm"], z_knee=z_knee)
    acq = None
    if p.acquisition is not None:   # acquisition degradations, after the phantom (own streams)
        water, fatimg, acq = apply_acquisition(p.acquisition, p.seed, p.index,
                                               SITES[p.site][0] * INTENSITY_SCALE, g, water, fatimg)
    age_mask = age_effect_mask(g, p.effects, labels, painted.spine_base, painted.aorta_base,
                               painted.back_muscle_base, painted.thigh_base)

    aff = g.affine
    prov = {"generator": "bodyage_core.synth", "subject_id": p.subject_id, "seed": p.seed,
            "index": p.index}
    meta = {"age": round(p.age, 3), "sex": p.sex}
    vol = lambda a, ch: Volume(a[None], aff, (ch,), dict(prov), dict(meta))  # noqa: E731
    truth = p.to_dict()
    truth["grid"] = g.to_dict()
    if acq is not None:
        truth["acquisition"] = acq
    truth["measured"] = {
        "kyphosis_deg": body.ev["spine"]["kyphosis_deg"],
        "spine_length_mm": float(body.spine_aged.length),
        "disc_total_mm": float(body.spine_aged.knots_d[-1]),
        "z_knee_mm": float(z_knee),
        "pericardial_fat_base_mm": p.baselines["heart"]["pericardial_fat_mm"],
    }
    return SyntheticSubject(params=p, water=vol(water, "water"), fat=vol(fatimg, "fat"),
                            labels=vol(labels, "labels"), age_mask=vol(age_mask, "age_mask"),
                            truth=truth)
