"""Painters of the trunk: its wall (skin, subcutaneous fat, muscle; the upper thighs inside the
pelvis outline) and its cavities (soft tissue, the lungs above the diaphragm, visceral fat
marbling the abdomen)."""

from __future__ import annotations

import numpy as np
from scipy import special

from bodyage_core.synth.canvas import interp_profile, smooth_noise
from bodyage_core.synth.painters.body import Body, L


def paint_trunk_wall(b: Body) -> None:
    """Skin, subcutaneous fat and muscle of the trunk where the legs left background; the
    (aged) upper thigh muscles inside the pelvis outline."""
    cv, skin = b.cv, b.skin
    a_lean, b_ant_lean, b_post_lean, fat = b.a_lean, b.b_ant_lean, b.b_post_lean, b.fat
    z_tr0, z_tr1 = b.zt(0.29), b.z_top + 10

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
    f_thigh = b.thigh["csa_factor"]
    for sgn in (+1.0, -1.0):
        cv.zcyl(L["thigh_muscles"], b.zt(0.33) - 1, b.z_thigh_top,
                lambda z, s=sgn: b.leg_x(z, s), b.leg_y,
                lambda z: b.r_thigh(z, f_thigh), lambda z: b.r_thigh(z, f_thigh),
                only=(L["other_muscle"],))


def paint_cavities(b: Body) -> None:
    """The body cavity (soft tissue), the lungs (thoracic cavity minus mediastinum, above the
    diaphragm) and the visceral fat marbling the abdomen below it: the first draw from the
    noise stream."""
    cv, T, zt, g = b.cv, b.T, b.zt, b.grid
    cv.zcyl(L["soft_tissue"], b.z_cav0, b.z_apex, 0.0, 0.0, b.cav_a, b.cav_b_ant, b.cav_b_post,
            only=(L["other_muscle"], L["thigh_muscles"]))

    med_t = interp_profile([0.70, 0.86, 0.92, 0.955], [24, 20, 16, 10])
    lung_lab = {+1.0: L["lung_right"], -1.0: L["lung_left"]}
    for sgn in (+1.0, -1.0):
        def lcond(z, y, x, s=sgn):
            return (s * x > med_t(T(z))) & (z > b.z_dia(z, y, x))

        cv.zcyl(lung_lab[sgn], zt(0.62), b.z_apex, 0.0, 0.0, b.cav_a, b.cav_b_ant, b.cav_b_post,
                only=(L["soft_tissue"],), cond=lcond)

    # visceral fat marbling in the abdominal cavity (below the diaphragm)
    tex_v = smooth_noise(b.rng, g.shape, (g.spacing[2], g.spacing[1], g.spacing[0]), 22.0)
    # a fixed threshold of the (unit-variance) texture: the fat share does not depend on which
    # voxels other organs took, so ageing elsewhere never moves the visceral fat
    frac = float(np.clip(0.2 * b.vis_f, 0.05, 0.7))
    thr = float(special.ndtri(1 - frac))
    abd = (cv.labels == L["soft_tissue"]) & (b.zs[:, None, None] < zt(0.74))
    if abd.any():
        vf = abd & (tex_v >= thr)
        cv.labels[vf] = L["visceral_fat"]
