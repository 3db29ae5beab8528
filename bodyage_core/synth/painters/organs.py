"""Painters of the organs: the abdomen (liver below the diaphragm, kidneys in their fat, psoas
along the lumbar spine) and the thorax (heart in its pericardial fat, the aorta from its root
over the arch down to the bifurcation, trachea and main bronchi, thyroid)."""

from __future__ import annotations

import math

import numpy as np

from bodyage_core.synth.canvas import bezier, interp_profile, resample_curve, rot_from_axis
from bodyage_core.synth.painters.body import Body, L

INSIDE_ABDOMEN = (L["soft_tissue"], L["visceral_fat"])
# what the heart, its fat and the aorta may take
HEART_ONLY = (L["soft_tissue"], L["lung_left"], L["lung_right"], L["liver"], L["visceral_fat"])


def paint_abdominal_organs(b: Body) -> None:
    """Liver (two lobes under the diaphragm), kidneys with their fat, psoas muscles."""
    cv, an, hs, wf, spine = b.cv, b.an, b.hs, b.wf, b.spine
    inside_abd = INSIDE_ABDOMEN
    lv = an["liver"] * hs * (1.0 if b.male else 0.92)
    z_liver = b.z_dome_r - 62 * lv

    def below_dia(z, y, x):
        return z < b.z_dia(z, y, x) - 4

    cv.ellipsoid(L["liver"], (62 * wf, 8, z_liver), (95 * lv, 80 * lv, 72 * lv),
                 only=inside_abd + (L["lung_right"],), cond=below_dia)
    cv.ellipsoid(L["liver"], (-15 * wf, 45, z_liver + 18), (55 * lv, 35 * lv, 35 * lv),
                 only=inside_abd + (L["lung_left"],), cond=below_dia)
    z_l1 = spine.level_z("L1")
    for sgn, lab in ((+1.0, L["kidney_right"]), (-1.0, L["kidney_left"])):
        zc = z_l1 - (12 if sgn > 0 else -5) + an["kidney_shift_mm"]
        kc = (sgn * (58 * wf), float(b.y_spine(zc)) + 2, zc)
        rot = rot_from_axis((sgn * -0.25, 0.1, 1.0))
        cv.ellipsoid(L["visceral_fat"], kc, (62 * hs, 38, 34), rot=rot,
                     only=inside_abd + (L["other_muscle"],))
        cv.ellipsoid(lab, kc, (52 * hs, 27, 24), rot=rot, only=inside_abd + (L["other_muscle"],))

    # psoas muscles along the lumbar spine
    z_t12, z_hip = spine.level_z("T12"), b.z_hip
    for sgn in (+1.0, -1.0):
        def pcx(z, s=sgn):
            return s * (spine.av(np.clip(z, spine.z_s1, None)) + interp_profile([0, 1], [8, 30])(
                (z_t12 - z) / (z_t12 - z_hip)))

        def pr(z):
            return interp_profile([0, 0.5, 1], [7, 22, 24])((z_t12 - z) / (z_t12 - z_hip)) \
                * math.sqrt(b.lean)

        cv.zcyl(L["other_muscle"], z_hip, z_t12, pcx,
                lambda z: b.y_spine(np.clip(z, spine.z_s1, None)) + 5, pr, pr,
                only=inside_abd + (L["other_muscle"],))


def paint_thorax(b: Body) -> None:
    """Heart (with its blood pool recorded for the images), the aorta (the unaged one recorded
    for the age-effect mask), the airway and the thyroid, in this order."""
    heart_c, h_rot, h_rad = _paint_heart(b)
    root = _paint_aorta(b, heart_c, h_rot, h_rad)
    _paint_airway_and_thyroid(b, root)


def _paint_heart(b: Body) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cv = b.cv
    hf = b.an["heart"] * b.hs * (1.0 if b.male else 0.9)
    he = b.ev["heart"]
    y_mid_th = float(b.b_ant_lean(b.zt(0.78))) * 0.25
    heart_c = np.array([-22.0 * b.wf, y_mid_th + 10, b.z_dome_r + 22 * hf])
    h_axis = np.array([-0.55, 0.55, -0.45])
    h_rot = rot_from_axis(h_axis)
    h_rad = np.array([62, 46, 48]) * hf
    pf = he["pericardial_fat_mm"]
    cv.ellipsoid(L["pericardial_fat"], heart_c, h_rad + pf, rot=h_rot, only=HEART_ONLY)
    cv.ellipsoid(L["heart"], heart_c, h_rad, rot=h_rot,
                 only=HEART_ONLY + (L["pericardial_fat"],))
    b.painted.pool = cv.ellipsoid(None, heart_c, h_rad * 0.62, rot=h_rot)
    return heart_c, h_rot, h_rad


def _paint_aorta(b: Body, heart_c: np.ndarray, h_rot: np.ndarray, h_rad: np.ndarray
                 ) -> np.ndarray:
    """The aorta at its aged diameter and arch height; returns its root."""
    cv, spine, p = b.cv, b.spine, b.params
    ae = b.ev["aorta"]
    root = heart_c + h_rot[:, 0] * (-0.55 * h_rad[0]) + np.array([10.0, 0.0, 0.0])
    x_desc = -18.0 * b.wf + b.an["aorta_x_mm"]
    d_ao0 = p.baselines["aorta"]["diameter_mm"]
    arch_h0 = p.baselines["aorta"]["arch_height_mm"]

    def y_desc(z):
        # the descending aorta lies left-anterior of the spine (placed for the unaged diameter)
        return b.y_spine(z) + spine.bv(z) + d_ao0 * 0.4 + 3

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
        pts = resample_curve(pts, 0.4 * min(b.grid.spacing))
        r = np.interp(np.linspace(0, 1, len(pts)), np.linspace(0, 1, len(r)), r)
        return pts, r

    ao_only = HEART_ONLY + (L["other_muscle"], L["pericardial_fat"], L["airway"])
    b.painted.aorta_base = cv.tube(None, *aorta_path(d_ao0, arch_h0))
    cv.tube(L["aorta"], *aorta_path(ae["diameter_mm"], ae["arch_height_mm"]), only=ao_only)
    return root


def _paint_airway_and_thyroid(b: Body, root: np.ndarray) -> None:
    """Trachea down to the carina (placed by the unaged arch) and the main bronchi; the two
    thyroid lobes."""
    cv, spine = b.cv, b.spine
    arch_h = b.params.baselines["aorta"]["arch_height_mm"]
    z_carina = root[2] + 0.6 * arch_h
    zt_ = np.arange(b.z_top + 10, z_carina, -1.5)

    def y_tr(z):
        return b.y_spine(z) + spine.bv(z) + 20

    tr = np.stack([np.zeros_like(zt_) + 2, y_tr(zt_), zt_], 1)
    air_only = (L["soft_tissue"], L["other_muscle"], L["lung_left"], L["lung_right"])
    cv.tube(L["airway"], resample_curve(tr, 1.0), 8.0 * b.hs, only=air_only)
    car = tr[-1]
    for sgn in (+1.0, -1.0):
        br = np.stack([np.linspace(car[0], sgn * 45, 30), np.full(30, car[1] - 3),
                       np.linspace(car[2], car[2] - 35, 30)], 1)
        cv.tube(L["airway"], br, 5.5, only=air_only)
    z_thy = b.zt(0.955)
    for sgn in (+1.0, -1.0):
        cv.ellipsoid(L["thyroid"], (sgn * 17 + 2, float(y_tr(z_thy)) + 3, z_thy), (9, 9, 22),
                     only=(L["other_muscle"], L["soft_tissue"]))
