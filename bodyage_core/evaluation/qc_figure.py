"""The QC picture of one prediction: axial, coronal and sagittal planes of the scan with the
importance map, and the numbers a reader checks first (predicted and chronological age, the
interval, the QC flags)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bodyage_core.evaluation.plots import _plt, _save
from bodyage_core.volume import Volume


def _planes(a: np.ndarray, c: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial (z), coronal (y), sagittal (x) planes of a (Z, Y, X) RAS array through ``c``,
    oriented for display: anterior / superior up, patient right on the left (radiological)."""
    z, y, x = c
    ax = a[z][::-1, :]                    # (Y, X): anterior up
    cor = a[:, y, :][::-1, :]             # (Z, X): superior up
    sag = a[:, :, x][::-1, ::-1]          # (Z, Y): superior up, anterior left
    return [ax, cor, sag]


def qc_figure(volume: Volume, path: str | Path, title: str, lines: list[str],
              importance: Volume | None = None) -> Path:
    """Write the QC PNG of a prediction.

    ``volume``: the scan (RAS, first channel shown, window 1-99.5th percentile);
    ``importance``: a map on the same grid (shown where it is in its top 10 %, the ReLU part);
    ``lines``: text under the planes (ages, interval, flags)."""
    plt = _plt()
    img = np.asarray(volume.data[0], dtype=np.float32)
    sp = volume.spacing                              # x, y, z
    m = None if importance is None else np.asarray(importance.data[0], dtype=np.float32)
    if m is not None and m.shape != img.shape:
        m = None
    if m is not None and np.any(m > 0):
        c = np.unravel_index(int(np.argmax(m)), m.shape)
    else:
        c = tuple(s // 2 for s in img.shape)
    lo, hi = np.percentile(img, [1, 99.5])
    aspects = [sp[1] / sp[0], sp[2] / sp[0], sp[2] / sp[1]]
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.6),
                             gridspec_kw={"width_ratios": [1, 1, 1]})
    pos = m[m > 0] if m is not None else np.array([])
    thr = float(np.percentile(pos, 90)) if pos.size else None
    maps = _planes(m, c) if m is not None else [None] * 3
    for ax, plane, mp, asp, name in zip(axes, _planes(img, c), maps, aspects,
                                        ("axial", "coronal", "sagittal")):
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, aspect=asp, interpolation="nearest")
        if mp is not None and thr is not None:
            shown = np.ma.masked_less(mp, thr)
            ax.imshow(shown, cmap="hot", alpha=0.6, aspect=asp, interpolation="nearest",
                      vmin=thr, vmax=float(pos.max()))
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    axes[0].text(0.01, 0.01, "R", color="yellow", fontsize=8, transform=axes[0].transAxes)
    fig.suptitle(title, fontsize=11)
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom", family="monospace")
    fig.subplots_adjust(bottom=0.08 + 0.035 * len(lines), top=0.88, wspace=0.05)
    return _save(fig, Path(path))
