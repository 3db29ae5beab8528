"""Organ-specific accelerated (or slowed) ageing in the synthetic cohort, with its truth.

Setting (``bodyage synth --accelerate``, ``sample_subject(accelerate=...)``,
``generate_cohort(accelerate=...)``)::

    ORGAN=+YEARS@FRACTION[,ORGAN=+YEARS@FRACTION...]

``ORGAN`` is an age effect of :data:`bodyage_core.synth.effects.EFFECTS` (spine, back_muscle,
thigh_muscle, aorta, heart, knee, liver), ``YEARS`` a signed number of years (``+10`` older,
``-5`` younger; the sign is optional for positive values) and ``FRACTION`` the share of subjects
(0-1) chosen for it. ``heart=+10@0.15``: 15 % of the subjects have a heart that ages as if they
were 10 years older than the rest of their body: that effect's parameters are realised at
``bio_age + YEARS`` instead of ``bio_age``; every other effect, the anatomy, the images' noise
and the age-effect mask are unchanged. ``""`` / ``"none"`` / ``None`` = off (the default; the
cohort is then bit-identical to one made without the option). Each organ may be named once.

Which subjects are chosen is deterministic from the cohort seed and the subject index, from a
stream of its own (``SeedSequence([seed, index, 0xACCE, effect id])``): it does not depend on the
other rules, the age or anything else drawn for the subject, and subject ``i`` is chosen
independently of subject ``j`` (so about ``FRACTION`` of the cohort is chosen, not exactly).

Truth: ``truth.json`` gains ``acceleration`` (``{organ: years}`` of the subject, ``{}`` when the
subject was not chosen; absent when the option is off) and ``organ_bio_age`` (the biological age
each accelerated organ was realised at); the cohort index (``cohort.sqlite``, the subjects'
``meta`` JSON) carries the same ``acceleration`` dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bodyage_core.errors import ConfigError
from bodyage_core.synth.effects import EFFECTS, AgeEffects, realize

_RULE = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)\s*@\s*"
                   r"(\d+(?:\.\d*)?|\.\d+)\s*$")
_SALT = 0xACCE
SYNTAX = "ORGAN=+YEARS@FRACTION[,...], e.g. heart=+10@0.15,knee=-5@0.1"


@dataclass(frozen=True)
class AccelerationRule:
    """``fraction`` of the subjects have ``organ`` aged by ``years`` more than their body."""

    organ: str
    years: float
    fraction: float

    def to_text(self) -> str:
        return f"{self.organ}={self.years:+g}@{self.fraction:g}"


@dataclass(frozen=True)
class Acceleration:
    """The organ-acceleration rules of a cohort (empty = off). Build with :meth:`parse`."""

    rules: tuple[AccelerationRule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules)

    @classmethod
    def parse(cls, text: str | Acceleration | Mapping | None) -> Acceleration:
        """``"heart=+10@0.15,knee=-5@0.1"``; ``None`` / ``""`` / ``"none"`` = off. A dict
        ``{organ: (years, fraction)}`` or an Acceleration pass through."""
        if text is None:
            return cls()
        if isinstance(text, Acceleration):
            return text
        if isinstance(text, Mapping):
            rules = []
            for organ, v in text.items():
                try:
                    y, f = v
                except (TypeError, ValueError):
                    raise ConfigError(f"acceleration of {organ!r} must be (years, fraction), "
                                      f"got {v!r}", hint=f"write {SYNTAX}") from None
                rules.append(cls._rule(str(organ), y, f))
            return cls._checked(rules)
        s = str(text).strip()
        if not s or s.lower() in ("none", "off"):
            return cls()
        rules = []
        for part in s.split(","):
            if not part.strip():
                continue
            m = _RULE.match(part)
            if not m:
                name = part.split("=")[0].strip()
                if "=" in part and name not in EFFECTS:
                    raise ConfigError(f"unknown organ {name!r} in --accelerate {s!r}",
                                      hint=f"choose from {', '.join(EFFECTS)}")
                raise ConfigError(f"cannot read {part.strip()!r} in --accelerate {s!r}",
                                  hint=f"write {SYNTAX}; organs: {', '.join(EFFECTS)}")
            rules.append(cls._rule(m.group(1), m.group(2), m.group(3)))
        return cls._checked(rules)

    @staticmethod
    def _rule(organ: str, years, fraction) -> AccelerationRule:
        if organ not in EFFECTS:
            raise ConfigError(f"unknown organ {organ!r} in --accelerate",
                              hint=f"choose from {', '.join(EFFECTS)}")
        try:
            y, f = float(years), float(fraction)
        except (TypeError, ValueError):
            raise ConfigError(f"acceleration of {organ!r}: years and fraction must be numbers",
                              hint=f"write {SYNTAX}") from None
        if not np.isfinite(y) or abs(y) > 60:
            raise ConfigError(f"acceleration of {organ!r}: {y:g} years is out of range",
                              hint="use between -60 and +60 years")
        if not (0.0 <= f <= 1.0):
            raise ConfigError(f"acceleration of {organ!r}: fraction {f:g} is not in 0-1",
                              hint="e.g. heart=+10@0.15 for 15 % of the subjects")
        return AccelerationRule(organ, y, f)

    @classmethod
    def _checked(cls, rules: list[AccelerationRule]) -> Acceleration:
        seen = [r.organ for r in rules]
        dup = sorted({o for o in seen if seen.count(o) > 1})
        if dup:
            raise ConfigError(f"--accelerate names {', '.join(dup)} more than once",
                              hint="give each organ one YEARS@FRACTION")
        return cls(tuple(rules))

    def years_for(self, seed: int, index: int) -> dict[str, float]:
        """``{organ: years}`` of subject ``index`` of cohort ``seed`` (``{}``: not chosen)."""
        out: dict[str, float] = {}
        for r in self.rules:
            ss = np.random.SeedSequence([int(seed), int(index), _SALT, EFFECTS[r.organ].id])
            if np.random.default_rng(ss).random() < r.fraction:
                out[r.organ] = r.years
        return out

    def to_text(self) -> str:
        return ",".join(r.to_text() for r in self.rules)

    def to_dict(self) -> dict[str, dict[str, float]] | None:
        """The settings (JSON-able; ``None`` when off)."""
        if not self.rules:
            return None
        return {r.organ: {"years": r.years, "fraction": r.fraction} for r in self.rules}


def realize_accelerated(bio_age: float, baselines: Mapping[str, Mapping[str, float]],
                        effects: AgeEffects, years: Mapping[str, float] | None
                        ) -> dict[str, dict[str, float]]:
    """:func:`~bodyage_core.synth.effects.realize`, with each organ in ``years`` realised at
    ``bio_age + years[organ]`` (the others exactly as without acceleration)."""
    out = realize(bio_age, baselines, effects)
    for organ, y in (years or {}).items():
        if y:
            out[organ] = realize(float(bio_age) + float(y), baselines, effects)[organ]
    return out
