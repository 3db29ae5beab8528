"""Acquisition quality of the synthetic cohort: seeded per-subject degradations, with their truth.

UK Biobank neck-to-knee Dixon data is acquired in six axial stations along z; some subjects'
images are noisier, ghosted by breathing, shaded by a strong coil bias, have water and fat
swapped in one station, a field of view that cuts the knees or the neck, or one station shifted
against the others. This module plants those degradations in the generated water and fat images
*after* the phantom (:func:`bodyage_core.synth.phantom.generate_subject` calls
:func:`apply_acquisition`), so the labels and the age-effect mask stay the truth of the anatomy
and the cohort gets a known heteroscedastic structure: degraded subjects are harder to age.

Setting (``bodyage synth --acquisition``, ``sample_subject(acquisition=...)``,
``generate_cohort(acquisition=...)``)::

    NAME=RATE[@STRENGTH][,NAME=RATE[@STRENGTH]...]      or  typical  or  none

``RATE`` is the fraction of subjects affected (0-1), ``STRENGTH`` the effect's size (its default
when left out):

==========  ==============================================================  ========
name        what an affected subject gets                                   strength
==========  ==============================================================  ========
noise       Rician noise raised to STRENGTH x the site's noise SD (the        2.0
            background noise is STRENGTH times higher)
ghost       motion ghosts in one trunk station (2, 3 or 4): two faint copies  0.15
            of the station shifted by +-d along y (anterior-posterior, the
            phase-encoding direction, wrapping around), each STRENGTH/2 of
            the image; d 1/8-1/3 of the y field of view
bias        an extra smooth multiplicative field exp(sum c_k m_k) (quadratic  0.3
            in x, y, z), coefficients c_k ~ N(0, STRENGTH)
swap        water and fat exchanged inside one station's z-range (any of the  -
            six; no strength)
truncate    field of view cut: zeros beyond a z, STRENGTH mm off the knees    60
            (bottom) or the neck (top), side drawn per subject
shift       one station (any of the six) shifted in-plane by STRENGTH mm in   4.0
            a random direction (linear interpolation), labels unchanged
==========  ==============================================================  ========

``typical`` is ``noise=0.1@1.5,ghost=0.08,bias=0.1,swap=0.02,truncate=0.03,shift=0.05``.
``None`` / ``""`` / ``"none"`` = off (the default): the images are then bit-identical to a
cohort made without the option. Unknown names are refused with a ConfigError naming the valid
ones; a name may appear once.

Stations: the grid's z extent is cut into six equal slabs, station 0 at the knees (bottom) to 5
at the neck; station ``k`` is the voxels whose centre lies in ``[z_k, z_k+1)`` mm.

Determinism: each effect draws from its own stream ``SeedSequence([seed, index, 0xAC9, k])``
(``k`` the effect's position in the table), so whether a subject is affected and how depends
only on the cohort seed, the subject index and that effect's rate and strength, not on the other
effects, the age or the anatomy. Effects are applied in the table's order shift, bias, ghost,
noise, swap, truncate (the images are then rounded to integers again, as scanner data).

Truth: ``truth.json`` gains ``acquisition``: ``{name: {...}}`` for the effects that hit the
subject (``{}`` when none; absent when the option is off) with, per effect, what was done
(``factor``; ``station``, ``shift_mm``, ``amplitude``; ``strength``, ``coefficients``,
``range``; ``station``, ``z_mm``, ``slices``; ``side``, ``z_mm``, ``slices``; ``station``,
``dx_mm``, ``dy_mm``) -- ``slices`` are ``[first, last + 1)`` voxel indices along z and ``z_mm``
world mm. The cohort index (``cohort.sqlite``, the subjects' ``meta`` JSON) carries the same
dict and ``acquisition_degraded`` (the number of effects that hit the subject).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from bodyage_core.errors import ConfigError

#: name -> (default strength or None when the effect takes none, what the strength is)
ACQUISITION_EFFECTS: dict[str, tuple[float | None, str]] = {
    "shift": (4.0, "in-plane shift of one station (mm)"),
    "bias": (0.3, "SD of the extra log bias-field coefficients"),
    "ghost": (0.15, "total amplitude of the two motion ghosts (fraction of the image)"),
    "noise": (2.0, "noise SD as a multiple of the site's"),
    "swap": (None, "(none: water and fat exchanged in one station)"),
    "truncate": (60.0, "mm cut off the knees or the neck"),
}
PRESETS = {"typical": "noise=0.1@1.5,ghost=0.08,bias=0.1,swap=0.02,truncate=0.03,shift=0.05"}
N_STATIONS = 6
GHOST_STATIONS = (2, 3, 4)   # pelvis/abdomen, abdomen/liver, thorax: where breathing moves
_SALT = 0xAC9
SYNTAX = "NAME=RATE[@STRENGTH][,...], e.g. noise=0.3@2,ghost=0.2,swap=0.05"
_NUM = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_PART = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*" + _NUM + r"\s*(?:@\s*" + _NUM + r")?\s*$")


@dataclass(frozen=True)
class AcquisitionRule:
    name: str
    rate: float
    strength: float | None

    def to_text(self) -> str:
        return f"{self.name}={self.rate:g}" + ("" if self.strength is None
                                               else f"@{self.strength:g}")


@dataclass(frozen=True)
class Acquisition:
    """The acquisition-degradation rules of a cohort (empty = off). Build with :meth:`parse`."""

    rules: tuple[AcquisitionRule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules)

    @classmethod
    def parse(cls, text: str | Acquisition | Mapping | None) -> Acquisition:
        """Parse the compact string (see the module docstring). A dict ``{name: rate}`` or
        ``{name: (rate, strength)}`` or an Acquisition pass through."""
        if text is None:
            return cls()
        if isinstance(text, Acquisition):
            return text
        if isinstance(text, Mapping):
            items = []
            for name, v in text.items():
                rate, strength = (v if isinstance(v, (tuple, list)) else (v, None))
                items.append((str(name), rate, strength))
            return cls._build(items, repr(dict(text)))
        s = str(text).strip()
        if not s or s.lower() in ("none", "off"):
            return cls()
        s = PRESETS.get(s.lower(), s)
        items = []
        for part in s.split(","):
            if not part.strip():
                continue
            m = _PART.match(part)
            if not m:
                name = part.split("=")[0].strip()
                if name and name not in ACQUISITION_EFFECTS and re.match(r"^[A-Za-z_]+$", name):
                    cls._unknown(name, s)
                raise ConfigError(f"cannot read {part.strip()!r} in --acquisition {s!r}",
                                  hint=f"write {SYNTAX}; effects: "
                                       f"{', '.join(ACQUISITION_EFFECTS)}")
            items.append((m.group(1), m.group(2), m.group(3)))
        return cls._build(items, s)

    @staticmethod
    def _unknown(name: str, s: str) -> None:
        raise ConfigError(f"unknown acquisition effect {name!r} in --acquisition {s!r}",
                          hint=f"choose from {', '.join(ACQUISITION_EFFECTS)} (or 'typical')")

    @classmethod
    def _build(cls, items, s: str) -> Acquisition:
        rules: dict[str, AcquisitionRule] = {}
        for name, rate, strength in items:
            if name not in ACQUISITION_EFFECTS:
                cls._unknown(name, s)
            if name in rules:
                raise ConfigError(f"acquisition effect {name!r} given more than once in {s!r}")
            default, what = ACQUISITION_EFFECTS[name]
            try:
                r = float(rate)
                st = None if strength is None else float(strength)
            except (TypeError, ValueError):
                raise ConfigError(f"acquisition effect {name!r}: rate and strength must be "
                                  "numbers", hint=f"write {SYNTAX}") from None
            if not (0.0 <= r <= 1.0):
                raise ConfigError(f"acquisition effect {name!r}: rate {r:g} is not in 0-1",
                                  hint="the rate is the fraction of subjects affected")
            if default is None and st is not None:
                raise ConfigError(f"acquisition effect {name!r} takes no strength",
                                  hint=f"write {name}={r:g}")
            if default is not None:
                st = default if st is None else st
                if not math.isfinite(st) or st <= 0 or (name == "noise" and st < 1):
                    raise ConfigError(f"acquisition effect {name!r}: strength {st:g} is not "
                                      "valid", hint=f"{what}; must be > 0"
                                      + (" and >= 1" if name == "noise" else ""))
            rules[name] = AcquisitionRule(name, r, st)
        order = list(ACQUISITION_EFFECTS)
        return cls(tuple(sorted(rules.values(), key=lambda q: order.index(q.name))))

    def to_text(self) -> str:
        return ",".join(r.to_text() for r in self.rules)

    def to_dict(self) -> dict[str, dict[str, float | None]] | None:
        """The settings (JSON-able; ``None`` when off)."""
        if not self.rules:
            return None
        return {r.name: {"rate": r.rate, "strength": r.strength} for r in self.rules}

    def draw(self, seed: int, index: int) -> dict[str, dict[str, Any]]:
        """What hits subject ``index`` of cohort ``seed`` (grid-independent; ``{}``: nothing)."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.rules:
            k = list(ACQUISITION_EFFECTS).index(r.name)
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), _SALT, k]))
            u = rng.random(8)
            if u[0] >= r.rate:
                continue
            st = r.strength
            if r.name == "noise":
                ev: dict[str, Any] = {"factor": st}
            elif r.name == "ghost":
                ev = {"station": int(GHOST_STATIONS[int(u[1] * len(GHOST_STATIONS))]),
                      "shift_fraction": float(1 / 8 + (1 / 3 - 1 / 8) * u[2]),
                      "amplitude": st}
            elif r.name == "bias":
                ev = {"strength": st,
                      "coefficients": [round(float(c), 6) for c in rng.normal(0.0, st, 6)]}
            elif r.name == "swap":
                ev = {"station": int(u[1] * N_STATIONS)}
            elif r.name == "truncate":
                ev = {"side": "bottom" if u[1] < 0.5 else "top", "cut_mm": st}
            else:  # shift
                ang = 2 * math.pi * u[2]
                ev = {"station": int(u[1] * N_STATIONS), "dx_mm": round(st * math.cos(ang), 4),
                      "dy_mm": round(st * math.sin(ang), 4)}
            out[r.name] = ev
        return out


