"""Per-subject parameters of the synthetic cohort, drawn deterministically from a seed.

Subject ``index`` of cohort ``seed`` always gets the same parameters: the randomness comes from
``numpy.random.SeedSequence([seed, index])`` split into independent streams (demographics,
anatomy, effect baselines, image noise), so overriding the age (``with_age``) or the effect
strengths changes nothing else about the subject.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bodyage_core.cohort.database import bmi_group
from bodyage_core.errors import ConfigError
from bodyage_core.synth.acceleration import Acceleration, realize_accelerated
from bodyage_core.synth.acquisition import Acquisition
from bodyage_core.synth.effects import EFFECTS, AgeEffects

AGE_RANGE = (44.0, 82.0)
#: BMI group ranges (healthy < 25, overweight 25-30, obese >= 30) for balanced sampling.
BMI_RANGES = {"healthy": (18.5, 25.0), "overweight": (25.0, 30.0), "obese": (30.0, 42.0)}
#: Sites (scanners) with their noise level (fraction of the fat signal) and bias-field strength.
SITES = {"site1": (0.012, 0.08), "site2": (0.018, 0.12), "site3": (0.025, 0.16)}
SITE_P = (0.4, 0.35, 0.25)
#: SD of the biological-age gap (years): accelerated / decelerated ageing.
BIO_GAP_SD = 2.5
BALANCED_GROUPS = [(s, g) for s in ("F", "M") for g in ("healthy", "overweight", "obese")]


@dataclass
class SubjectParams:
    """Everything that defines one synthetic subject (JSON-able via :meth:`to_dict`)."""

    subject_id: str
    seed: int
    index: int
    age: float
    sex: str                       # 'F' | 'M'
    bmi: float
    site: str
    bio_gap: float                 # biological minus chronological age (years)
    stature: float                 # height scale (1.0 = 1.75 m man)
    anatomy: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    effects: AgeEffects = field(default_factory=AgeEffects)
    #: organ -> extra years of ageing (synth.acceleration); None = option off, {} = not chosen
    acceleration: dict[str, float] | None = None
    #: acquisition degradations drawn for the subject (synth.acquisition); None = option off
    acquisition: dict[str, dict[str, Any]] | None = None

    @property
    def bio_age(self) -> float:
        return self.age + self.bio_gap

    @property
    def bmi_group(self) -> str:
        return bmi_group(self.bmi)

    @property
    def effect_values(self) -> dict[str, dict[str, float]]:
        """Realised effect parameters at this subject's biological age and strengths."""
        return realize_accelerated(self.bio_age, self.baselines, self.effects, self.acceleration)

    def with_age(self, age: float, bio_gap: float | None = None) -> SubjectParams:
        """The same subject (anatomy, baselines, noise) at another age."""
        return replace(self, age=float(age),
                       bio_gap=self.bio_gap if bio_gap is None else float(bio_gap))

    def with_effects(self, effects: AgeEffects | dict | str | None) -> SubjectParams:
        return replace(self, effects=AgeEffects.from_dict(effects))

    def to_dict(self) -> dict[str, Any]:
        d = {
            "subject_id": self.subject_id, "seed": self.seed, "index": self.index,
            "age": round(self.age, 3), "sex": self.sex, "bmi": round(self.bmi, 2),
            "bmi_group": self.bmi_group, "site": self.site, "bio_gap": round(self.bio_gap, 3),
            "bio_age": round(self.bio_age, 3), "stature": self.stature,
            "anatomy": dict(self.anatomy), "baselines": self.baselines,
            "strengths": self.effects.to_dict(), "effect_values": self.effect_values,
        }
        if self.acceleration is not None:
            d["acceleration"] = dict(self.acceleration)
            d["organ_bio_age"] = {o: round(self.bio_age + y, 3)
                                  for o, y in self.acceleration.items()}
        if self.acquisition is not None:
            d["acquisition"] = {k: dict(v) for k, v in self.acquisition.items()}
        return d


