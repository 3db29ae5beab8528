"""PNG plots (matplotlib, Agg backend; written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bodyage_core.atomic import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _plt().close(fig)
    return Path(path)


def plot_pred_vs_age(age, raw, corrected, path: str | Path, title: str = "") -> Path:
    """Predicted vs chronological age: raw (left) and bias-corrected (right) panels."""
    plt = _plt()
    age, raw, corrected = (np.asarray(v, dtype=float) for v in (age, raw, corrected))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharex=True, sharey=True)
    lo = float(np.nanmin([age.min(), raw.min(), corrected.min()])) - 2
    hi = float(np.nanmax([age.max(), raw.max(), corrected.max()])) + 2
    for ax, pred, name in ((axes[0], raw, "raw"), (axes[1], corrected, "bias-corrected")):
        mae = float(np.nanmean(np.abs(pred - age)))
        ax.scatter(age, pred, s=10, alpha=0.7)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
        if len(age) > 2:
            a, b = np.polyfit(age, pred, 1)
            ax.plot([lo, hi], [a * lo + b, a * hi + b], "r-", lw=1,
                    label=f"fit {a:.2f}x{b:+.1f}")
        ax.set_title(f"{name}: MAE {mae:.2f} y")
        ax.set_xlabel("chronological age (years)")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("predicted age (years)")
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))


def plot_error_vs_uncertainty(err, sigma, path: str | Path, title: str = "") -> Path:
    """|error| against predicted sigma, with the 1 and 1.96 sigma lines."""
    plt = _plt()
    err, sigma = np.abs(np.asarray(err, dtype=float)), np.asarray(sigma, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.scatter(sigma, err, s=10, alpha=0.7)
    hi = float(np.nanmax(sigma)) * 1.05 if len(sigma) else 1.0
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="|error| = sigma (68%)")
    ax.plot([0, hi], [0, 1.96 * hi], "k:", lw=1, label="|error| = 1.96 sigma (95%)")
    ax.set_xlabel("predicted sigma (years)")
    ax.set_ylabel("|error| (years, bias-corrected)")
    ax.legend(fontsize=8)
    ax.set_title(title or "error vs uncertainty")
    return _save(fig, Path(path))


def plot_sparsification(curve: dict, path: str | Path, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    fr = np.asarray(curve["fraction_removed"]) * 100
    ax.plot(fr, curve["mae_by_sigma"], "o-", ms=3, label="removing highest sigma")
    ax.plot(fr, curve["mae_oracle"], "k--", label="oracle (largest errors)")
    ax.set_xlabel("subjects removed (%)")
    ax.set_ylabel("MAE of the rest (years)")
    ax.set_title(title or f"sparsification (AUSE {curve.get('ause', float('nan')):.2f})")
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def plot_reliability(rel: dict, path: str | Path, title: str = "") -> Path:
    """Observed against nominal coverage of the intervals (the diagonal: calibrated); the
    legend says whether they are Gaussian or the model's split-conformal ones."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    nom = np.asarray(rel["nominal"]) * 100
    ax.plot([0, 100], [0, 100], "k--", lw=1, label="calibrated")
    how = rel.get("intervals") or "Gaussian"
    ax.plot(nom, np.asarray(rel["observed"]) * 100, "o-", ms=4,
            label=f"observed ({'split-conformal' if 'conformal' in how else 'Gaussian'} "
                  "intervals)")
    ax.set_xlabel("nominal coverage of the interval (%)")
    ax.set_ylabel("subjects inside it (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or f"reliability of the intervals (n={rel.get('n', '?')})")
    return _save(fig, Path(path))
