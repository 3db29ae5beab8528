"""The context every painter shares: one subject's body frame on one grid.

:class:`Body` holds the grid and its canvas (coordinates and the label map being painted), the
subject's parameters and image-noise stream, the scalars every organ is sized by (stature, width,
depth, lean and fat factors), the body-length coordinate ``t`` (knee joint 0, chin 1), the two
spine curves (aged: the vertebral column alone; unaged: where every other organ is placed), and
the outline profiles several painters read: the trunk wall, the legs, the body cavity and the
diaphragm. Nothing here paints or draws a random number.

:class:`Painted` collects what the painters leave for the images and the age-effect mask (the
heart's blood pool, femur marrow, knee joints, disc partial volume, unaged regions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bodyage_core.synth.anatomy import LABEL_IDS
from bodyage_core.synth.canvas import Canvas, Region, interp_profile
from bodyage_core.synth.grid import SynthGrid
from bodyage_core.synth.params import SubjectParams, noise_rng
from bodyage_core.synth.spine import SpineCurve

L = LABEL_IDS


@dataclass
class Painted:
    """What the painters record besides the labels, for the images and the age-effect mask."""

    pool: Region | None = None                    # the heart's blood pool
    marrow: list[Region | None] = field(default_factory=list)    # femur marrow
    joints: list[Region | None] = field(default_factory=list)    # knee joint spaces
    disc_frac: tuple | None = None                # (slices, float32 disc fraction) in the column
    spine_base: list[Region | None] = field(default_factory=list)      # the unaged column
    aorta_base: Region | None = None              # the unaged aorta
    back_muscle_base: list[Region | None] = field(default_factory=list)
    thigh_base: list[Region | None] = field(default_factory=list)


@dataclass
class Body:
    """One subject's body frame on ``grid`` (see the module docstring); painters paint into
    ``cv.labels`` and record into ``painted``."""

    params: SubjectParams
    grid: SynthGrid
    an: dict[str, Any] = field(init=False)        # the subject's anatomy draws
    ev: dict[str, Any] = field(init=False)        # the effect values at the subject's age
    rng: np.random.Generator = field(init=False)  # the image-noise stream (visceral fat first)
    cv: Canvas = field(init=False)
    painted: Painted = field(default_factory=Painted)

    def __post_init__(self) -> None:
        g, p = self.grid, self.params
        an = self.an = p.anatomy
        ev = self.ev = p.effect_values
        self.rng = noise_rng(p)
        cv = self.cv = Canvas(g)
        self.ys, self.zs = cv.ys, cv.zs
        male = self.male = p.sex == "M"
        hs = self.hs = p.stature
        self.wf = an["width"] * hs ** 0.5
        df = self.df = an["depth"] * hs ** 0.5
        bmi = p.bmi
        lean = self.lean = an["muscle"] * (1 + 0.008 * (bmi - 25))
        self.fat_f = an["fat"] * max(0.25, (bmi - 15) / 10) ** 1.3
        self.vis_f = an["visceral"] * max(0.2, (bmi - 17) / 8) ** 1.2 * (1.3 if male else 0.75)

        self.z_top = float(self.zs[-1]) + g.spacing[2] / 2
        self.Lk = 990.0 * hs                           # knee joint to chin
        z_chin = self.z_top - an["top_mm"]
        self.z_knee = z_chin - self.Lk
        zt = self.zt

        # -- spine ---------------------------------------------------------------------------
        sp_e = ev["spine"]
        sp_b = p.baselines["spine"]
        # The actual (aged) spine moves only the vertebral column; every other organ is placed
        # relative to the unaged spine, so the spine effect stays inside the spine's mask.
        spine_args = dict(z_s1=zt(0.475), y_s1=an["sacrum_y_mm"] * df, hs=hs,
                          levels=[an[f"disc_{i}"] for i in range(23)],
                          lordosis=an["lordosis_deg"])
        self.spine_aged = SpineCurve(dhf=sp_e["disc_height_factor"],
                                     kyphosis=sp_e["kyphosis_deg"], **spine_args)
        spine = self.spine = SpineCurve(dhf=sp_b["disc_height_factor"],
                                        kyphosis=sp_b["kyphosis_deg"], **spine_args)
        self.bm_base = p.baselines["back_muscle"]["csa_factor"]
        sexm = 1.0 if male else 0.85
        s_knots = [0.0, spine.region_s[1], spine.region_s[2], spine.length]
        self.bm_a_base = interp_profile(
            s_knots, [30 * sexm * hs, 24 * sexm * hs, 17 * sexm * hs, 14 * sexm * hs])
        self.bm_b_base = interp_profile(
            s_knots, [27 * sexm * hs, 21 * sexm * hs, 15 * sexm * hs, 13 * sexm * hs])

        # -- trunk profiles (t from knee=0 to chin=1) --------------------------------------------
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
        self.a_lean_t = interp_profile(tk, np.asarray(a_l) * self.wf * math.sqrt(lean))
        self.b_ant_t = interp_profile(tk, np.asarray(b_a) * df * math.sqrt(lean))
        self.post_t = interp_profile(tk, np.asarray(post) * df * math.sqrt(lean))
        self.fat_t = interp_profile(tk, np.asarray(fat_k) * self.fat_f)
        belly = max(0.0, bmi - 24) * 3.0 * (1.3 if male else 0.7) * an["visceral"] ** 0.5
        self.belly_t = interp_profile([0.42, 0.5, 0.58, 0.66, 0.72],
                                      [0, belly * 0.6, belly, belly * 0.7, 0])
        self.spine_lo = zt(0.40)
        self.spine_hi = spine.z_top
        self.skin = max(2.5, 0.6 * min(g.spacing))

        # -- legs ----------------------------------------------------------------------------
        lk = [-0.40, -0.15, -0.05, 0.0, 0.05, 0.12, 0.22, 0.30, 0.36, 0.40]
        r_leg = np.array([32, 44, 40, 42, 44, 50, 56, 62, 66, 66]) * (1.0 if male else 0.93)
        r_leg = r_leg * hs ** 0.5 * math.sqrt(lean) * an["width"]
        fat_leg = np.array([5, 7, 8, 8, 10, 12, 13, 14, 14, 14]) * (1.0 if male else 1.8) \
            * self.fat_f
        self.r_leg_t = interp_profile(lk, r_leg)
        self.fat_leg_t = interp_profile(lk, fat_leg)
        knee_gap = 4.0
        xk = self.xk = float(self.r_leg_t(0.0) + self.fat_leg_t(0.0) + self.skin + knee_gap)
        x_thigh = max(xk + 20, 0.5 * float(self.a_lean_t(0.36)))
        self.xleg_t = interp_profile([-0.4, 0.0, 0.36, 0.40], [xk - 5, xk, x_thigh, x_thigh])
        self.yleg_t = interp_profile([-0.4, 0.0, 0.36, 0.40], [-15, 0, -8, -8])
        self.thigh = ev["thigh_muscle"]
        self.th_base = p.baselines["thigh_muscle"]["csa_factor"]
        self.z_thigh_top = zt(0.42)
        self.taper = interp_profile([0.33, 0.42], [1.0, 0.3])
        self.z_hip = zt(0.41)

        # -- body cavity and diaphragm ---------------------------------------------------------
        self.wall_lat = 16.0 * math.sqrt(lean)
        self.z_cav0, self.z_apex = zt(0.40), zt(0.955)
        cav_k = [0.40, 0.45, 0.70, 0.80, 0.90, 0.935, 0.955]
        self.cav_a_f = interp_profile(cav_k, [0.55, 0.85, 0.88, 0.85, 0.75, 0.45, 0.25])
        # diaphragm domes
        self.z_dome_r = zt(0.745) + 8 * (an["lung"] - 1) * 100 / 4
        self.z_dome_l = self.z_dome_r - 15
        self.a_mid = float(self.cav_a(zt(0.72)))

    # -- the body-length coordinate ---------------------------------------------------------------
    def T(self, z):
        """``t`` of body height ``z`` (mm): 0 at the knee joint, 1 at the chin."""
        return (np.asarray(z, np.float64) - self.z_knee) / self.Lk

    def zt(self, t):
        """Body height (mm) of ``t``."""
        return self.z_knee + t * self.Lk

    # -- spine and back muscles (the unaged spine) ---------------------------------------------------
    def y_spine(self, z):
        return self.spine.y(z)

    def bm_a(self, z, f=1.0):
        """Back-muscle half-width at ``z`` for cross-section factor ``f``."""
        return self.bm_a_base(self.spine.s_of_z(z)) * math.sqrt(f * self.lean)

    def bm_b(self, z, f=1.0):
        """Back-muscle half-depth at ``z`` for cross-section factor ``f``."""
        return self.bm_b_base(self.spine.s_of_z(z)) * math.sqrt(f * self.lean)

    def spine_post(self, z):
        """Posterior lean depth along the spine (+ muscles at their unaged size) in the trunk."""
        return -self.y_spine(z) + self.spine.bv(z) + 8 + 2 * self.bm_b(z, self.bm_base) + 4

    # -- the trunk wall ---------------------------------------------------------------------------
    def a_lean(self, z):
        """Lean half-width of the trunk."""
        return self.a_lean_t(self.T(z))

    def b_ant_lean(self, z):
        """Lean anterior half-depth of the trunk (with the belly)."""
        return self.b_ant_t(self.T(z)) + self.belly_t(self.T(z))

    def b_post_lean(self, z):
        """Lean posterior half-depth of the trunk (the back follows the spine)."""
        z = np.asarray(z, np.float64)
        lo, hi = self.spine_lo, self.spine_hi
        sp = np.where((z > lo) & (z < hi), self.spine_post(np.clip(z, lo, hi)), 0)
        return np.maximum(self.post_t(self.T(z)), sp)

    def fat(self, z):
        """Subcutaneous fat thickness of the trunk."""
        return self.fat_t(self.T(z))

    # -- legs ---------------------------------------------------------------------------------------
    def r_thigh(self, z, f):
        """Thigh-muscle radius (tapering into the gluteal region above the crotch)."""
        t = self.T(z)
        return self.r_leg_t(t) * math.sqrt(f) * self.taper(t)

    def leg_x(self, z, s):
        """x of the centre of the leg on side ``s`` (+1 right, -1 left)."""
        return s * self.xleg_t(self.T(z))

    def leg_y(self, z):
        return self.yleg_t(self.T(z))

    # -- body cavity and diaphragm ------------------------------------------------------------------
    def cav_a(self, z):
        return np.maximum(0, self.a_lean(z) * self.cav_a_f(self.T(z)) - self.wall_lat * 0.3)

    def cav_b_ant(self, z):
        return np.maximum(0, self.b_ant_lean(z) - 18)

    def cav_b_post(self, z):
        t = self.T(z)
        thor = -self.y_spine(z) + self.spine.bv(z) * np.where(t > 0.7, 1.0, 0.3)
        return np.maximum(5, thor)

    def z_dia(self, z, y, x):
        """Height of the diaphragm (right dome higher) at ``(y, x)``."""
        top = np.where(x > 0, self.z_dome_r, self.z_dome_l)
        lat = np.clip((np.abs(x) - 45) / max(self.a_mid, 1), 0, None)
        bpost = np.clip(-(y - 0) / 120.0, 0, None)
        return top - 60 * lat ** 2 - 55 * bpost ** 2
