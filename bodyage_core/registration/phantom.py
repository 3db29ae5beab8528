"""Registration test subjects from the synthetic cohort's generator, on a tiny grid.

:func:`make_phantom` is :func:`bodyage_core.synth.generate_subject`'s whole neck-to-knee field
of view drawn on a grid of the asked shape (on a test's few dozen voxels a miniature of the
body, with voxels of the size registration is tuned for), its organs merged into the few large
labels a registration at that size is judged by (:data:`LABELS`: a thyroid or an airway would
be a handful of voxels), the body optionally scaled, made fatter and moved. With
:func:`smooth_deformation` and :func:`apply_transform` it makes registration problems with a
known answer. There is one phantom, the generator; this module only adapts it to such tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk

from bodyage_core.registration.convert import array_to_sitk, sitk_affine
from bodyage_core.synth.anatomy import INTENSITY_SCALE, LABEL_IDS
from bodyage_core.synth.grid import FOV_MM, SynthGrid
from bodyage_core.synth.params import sample_subject
from bodyage_core.synth.phantom import generate_subject
from bodyage_core.volume import Volume

#: The phantom's labels (id -> name), the synthetic organs merged into the groups below.
LABELS = {1: "subcutaneous_fat", 2: "lungs", 3: "heart", 4: "liver", 5: "spine", 6: "muscle",
          7: "thighs"}
#: The synthetic organs in each label (every body voxel is in one): fat with the skin, the
#: lungs with the airway, the spine with its discs and canal, the thighs with femur and knee,
#: every other tissue and bone as muscle.
GROUPS: dict[int, tuple[str, ...]] = {
    1: ("skin", "subcutaneous_fat", "visceral_fat", "pericardial_fat"),
    2: ("lung_left", "lung_right", "airway"),
    3: ("heart",),
    4: ("liver",),
    5: ("vertebrae", "intervertebral_discs", "spinal_canal"),
    6: ("other_muscle", "back_muscles", "soft_tissue", "aorta", "kidney_left", "kidney_right",
        "thyroid", "pelvis", "other_bone"),
    7: ("thigh_muscles", "femur", "knee"),
}
_GROUP_OF = np.zeros(256, np.int16)
for _g, _organs in GROUPS.items():
    for _o in _organs:
        _GROUP_OF[LABEL_IDS[_o]] = _g


def make_phantom(shape_zyx=(48, 40, 40), spacing_xyz=(4.5, 4.5, 6.0), size: float = 1.0,
                 fat: float = 1.0, shift_mm=(0.0, 0.0, 0.0), seed: int = 0, subject: int = 0
                 ) -> tuple[Volume, np.ndarray]:
    """Synthetic subject ``subject`` (index of cohort seed 0; image noise from ``seed``) as a
    ``Volume`` (channels ``water``, ``fat``, about 0-1; RAS, origin at the grid centre) and its
    ``(Z, Y, X)`` int16 label map (ids in :data:`LABELS`).

    The generator draws its whole neck-to-knee field of view on ``shape_zyx`` voxels, which
    are given ``spacing_xyz`` mm: on the cohort's own grid (``(185, 87, 112)`` at 4.464 x
    4.464 x 6 mm) the real body, on a test's few dozen voxels a miniature of it, scaled to the
    grid on each axis, with voxels of the size registration is tuned for. ``fat`` scales the
    subject's subcutaneous fat; ``size`` scales the body about the grid centre and ``shift_mm``
    then moves it (RAS mm), resampled on the same grid.
    """
    shape = tuple(int(n) for n in shape_zyx)
    drawn = SynthGrid(tuple(FOV_MM[i] / shape[2 - i] for i in range(3)), shape)
    p = sample_subject(0, int(subject))
    p = dataclasses.replace(p, seed=int(seed), anatomy=dict(p.anatomy, fat=p.anatomy["fat"] * fat))
    s = generate_subject(p, drawn)
    data = np.concatenate([s.water.data, s.fat.data]) / np.float32(INTENSITY_SCALE)
    affine = SynthGrid(tuple(float(v) for v in spacing_xyz), shape).affine
    vol = Volume(data.astype(np.float32), affine, channels=("water", "fat"))
    labels = _GROUP_OF[s.labels.data[0]]
    if size != 1.0 or any(shift_mm):
        # output point x (LPS) <- input point (x - shift) / size
        tx = sitk.AffineTransform(3)
        tx.SetMatrix(tuple((np.eye(3) / float(size)).ravel()))
        tx.SetTranslation(tuple(-np.asarray(shift_mm, float) * [-1, -1, 1] / float(size)))
        vol, labels = apply_transform(vol, labels, tx)
    return vol, labels


def smooth_deformation(volume: Volume, amplitude_mm: float = 6.0, seed: int = 1,
                       control: int = 4) -> sitk.Transform:
    """A known smooth B-spline deformation on the grid of ``volume`` (maps output points to
    input points, ITK convention), with random control-point displacements of about
    ``amplitude_mm``."""
    rng = np.random.default_rng(seed)
    ref = array_to_sitk(np.zeros(volume.shape, np.float32), volume.affine)
    tx = sitk.BSplineTransformInitializer(ref, [control] * 3, 3)
    params = rng.normal(0.0, amplitude_mm, len(tx.GetParameters()))
    tx.SetParameters(tuple(float(p) for p in params))
    return tx


def apply_transform(volume: Volume, labels: np.ndarray | None, tx: sitk.Transform
                    ) -> tuple[Volume, np.ndarray | None]:
    """Resample ``volume`` (linear) and ``labels`` (nearest) through ``tx`` on their own grid."""
    out = []
    ref = array_to_sitk(np.zeros(volume.shape, np.float32), volume.affine)
    for c in range(volume.n_channels):
        img = array_to_sitk(volume.data[c].astype(np.float32), volume.affine)
        out.append(sitk.GetArrayFromImage(sitk.Resample(img, ref, tx, sitk.sitkLinear, 0.0)))
    vol = Volume(np.stack(out), sitk_affine(ref), channels=volume.channels)
    lab = None
    if labels is not None:
        img = array_to_sitk(labels.astype(np.int16), volume.affine)
        lab = sitk.GetArrayFromImage(sitk.Resample(img, ref, tx, sitk.sitkNearestNeighbor, 0))
    return vol, lab
