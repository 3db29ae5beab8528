"""Population statistics over maps in atlas space: pure numpy functions.

Map stacks are numpy ``(N, Z, Y, X)`` (one map per subject, all on the atlas grid); any trailing
spatial shape works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bodyage_core.errors import ConfigError

GAP_CLASSES = ("accelerated", "aligned", "decelerated")


def mean_std(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel-wise mean and standard deviation (ddof=1 when N > 1, else zeros) of ``(N, ...)``."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.shape[0] == 0:
        raise ValueError("no maps to average")
    mean = maps.mean(axis=0)
    std = maps.std(axis=0, ddof=1) if maps.shape[0] > 1 else np.zeros_like(mean)
    return mean.astype(np.float32), std.astype(np.float32)


def band_names(edges: Sequence[float] = (60.0, 70.0)) -> list[str]:
    """Names of the age bands cut at ``edges``: ``['lt60', '60-70', 'ge70']``."""
    e = [float(x) for x in edges]
    if sorted(e) != e or len(set(e)) != len(e):
        raise ConfigError(f"age band edges must increase strictly, got {list(edges)}")

    def f(x: float) -> str:
        return f"{x:g}"

    if not e:
        return ["all"]
    names = [f"lt{f(e[0])}"]
    names += [f"{f(a)}-{f(b)}" for a, b in zip(e[:-1], e[1:])]
    names.append(f"ge{f(e[-1])}")
    return names


def age_bands(ages: Sequence[float], edges: Sequence[float] = (60.0, 70.0)) -> list[str | None]:
    """Band name per age (bands ``[-inf, e0), [e0, e1), ..., [e_last, inf)``); None if unknown."""
    names = band_names(edges)
    out: list[str | None] = []
    for a in ages:
        if a is None or not np.isfinite(a):
            out.append(None)
        else:
            out.append(names[int(np.searchsorted(np.asarray(edges, float), a, side="right"))])
    return out


#: what the groups are cut at when no rule is given: the top / bottom quarter of the gaps
DEFAULT_QUANTILE = 0.25


def interval_z(interval: float) -> float:
    """The Gaussian z of a two-sided ``interval`` (0.95 -> 1.96), as the predictions' own
    intervals are ``corrected +- z sigma``."""
    from scipy.stats import norm

    c = float(interval)
    if not 0 < c < 1:
        raise ConfigError(f"the interval must be a coverage in (0, 1), e.g. 0.95; got {c}")
    return float(norm.ppf(0.5 + c / 2))


def gap_rule(threshold: float | None = None, quantile: float | None = None,
             interval: float | None = None) -> tuple[float | None, float | None, float | None]:
    """The ``(threshold, quantile, interval)`` rule that applies, with exactly one set: a
    threshold before an interval before a quantile, the quartile when none is given (how a
    population map's JSON, which records all three, says which rule built it)."""
    if threshold is not None:
        return float(threshold), None, None
    if interval is not None:
        return None, None, float(interval)
    return None, DEFAULT_QUANTILE if quantile is None else float(quantile), None


def gap_classes(gaps: Sequence[float], threshold: float | tuple[float, float] | None = None,
                quantile: float | None = None, interval: float | None = None,
                sigmas: Sequence[float] | None = None,
                tables: Sequence[dict | None] | None = None) -> list[str | None]:
    """Label each subject ``accelerated`` / ``aligned`` / ``decelerated`` by its age gap.

    Parameters
    ----------
    gaps
        Predicted minus chronological age (bias-corrected, out-of-fold), years.
    threshold
        ``Y``: gap >= Y accelerated, gap <= -Y decelerated; or ``(lo, hi)``: gap <= lo
        decelerated, gap >= hi accelerated.
    quantile
        ``Q`` in (0, 0.5]: the top ``Q`` fraction of gaps accelerated, the bottom ``Q``
        decelerated. Used when no other rule is given (default 0.25).
    interval
        A coverage such as 0.95: accelerated when the chronological age lies below the
        subject's own interval (gap >= z sigma), decelerated when above it (gap <= -z sigma).
        Only a gap the model's uncertainty does not explain counts, so a cohort without true
        acceleration has about (1 - interval) / 2 of its subjects in each group by chance,
        where a quantile rule always fills both. Needs ``sigmas``.
    sigmas
        Each subject's predictive SD (years), for ``interval``.
    tables
        Each subject's interval multipliers (its prediction's ``interval_z``: the model's
        split-conformal ones), for ``interval``; None or a None entry: the Gaussian z.
    """
    g = np.array([np.nan if v is None else float(v) for v in gaps], dtype=float)
    if sum(x is not None for x in (threshold, quantile, interval)) > 1:
        raise ConfigError("give one rule for the gap groups: a threshold, a quantile or an "
                          "interval")
    if interval is not None:
        z = interval_z(interval)
        if sigmas is None or len(sigmas) != len(g):
            raise ConfigError("the interval rule needs each subject's sigma")
        s = np.array([np.nan if v is None else float(v) for v in sigmas], dtype=float)
        s[~(s > 0)] = np.nan
        if tables is not None:
            from bodyage_core.models.ensemble import interval_z as model_z

            # in units of the subject's own half-width: beyond +-1 lies outside
            s = s * np.array([model_z(interval, t) for t in tables]) / z
        g = g / s          # a subject without a usable sigma has no class
        lo, hi = -z, z
    elif threshold is None:
        q = DEFAULT_QUANTILE if quantile is None else float(quantile)
        if not 0 < q <= 0.5:
            raise ConfigError(f"gap quantile must be in (0, 0.5], got {q}")
        finite = np.isfinite(g)
        if not finite.any():
            return [None] * len(g)
        lo, hi = np.quantile(g[finite], [q, 1 - q])
    elif isinstance(threshold, (tuple, list)):
        lo, hi = float(threshold[0]), float(threshold[1])
    else:
        t = float(threshold)
        if t < 0:
            raise ConfigError(f"gap threshold must be >= 0, got {t}")
        lo, hi = -t, t
    out: list[str | None] = []
    for v in g:
        if not np.isfinite(v):
            out.append(None)
        elif v >= hi:
            out.append("accelerated")
        elif v <= lo:
            out.append("decelerated")
        else:
            out.append("aligned")
    return out


def describe_gap_rule(threshold: float | tuple[float, float] | None = None,
                      quantile: float | None = None, interval: float | None = None) -> str:
    """The rule :func:`gap_classes` applies, in words: the one definition of accelerated and
    decelerated agers, shown wherever the groups are used (cohort panel, population maps,
    comparison)."""
    if interval is not None:
        c = 100 * float(interval)
        z = interval_z(interval)
        return (f"accelerated: chronological age below the subject's {c:g} % interval "
                f"(bias-corrected gap >= {z:.2f} sigma, or the model's split-conformal "
                f"multiplier where it has one); decelerated: above it")
    if threshold is not None:
        if isinstance(threshold, (tuple, list)):
            lo, hi = float(threshold[0]), float(threshold[1])
            return (f"accelerated: bias-corrected gap >= {hi:+g} y; decelerated: "
                    f"<= {lo:+g} y")
        t = float(threshold)
        return f"accelerated: bias-corrected gap >= +{t:g} y; decelerated: <= -{t:g} y"
    q = 100 * (DEFAULT_QUANTILE if quantile is None else float(quantile))
    return (f"accelerated: top {q:g} % of bias-corrected gaps; decelerated: bottom {q:g} % "
            "(of the cohort's)")


def _tstat(sa, qa, sb, qb, na, nb, eps):
    ma, mb = sa / na, sb / nb
    va = np.maximum(qa - sa * ma, 0.0) / max(na - 1, 1)
    vb = np.maximum(qb - sb * mb, 0.0) / max(nb - 1, 1)
    den = np.sqrt(va / na + vb / nb)
    return np.where(den > eps, (ma - mb) / np.maximum(den, eps), 0.0)


def permutation_test(a: np.ndarray, b: np.ndarray, n_permutations: int = 1000, seed: int = 0,
                     mask: np.ndarray | None = None, statistic: str = "t",
                     tail: str = "two-sided", batch: int = 100) -> dict[str, Any]:
    """Voxel-wise two-sample permutation test with family-wise error control by the
    max-statistic (Nichols & Holmes 2002).

    Parameters
    ----------
    a, b
        ``(Na, ...)`` and ``(Nb, ...)`` maps of the two groups (same spatial shape).
    n_permutations
        Random relabellings (the observed labelling is counted once in the p-values).
    mask
        Boolean spatial mask of the voxels tested (default all); others get t=0, p=1.
    statistic
        ``"t"`` (Welch t) or ``"diff"`` (difference of means).
    tail
        ``"two-sided"`` (|stat|), ``"greater"`` (a > b) or ``"less"``.

    Returns
    -------
    dict with spatial arrays ``diff`` (mean a - mean b), ``stat``, ``p_fwe``, ``p_uncorrected``
    and ``max_null`` (the permutation distribution of the maximum), ``n_a``, ``n_b``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"group maps differ in shape: {a.shape[1:]} vs {b.shape[1:]}")
    na, nb = a.shape[0], b.shape[0]
    if na < 2 or nb < 2:
        raise ConfigError(f"a permutation test needs at least 2 subjects per group (have "
                          f"{na} and {nb})", hint="lower the gap threshold or raise the quantile")
    if statistic not in ("t", "diff"):
        raise ConfigError(f"unknown statistic {statistic!r}", hint="use 't' or 'diff'")
    if tail not in ("two-sided", "greater", "less"):
        raise ConfigError(f"unknown tail {tail!r}", hint="two-sided, greater or less")
    spatial = a.shape[1:]
    m = np.ones(spatial, bool) if mask is None else np.asarray(mask, bool)
    x = np.concatenate([a[:, m], b[:, m]], axis=0)  # (N, V)
    n = na + nb
    s_all = x.sum(0)
    q_all = (x * x).sum(0)
    scale = float(np.abs(x).max()) or 1.0
    eps = 1e-12 * scale

    def stat_of(ga: np.ndarray) -> np.ndarray:
        sa = ga @ x
        sb = s_all[None] - sa
        if statistic == "diff":
            return sa / na - sb / nb
        qa = ga @ x2
        return _tstat(sa, qa, sb, q_all[None] - qa, na, nb, eps)

    x2 = x * x if statistic == "t" else None
    g_obs = np.zeros((1, n))
    g_obs[0, :na] = 1.0
    obs = stat_of(g_obs)[0]

    def signed(v):
        if tail == "two-sided":
            return np.abs(v)
        return v if tail == "greater" else -v

    obs_s = signed(obs)
    rng = np.random.default_rng(seed)
    # Bound the (batch, voxels) float64 temporaries to a few tens of MB each.
    batch = max(1, min(int(batch), int(4e6 // max(x.shape[1], 1))))
    max_null = np.empty(n_permutations)
    exceed = np.zeros(obs.shape, np.int64)
    done = 0
    while done < n_permutations:
        k = min(batch, n_permutations - done)
        g = np.zeros((k, n))
        for i in range(k):
            g[i, rng.permutation(n)[:na]] = 1.0
        st = signed(stat_of(g))
        max_null[done:done + k] = st.max(axis=1)
        exceed += (st >= obs_s[None] - 1e-12).sum(axis=0)
        done += k
    p_fwe_v = (1.0 + (max_null[None, :] >= obs_s[:, None] - 1e-12).sum(1)) / (
        n_permutations + 1.0)
    p_unc_v = (1.0 + exceed) / (n_permutations + 1.0)

    def full(v, fill):
        out = np.full(spatial, fill, dtype=np.float32)
        out[m] = v
        return out

    diff = a.mean(0) - b.mean(0)
    return {"diff": diff.astype(np.float32), "stat": full(obs, 0.0),
            "p_fwe": full(p_fwe_v, 1.0), "p_uncorrected": full(p_unc_v, 1.0),
            "max_null": max_null, "n_a": na, "n_b": nb, "statistic": statistic, "tail": tail,
            "n_permutations": int(n_permutations)}


def tfce(stat: np.ndarray, mask: np.ndarray | None = None, dh: float = 0.1, e: float = 0.5,
         h: float = 2.0) -> np.ndarray:
    """Threshold-free cluster enhancement (Smith & Nichols 2009) of the positive part of a
    statistic map: each voxel sums, over thresholds up to its own value, cluster extent^e x
    threshold^h x dh (face-connected clusters; FSL's defaults e=0.5, h=2)."""
    from scipy import ndimage

    s = np.clip(np.nan_to_num(np.asarray(stat, dtype=np.float64)), 0.0, None)
    if mask is not None:
        s = np.where(np.asarray(mask, bool), s, 0.0)
    out = np.zeros_like(s)
    top = float(s.max())
    for level in np.arange(dh, top + dh, dh):
        lab, n = ndimage.label(s >= level)
        if n == 0:
            break
        sizes = np.bincount(lab.ravel()).astype(np.float64)
        sizes[0] = 0.0
        out += sizes[lab] ** e * level ** h * dh
    return out


def age_trend(maps: np.ndarray, ages: Sequence[float], p_threshold: float | None = 0.01,
              mask: np.ndarray | None = None, correction: str = "none",
              permutations: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Where the subjects' maps change with age: voxel-wise covariance of the maps with age.

    The mean map of a population shows where a model looks in everybody, including the
    anatomy it weighs the same at every age; the *age trend* shows where the evidence grows
    (or shrinks) with age. For a signed attribution (gradient x input), whose voxels add up to
    the prediction, the trend's voxels add up to cov(prediction, age) / sd(age) to first
    order: the part of the model's age tracking each voxel carries. Voxels whose map is
    independent of age (anatomy, noise) average to zero as subjects are added.

    Parameters
    ----------
    maps
        ``(N, ...)`` maps in atlas space.
    ages
        Chronological age per map (None / NaN: left out).
    p_threshold
        Two-sided p-value below which the trend is kept in ``map``; None keeps every voxel.
    mask
        Voxels to test (the atlas body); others are 0 in every output.
    correction
        ``"none"``: voxel-wise p (Pearson correlation, t with N-2 degrees of freedom),
        uncorrected, exploratory. ``"tfce"``: family-wise error of the TFCE-enhanced t map
        (both signs) by the permutation maximum over ``permutations`` shuffles of the ages
        (Smith & Nichols 2009; the spatially extended trend of an organ survives where single
        voxels do not); ``p`` is then the FWE p-value.

    Returns
    -------
    ``{"cov": trend in map units per SD of age, "t": t statistic, "p": p-value,
    "map": cov where p < p_threshold else 0, "n": subjects, "p_threshold", "correction"}``;
    arrays float32.
    """
    if correction not in ("none", "tfce"):
        raise ConfigError(f"unknown age-trend correction {correction!r}", hint="none or tfce")
    if correction == "tfce" and int(permutations) < 1:
        raise ConfigError(f"TFCE needs at least 1 permutation, got {permutations}")
    from scipy import stats as sps

    a = np.array([np.nan if v is None else float(v) for v in ages], dtype=float)
    keep = np.isfinite(a)
    maps = np.asarray(maps)
    if maps.shape[0] != len(a):
        raise ValueError(f"{maps.shape[0]} maps but {len(a)} ages")
    n = int(keep.sum())
    if n < 4:
        raise ConfigError(f"an age trend needs at least 4 subjects with an age (have {n})")
    a = a[keep]
    if np.ptp(a) == 0:
        raise ConfigError("all subjects have the same age: no age trend to estimate")
    spatial = maps.shape[1:]
    m = np.ones(spatial, bool) if mask is None else np.asarray(mask, bool)
    x = np.asarray(maps[keep][:, m], dtype=np.float64)
    az = (a - a.mean()) / a.std()
    xc = x - x.mean(0)
    sd = xc.std(0)
    cov, t = _trend_t(az, xc, sd)

    def full(v, fill=0.0):
        out = np.full(spatial, fill, dtype=np.float32)
        out[m] = v
        return out

    if correction == "tfce":
        p = _tfce_fwe(full(t), m, az, xc, sd, permutations, seed)[m]
    else:
        p = 2.0 * sps.t.sf(np.abs(t), n - 2)
    sig = np.ones_like(p, bool) if p_threshold is None else p < float(p_threshold)
    return {"cov": full(cov), "t": full(t), "p": full(p, 1.0), "map": full(np.where(sig, cov, 0.0)),
            "n": n, "p_threshold": p_threshold, "correction": correction}


def _trend_t(az: np.ndarray, xc: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Covariance of the centred maps ``xc`` (N, V) with the standardised ages ``az`` and the
    t statistic (N-2 degrees of freedom) of their correlation; 0 where a voxel is constant."""
    n = len(az)
    cov = az @ xc / n
    r = np.clip(np.where(sd > 0, cov / np.where(sd > 0, sd, 1.0), 0.0), -1.0, 1.0)
    return cov, r * np.sqrt((n - 2) / np.maximum(1.0 - r * r, 1e-12))


def _tfce_fwe(t_full: np.ndarray, m: np.ndarray, az: np.ndarray, xc: np.ndarray, sd: np.ndarray,
              permutations: int, seed: int) -> np.ndarray:
    """FWE p-values of the two-sided TFCE of ``t_full`` by shuffling the standardised ages."""
    def enhanced(t):
        return np.maximum(tfce(t, m), tfce(-t, m))

    obs = enhanced(t_full)
    rng = np.random.default_rng(seed)
    exceed = np.ones(obs.shape)            # the observed labelling counts once
    t_perm = np.zeros(t_full.shape)
    for _ in range(int(permutations)):
        t_perm[m] = _trend_t(rng.permutation(az), xc, sd)[1]
        exceed += enhanced(t_perm).max() >= obs - 1e-12
    return exceed / (int(permutations) + 1.0)
