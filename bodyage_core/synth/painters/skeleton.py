"""Painters of the skeleton: pelvis and femurs (marrow recorded for the images), the knees
(condyles, plateaus, patellae, joint spaces, tibiae), and the back: the back muscles, the
vertebral column of the aged spine (canal, posterior elements, sacrum) with its discs at
sub-voxel partial volume, and the unaged column and muscles the age-effect mask needs."""

from __future__ import annotations

import numpy as np

from bodyage_core.synth.canvas import Region, interp_profile, resample_curve
from bodyage_core.synth.painters.body import Body, L
from bodyage_core.synth.spine import SpineCurve

BONE_ONLY = (L["other_muscle"], L["thigh_muscles"], L["soft_tissue"], L["visceral_fat"],
             L["subcutaneous_fat"])
KNEE_ONLY = (L["other_muscle"], L["thigh_muscles"], L["subcutaneous_fat"], L["femur"])
# what the back muscles may take; the column also takes them, the heart and its fat
IN_TRUNK = (L["other_muscle"], L["soft_tissue"], L["visceral_fat"], L["subcutaneous_fat"],
            L["lung_left"], L["lung_right"], L["kidney_left"], L["kidney_right"],
            L["thigh_muscles"], L["pelvis"], L["aorta"], L["liver"], L["airway"])
SPINE_ONLY = IN_TRUNK + (L["back_muscles"], L["heart"], L["pericardial_fat"])


def paint_pelvis_and_femurs(b: Body) -> None:
    """Iliac wings, hip sockets and pubic rami; the femurs from head to knee (heads and shafts
    with their marrow recorded)."""
    cv, zt, a_lean, spine = b.cv, b.zt, b.a_lean, b.spine
    z_hip = b.z_hip
    for sgn in (+1.0, -1.0):
        def iwx(z, s=sgn):
            return s * interp_profile([zt(0.44), zt(0.53)], [0.42, 0.62])(z) * a_lean(z)

        def iwy(z):
            return interp_profile([zt(0.44), zt(0.53)], [spine.y_s1 + 10, spine.y_s1 + 25])(z)

        cv.zcyl(L["pelvis"], zt(0.44), zt(0.53), iwx, iwy, 9.0, 48.0, only=BONE_ONLY)
    femoral = []
    for sgn in (+1.0, -1.0):
        xh = sgn * 0.52 * float(a_lean(z_hip))
        hip = np.array([xh, 5.0, z_hip])
        cv.ellipsoid(L["pelvis"], hip, (32, 32, 32), only=BONE_ONLY)
        troch = np.array([sgn * (abs(xh) + 38), -2.0, z_hip - 18])
        kc = np.array([sgn * b.xk, 0.0, b.z_knee + 45])
        shaft0 = np.array([sgn * (abs(xh) + 30), 0.0, z_hip - 70])
        femoral.append((hip, troch, shaft0, kc))
        cv.zcyl(L["pelvis"], z_hip - 35, z_hip - 5, sgn * 28.0, float(b.b_ant_lean(z_hip)) - 28,
                12.0, 14.0, only=BONE_ONLY)
    marrow = b.painted.marrow
    for hip, troch, shaft0, kc in femoral:
        pts = resample_curve(np.stack([hip, troch, shaft0, kc]), 1.0)
        rad = np.interp(np.arange(len(pts)), [0, 20, len(pts) - 1], [16, 15, 14])
        cv.ellipsoid(L["femur"], hip, (24, 24, 24), only=BONE_ONLY + (L["pelvis"],))
        cv.tube(L["femur"], pts, rad, only=BONE_ONLY + (L["pelvis"],))
        marrow.append(cv.ellipsoid(None, hip, (20, 20, 20)))
        marrow.append(cv.tube(None, pts, rad - 4.5))


