"""Subject splits: random, stratified on age / sex / BMI group, and grouped by site; k-fold.

All functions take per-subject arrays and return index arrays; they are deterministic for a
seed. ``make_folds`` returns a fold number per subject (0..k-1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bodyage_core.errors import CohortError, ConfigError

METHODS = ("random", "stratified", "site")


def _strata(ages: np.ndarray, sex: Sequence | None, bmi_group: Sequence | None,
            n_age_bins: int) -> np.ndarray:
    """A stratum label per subject: age quantile bin x sex x BMI group."""
    qs = np.quantile(ages, np.linspace(0, 1, n_age_bins + 1)[1:-1]) if n_age_bins > 1 else []
    age_bin = np.searchsorted(qs, ages, side="right")
    keys = [str(a) for a in age_bin]
    for extra in (sex, bmi_group):
        if extra is not None:
            keys = [f"{k}|{e}" for k, e in zip(keys, extra)]
    _, labels = np.unique(np.asarray(keys), return_inverse=True)
    return labels


def make_folds(n_folds: int, ages: Sequence[float], sex: Sequence | None = None,
               bmi_group: Sequence | None = None, site: Sequence | None = None,
               method: str = "stratified", seed: int = 0) -> np.ndarray:
    """Assign each subject a fold in ``0..n_folds-1``.

    ``stratified``: within each stratum (age quantile bin x sex x BMI group), subjects sorted
    by age are dealt to folds in turn from a random start, so every fold spans the age range and
    the groups. ``random``: a seeded permutation. ``site``: whole sites go to folds (largest
    first, into the currently smallest fold), so no site is in training and test at once.
    """
    ages = np.asarray(ages, dtype=np.float64)
    n = len(ages)
    if method not in METHODS:
        raise ConfigError(f"unknown split method {method!r}", hint=f"use one of {METHODS}")
    if n_folds < 2:
        raise ConfigError(f"k-fold needs at least 2 folds, got {n_folds}")
    if n < n_folds:
        raise CohortError(f"{n} subjects cannot be split into {n_folds} folds",
                          hint=f"add subjects or use --folds {max(2, n)} or fewer")
    rng = np.random.default_rng(seed)
    folds = np.empty(n, dtype=np.int64)
    if method == "random":
        perm = rng.permutation(n)
        folds[perm] = np.arange(n) % n_folds
        return folds
    if method == "site":
        if site is None or any(s is None or s == "" for s in site):
            raise CohortError("split by site needs a site for every subject",
                              hint="set the site column or use the stratified split")
        sites, inv = np.unique(np.asarray([str(s) for s in site]), return_inverse=True)
        if len(sites) < n_folds:
            raise CohortError(f"{len(sites)} sites cannot be split into {n_folds} folds by site",
                              hint=f"use --folds {max(2, len(sites))} or the stratified split")
        sizes = np.bincount(inv)
        order = sorted(range(len(sites)), key=lambda i: (-sizes[i], rng.random()))
        load = np.zeros(n_folds)
        for i in order:
            f = int(np.argmin(load + rng.random(n_folds) * 1e-6))
            folds[inv == i] = f
            load[f] += sizes[i]
        return folds
    n_bins = max(1, min(5, n // (2 * n_folds)))
    labels = _strata(ages, sex, bmi_group, n_bins)
    offset = int(rng.integers(n_folds))
    for lab in rng.permutation(np.unique(labels)):
        idx = np.where(labels == lab)[0]
        idx = idx[np.argsort(ages[idx] + rng.random(len(idx)) * 1e-9, kind="stable")]
        for j, i in enumerate(idx):
            folds[i] = (offset + j) % n_folds
        offset = (offset + len(idx)) % n_folds
    return folds


def split_indices(indices: Sequence[int], fraction: float, ages: Sequence[float],
                  sex: Sequence | None = None, bmi_group: Sequence | None = None,
                  site: Sequence | None = None, method: str = "stratified",
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (rest, held) with about ``fraction`` of them held out (e.g. the
    validation subjects of a training fold), using the same strategy as :func:`make_folds`."""
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    if n < 2:
        raise CohortError(f"{n} subject(s) cannot be split into training and validation",
                          hint="add subjects")
    k = int(round(1.0 / max(min(fraction, 0.5), 1.0 / n)))
    k = max(2, min(k, n))
    sub = lambda v: None if v is None else [v[i] for i in indices]  # noqa: E731
    if method == "site" and site is not None:
        n_sites = len({str(s) for s in sub(site)})
        if n_sites >= 2:   # hold out whole sites: at most one fold per site
            k = min(k, n_sites)
    ages = np.asarray(ages, dtype=np.float64)
    try:
        f = make_folds(k, ages[indices], sub(sex), sub(bmi_group), sub(site), method, seed)
    except CohortError:
        if method != "site":
            raise
        f = make_folds(k, ages[indices], sub(sex), sub(bmi_group), None, "stratified", seed)
    held = f == 0
    return indices[~held], indices[held]


def random_split(n: int, fractions: Sequence[float] = (0.7, 0.15, 0.15),
                 seed: int = 0) -> list[np.ndarray]:
    """A seeded random partition of ``range(n)`` by ``fractions`` (normalised to sum 1)."""
    fr = np.asarray(fractions, dtype=float)
    fr = fr / fr.sum()
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(fr)[:-1] * n).astype(int)
    return [np.sort(p) for p in np.split(perm, cuts)]
