"""Where the importance sits: share of a population map per organ region.

All arrays are numpy ``(Z, Y, X)`` on one (atlas) grid. Importance is taken as non-negative
(negative values, e.g. of a signed map, are clipped to 0 unless ``clip_negative=False``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.atomic import atomic_path, write_json, write_text
from bodyage_core.errors import BodyageError


def _importance(m: np.ndarray, clip_negative: bool) -> np.ndarray:
    m = np.nan_to_num(np.asarray(m, dtype=np.float64))
    return np.clip(m, 0, None) if clip_negative else m


def _check_grid(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if np.shape(a) != np.shape(b):
        raise BodyageError(f"the {what} has shape {np.shape(b)}, the map {np.shape(a)}",
                           hint="resample it onto the atlas grid (labels: nearest neighbour)")


def importance_inside_mask(importance: np.ndarray, mask: np.ndarray,
                           body_mask: np.ndarray | None = None,
                           clip_negative: bool = True) -> float:
    """Fraction of the total importance (within ``body_mask`` when given) inside ``mask``."""
    _check_grid(importance, mask, "mask")
    w = _importance(importance, clip_negative)
    m = np.asarray(mask, bool)
    if body_mask is not None:
        _check_grid(importance, body_mask, "body mask")
        body = np.asarray(body_mask, bool)
        w = np.where(body, w, 0.0)
    total = w.sum()
    return float(w[m].sum() / total) if total > 0 else 0.0


def uniform_baseline(mask: np.ndarray, body_mask: np.ndarray | None = None) -> float:
    """What a uniform map scores in :func:`importance_inside_mask`: the volume fraction of
    ``mask`` within the body (or the whole grid)."""
    m = np.asarray(mask, bool)
    if body_mask is None:
        return float(m.mean())
    body = np.asarray(body_mask, bool)
    return float((m & body).sum() / max(int(body.sum()), 1))


def region_shares(importance: np.ndarray, labels: np.ndarray, names: Mapping[int, str],
                  body_mask: np.ndarray | None = None, clip_negative: bool = True,
                  other: str = "other") -> list[dict[str, Any]]:
    """Share of importance per labelled region, sorted by share (largest first).

    Rows: ``label, region, share`` (fraction of the total importance, all rows sum to 1 when
    there is any importance), ``importance`` (sum), ``voxels``, ``volume_fraction`` (of the
    counted voxels) and ``enrichment`` (share / volume fraction; 1 = what a uniform map gives).
    Voxels in no named region (label 0 or ids missing from ``names``) form the ``other`` row.
    Counted voxels: all, or those inside ``body_mask`` (labelled voxels always count).
    """
    _check_grid(importance, labels, "label map")
    lab = np.asarray(labels).astype(np.int64)
    w = _importance(importance, clip_negative)
    counted = np.ones(lab.shape, bool)
    if body_mask is not None:
        _check_grid(importance, body_mask, "body mask")
        counted = np.asarray(body_mask, bool) | (lab > 0)
    known = {int(k): str(v) for k, v in names.items() if int(k) != 0}
    region_of = np.where(np.isin(lab, list(known)), lab, 0)
    region_of = np.where(counted, region_of, -1)
    total = float(w[counted].sum())
    n_counted = int(counted.sum())
    rows = []
    for lid, name in list(known.items()) + [(0, other)]:
        sel = region_of == lid
        s = float(w[sel].sum())
        nv = int(sel.sum())
        if lid == 0 and nv == 0:
            continue
        share = s / total if total > 0 else 0.0
        vf = nv / n_counted if n_counted else 0.0
        rows.append({"label": lid, "region": name, "share": share, "importance": s,
                     "voxels": nv, "volume_fraction": vf,
                     "enrichment": share / vf if vf > 0 else 0.0})
    rows.sort(key=lambda r: -r["share"])
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


def shares_table(per_group: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Flatten ``{group: region_shares rows}`` into rows with a ``group`` column."""
    out = []
    for g, rows in per_group.items():
        for r in rows:
            out.append({"group": g, **r})
    return out


def write_shares(per_group: Mapping[str, list[dict[str, Any]]], stem: str | Path
                 ) -> dict[str, Path]:
    """Write ``<stem>.csv``, ``<stem>.json`` and a bar plot ``<stem>.png``; returns the paths."""
    stem = Path(stem)
    rows = shares_table(per_group)
    cols = ["group", "rank", "label", "region", "share", "importance", "voxels",
            "volume_fraction", "enrichment"]
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    wr.writeheader()
    for r in rows:
        wr.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    paths = {"csv": stem.with_suffix(".csv"), "json": stem.with_suffix(".json"),
             "png": stem.with_suffix(".png")}
    write_text(paths["csv"], buf.getvalue())
    write_json(paths["json"], {g: rs for g, rs in per_group.items()})
    plot_shares(per_group, paths["png"])
    return paths


def plot_shares(per_group: Mapping[str, list[dict[str, Any]]], path: str | Path,
                title: str = "Share of importance per region", top: int = 15) -> Path:
    """Grouped horizontal bar plot (the ``top`` regions by mean share x groups) as PNG
    (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    groups = list(per_group)
    regions: list[str] = []
    for g in groups:
        for r in per_group[g]:
            if r["region"] not in regions:
                regions.append(r["region"])
    # order regions by mean share
    mean_share = {reg: np.mean([next((r["share"] for r in per_group[g] if r["region"] == reg),
                                     0.0) for g in groups]) for reg in regions}
    regions.sort(key=lambda reg: mean_share[reg])
    regions = regions[-top:]
    height = 0.3 * len(regions) * (1 + 0.12 * (len(groups) - 1)) + 1.3
    fig = Figure(figsize=(7, min(12.0, height)))
    ax = fig.add_subplot(111)
    h = 0.8 / max(len(groups), 1)
    y = np.arange(len(regions))
    for i, g in enumerate(groups):
        vals = [100 * next((r["share"] for r in per_group[g] if r["region"] == reg), 0.0)
                for reg in regions]
        ax.barh(y + i * h - 0.4 + h / 2, vals, height=h, label=g)
    ax.set_yticks(y)
    ax.set_yticklabels(regions)
    ax.set_xlabel("share of importance (%)")
    ax.set_title(title)
    if len(groups) > 1:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), dpi=100, format="png")
    return path