def paint_knees(b: Body) -> None:
    """Femoral condyles and tibial plateaus around the unaged joint space, the patellae, the
    joint spaces (recorded for the images) and the tibiae."""
    cv, z_knee = b.cv, b.z_knee
    js0 = b.params.baselines["knee"]["joint_space_mm"]
    for sgn in (+1.0, -1.0):
        kx, ky = sgn * b.xk, 0.0
        cv.ellipsoid(L["knee"], (kx, ky - 4, z_knee + js0 / 2 + 24), (40, 30, 24), only=KNEE_ONLY)
        cv.ellipsoid(L["knee"], (kx, ky - 4, z_knee - js0 / 2 - 22), (38, 30, 22), only=KNEE_ONLY)
        cv.ellipsoid(L["knee"], (kx, ky + 36, z_knee + 28), (19, 9, 20), only=KNEE_ONLY)
        jr = cv.zcyl(L["knee"], z_knee - 12, z_knee + 12, kx, ky - 4, 38.0, 28.0,
                     only=KNEE_ONLY + (L["knee"],))
        b.painted.joints.append(jr)
        tib = np.stack([np.full(20, kx), np.full(20, ky - 2),
                        np.linspace(z_knee - 40, float(b.zs[0]) - 20, 20)], 1)
        cv.tube(L["other_bone"], resample_curve(tib, 1.0), 14.0,
                only=(L["other_muscle"], L["subcutaneous_fat"]))


def paint_back(b: Body) -> None:
    """The back muscles (aged; their unaged extent recorded as subcutaneous fat first), the
    vertebral column of the aged spine (the unaged one recorded, not painted), the sacrum and
    the discs."""
    cv, spine = b.cv, b.spine
    bm_a, bm_b = b.bm_a, b.bm_b

    def zb(z):
        return np.clip(z, spine.z_s1, None)

    def mcy(z, f):
        return b.y_spine(z) - spine.bv(z) - 5 - bm_b(z, f)

    z_bm0 = spine.z_s1 - 50
    f_act = b.ev["back_muscle"]["csa_factor"]
    for sgn in (+1.0, -1.0):
        def mcx(z, f, s=sgn):
            return s * (6 + bm_a(z, f))

        for lab, f in ((L["subcutaneous_fat"], b.bm_base), (L["back_muscles"], f_act)):
            reg = cv.zcyl(lab, z_bm0, spine.z_top - 10,
                          lambda z, f=f, mcx=mcx: mcx(zb(z), f),
                          lambda z, f=f: mcy(zb(z), f),
                          lambda z, f=f: bm_a(zb(z), f), lambda z, f=f: bm_b(zb(z), f),
                          only=IN_TRUNK)
            if lab == L["subcutaneous_fat"]:
                b.painted.back_muscle_base.append(reg)

    _, b.painted.spine_base = _paint_column(b, spine, paint=False)
    column, _ = _paint_column(b, b.spine_aged, paint=True)
    # sacrum (not aged)
    z_s1 = spine.z_s1
    sac_len = 95 * b.hs
    cv.zcyl(L["vertebrae"], z_s1 - sac_len, z_s1, 0.0,
            lambda z: spine.y_s1 - 8 - 40 * (z_s1 - z) / sac_len,
            lambda z: 45 - 30 * (z_s1 - z) / sac_len, 13.0, 13.0, only=SPINE_ONLY)
    if column is not None:
        _paint_discs(b, column)


def _paint_column(b: Body, sp: SpineCurve, paint: bool
                  ) -> tuple[Region | None, list[Region | None]]:
    """Vertebral bodies, posterior elements, canal wall and spinal canal along ``sp`` (painted
    only with ``paint``); returns the bodies' region and every part's."""
    cv = b.cv
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
        return SPINE_ONLY + tuple(extra) if paint else None

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


def _paint_discs(b: Body, column: Region) -> None:
    """Discs: the analytic partial volume of the aged spine's discs along its axis, in the
    column's vertebra voxels; a voxel at least half disc is labelled disc."""
    g, cv = b.grid, b.cv
    sl, cmask = column
    zc = b.zs[sl[0]][:, None, None].astype(np.float64)
    yc = b.ys[sl[1]][None, :, None].astype(np.float64)
    sa = b.spine_aged
    phi = sa.phi_z(zc)
    s_vox = sa.s_of_z(zc) + (yc - sa.y(zc)) * np.sin(phi)
    h = g.spacing[1] * np.abs(np.sin(phi)) + g.spacing[2] * np.cos(phi)
    frac = (sa.disc_cum(s_vox + h / 2) - sa.disc_cum(s_vox - h / 2)) / h
    frac = np.broadcast_to(frac, cmask.shape)
    in_col = cmask & (cv.labels[sl] == L["vertebrae"])
    b.painted.disc_frac = (sl, np.where(in_col, frac, 0.0).astype(np.float32))
    lab = cv.labels[sl]
    lab[in_col & (frac >= 0.5)] = L["intervertebral_discs"]
