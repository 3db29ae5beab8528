"""Figures of synthetic subjects (matplotlib, Agg): overview slices and the age-effect mask.

Display convention: radiological coronal (the subject's Right on the viewer's left), sagittal with
Anterior on the left; orientation letters on every panel; pixel aspect from the voxel spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bodyage_core.atomic import atomic_path
from bodyage_core.synth.effects import EFFECT_NAMES
from bodyage_core.synth.phantom import SyntheticSubject


def _coronal(vol: np.ndarray, y_index: int) -> np.ndarray:
    return vol[::-1, y_index, ::-1]   # rows: S at top; columns: R on the left


def _sagittal(vol: np.ndarray, x_index: int) -> np.ndarray:
    return vol[::-1, ::-1, x_index]   # rows: S at top; columns: A on the left


def slice_indices(subject: SyntheticSubject) -> tuple[int, int]:
    """(y index of a coronal slice through the spine, x index of the midline sagittal)."""
    lab = subject.labels.array
    ys = np.nonzero(lab == 16)[1] if (lab == 16).any() else np.nonzero(lab == 15)[1]
    y = int(np.median(ys)) if ys.size else lab.shape[1] // 2
    return y, lab.shape[2] // 2


def _letters(ax, left: str, right: str) -> None:
    kw = dict(color="yellow", fontsize=8, fontweight="bold", transform=ax.transAxes)
    ax.text(0.02, 0.5, left, ha="left", va="center", **kw)
    ax.text(0.98, 0.5, right, ha="right", va="center", **kw)
    ax.text(0.5, 0.99, "S", ha="center", va="top", **kw)
    ax.text(0.5, 0.01, "I", ha="center", va="bottom", **kw)


def overview_figure(subjects: Sequence[SyntheticSubject], path: str | Path,
                    channels: Sequence[str] = ("water", "fat"), dpi: int = 110) -> Path:
    """A row per channel; per subject a coronal (through the spine) and a midline sagittal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(subjects)
    sx, sy, sz = subjects[0].water.spacing
    nz, ny, nx = subjects[0].water.shape
    widths = [nx * sx, ny * sy] * n
    fig_w = 3.3 * n
    fig_h = fig_w * (nz * sz) * len(channels) / sum(widths) * 1.04 + 0.5
    fig, axes = plt.subplots(len(channels), 2 * n, figsize=(fig_w, fig_h), squeeze=False,
                             gridspec_kw={"width_ratios": widths, "wspace": 0.02,
                                          "hspace": 0.03})
    for j, s in enumerate(subjects):
        yi, xi = slice_indices(s)
        for ci, ch in enumerate(channels):
            vol = getattr(s, ch).array
            vmax = float(np.percentile(vol, 99.5))
            for k, (img, asp, lr) in enumerate((
                    (_coronal(vol, yi), sz / sx, ("R", "L")),
                    (_sagittal(vol, xi), sz / sy, ("A", "P")))):
                ax = axes[ci, 2 * j + k]
                ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, aspect=asp,
                          interpolation="bilinear")
                ax.set_xticks([])
                ax.set_yticks([])
                _letters(ax, *lr)
                if k == 0:
                    ax.set_ylabel(ch, fontsize=9) if j == 0 else None
        p = s.params
        axes[0, 2 * j].set_title(f"{'female' if p.sex == 'F' else 'male'}, {p.age:.0f} y, "
                                 f"BMI {p.bmi:.1f}", fontsize=9, loc="left")
    fig.subplots_adjust(left=0.02, right=0.998, top=0.955, bottom=0.005)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def mask_figure(subjects: Sequence[SyntheticSubject], path: str | Path, dpi: int = 110,
                titles: Sequence[str] | None = None) -> Path:
    """Water slices with the age-effect mask overlaid (one colour per effect id).

    Per subject (a row): coronal through the spine, coronal through the heart, midline sagittal
    (spine) and a paramedian sagittal through the right back muscles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = ["#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3", "#ffff33", "#a65628",
               "#f781bf"]
    cmap = ListedColormap(colours[: max(EFFECT_NAMES)])
    n = len(subjects)
    sx, sy, sz = subjects[0].water.spacing
    nz, ny, nx = subjects[0].water.shape
    widths = [nx * sx, nx * sx, ny * sy, ny * sy]
    fig_w = 10.0
    fig_h = fig_w * (nz * sz) / sum(widths) * n * 1.05 + 0.7
    fig, axes = plt.subplots(n, 4, figsize=(fig_w, fig_h), squeeze=False,
                             gridspec_kw={"width_ratios": widths, "wspace": 0.03,
                                          "hspace": 0.1})
    for i, s in enumerate(subjects):
        yi, xi = slice_indices(s)
        lab = s.labels.array
        hy = np.nonzero(lab == 9)[1]
        yh = int(np.median(hy)) if hy.size else yi
        bx = np.nonzero(lab == 18)[2]
        xb = int(np.median(bx[bx > nx // 2])) if (bx > nx // 2).any() else xi
        w = s.water.array
        m = s.age_mask.array
        vmax = float(np.percentile(w, 99.5))
        views = (
            (_coronal(w, yi), _coronal(m, yi), sz / sx, ("R", "L"), "coronal (spine)"),
            (_coronal(w, yh), _coronal(m, yh), sz / sx, ("R", "L"), "coronal (heart)"),
            (_sagittal(w, xi), _sagittal(m, xi), sz / sy, ("A", "P"), "sagittal (midline)"),
            (_sagittal(w, xb), _sagittal(m, xb), sz / sy, ("A", "P"), "sagittal (back muscle)"),
        )
        for k, (img, msk, asp, lr, name) in enumerate(views):
            ax = axes[i, k]
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, aspect=asp, interpolation="bilinear")
            ov = np.ma.masked_equal(msk.astype(float), 0)
            ax.imshow(ov - 1, cmap=cmap, vmin=-0.5, vmax=cmap.N - 0.5, alpha=0.55, aspect=asp,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            _letters(ax, *lr)
            if i == 0:
                ax.set_title(name, fontsize=9)
        p = s.params
        label = titles[i] if titles else f"{p.sex}, {p.age:.0f} y, BMI {p.bmi:.1f}"
        axes[i, 0].set_ylabel(label, fontsize=9)
    handles = [Patch(color=colours[i - 1], label=f"{i} {EFFECT_NAMES[i]}")
               for i in sorted(EFFECT_NAMES)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.subplots_adjust(left=0.04, right=0.995, top=0.965, bottom=0.04)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def docs_figures(out_dir: str | Path, grid="full", seed: int = 0) -> list[Path]:
    """The figures in docs/SYNTH.md: overview (young/old x F/M) and the age-effect masks."""
    from bodyage_core.synth.effects import AgeEffects
    from bodyage_core.synth.params import sample_subject
    from bodyage_core.synth.phantom import generate_subject

    out = Path(out_dir)
    picks = [(0, 47.0, "F"), (0, 79.0, "F"), (4, 47.0, "M"), (4, 79.0, "M")]
    subs = [generate_subject(sample_subject(seed, i).with_age(a, 0.0), grid)
            for i, a, _ in picks]
    paths = [overview_figure(subs, out / "synth_overview.png")]
    paths.append(mask_figure([subs[2], subs[3]], out / "synth_age_mask.png"))
    p = sample_subject(seed, 4).with_age(79.0, 0.0)
    only = [generate_subject(p.with_effects(AgeEffects.only(*names)), grid)
            for names in (("spine", "back_muscle"), ("heart", "aorta", "knee"))]
    paths.append(mask_figure(only, out / "synth_age_mask_choice.png",
                             titles=["only spine + back_muscle", "only heart + aorta + knee"]))
    return paths
