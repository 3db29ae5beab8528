"""Population maps over subjects in atlas space (pure functions over arrays).

The workspace-level wrappers (reading the cohort, warping Grad-CAMs, writing NIfTI) are in
:mod:`bodyage_core.atlas.workspace`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bodyage_core.atlas.stats import age_bands, gap_classes, mean_std

NORMALISATIONS = ("none", "sum")


def normalise_maps(maps: np.ndarray, body_mask: np.ndarray | None = None,
                   method: str = "none") -> np.ndarray:
    """Per-subject normalisation of ``(N, Z, Y, X)`` maps before they are averaged.

    ``"none"`` keeps raw values (the published method: the population map is the mean of the
    subjects' raw Grad-CAMs, so subjects with large gradients weigh more). ``"sum"`` divides each
    map by its total non-negative importance inside ``body_mask`` (everywhere when None), so
    every subject contributes the same total importance and the population map is the mean of
    each subject's *distribution* of importance. Negative values (signed maps) are kept, scaled
    by the same factor; a map without positive importance is left at zero.
    """
    from bodyage_core.errors import ConfigError

    if method not in NORMALISATIONS:
        raise ConfigError(f"unknown map normalisation {method!r}",
                          hint=f"use one of {', '.join(NORMALISATIONS)}")
    maps = np.asarray(maps, dtype=np.float32)
    if method == "none":
        return maps
    w = np.clip(np.nan_to_num(maps), 0, None)
    if body_mask is not None:
        w = w * np.asarray(body_mask, bool)[None]
    tot = w.reshape(len(maps), -1).sum(axis=1).astype(np.float64)
    scale = np.where(tot > 0, 1.0 / np.where(tot > 0, tot, 1.0), 0.0)
    return (np.nan_to_num(maps) * scale[:, None, None, None]).astype(np.float32)


def subgroup_maps(maps: np.ndarray, labels: Sequence[str | None], min_n: int = 1
                  ) -> dict[str, dict[str, Any]]:
    """Mean / std map per label value.

    Parameters
    ----------
    maps
        ``(N, Z, Y, X)`` maps in atlas space.
    labels
        One subgroup name per map (None: left out).
    min_n
        Subgroups with fewer maps are reported with ``mean=None``.

    Returns
    -------
    ``{name: {"mean": (Z,Y,X) | None, "std": ..., "n": int, "index": [i...]}}``
    """
    maps = np.asarray(maps)
    out: dict[str, dict[str, Any]] = {}
    names = sorted({lab for lab in labels if lab is not None})
    for name in names:
        idx = [i for i, lab in enumerate(labels) if lab == name]
        entry: dict[str, Any] = {"n": len(idx), "index": idx, "mean": None, "std": None}
        if len(idx) >= min_n and idx:
            entry["mean"], entry["std"] = mean_std(maps[idx])
        out[name] = entry
    return out


def population_maps(maps: np.ndarray, ages: Sequence[float] | None = None,
                    gaps: Sequence[float] | None = None,
                    age_edges: Sequence[float] = (60.0, 70.0),
                    gap_threshold: float | tuple[float, float] | None = None,
                    gap_quantile: float | None = None, min_n: int = 1,
                    gap_interval: float | None = None, sigmas: Sequence[float] | None = None,
                    tables: Sequence[dict | None] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """All population maps of one atlas group.

    Returns ``{"all": ..., "age_<band>": ..., "<gap class>": ...}`` with the entries of
    :func:`subgroup_maps` (mean, std, n, index). Age bands need ``ages``, gap classes ``gaps``
    (and ``sigmas``, with ``tables`` the predictions' interval multipliers, for the
    ``gap_interval`` rule of :func:`~bodyage_core.atlas.stats.
    gap_classes`).
    """
    maps = np.asarray(maps)
    n = maps.shape[0]
    out = subgroup_maps(maps, ["all"] * n, min_n)
    if ages is not None:
        for k, v in subgroup_maps(maps, age_bands(ages, age_edges), min_n).items():
            out[f"age_{k}"] = v
    if gaps is not None:
        out.update(subgroup_maps(maps, gap_classes(gaps, gap_threshold, gap_quantile,
                                                   gap_interval, sigmas, tables), min_n))
    return out


def summary_row(name: str, entry: Mapping[str, Any], ids: Sequence[str]) -> dict[str, Any]:
    return {"subgroup": name, "n": entry["n"], "subjects": [ids[i] for i in entry["index"]],
            "written": entry["mean"] is not None}
