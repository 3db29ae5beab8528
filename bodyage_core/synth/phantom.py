"""The analytic neck-to-knee Dixon phantom: one synthetic subject on a chosen grid.

The body is painted into a label map from analytic shapes, in body millimetres (RAS: x to the
subject's Right, y Anterior, z Superior; voxel centres of the grid):

* z-parameterised elliptic cylinders (per-slice centre and semi-axes from profiles along the
  body): trunk, legs, arms, skin / subcutaneous fat / lean layers, cavities, lungs, back muscles,
  the vertebral column following a spine curve (lordosis, kyphosis), psoas;
* ellipsoids: heart, pericardial fat, liver, kidneys, thyroid, knee condyles;
* tubes along sampled 3D curves: aorta (root, arch, descending), trachea, femur.

The parts: :mod:`~bodyage_core.synth.grid` (the grids), :mod:`~bodyage_core.synth.canvas`
(shapes, profiles, curves, noise), :mod:`~bodyage_core.synth.spine` (the spine curve), this
module (the anatomy: where each organ goes, and how age changes it),
:mod:`~bodyage_core.synth.images` (the images) and :mod:`~bodyage_core.synth.age_mask`.

The water and fat images are the organs' Dixon signals (``anatomy.TISSUE_SIGNAL``) modulated per
subject (muscle and marrow fat fractions, disc hydration, textures), with sub-voxel partial volume
of discs and the knee joint space computed analytically (so a 1 mm disc height change shows at
6 mm slices), a slight blur (point-spread), a smooth multiplicative bias field with per-station
gain steps, and Rician noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

from bodyage_core.synth.acquisition import apply_acquisition
from bodyage_core.synth.age_mask import age_effect_mask
from bodyage_core.synth.anatomy import INTENSITY_SCALE, LABEL_IDS
from bodyage_core.synth.canvas import (
    Canvas,
    Region,
    bezier,
    interp_profile,
    resample_curve,
    rot_from_axis,
    smooth_noise,
)
from bodyage_core.synth.grid import FOV_MM, GRIDS, SynthGrid
from bodyage_core.synth.images import dixon_images
from bodyage_core.synth.params import SITES, SubjectParams, noise_rng
from bodyage_core.synth.spine import SpineCurve
from bodyage_core.volume import Volume

__all__ = ["FOV_MM", "GRIDS", "SynthGrid", "SyntheticSubject", "generate_subject"]

L = LABEL_IDS


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
    an = p.anatomy
    ev = p.effect_values
    rng = noise_rng(p)
    cv = Canvas(g)
    ys, zs = cv.ys, cv.zs
    male = p.sex == "M"
    hs = p.stature
    wf = an["width"] * hs ** 0.5
    df = an["depth"] * hs ** 0.5
    bmi = p.bmi
    lean = an["muscle"] * (1 + 0.008 * (bmi - 25))
    fat_f = an["fat"] * max(0.25, (bmi - 15) / 10) ** 1.3
    vis_f = an["visceral"] * max(0.2, (bmi - 17) / 8) ** 1.2 * (1.3 if male else 0.75)

    z_top = float(zs[-1]) + g.spacing[2] / 2
    Lk = 990.0 * hs                           # knee joint to chin
    z_chin = z_top - an["top_mm"]
    z_knee = z_chin - Lk

    def T(z):
        return (np.asarray(z, np.float64) - z_knee) / Lk

    def zt(t):
        return z_knee + t * Lk

    # -- spine ------------------------------------------------------------------------------
    sp_e = ev["spine"]
    sp_b = p.baselines["spine"]
    # The actual (aged) spine moves only the vertebral column; every other organ is placed
    # relative to the unaged spine, so the spine effect stays inside the spine's mask.
    spine_args = dict(z_s1=zt(0.475), y_s1=an["sacrum_y_mm"] * df, hs=hs,
                      levels=[an[f"disc_{i}"] for i in range(23)], lordosis=an["lordosis_deg"])
    spine_aged = SpineCurve(dhf=sp_e["disc_height_factor"], kyphosis=sp_e["kyphosis_deg"],
                        **spine_args)
    spine = SpineCurve(dhf=sp_b["disc_height_factor"], kyphosis=sp_b["kyphosis_deg"], **spine_args)
    bm_e = ev["back_muscle"]
    bm_base = p.baselines["back_muscle"]["csa_factor"]
    sexm = 1.0 if male else 0.85
    bm_a_base = interp_profile([0.0, spine.region_s[1], spine.region_s[2], spine.length],
                        [30 * sexm * hs, 24 * sexm * hs, 17 * sexm * hs, 14 * sexm * hs])
    bm_b_base = interp_profile([0.0, spine.region_s[1], spine.region_s[2], spine.length],
                        [27 * sexm * hs, 21 * sexm * hs, 15 * sexm * hs, 13 * sexm * hs])

    def bm_a(z, f=1.0):
        return bm_a_base(spine.s_of_z(z)) * math.sqrt(f * lean)

    def bm_b(z, f=1.0):
        return bm_b_base(spine.s_of_z(z)) * math.sqrt(f * lean)

    def y_spine(z):
        return spine.y(z)

    # Posterior lean depth follows the spine (+ muscles at their unaged size) in the trunk.
    def spine_post(z):
        return -y_spine(z) + spine.bv(z) + 8 + 2 * bm_b(z, bm_base) + 4

    # -- trunk profiles (t from knee=0 to chin=1) ------------------------------------------------
    tk = [0.29, 0.34, 0.40, 0.47, 0.55, 0.62, 0.70, 0.80, 0.88, 0.915, 0.94, 0.958, 0.975, 1.2]
    if male:
        a_l = [60, 138, 150, 146, 134, 134, 146, 152, 158, 160, 150, 62, 55, 55]
        b_a = [30, 72, 85, 85, 88, 92, 98, 108, 95, 80, 65, 45, 40, 40]
        post = [30, 85, 112, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        fat_k = [14, 14, 16, 18, 22, 20, 14, 11, 10, 9, 8, 6, 6, 6]
    else:
        a_l = [60, 146, 158, 154, 124, 120, 130, 136, 142, 142, 132, 54, 48, 48]
        b_a = [30, 75, 88, 84, 80, 84, 92, 100, 90, 75, 60, 40, 36, 36]
        post = [30, 90, 115, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        fat_k = [26, 26, 28, 26, 24, 21, 17, 15, 13, 11, 10, 7, 7, 7]
    a_lean_t = interp_profile(tk, np.asarray(a_l) * wf * math.sqrt(lean))
    b_ant_t = interp_profile(tk, np.asarray(b_a) * df * math.sqrt(lean))
    post_t = interp_profile(tk, np.asarray(post) * df * math.sqrt(lean))
    fat_t = interp_profile(tk, np.asarray(fat_k) * fat_f)
    belly = max(0.0, bmi - 24) * 3.0 * (1.3 if male else 0.7) * an["visceral"] ** 0.5
    belly_t = interp_profile([0.42, 0.5, 0.58, 0.66, 0.72], [0, belly * 0.6, belly, belly * 0.7, 0])
    spine_lo = zt(0.40)
    spine_hi = spine.z_top

    def a_lean(z):
        return a_lean_t(T(z))

    def b_ant_lean(z):
        return b_ant_t(T(z)) + belly_t(T(z))

    def b_post_lean(z):
        z = np.asarray(z, np.float64)
        sp = np.where((z > spine_lo) & (z < spine_hi), spine_post(np.clip(z, spine_lo, spine_hi)), 0)
        return np.maximum(post_t(T(z)), sp)

    def fat(z):
        return fat_t(T(z))

    skin = max(2.5, 0.6 * min(g.spacing))

    # -- legs -------------------------------------------------------------------------------
    lk = [-0.40, -0.15, -0.05, 0.0, 0.05, 0.12, 0.22, 0.30, 0.36, 0.40]
    r_leg = np.array([32, 44, 40, 42, 44, 50, 56, 62, 66, 66]) * (1.0 if male else 0.93)
    r_leg = r_leg * hs ** 0.5 * math.sqrt(lean) * an["width"]
    fat_leg = np.array([5, 7, 8, 8, 10, 12, 13, 14, 14, 14]) * (1.0 if male else 1.8) * fat_f
    r_leg_t = interp_profile(lk, r_leg)
    fat_leg_t = interp_profile(lk, fat_leg)
    knee_gap = 4.0
    xk = float(r_leg_t(0.0) + fat_leg_t(0.0) + skin + knee_gap)
    x_thigh = max(xk + 20, 0.5 * float(a_lean_t(0.36)))
    xleg_t = interp_profile([-0.4, 0.0, 0.36, 0.40], [xk - 5, xk, x_thigh, x_thigh])
    yleg_t = interp_profile([-0.4, 0.0, 0.36, 0.40], [-15, 0, -8, -8])
    thigh = ev["thigh_muscle"]
    th_base = p.baselines["thigh_muscle"]["csa_factor"]
    z_leg0, z_leg1 = float(zs[0]) - 10, zt(0.40)
    z_thigh_top = zt(0.42)
    taper = interp_profile([0.33, 0.42], [1.0, 0.3])

    def r_thigh(z, f):
        """Thigh-muscle radius (tapering into the gluteal region above the crotch)."""
        t = T(z)
        return r_leg_t(t) * math.sqrt(f) * taper(t)

    for sgn in (+1.0, -1.0):
        def cx(z, s=sgn):
            return s * xleg_t(T(z))

        def cy(z):
            return yleg_t(T(z))

        def rl(z, f=1.0):
            t = T(z)
            return r_leg_t(t) * np.sqrt(np.where(t > 0.06, f, 1.0))

        def rout(z):
            return rl(z, th_base) + fat_leg_t(T(z)) + skin

        cv.zcyl(L["skin"], z_leg0, z_leg1, cx, cy, rout, rout)
        cv.zcyl(L["subcutaneous_fat"], z_leg0, z_leg1, cx, cy,
                lambda z: rout(z) - skin, lambda z: rout(z) - skin)
        cv.zcyl(L["other_muscle"], z_leg0, z_leg1, cx, cy, rl, rl)
        cv.zcyl(L["thigh_muscles"], zt(0.06), zt(0.33), cx, cy,
                lambda z: rl(z, thigh["csa_factor"]), lambda z: rl(z, thigh["csa_factor"]))

    # -- trunk ------------------------------------------------------------------------------
    z_tr0, z_tr1 = zt(0.29), z_top + 10

    bg, sk, sf = L["background"], L["skin"], L["subcutaneous_fat"]
    cv.zcyl(sk, z_tr0, z_tr1, 0.0, 0.0,
            lambda z: a_lean(z) + fat(z) + skin, lambda z: b_ant_lean(z) + fat(z) + skin,
            lambda z: b_post_lean(z) + fat(z) + skin, only=(bg,))
    cv.zcyl(sf, z_tr0, z_tr1, 0.0, 0.0,
            lambda z: a_lean(z) + fat(z), lambda z: b_ant_lean(z) + fat(z),
            lambda z: b_post_lean(z) + fat(z), only=(bg, sk))
    cv.zcyl(L["other_muscle"], z_tr0, z_tr1, 0.0, 0.0, a_lean, b_ant_lean, b_post_lean,
            only=(bg, sk, sf))
    # upper thighs inside the pelvis outline
    for sgn in (+1.0, -1.0):
        cv.zcyl(L["thigh_muscles"], zt(0.33) - 1, z_thigh_top, lambda z, s=sgn: s * xleg_t(T(z)),
                lambda z: yleg_t(T(z)),
                lambda z: r_thigh(z, thigh["csa_factor"]), lambda z: r_thigh(z, thigh["csa_factor"]),
                only=(L["other_muscle"],))

    # -- arms (alongside the trunk) ----------------------------------------------------------
    ak = [0.28, 0.36, 0.45, 0.62, 0.75, 0.88, 0.94, 0.96]
    r_arm = np.array([22, 26, 30, 32, 38, 42, 40, 0]) * (1.0 if male else 0.88) * hs ** 0.5
    r_arm *= math.sqrt(lean)
    fat_arm_t = interp_profile(ak, np.array([4, 6, 8, 9, 10, 10, 9, 0]) * (1.0 if male else 1.6) * fat_f)
    r_arm_t = interp_profile(ak, r_arm)

    def arm_r(z):
        return r_arm_t(T(z)) + fat_arm_t(T(z)) + skin

    def trunk_out(z):
        t = T(z)
        tt = np.minimum(t, 0.935)
        zz = zt(tt)
        return np.where(t < 0.36, xleg_t(np.minimum(t, 0.4)) + r_leg_t(np.minimum(t, 0.4))
                        + fat_leg_t(np.minimum(t, 0.4)), a_lean(zz) + fat(zz))

    for sgn in (+1.0, -1.0):
        def acx(z, s=sgn):
            return s * (trunk_out(z) + skin + an["arms_mm"] + arm_r(z))

        def acy(z):
            return interp_profile([0.28, 0.62, 0.94], [25, -5, -15])(T(z))

        bg = (L["background"],)
        cv.zcyl(L["skin"], zt(0.28), zt(0.955), acx, acy, arm_r, arm_r, only=bg)
        cv.zcyl(L["subcutaneous_fat"], zt(0.28), zt(0.955), acx, acy,
                lambda z: arm_r(z) - skin, lambda z: arm_r(z) - skin, only=(L["skin"],))
        cv.zcyl(L["other_muscle"], zt(0.28), zt(0.955), acx, acy,
                lambda z: r_arm_t(T(z)), lambda z: r_arm_t(T(z)), only=(L["subcutaneous_fat"],))
        cv.zcyl(L["other_bone"], zt(0.36), zt(0.93), acx, acy, 9.0, 9.0,
                only=(L["other_muscle"],))

    # -- body cavities ----------------------------------------------------------------------
    wall_lat = 16.0 * math.sqrt(lean)
    z_cav0, z_apex = zt(0.40), zt(0.955)
    cav_k = [0.40, 0.45, 0.70, 0.80, 0.90, 0.935, 0.955]
    cav_a_f = interp_profile(cav_k, [0.55, 0.85, 0.88, 0.85, 0.75, 0.45, 0.25])

    def cav_a(z):
        return np.maximum(0, a_lean(z) * cav_a_f(T(z)) - wall_lat * 0.3)

    def cav_b_ant(z):
        return np.maximum(0, b_ant_lean(z) - 18)

    def cav_b_post(z):
        t = T(z)
        thor = -y_spine(z) + spine.bv(z) * np.where(t > 0.7, 1.0, 0.3)
        return np.maximum(5, thor)

    cv.zcyl(L["soft_tissue"], z_cav0, z_apex, 0.0, 0.0, cav_a, cav_b_ant, cav_b_post,
            only=(L["other_muscle"], L["thigh_muscles"]))
    # diaphragm domes
    z_dome_r = zt(0.745) + 8 * (an["lung"] - 1) * 100 / 4
    z_dome_l = z_dome_r - 15
    a_mid = float(cav_a(zt(0.72)))

    def z_dia(z, y, x):
        top = np.where(x > 0, z_dome_r, z_dome_l)
        lat = np.clip((np.abs(x) - 45) / max(a_mid, 1), 0, None)
        bpost = np.clip(-(y - 0) / 120.0, 0, None)
        return top - 60 * lat ** 2 - 55 * bpost ** 2

    # lungs: thoracic cavity minus mediastinum, above the diaphragm
    med_t = interp_profile([0.70, 0.86, 0.92, 0.955], [24, 20, 16, 10])
    lung_lab = {+1.0: L["lung_right"], -1.0: L["lung_left"]}
    for sgn in (+1.0, -1.0):
        def lcond(z, y, x, s=sgn):
            return (s * x > med_t(T(z))) & (z > z_dia(z, y, x))

        cv.zcyl(lung_lab[sgn], zt(0.62), z_apex, 0.0, 0.0, cav_a, cav_b_ant, cav_b_post,
                only=(L["soft_tissue"],), cond=lcond)

    # visceral fat marbling in the abdominal cavity (below the diaphragm)
    tex_v = smooth_noise(rng, g.shape, (g.spacing[2], g.spacing[1], g.spacing[0]), 22.0)
    # a fixed threshold of the (unit-variance) texture: the fat share does not depend on which
    # voxels other organs took, so ageing elsewhere never moves the visceral fat
    frac = float(np.clip(0.2 * vis_f, 0.05, 0.7))
    thr = float(special.ndtri(1 - frac))
    abd = (cv.labels == L["soft_tissue"]) & (zs[:, None, None] < zt(0.74))
    if abd.any():
        vf = abd & (tex_v >= thr)
        cv.labels[vf] = L["visceral_fat"]

    # -- abdominal organs ---------------------------------------------------------------------
    inside_abd = (L["soft_tissue"], L["visceral_fat"])
    lv = an["liver"] * hs * (1.0 if male else 0.92)
    z_liver = z_dome_r - 62 * lv

    def below_dia(z, y, x):
        return z < z_dia(z, y, x) - 4

    cv.ellipsoid(L["liver"], (62 * wf, 8, z_liver), (95 * lv, 80 * lv, 72 * lv),
                 only=inside_abd + (L["lung_right"],), cond=below_dia)
    cv.ellipsoid(L["liver"], (-15 * wf, 45, z_liver + 18), (55 * lv, 35 * lv, 35 * lv),
                 only=inside_abd + (L["lung_left"],), cond=below_dia)
    z_l1 = spine.level_z("L1")
    for sgn, lab in ((+1.0, L["kidney_right"]), (-1.0, L["kidney_left"])):
        zc = z_l1 - (12 if sgn > 0 else -5) + an["kidney_shift_mm"]
        kc = (sgn * (58 * wf), float(y_spine(zc)) + 2, zc)
        rot = rot_from_axis((sgn * -0.25, 0.1, 1.0))
        cv.ellipsoid(L["visceral_fat"], kc, (62 * hs, 38, 34), rot=rot,
                     only=inside_abd + (L["other_muscle"],))
        cv.ellipsoid(lab, kc, (52 * hs, 27, 24), rot=rot, only=inside_abd + (L["other_muscle"],))

    # psoas muscles along the lumbar spine
    z_t12, z_hip = spine.level_z("T12"), zt(0.41)
    for sgn in (+1.0, -1.0):
        def pcx(z, s=sgn):
            return s * (spine.av(np.clip(z, spine.z_s1, None)) + interp_profile([0, 1], [8, 30])(
                (z_t12 - z) / (z_t12 - z_hip)))

        def pr(z):
            return interp_profile([0, 0.5, 1], [7, 22, 24])((z_t12 - z) / (z_t12 - z_hip)) * math.sqrt(lean)

        cv.zcyl(L["other_muscle"], z_hip, z_t12, pcx,
                lambda z: y_spine(np.clip(z, spine.z_s1, None)) + 5, pr, pr,
                only=inside_abd + (L["other_muscle"],))

    # -- thorax: heart, aorta, airway, thyroid ---------------------------------------------------
    hf = an["heart"] * hs * (1.0 if male else 0.9)
    he = ev["heart"]
    y_mid_th = float(b_ant_lean(zt(0.78))) * 0.25
    heart_c = np.array([-22.0 * wf, y_mid_th + 10, z_dome_r + 22 * hf])
    h_axis = np.array([-0.55, 0.55, -0.45])
    h_rot = rot_from_axis(h_axis)
    h_rad = np.array([62, 46, 48]) * hf
    pf = he["pericardial_fat_mm"]
    pf_base = p.baselines["heart"]["pericardial_fat_mm"]
    heart_only = (L["soft_tissue"], L["lung_left"], L["lung_right"], L["liver"],
                  L["visceral_fat"])
    cv.ellipsoid(L["pericardial_fat"], heart_c, h_rad + pf, rot=h_rot, only=heart_only)
    cv.ellipsoid(L["heart"], heart_c, h_rad, rot=h_rot,
                 only=heart_only + (L["pericardial_fat"],))
    pool = cv.ellipsoid(None, heart_c, h_rad * 0.62, rot=h_rot)

    ae = ev["aorta"]
    root = heart_c + h_rot[:, 0] * (-0.55 * h_rad[0]) + np.array([10.0, 0.0, 0.0])
    x_desc = -18.0 * wf + an["aorta_x_mm"]
    d_ao0 = p.baselines["aorta"]["diameter_mm"]
    arch_h0 = p.baselines["aorta"]["arch_height_mm"]

    def y_desc(z):
        # the descending aorta lies left-anterior of the spine (placed for the unaged diameter)
        return y_spine(z) + spine.bv(z) + d_ao0 * 0.4 + 3

    def aorta_path(d_ao: float, arch_h: float) -> tuple[np.ndarray, np.ndarray]:
        z_desc_top = root[2] + 0.45 * arch_h0
        p3 = np.array([x_desc, float(y_desc(z_desc_top)), z_desc_top])
        arch = bezier(root, root + np.array([8, 5, 1.25 * arch_h]),
                       np.array([x_desc, p3[1] + 10, root[2] + 1.25 * arch_h]), p3, 300)
        z_bif = spine.level_z("L4")
        zd = np.arange(z_desc_top, z_bif, -1.5)
        desc = np.stack([np.linspace(x_desc, -5, len(zd)), y_desc(zd), zd], 1)
        pts = np.concatenate([arch, desc[1:]])
        r = np.concatenate([np.linspace(d_ao / 2, 0.85 * d_ao / 2, len(arch)),
                            np.linspace(0.85 * d_ao / 2, 0.65 * d_ao / 2, len(desc) - 1)])
        pts = resample_curve(pts, 0.4 * min(g.spacing))
        r = np.interp(np.linspace(0, 1, len(pts)), np.linspace(0, 1, len(r)), r)
        return pts, r

    ao_only = heart_only + (L["other_muscle"], L["pericardial_fat"], L["airway"])
    aorta_base_region = cv.tube(None, *aorta_path(d_ao0, arch_h0))
    cv.tube(L["aorta"], *aorta_path(ae["diameter_mm"], ae["arch_height_mm"]), only=ao_only)
    arch_h = arch_h0

    # trachea and main bronchi; thyroid lobes
    z_carina = root[2] + 0.6 * arch_h
    zt_ = np.arange(z_top + 10, z_carina, -1.5)

    def y_tr(z):
        return y_spine(z) + spine.bv(z) + 20

    tr = np.stack([np.zeros_like(zt_) + 2, y_tr(zt_), zt_], 1)
    air_only = (L["soft_tissue"], L["other_muscle"], L["lung_left"], L["lung_right"])
    cv.tube(L["airway"], resample_curve(tr, 1.0), 8.0 * hs, only=air_only)
    car = tr[-1]
    for sgn in (+1.0, -1.0):
        br = np.stack([np.linspace(car[0], sgn * 45, 30), np.full(30, car[1] - 3),
                       np.linspace(car[2], car[2] - 35, 30)], 1)
        cv.tube(L["airway"], br, 5.5, only=air_only)
    z_thy = zt(0.955)
    for sgn in (+1.0, -1.0):
        cv.ellipsoid(L["thyroid"], (sgn * 17 + 2, float(y_tr(z_thy)) + 3, z_thy), (9, 9, 22),
                     only=(L["other_muscle"], L["soft_tissue"]))

    # -- pelvis and femur -------------------------------------------------------------------------
    bone_only = (L["other_muscle"], L["thigh_muscles"], L["soft_tissue"], L["visceral_fat"],
                 L["subcutaneous_fat"])
    z_s1 = spine.z_s1
    for sgn in (+1.0, -1.0):
        def iwx(z, s=sgn):
            return s * interp_profile([zt(0.44), zt(0.53)], [0.42, 0.62])(z) * a_lean(z)

        def iwy(z):
            return interp_profile([zt(0.44), zt(0.53)], [spine.y_s1 + 10, spine.y_s1 + 25])(z)

        cv.zcyl(L["pelvis"], zt(0.44), zt(0.53), iwx, iwy, 9.0, 48.0, only=bone_only)
    femoral = []
    for sgn in (+1.0, -1.0):
        xh = sgn * 0.52 * float(a_lean(z_hip))
        hip = np.array([xh, 5.0, z_hip])
        cv.ellipsoid(L["pelvis"], hip, (32, 32, 32), only=bone_only)
        troch = np.array([sgn * (abs(xh) + 38), -2.0, z_hip - 18])
        kc = np.array([sgn * xk, 0.0, z_knee + 45])
        shaft0 = np.array([sgn * (abs(xh) + 30), 0.0, z_hip - 70])
        femoral.append((hip, troch, shaft0, kc, sgn))
        cv.zcyl(L["pelvis"], z_hip - 35, z_hip - 5, sgn * 28.0, float(b_ant_lean(z_hip)) - 28,
                12.0, 14.0, only=bone_only)
    marrow_regions = []
    for hip, troch, shaft0, kc, _sgn in femoral:
        pts = resample_curve(np.stack([hip, troch, shaft0, kc]), 1.0)
        rad = np.interp(np.arange(len(pts)), [0, 20, len(pts) - 1], [16, 15, 14])
        cv.ellipsoid(L["femur"], hip, (24, 24, 24), only=bone_only + (L["pelvis"],))
        cv.tube(L["femur"], pts, rad, only=bone_only + (L["pelvis"],))
        marrow_regions.append(cv.ellipsoid(None, hip, (20, 20, 20)))
        marrow_regions.append(cv.tube(None, pts, rad - 4.5))

    # -- knees ------------------------------------------------------------------------------------
    ke = ev["knee"]
    js = ke["joint_space_mm"]
    knee_only = (L["other_muscle"], L["thigh_muscles"], L["subcutaneous_fat"], L["femur"])
    joint_regions = []
    for sgn in (+1.0, -1.0):
        kx, ky = sgn * xk, 0.0
        js0 = p.baselines["knee"]["joint_space_mm"]
        cv.ellipsoid(L["knee"], (kx, ky - 4, z_knee + js0 / 2 + 24), (40, 30, 24), only=knee_only)
        cv.ellipsoid(L["knee"], (kx, ky - 4, z_knee - js0 / 2 - 22), (38, 30, 22), only=knee_only)
        cv.ellipsoid(L["knee"], (kx, ky + 36, z_knee + 28), (19, 9, 20), only=knee_only)
        jr = cv.zcyl(L["knee"], z_knee - 12, z_knee + 12, kx, ky - 4, 38.0, 28.0,
                     only=knee_only + (L["knee"],))
        joint_regions.append(jr)
        tib = np.stack([np.full(20, kx), np.full(20, ky - 2),
                        np.linspace(z_knee - 40, float(zs[0]) - 20, 20)], 1)
        cv.tube(L["other_bone"], resample_curve(tib, 1.0), 14.0,
                only=(L["other_muscle"], L["subcutaneous_fat"]))

    # -- spine, back muscles ----------------------------------------------------------------------
    z_sp1 = spine.z_top
    in_trunk = (L["other_muscle"], L["soft_tissue"], L["visceral_fat"], L["subcutaneous_fat"],
                L["lung_left"], L["lung_right"], L["kidney_left"], L["kidney_right"],
                L["thigh_muscles"], L["pelvis"], L["aorta"], L["liver"], L["airway"])
    bm_regions = []

    def zb(z):
        return np.clip(z, spine.z_s1, None)

    def mcy(z, f):
        return y_spine(z) - spine.bv(z) - 5 - bm_b(z, f)

    z_bm0 = spine.z_s1 - 50
    f_act = bm_e["csa_factor"]
    for sgn in (+1.0, -1.0):
        def mcx(z, f, s=sgn):
            return s * (6 + bm_a(z, f))

        for lab, f in ((L["subcutaneous_fat"], bm_base), (L["back_muscles"], f_act)):
            reg = cv.zcyl(lab, z_bm0, z_sp1 - 10,
                          lambda z, f=f, mcx=mcx: mcx(zb(z), f),
                          lambda z, f=f: mcy(zb(z), f),
                          lambda z, f=f: bm_a(zb(z), f), lambda z, f=f: bm_b(zb(z), f),
                          only=in_trunk)
            if lab == L["subcutaneous_fat"]:
                bm_regions.append(reg)

    sp_only = in_trunk + (L["back_muscles"], L["heart"], L["pericardial_fat"])

    def paint_column(sp: SpineCurve, paint: bool) -> tuple[Region | None, list[Region | None]]:
        z0, z1 = sp.z_s1 - 2, sp.z_top

        def col_b(z):
            return sp.bv(z) / np.cos(sp.phi_z(z))

        def canal_r(z):
            return 0.45 * sp.av(z)

        def canal_y(z):
            return sp.y(z) - sp.bv(z) - canal_r(z) - 1

        def lab(name):
            return L[name] if paint else None

        def only(extra=()):
            return sp_only + tuple(extra) if paint else None

        column = cv.zcyl(lab("vertebrae"), z0, z1, 0.0, sp.y, sp.av, col_b, only=only())
        regs = [column]
        regs.append(cv.zcyl(lab("vertebrae"), z0, z1, 0.0, lambda z: canal_y(z) - canal_r(z) - 7,
                            lambda z: 0.55 * sp.av(z), 9.0, 9.0,
                            only=only((L["subcutaneous_fat"],))))
        regs.append(cv.zcyl(lab("vertebrae"), z0, z1, 0.0, canal_y, lambda z: canal_r(z) + 5,
                            lambda z: canal_r(z) + 4, only=only()))
        regs.append(cv.zcyl(lab("spinal_canal"), z0 + 40, z1 + 30, 0.0, canal_y,
                            lambda z: canal_r(z) * 1.1, canal_r, only=only((L["vertebrae"],))))
        return column, regs

    _, spine_base_regions = paint_column(spine, paint=False)
    column, _ = paint_column(spine_aged, paint=True)
    # sacrum (not aged)
    sac_len = 95 * hs
    cv.zcyl(L["vertebrae"], z_s1 - sac_len, z_s1, 0.0,
            lambda z: spine.y_s1 - 8 - 40 * (z_s1 - z) / sac_len,
            lambda z: 45 - 30 * (z_s1 - z) / sac_len, 13.0, 13.0, only=sp_only)

    # discs: analytic partial volume along the spine axis
    disc_frac = None
    if column is not None:
        sl, cmask = column
        zc = zs[sl[0]][:, None, None].astype(np.float64)
        yc = ys[sl[1]][None, :, None].astype(np.float64)
        sa = spine_aged
        phi = sa.phi_z(zc)
        s_vox = sa.s_of_z(zc) + (yc - sa.y(zc)) * np.sin(phi)
        h = g.spacing[1] * np.abs(np.sin(phi)) + g.spacing[2] * np.cos(phi)
        frac = (sa.disc_cum(s_vox + h / 2) - sa.disc_cum(s_vox - h / 2)) / h
        frac = np.broadcast_to(frac, cmask.shape)
        in_col = cmask & (cv.labels[sl] == L["vertebrae"])
        disc_frac = (sl, np.where(in_col, frac, 0.0).astype(np.float32))
        lab = cv.labels[sl]
        lab[in_col & (frac >= 0.5)] = L["intervertebral_discs"]

    # the unaged thigh muscle compartment, for the age-effect mask (not painted)
    thigh_base_regions = []
    if p.effects.strength("thigh_muscle") > 0:
        for sgn in (+1.0, -1.0):
            thigh_base_regions.append(cv.zcyl(
                None, zt(0.06), z_thigh_top, lambda z, s=sgn: s * xleg_t(T(z)),
                lambda z: yleg_t(T(z)), lambda z: r_thigh(z, th_base),
                lambda z: r_thigh(z, th_base),
                only=(L["thigh_muscles"], L["subcutaneous_fat"], L["other_muscle"])))

    labels = cv.labels
    water, fatimg = dixon_images(p, g, labels, rng, pool=pool, marrow_regions=marrow_regions,
                                 joint_regions=joint_regions, disc_frac=disc_frac, js=js,
                                 z_knee=z_knee)
    acq = None
    if p.acquisition is not None:   # acquisition degradations, after the phantom (own streams)
        water, fatimg, acq = apply_acquisition(p.acquisition, p.seed, p.index,
                                               SITES[p.site][0] * INTENSITY_SCALE, g, water, fatimg)
    age_mask = age_effect_mask(g, p.effects, labels, spine_base_regions, aorta_base_region,
                               bm_regions, thigh_base_regions)

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
        "kyphosis_deg": sp_e["kyphosis_deg"],
        "spine_length_mm": float(spine_aged.length),
        "disc_total_mm": float(spine_aged.knots_d[-1]),
        "z_knee_mm": float(z_knee),
        "pericardial_fat_base_mm": pf_base,
    }
    return SyntheticSubject(params=p, water=vol(water, "water"), fat=vol(fatimg, "fat"),
                            labels=vol(labels, "labels"), age_mask=vol(age_mask, "age_mask"),
                            truth=truth)