def station_slices(grid) -> list[tuple[int, int, float, float]]:
    """``(first, last + 1, z0_mm, z1_mm)`` of the six stations on ``grid`` (bottom to top)."""
    _, _, zs = grid.axes()
    dz = grid.spacing[2]
    z_lo, z_hi = float(zs[0]) - dz / 2, float(zs[-1]) + dz / 2
    edges = np.linspace(z_lo, z_hi, N_STATIONS + 1)
    out = []
    for k in range(N_STATIONS):
        sel = np.nonzero((zs >= edges[k]) & ((zs < edges[k + 1]) | (k == N_STATIONS - 1)))[0]
        out.append((int(sel[0]), int(sel[-1]) + 1, float(edges[k]), float(edges[k + 1])))
    return out


def apply_acquisition(events: Mapping[str, Mapping[str, Any]], seed: int, index: int,
                      site_noise_sd: float, grid, water: np.ndarray, fat: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, Any]]]:
    """Apply the drawn ``events`` (:meth:`Acquisition.draw`) of subject ``index`` of cohort
    ``seed`` to its ``(Z, Y, X)`` water and fat images (integer-valued float32, scanner units);
    ``site_noise_sd`` is the Rician noise SD the phantom used (scanner units). Returns the new images and the record
    for the truth (the events with their z ranges on this grid)."""
    if not events:
        return water, fat, {}
    w = water.astype(np.float64)
    f = fat.astype(np.float64)
    st = station_slices(grid)
    xs, ys, zs = grid.axes()
    rec: dict[str, dict[str, Any]] = {}
    for name in ACQUISITION_EFFECTS:
        if name not in events:
            continue
        ev = dict(events[name])
        if name == "shift":
            k0, k1, z0, z1 = st[ev["station"]]
            sh = (0.0, ev["dy_mm"] / grid.spacing[1], ev["dx_mm"] / grid.spacing[0])
            for img in (w, f):
                img[k0:k1] = ndimage.shift(img[k0:k1], sh, order=1, mode="nearest")
            ev.update(z_mm=[z0, z1], slices=[k0, k1])
        elif name == "bias":
            c = ev["coefficients"]
            xn = (xs / 250.0)[None, None, :]
            yn = (ys / 200.0)[None, :, None]
            zn = (zs / 555.0)[:, None, None]
            logb = (c[0] * xn + c[1] * yn + c[2] * zn + c[3] * xn * xn + c[4] * yn * yn
                    + c[5] * zn * zn)
            field = np.exp(logb)
            w *= field
            f *= field
            ev["range"] = [round(float(field.min()), 4), round(float(field.max()), 4)]
        elif name == "ghost":
            k0, k1, z0, z1 = st[ev["station"]]
            ny = w.shape[1]
            d = max(1, int(round(ev["shift_fraction"] * ny)))
            for img in (w, f):
                slab = img[k0:k1].copy()
                img[k0:k1] += ev["amplitude"] / 2 * (np.roll(slab, d, 1) + np.roll(slab, -d, 1))
            ev.update(z_mm=[z0, z1], slices=[k0, k1], shift_voxels=d,
                      shift_mm=round(d * grid.spacing[1], 3))
        elif name == "noise":
            # |M + e| with e circular complex Gaussian: the background (Rayleigh, SD s) becomes
            # Rayleigh with SD s * factor exactly, the tissue Rician with the raised SD
            extra = site_noise_sd * math.sqrt(max(ev["factor"] ** 2 - 1.0, 0.0))
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), _SALT,
                                                                0x4E01]))
            for img in (w, f):
                n1 = rng.standard_normal(img.shape)
                n2 = rng.standard_normal(img.shape)
                img[...] = np.sqrt((img + extra * n1) ** 2 + (extra * n2) ** 2)
            ev.update(site_noise_sd=site_noise_sd, extra_sd=round(extra, 4))
        elif name == "swap":
            k0, k1, z0, z1 = st[ev["station"]]
            tmp = w[k0:k1].copy()
            w[k0:k1] = f[k0:k1]
            f[k0:k1] = tmp
            ev.update(z_mm=[z0, z1], slices=[k0, k1])
        elif name == "truncate":
            dz = grid.spacing[2]
            z_lo, z_hi = float(zs[0]) - dz / 2, float(zs[-1]) + dz / 2
            if ev["side"] == "bottom":
                z_cut = z_lo + ev["cut_mm"]
                k = int(np.searchsorted(zs, z_cut))          # zs[:k] < z_cut
                sl = (0, k)
            else:
                z_cut = z_hi - ev["cut_mm"]
                k = int(np.searchsorted(zs, z_cut, side="right"))   # zs[k:] > z_cut
                sl = (k, len(zs))
            w[sl[0]:sl[1]] = 0.0
            f[sl[0]:sl[1]] = 0.0
            ev.update(z_mm=round(z_cut, 3), slices=list(sl))
        rec[name] = ev
    out = []
    for img in (w, f):
        out.append(np.clip(np.rint(img), 0, 65535).astype(np.float32))
    return out[0], out[1], rec
