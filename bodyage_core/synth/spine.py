"""The sagittal spine curve of the phantom (lordosis, kyphosis, cervical lordosis) with its
disc and vertebra intervals along the arc length."""

from __future__ import annotations

import numpy as np

from bodyage_core.synth.canvas import interp_profile


class SpineCurve:
    """Sagittal spine curve from L5/S1 upward: lordosis, kyphosis, cervical lordosis; the disc
    and vertebra intervals along the arc length ``s``."""

    def __init__(self, z_s1: float, y_s1: float, hs: float, dhf: float, levels: list[float],
                 lordosis: float, kyphosis: float):
        heights = []  # (disc_h, vert_h, region)
        for i in range(5):  # L5..L1
            heights.append((9.5 * dhf * levels[i], 25.0, 0))
        for i in range(12):  # T12..T1
            heights.append((4.8 * dhf * levels[5 + i], 22.0 - 6.0 * i / 11.0, 1))
        for i in range(6):  # C7..C2
            heights.append((4.5 * dhf * levels[17 + i], 12.5, 2))
        knots_s = [0.0]
        knots_d = [0.0]
        s = 0.0
        d = 0.0
        self.region_s = [0.0]
        last_region = 0
        for dh, vh, reg in heights:
            dh *= hs
            vh *= hs
            if reg != last_region:
                self.region_s.append(s)
                last_region = reg
            s += dh
            d += dh
            knots_s.append(s)
            knots_d.append(d)
            s += vh
            knots_s.append(s)
            knots_d.append(d)
        self.region_s.append(s)
        self.length = s
        self.knots_s = np.asarray(knots_s)
        self.knots_d = np.asarray(knots_d)
        s_l, s_t = self.region_s[1], self.region_s[2]
        # tangent angle from vertical (degrees, + = heading anterior when going up)
        phi_s = [0.0, s_l, s_l + 1e-3, s_t, s_t + 1e-3, s]
        phi_v = [lordosis / 2, -lordosis / 2, -kyphosis / 2, kyphosis / 2, kyphosis / 2, -12.0]
        ss = np.arange(0.0, s + 1.0, 1.0)
        phi = np.radians(np.interp(ss, phi_s, phi_v))
        zc = z_s1 + np.concatenate([[0], np.cumsum(np.cos(phi[:-1]))])
        yc = y_s1 + np.concatenate([[0], np.cumsum(np.sin(phi[:-1]))])
        self.ss, self.zc, self.yc, self.phi = ss, zc, yc, phi
        self.z_top = float(zc[-1])
        self.z_s1 = z_s1
        self.y_s1 = y_s1
        # vertebral body semi-axes (x, y), canal radius, back-muscle semi-axes per region
        rs = [0.0, s_l, s_t, s]
        self._av = interp_profile(rs, [24 * hs, 19 * hs, 14 * hs, 11 * hs])
        self._bv = interp_profile(rs, [17 * hs, 15 * hs, 13 * hs, 8 * hs])

    def z_of_s(self, s):
        return np.interp(s, self.ss, self.zc)

    def s_of_z(self, z):
        return np.interp(z, self.zc, self.ss)

    def y(self, z):
        return np.interp(z, self.zc, self.yc, left=self.yc[0], right=self.yc[-1])

    def phi_z(self, z):
        return np.interp(z, self.zc, self.phi)

    def av(self, z):
        return self._av(self.s_of_z(z))

    def bv(self, z):
        return self._bv(self.s_of_z(z))

    def disc_cum(self, s):
        return np.interp(s, self.knots_s, self.knots_d)

    def level_z(self, level: str) -> float:
        """z of the centre of a vertebra, e.g. 'L1', 'T7', 'L4'."""
        region, num = level[0], int(level[1:])
        idx = {"L": 5 - num, "T": 5 + 12 - num, "C": 5 + 12 + 7 - num}[region]
        s0, s1 = self.knots_s[2 * idx + 1], self.knots_s[2 * idx + 2]
        return float(self.z_of_s(0.5 * (s0 + s1)))
