"""Named age effects of the synthetic cohort, their strengths and the age-effect mask ids.

Every effect changes a few *effect parameters* of a subject linearly with its biological age
``bio_age`` (chronological age plus a per-subject ageing gap), starting at the reference age 44:

* ``kind == 'rel'``: ``value = baseline * (1 + rate * strength * (bio_age - 44))``
* ``kind == 'abs'``: ``value = baseline + rate * strength * (bio_age - 44)``

The baselines vary between subjects (anatomical variation) and do not depend on the strengths, so
switching an effect off (strength 0) leaves a subject exactly as it was apart from that effect.

The age-effect mask (``age_mask.nii.gz``) is uint8: 0 where no age effect acts, otherwise the
``id`` of the effect acting in that voxel (the effect's organs, at their *unaged* extent for
effects that shrink an organ). Effects act in disjoint organs, so one id per voxel suffices; the
union is ``mask > 0``. A switched-off effect leaves no voxels in the mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bodyage_core.errors import ConfigError

AGE_REF = 44.0


@dataclass(frozen=True)
class EffectParam:
    """One parameter an effect changes: ``rate`` per year (relative or absolute)."""

    name: str
    kind: str  # 'rel' | 'abs'
    rate: float
    unit: str
    description: str


@dataclass(frozen=True)
class EffectSpec:
    """A named age effect: its mask id, the organs it acts in, its parameters."""

    id: int
    name: str
    organs: tuple[str, ...]
    description: str
    params: tuple[EffectParam, ...]
    default_strength: float = 1.0


EFFECTS: dict[str, EffectSpec] = {
    "spine": EffectSpec(
        1, "spine", ("vertebrae", "intervertebral_discs", "spinal_canal"),
        "Disc height loss and dehydration, increasing thoracic kyphosis, vertebral marrow fat.",
        (
            EffectParam("disc_height_factor", "rel", -0.006, "x", "disc height, all levels"),
            EffectParam("disc_water_factor", "rel", -0.008, "x", "disc water signal"),
            EffectParam("kyphosis_deg", "abs", 0.45, "deg", "thoracic kyphosis T12-T1"),
            EffectParam("marrow_ff", "abs", 0.0025, "1", "vertebral marrow fat fraction"),
        ),
    ),
    "back_muscle": EffectSpec(
        2, "back_muscle", ("back_muscles",),
        "Autochthonous back muscles thin (fat fills the space) and are infiltrated by fat.",
        (
            EffectParam("csa_factor", "rel", -0.006, "x", "cross-sectional area"),
            EffectParam("ff", "abs", 0.004, "1", "muscle fat fraction"),
        ),
    ),
    "thigh_muscle": EffectSpec(
        3, "thigh_muscle", ("thigh_muscles",),
        "Thigh muscles thin (sarcopenia; fat fills the space) and are infiltrated by fat.",
        (
            EffectParam("csa_factor", "rel", -0.005, "x", "cross-sectional area"),
            EffectParam("ff", "abs", 0.003, "1", "muscle fat fraction"),
        ),
    ),
    "aorta": EffectSpec(
        4, "aorta", ("aorta",),
        "Aortic widening and elongation (the arch rises).",
        (
            EffectParam("diameter_mm", "abs", 0.15, "mm", "ascending aorta diameter"),
            EffectParam("arch_height_mm", "abs", 0.6, "mm", "arch height above the root"),
        ),
    ),
    "heart": EffectSpec(
        5, "heart", ("heart", "pericardial_fat"),
        "Pericardial (epicardial) fat thickens around the heart.",
        (EffectParam("pericardial_fat_mm", "abs", 0.15, "mm", "pericardial fat thickness"),),
    ),
    "knee": EffectSpec(
        6, "knee", ("knee",),
        "Knee joint-space narrowing (cartilage loss).",
        (EffectParam("joint_space_mm", "rel", -0.008, "mm", "tibiofemoral joint space"),),
    ),
    "liver": EffectSpec(
        7, "liver", ("liver",),
        "Liver fat fraction rises (off by default).",
        (EffectParam("ff", "abs", 0.002, "1", "liver fat fraction"),),
        default_strength=0.0,
    ),
}

EFFECT_IDS: dict[str, int] = {name: spec.id for name, spec in EFFECTS.items()}
EFFECT_NAMES: dict[int, str] = {spec.id: name for name, spec in EFFECTS.items()}


@dataclass
class AgeEffects:
    """Strength per named effect (1.0 = the documented rate; 0 = off).

    Effects not named in ``strengths`` take their default strength (1.0; ``liver`` 0.0).
    Build with ``AgeEffects()`` (defaults), ``AgeEffects.parse("spine=1,back_muscle=0.5")``,
    ``AgeEffects.only("heart", "knee")`` (just these organs age) or ``AgeEffects.none()``.
    """

    strengths: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean = {}
        for name, s in dict(self.strengths).items():
            if name not in EFFECTS:
                raise ConfigError(f"unknown age effect {name!r}",
                                  hint=f"choose from {', '.join(EFFECTS)}")
            try:
                s = float(s)
            except (TypeError, ValueError):
                raise ConfigError(f"strength of age effect {name!r} is not a number: {s!r}",
                                  hint="write e.g. spine=1.5") from None
            if s < 0:
                raise ConfigError(f"strength of age effect {name!r} is negative ({s})",
                                  hint="use 0 to switch it off")
            clean[name] = s
        self.strengths = clean

    @classmethod
    def parse(cls, text: str | None) -> AgeEffects:
        """Parse ``"spine=1,back_muscle=0.5"``; ``"none"`` switches all off, ``""`` = defaults.

        ``"only:heart,knee"`` switches on just the named effects (strength 1, or ``name=s``).
        """
        if text is None or not text.strip() or text.strip() == "default":
            return cls()
        text = text.strip()
        if text == "none":
            return cls.none()
        only = text.startswith("only:")
        if only:
            text = text[len("only:"):]
        strengths: dict[str, float] = {}
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" in part:
                name, _, val = part.partition("=")
                strengths[name.strip()] = val.strip()  # type: ignore[assignment]
            elif only:
                strengths[part] = 1.0
            else:
                raise ConfigError(f"age effect {part!r} has no strength",
                                  hint="write name=strength, e.g. spine=1,back_muscle=0")
        if only:
            base = {n: 0.0 for n in EFFECTS}
            base.update(strengths)
            strengths = base
        return cls(strengths)

    @classmethod
    def only(cls, *names: str, strength: float = 1.0) -> AgeEffects:
        """Only the named effects act (at ``strength``); all others are off."""
        d = {n: 0.0 for n in EFFECTS}
        for n in names:
            if n not in EFFECTS:
                raise ConfigError(f"unknown age effect {n!r}", hint=f"choose from {', '.join(EFFECTS)}")
            d[n] = strength
        return cls(d)

    @classmethod
    def none(cls) -> AgeEffects:
        return cls({n: 0.0 for n in EFFECTS})

    @classmethod
    def from_dict(cls, d: Mapping[str, float] | AgeEffects | None) -> AgeEffects:
        if d is None:
            return cls()
        if isinstance(d, AgeEffects):
            return d
        if isinstance(d, str):
            return cls.parse(d)
        return cls(dict(d))

    def strength(self, name: str) -> float:
        return self.strengths.get(name, EFFECTS[name].default_strength)

    def enabled(self) -> list[str]:
        """Names of the effects with strength > 0, in id order."""
        return [n for n in EFFECTS if self.strength(n) > 0]

    def to_dict(self) -> dict[str, float]:
        """All effects with their strengths (JSON-able)."""
        return {n: self.strength(n) for n in EFFECTS}

    def with_strength(self, name: str, strength: float) -> AgeEffects:
        d = self.to_dict()
        d[name] = strength
        return AgeEffects(d)


def realize(bio_age: float, baselines: Mapping[str, Mapping[str, float]],
            effects: AgeEffects) -> dict[str, dict[str, float]]:
    """Effect parameter values of a subject at ``bio_age`` given its baselines and strengths."""
    d = float(bio_age) - AGE_REF
    out: dict[str, dict[str, float]] = {}
    for name, spec in EFFECTS.items():
        s = effects.strength(name)
        vals = {}
        for p in spec.params:
            base = float(baselines[name][p.name])
            if p.kind == "rel":
                vals[p.name] = base * max(0.05, 1.0 + p.rate * s * d)
            else:
                vals[p.name] = base + p.rate * s * d
        out[name] = vals
    return out


def describe_effects(effects: AgeEffects | None = None) -> list[dict[str, Any]]:
    """A table of the effects (for docs, CLI and reports)."""
    effects = effects or AgeEffects()
    rows = []
    for name, spec in EFFECTS.items():
        rows.append({
            "id": spec.id, "name": name, "organs": list(spec.organs),
            "strength": effects.strength(name), "description": spec.description,
            "params": [{"name": p.name, "kind": p.kind, "rate_per_year": p.rate,
                        "unit": p.unit, "description": p.description} for p in spec.params],
        })
    return rows


def effect_names(names: Iterable[str]) -> list[str]:
    bad = [n for n in names if n not in EFFECTS]
    if bad:
        raise ConfigError(f"unknown age effect(s) {', '.join(bad)}",
                          hint=f"choose from {', '.join(EFFECTS)}")
    return list(names)