def subject_id(seed: int, index: int) -> str:
    return f"synth{seed:03d}_{index:05d}" if seed < 1000 else f"synth{seed}_{index:05d}"


def _streams(seed: int, index: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([int(seed), int(index), 0x5EED])
    return [np.random.default_rng(c) for c in ss.spawn(4)]


def noise_rng(params: SubjectParams) -> np.random.Generator:
    """The image-noise stream of a subject (texture, bias field, Rician noise)."""
    return _streams(params.seed, params.index)[3]


def check_gap_sd(gap_sd: float) -> float:
    """``gap_sd`` as a float; a ConfigError unless it is a number in 0-20 years."""
    try:
        v = float(gap_sd)
    except (TypeError, ValueError):
        raise ConfigError(f"gap SD {gap_sd!r} is not a number", hint="e.g. --gap-sd 0") from None
    if not np.isfinite(v) or not 0.0 <= v <= 20.0:
        raise ConfigError(f"gap SD {v:g} years is out of range", hint="use 0-20 years "
                          f"(default {BIO_GAP_SD:g})")
    return v


def sample_subject(seed: int, index: int, *, age: float | None = None, sex: str | None = None,
                   bmi: float | None = None, bio_gap: float | None = None,
                   effects: AgeEffects | dict | str | None = None,
                   balanced: bool = True, accelerate: Acceleration | str | None = None,
                   acquisition: Acquisition | str | None = None,
                   gap_sd: float | None = None) -> SubjectParams:
    """Parameters of subject ``index`` of the cohort with ``seed``.

    Ages are uniform in 44-82 (UK Biobank imaging); with ``balanced`` the sex x BMI group cycles
    with the index (F/M x healthy/overweight/obese) so every atlas group is equally filled; BMI is
    log-normal (median 26.8, as UK Biobank) truncated to the group's range. Any of ``age, sex,
    bmi, bio_gap`` can be fixed; the other draws do not change. ``accelerate``
    (:mod:`~bodyage_core.synth.acceleration`, e.g. ``"heart=+10@0.15"``) and ``acquisition``
    (:mod:`~bodyage_core.synth.acquisition`, e.g. ``"noise=0.3@2,swap=0.05"``) draw from
    streams of their own; off (None) unless given. ``gap_sd`` sets the SD of the whole-body
    biological-age gap (default :data:`BIO_GAP_SD`; 0: biological age = chronological age, so
    the only ageing differences between subjects are the planted ones). It scales the same draw,
    so nothing else changes.
    """
    demo, anat, base, _ = _streams(seed, index)
    # -- demographics (own stream) -----------------------------------------------------------
    u_age, u_sex, u_site = demo.random(3)
    bmi_draws = np.exp(np.log(26.8) + 0.16 * demo.standard_normal(64))
    gap = float(np.clip(demo.normal(0.0, BIO_GAP_SD), -3 * BIO_GAP_SD, 3 * BIO_GAP_SD))
    if gap_sd is not None:
        gap *= check_gap_sd(gap_sd) / BIO_GAP_SD
    a = AGE_RANGE[0] + (AGE_RANGE[1] - AGE_RANGE[0]) * u_age if age is None else float(age)
    if balanced:
        g_sex, g_bmi = BALANCED_GROUPS[index % len(BALANCED_GROUPS)]
    else:
        g_sex = "F" if u_sex < 0.5 else "M"
        g_bmi = None
    s = (sex or g_sex).upper()[:1]
    if s not in ("F", "M"):
        raise ValueError(f"sex must be 'F' or 'M', got {sex!r}")
    if bmi is None:
        if g_bmi is None:
            b = float(np.clip(bmi_draws[0], 17.0, 45.0))
        else:
            lo, hi = BMI_RANGES[g_bmi]
            ok = bmi_draws[(bmi_draws >= lo) & (bmi_draws < hi)]
            b = float(ok[0]) if ok.size else float(lo + (hi - lo) * demo.random())
    else:
        b = float(bmi)
    site = list(SITES)[int(np.searchsorted(np.cumsum(SITE_P), u_site))]
    gap = gap if bio_gap is None else float(bio_gap)

    # -- anatomy (own stream; independent of age) ---------------------------------------------
    z = anat.standard_normal(16)
    stature = float((1.0 if s == "M" else 0.93) * (1 + 0.035 * z[0]))
    anatomy = {
        "width": float(1 + 0.04 * z[1]),          # trunk/limb frame width factor
        "depth": float(1 + 0.04 * z[2]),          # trunk depth factor
        "fat": float(np.exp(0.18 * z[3])),        # subcutaneous fat at a given BMI
        "visceral": float(np.exp(0.25 * z[4])),   # visceral fat at a given BMI
        "top_mm": float(25 + 10 * z[5]),          # chin distance below the FOV top
        "heart": float(1 + 0.06 * z[6]),          # heart size
        "liver": float(1 + 0.07 * z[7]),          # liver size
        "kidney_shift_mm": float(10 * z[8]),
        "lordosis_deg": float(40 + 5 * z[9]),
        "sacrum_y_mm": float(-30 + 4 * z[10]),
        "muscle": float(1 + 0.06 * z[11]),        # lean mass factor
        "lung": float(1 + 0.04 * z[12]),
        "arms_mm": float(6 + 3 * abs(z[13])),     # gap between trunk and arms
        "signal": float(0.03 * z[14]),            # global tissue signal jitter
        "aorta_x_mm": float(4 * z[15]),
    }
    disc_levels = (1 + 0.05 * anat.standard_normal(23)).round(4).tolist()
    anatomy_levels = {f"disc_{i}": v for i, v in enumerate(disc_levels)}
    anatomy.update(anatomy_levels)

    # -- effect baselines (own stream; depend on sex and BMI, never on age) --------------------
    e = base.standard_normal(16)
    female = 1.0 if s == "F" else 0.0
    db = b - 25.0
    baselines = {
        "spine": {
            "disc_height_factor": float(1 + 0.04 * e[0]),
            "disc_water_factor": float(1 + 0.05 * e[1]),
            "kyphosis_deg": float(40 + 2 * female + 4 * e[2]),
            "marrow_ff": float(0.40 + 0.004 * db + 0.04 * e[3]),
        },
        "back_muscle": {
            "csa_factor": float(1 + 0.08 * e[4]),
            "ff": float(max(0.01, 0.05 + 0.02 * female + 0.003 * db + 0.015 * e[5])),
        },
        "thigh_muscle": {
            "csa_factor": float(1 + 0.08 * e[6]),
            "ff": float(max(0.01, 0.04 + 0.015 * female + 0.003 * db + 0.012 * e[7])),
        },
        "aorta": {
            "diameter_mm": float(25 - 2 * female + 0.1 * db + 1.8 * e[8]),
            "arch_height_mm": float(stature * (55 + 5 * e[9])),
        },
        "heart": {
            "pericardial_fat_mm": float(max(1.0, 4 + 0.25 * db - female + 1.2 * e[10])),
        },
        "knee": {"joint_space_mm": float(6.0 * (1 + 0.08 * e[11]))},
        "liver": {"ff": float(max(0.01, 0.03 + 0.006 * max(db, -3) + 0.02 * abs(e[12])))},
    }
    assert set(baselines) == set(EFFECTS)
    return SubjectParams(
        subject_id=subject_id(seed, index), seed=int(seed), index=int(index), age=float(a),
        sex=s, bmi=b, site=site, bio_gap=gap, stature=stature, anatomy=anatomy,
        baselines=baselines, effects=AgeEffects.from_dict(effects),
        acceleration=_accel(accelerate, seed, index), acquisition=_acq(acquisition, seed, index),
    )


def _accel(accelerate, seed: int, index: int) -> dict[str, float] | None:
    acc = Acceleration.parse(accelerate)
    return acc.years_for(seed, index) if acc else None


def _acq(acquisition, seed: int, index: int) -> dict[str, dict[str, Any]] | None:
    acq = Acquisition.parse(acquisition)
    return acq.draw(seed, index) if acq else None
