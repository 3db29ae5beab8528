"""Painters of the limbs: the legs (skin, fat, muscle, the thigh muscles), the arms alongside
the trunk, and the unaged thigh-muscle compartment the age-effect mask needs."""

from __future__ import annotations

import math

import numpy as np

from bodyage_core.synth.canvas import interp_profile
from bodyage_core.synth.painters.body import Body, L


def paint_legs(b: Body) -> None:
    """Both legs from below the field of view to the crotch: skin, subcutaneous fat, muscle and
    the (aged) thigh muscles."""
    cv, T, zt, skin = b.cv, b.T, b.zt, b.skin
    z_leg0, z_leg1 = float(b.zs[0]) - 10, zt(0.40)
    for sgn in (+1.0, -1.0):
        def cx(z, s=sgn):
            return b.leg_x(z, s)

        def rl(z, f=1.0):
            t = T(z)
            return b.r_leg_t(t) * np.sqrt(np.where(t > 0.06, f, 1.0))

        def rout(z):
            return rl(z, b.th_base) + b.fat_leg_t(T(z)) + skin

        cv.zcyl(L["skin"], z_leg0, z_leg1, cx, b.leg_y, rout, rout)
        cv.zcyl(L["subcutaneous_fat"], z_leg0, z_leg1, cx, b.leg_y,
                lambda z: rout(z) - skin, lambda z: rout(z) - skin)
        cv.zcyl(L["other_muscle"], z_leg0, z_leg1, cx, b.leg_y, rl, rl)
        cv.zcyl(L["thigh_muscles"], zt(0.06), zt(0.33), cx, b.leg_y,
                lambda z: rl(z, b.thigh["csa_factor"]), lambda z: rl(z, b.thigh["csa_factor"]))


def paint_arms(b: Body) -> None:
    """Both arms alongside the trunk (skin, fat, muscle, humerus), where nothing is yet."""
    cv, T, zt, skin = b.cv, b.T, b.zt, b.skin
    male, hs = b.male, b.hs
    ak = [0.28, 0.36, 0.45, 0.62, 0.75, 0.88, 0.94, 0.96]
    r_arm = np.array([22, 26, 30, 32, 38, 42, 40, 0]) * (1.0 if male else 0.88) * hs ** 0.5
    r_arm *= math.sqrt(b.lean)
    fat_arm_t = interp_profile(ak, np.array([4, 6, 8, 9, 10, 10, 9, 0]) * (1.0 if male else 1.6)
                               * b.fat_f)
    r_arm_t = interp_profile(ak, r_arm)

    def arm_r(z):
        return r_arm_t(T(z)) + fat_arm_t(T(z)) + skin

    def trunk_out(z):
        t = T(z)
        tt = np.minimum(t, 0.935)
        zz = zt(tt)
        return np.where(t < 0.36, b.xleg_t(np.minimum(t, 0.4)) + b.r_leg_t(np.minimum(t, 0.4))
                        + b.fat_leg_t(np.minimum(t, 0.4)), b.a_lean(zz) + b.fat(zz))

    for sgn in (+1.0, -1.0):
        def acx(z, s=sgn):
            return s * (trunk_out(z) + skin + b.an["arms_mm"] + arm_r(z))

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


def record_thigh_compartments(b: Body) -> None:
    """The unaged thigh-muscle compartment, for the age-effect mask (not painted); only when
    the thigh muscles age."""
    if b.params.effects.strength("thigh_muscle") <= 0:
        return
    for sgn in (+1.0, -1.0):
        b.painted.thigh_base.append(b.cv.zcyl(
            None, b.zt(0.06), b.z_thigh_top, lambda z, s=sgn: b.leg_x(z, s), b.leg_y,
            lambda z: b.r_thigh(z, b.th_base), lambda z: b.r_thigh(z, b.th_base),
            only=(L["thigh_muscles"], L["subcutaneous_fat"], L["other_muscle"])))
