"""Colour maps and the mapping of raw values to RGBA for display (Qt-free).

Heat maps keep their meaning: raw values stay raw on disk and in the viewer state; only this
module maps them to colours. The *display range* ``(vmin, vmax)`` sets where the colour map
starts and ends; the *threshold* is separate and makes pixels transparent (``value < threshold``,
or ``|value| < threshold`` for a signed/diverging map). NaN is always transparent.

Arrays are any shape; the RGBA result has a trailing axis of 4 (``uint8``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Names of the colour maps, in the order a GUI offers them.
COLORMAPS = ("grey", "hot", "heat", "bwr", "viridis", "labels")

#: Colour maps meant for signed values (evidence for older / for younger): ``|v| < threshold``
#: is transparent and the range is usually symmetric about 0.
DIVERGING = frozenset({"bwr"})

_LUT_SIZE = 256

#: opacity of a map drawn on top of the image (an overlay, a label map, an importance map) by
#: default: the anatomy stays visible through it. The one value: the viewer's
#: :data:`bodyage_core.viewer.layers.OVERLAY_OPACITY` is this.
OVERLAY_OPACITY = 0.5


def _interp_lut(stops: list[tuple[float, tuple[float, float, float]]]) -> np.ndarray:
    """A ``(256, 4)`` uint8 LUT interpolated linearly between ``(position, rgb)`` stops."""
    pos = np.array([p for p, _ in stops])
    rgb = np.array([c for _, c in stops], dtype=float)
    t = np.linspace(0.0, 1.0, _LUT_SIZE)
    out = np.empty((_LUT_SIZE, 4), dtype=np.uint8)
    for ch in range(3):
        out[:, ch] = np.round(np.interp(t, pos, rgb[:, ch]) * 255).astype(np.uint8)
    out[:, 3] = 255
    return out


def _label_lut() -> np.ndarray:
    """Distinct, deterministic colours for label ids 0..255; id 0 (background) transparent."""
    rng = np.random.default_rng(7)
    lut = np.empty((_LUT_SIZE, 4), dtype=np.uint8)
    golden = 0.618033988749895
    for i in range(_LUT_SIZE):
        h = (i * golden) % 1.0
        s = 0.55 + 0.35 * rng.random()
        v = 0.75 + 0.25 * rng.random()
        lut[i, :3] = np.round(np.array(_hsv_to_rgb(h, s, v)) * 255).astype(np.uint8)
        lut[i, 3] = 255
    lut[0] = (0, 0, 0, 0)
    return lut


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _shipped_luts() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The colour maps of ``resources/colormaps.json`` (and the built-in label LUT)."""
    from bodyage_core.resources import load_json

    spec = load_json("colormaps.json")
    luts = {name: _interp_lut([(float(p), tuple(rgb)) for p, rgb in stops])
            for name, stops in spec["maps"].items()}
    luts["labels"] = _label_lut()
    return luts, dict(spec.get("aliases", {}))


_LUTS, _ALIASES = _shipped_luts()


def canonical_name(cmap: str) -> str:
    """The canonical name of a colour map (``'gray'`` -> ``'grey'``); raises KeyError if unknown."""
    name = _ALIASES.get(cmap.lower(), cmap.lower())
    if name not in _LUTS:
        raise KeyError(f"unknown colour map {cmap!r}; known: {', '.join(COLORMAPS)}")
    return name


def lut(cmap: str) -> np.ndarray:
    """The ``(256, 4)`` uint8 lookup table of a colour map (a copy)."""
    return _LUTS[canonical_name(cmap)].copy()


def is_diverging(cmap: str) -> bool:
    return canonical_name(cmap) in DIVERGING


def to_rgba(array: np.ndarray, cmap: str = "grey", vmin: float = 0.0, vmax: float = 1.0,
            threshold: float | None = None, opacity: float = 1.0,
            out: np.ndarray | None = None) -> np.ndarray:
    """Map raw values to RGBA ``uint8`` (``array.shape + (4,)``).

    Parameters
    ----------
    array
        Raw values, any shape.
    cmap
        Colour map name (see :data:`COLORMAPS`). ``'labels'`` maps integer ids through the label
        LUT (id 0 transparent) and ignores ``vmin``/``vmax``/``threshold``.
    vmin, vmax
        Display range: ``vmin`` maps to the first LUT entry, ``vmax`` to the last; values outside
        are clipped to the ends (they stay visible).
    threshold
        ``None``: nothing is made transparent. Otherwise ``value < threshold`` is fully
        transparent, or ``|value| < threshold`` for a diverging map.
    opacity
        Global alpha multiplier in ``[0, 1]``.
    """
    name = canonical_name(cmap)
    table = _LUTS[name]
    a = np.asarray(array)
    if name == "labels":
        ids = np.nan_to_num(a, nan=0).astype(np.int64) if a.dtype.kind == "f" else a.astype(
            np.int64, copy=False)
        idx = np.where(ids > 0, (ids - 1) % (_LUT_SIZE - 1) + 1, 0)
        rgba = np.take(table, idx, axis=0, out=out)
        if opacity < 1.0:
            rgba[..., 3] = (rgba[..., 3] * float(opacity)).astype(np.uint8)
        return rgba
    af = a.astype(np.float32, copy=False)
    span = float(vmax) - float(vmin)
    scale = (_LUT_SIZE - 1) / span if span != 0 else 0.0
    with np.errstate(invalid="ignore"):
        t = np.subtract(af, np.float32(vmin), dtype=np.float32)
        t *= np.float32(scale)
        np.clip(t, 0, _LUT_SIZE - 1, out=t)
        # one reduction tells whether there is any NaN at all (the usual case: none)
        with np.errstate(over="ignore"):
            total = np.add.reduce(af, axis=None) if af.dtype.kind == "f" else 0.0
        nan = np.isnan(af) if not np.isfinite(total) else None
        idx = t.astype(np.uint8)  # NaN becomes 0 here and transparent below
    rgba = np.take(table, idx, axis=0, out=out)
    alpha = None
    if threshold is not None:
        with np.errstate(invalid="ignore"):
            hidden = (np.abs(af) < threshold) if name in DIVERGING else (af < threshold)
        alpha = ~hidden
    if nan is not None and nan.any():
        alpha = ~nan if alpha is None else (alpha & ~nan)
    a255 = int(round(255 * float(np.clip(opacity, 0.0, 1.0))))
    if alpha is None:
        if a255 != 255:
            rgba[..., 3] = a255
    else:
        rgba[..., 3] = np.where(alpha, np.uint8(a255), np.uint8(0))
    return rgba


# -- fast slice compositing (what the 2D views draw) ------------------------------------------
def _bgra32(table: np.ndarray) -> np.ndarray:
    """``(256, 4)`` RGBA uint8 -> ``(256,)`` uint32 ``0xAARRGGBB`` (QImage RGB32/ARGB32 order)."""
    t = table.astype(np.uint32)
    return (t[:, 3] << 24) | (t[:, 0] << 16) | (t[:, 1] << 8) | t[:, 2]


_LUT32: dict[str, np.ndarray] = {name: _bgra32(t) for name, t in _LUTS.items()}
#: the same tables as bytes in memory order (the byte view of the uint32 entries)
_LUT32_BYTES: dict[str, np.ndarray] = {n: t.view(np.uint8).reshape(_LUT_SIZE, 4)
                                       for n, t in _LUT32.items()}
_OPAQUE_BLACK = np.uint32(0xFF000000)
_FADED: dict[tuple[str, int], np.ndarray] = {}


def _faded_lut32(name: str, a255: int) -> np.ndarray:
    """The colour map's uint32 LUT drawn over black with alpha ``a255`` (premultiplied)."""
    key = (name, a255)
    t = _FADED.get(key)
    if t is None:
        rgba = _LUTS[name].astype(np.uint16)
        rgb = ((rgba[:, :3] * a255 + 127) // 255).astype(np.uint8)
        t = _bgra32(np.concatenate([rgb, np.full((_LUT_SIZE, 1), 255, np.uint8)], axis=1))
        _FADED[key] = t
    return t


@dataclass(frozen=True)
class SliceLayer:
    """One layer's 2D slice and display settings, for :func:`composite_bgra32`.

    ``lut`` (``(256, 4)`` RGBA uint8) replaces the colour map's table: a label layer drawn
    with its own label colours passes its slot slice (:func:`label_slots`) with
    ``cmap='labels'`` and its table."""

    array: np.ndarray
    cmap: str = "grey"
    vmin: float = 0.0
    vmax: float = 1.0
    threshold: float | None = None
    opacity: float = 1.0
    lut: np.ndarray | None = None


def label_slots(ids: np.ndarray, slots: np.ndarray, outline: bool = False) -> np.ndarray:
    """A 2D slice of label ids as LUT slots (uint8; 0 not drawn) through ``slots[id]``
    (NaN, negative and unknown ids give 0); with ``outline`` only each region's boundary
    (pixels with a 4-neighbour of another slot, or on the slice edge) is kept."""
    a = np.asarray(ids)
    if a.dtype.kind == "f":
        a = np.nan_to_num(a, nan=0.0)
    idx = a.astype(np.int64, copy=False)
    out = np.zeros(idx.shape, np.uint8)
    ok = (idx > 0) & (idx < slots.size)
    out[ok] = slots[idx[ok]]
    if outline and out.size:
        inner = np.zeros(out.shape, bool)
        c = out[1:-1, 1:-1]
        inner[1:-1, 1:-1] = ((c == out[:-2, 1:-1]) & (c == out[2:, 1:-1])
                             & (c == out[1:-1, :-2]) & (c == out[1:-1, 2:]))
        out[inner] = 0
    return out


def _layer_tables(lay: SliceLayer, name: str, a255: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The uint32 table (faded over black when the layer is at the bottom and not opaque) and
    the byte table of a layer."""
    if lay.lut is None:
        table = _LUT32[name] if a255 == 255 else _faded_lut32(name, a255)
        return table, _LUT32_BYTES[name]
    rgba = np.asarray(lay.lut, np.uint8)
    raw = _bgra32(rgba)
    if a255 == 255:
        table = raw
    else:
        rgb = ((rgba[:, :3].astype(np.uint16) * a255 + 127) // 255).astype(np.uint8)
        table = _bgra32(np.concatenate([rgb, np.full((_LUT_SIZE, 1), 255, np.uint8)], axis=1))
    return table, raw.view(np.uint8).reshape(_LUT_SIZE, 4)


def lut_index(array: np.ndarray, cmap: str, vmin: float = 0.0, vmax: float = 1.0
              ) -> np.ndarray:
    """LUT indices (uint8, same shape) of raw values: the mapping :func:`to_rgba` uses
    (``vmin`` -> 0, ``vmax`` -> 255, clipped; label ids through the label table). NaN gives an
    arbitrary index: mask it with :func:`visible_mask`."""
    name = canonical_name(cmap)
    a = np.asarray(array)
    if name == "labels":
        ids = np.nan_to_num(a, nan=0).astype(np.int64) if a.dtype.kind == "f" else a.astype(
            np.int64, copy=False)
        return np.where(ids > 0, (ids - 1) % (_LUT_SIZE - 1) + 1, 0).astype(np.uint8)
    span = float(vmax) - float(vmin)
    scale = (_LUT_SIZE - 1) / span if span != 0 else 0.0
    t = np.empty(a.shape, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        np.subtract(a, np.float32(vmin), out=t, casting="unsafe")
        t *= np.float32(scale)
        np.maximum(t, 0, out=t)
        np.minimum(t, _LUT_SIZE - 1, out=t)
        return t.astype(np.uint8)


def visible_mask(array: np.ndarray, cmap: str, threshold: float | None = None
                 ) -> np.ndarray | None:
    """Where a layer is drawn: not NaN, not below the threshold (``|v|`` for a diverging map),
    not label 0. None when every pixel is drawn (the cheap common case)."""
    name = canonical_name(cmap)
    a = np.asarray(array)
    with np.errstate(invalid="ignore"):
        if name == "labels":
            return a > 0
        if threshold is not None:
            return (np.abs(a) >= threshold) if name in DIVERGING else (a >= threshold)
        if a.dtype.kind != "f":
            return None
        with np.errstate(over="ignore"):
            total = np.add.reduce(a, axis=None)
        if np.isfinite(total):
            return None
        return ~np.isnan(a)


def composite_bgra32(layers: Sequence[SliceLayer], shape: tuple[int, int],
                     out: np.ndarray | None = None) -> np.ndarray:
    """Composite 2D layers (bottom first) over black into an opaque ``(rows, cols)`` uint32
    image ``0xFFRRGGBB`` (QImage ``Format_RGB32``).

    Integer arithmetic throughout: the bottom layer is one uint32 LUT gather; every layer
    above is blended only where it is visible (:func:`visible_mask`; heat maps above a
    threshold usually cover a small part of the slice) with its opacity ``a``:
    ``(src * a + dst * (255 - a) + 127) // 255`` per channel. Colours match :func:`to_rgba`
    followed by alpha blending to within one unit of rounding.
    """
    rows, cols = shape
    if out is None:
        out = np.empty((rows, cols), dtype=np.uint32)
    drawn = False
    for lay in layers:
        name = canonical_name(lay.cmap)
        a255 = int(round(255 * min(max(float(lay.opacity), 0.0), 1.0)))
        if a255 == 0:
            continue
        arr = np.asarray(lay.array)
        mask = visible_mask(arr, name, lay.threshold)
        table, src_table = _layer_tables(lay, name, a255)
        if not drawn:
            np.take(table, lut_index(arr, name, lay.vmin, lay.vmax), out=out, mode="clip")
            if mask is not None:
                out[~mask] = _OPAQUE_BLACK
            drawn = True
            continue
        dst_bytes = out.view(np.uint8).reshape(rows * cols, 4)
        if mask is None or mask.sum() > (rows * cols) // 2:
            src = np.take(src_table, lut_index(arr, name, lay.vmin, lay.vmax).ravel(), axis=0,
                          mode="clip")[:, :3]
            dst = dst_bytes[:, :3]
            blended = ((src.astype(np.uint16) * a255 + dst.astype(np.uint16) * (255 - a255)
                        + 127) // 255).astype(np.uint8)
            if mask is None:
                dst[...] = blended
            else:
                np.copyto(dst, blended, where=mask.reshape(-1, 1))
            continue
        where = np.flatnonzero(mask)
        if where.size == 0:
            continue
        vals = arr.ravel()[where]
        src = np.take(src_table, lut_index(vals, name, lay.vmin, lay.vmax), axis=0,
                      mode="clip")[:, :3].astype(np.uint16)
        dst = dst_bytes[where, :3].astype(np.uint16)
        dst_bytes[where, :3] = ((src * a255 + dst * (255 - a255) + 127) // 255).astype(np.uint8)
    if not drawn:
        out[...] = _OPAQUE_BLACK
    return out


def bgra32_to_rgba(image: np.ndarray) -> np.ndarray:
    """``(rows, cols)`` uint32 ``0xAARRGGBB`` -> ``(rows, cols, 4)`` RGBA uint8."""
    img = np.asarray(image, dtype=np.uint32)
    out = np.empty((*img.shape, 4), dtype=np.uint8)
    out[..., 0] = (img >> 16) & 0xFF
    out[..., 1] = (img >> 8) & 0xFF
    out[..., 2] = img & 0xFF
    out[..., 3] = img >> 24
    return out


def colorbar_rgba(cmap: str, length: int = 256, width: int = 1,
                  vertical: bool = True) -> np.ndarray:
    """An RGBA ramp of a colour map (low values at the bottom when ``vertical``), uint8."""
    ramp = lut(cmap)[np.linspace(0, _LUT_SIZE - 1, length).astype(int)]
    if vertical:
        return np.repeat(ramp[::-1, None, :], width, axis=1)
    return np.repeat(ramp[None, :, :], width, axis=0)


def sample_values(array: np.ndarray, max_samples: int = 200_000) -> np.ndarray:
    """About ``max_samples`` values of ``array`` (all of them when it is small), flat.

    A big volume is sampled by whole slabs along its first axis (every k-th slice, then every
    j-th value of those): reading a few contiguous slices costs a fraction of a strided pass
    over the whole array, which touches every cache line of it."""
    a = np.asarray(array)
    if a.size <= max_samples:
        return a.ravel()
    if a.ndim >= 2 and a.shape[0] > 1:
        per_slice = a.size // a.shape[0]
        k = max(1, int(a.shape[0] * per_slice // (4 * max_samples)))  # ~4x the samples
        a = a[k // 2::k]
    flat = a.ravel()
    if flat.size > max_samples:
        flat = flat[:: int(np.ceil(flat.size / max_samples))]
    return flat


def robust_range(array: np.ndarray, lower: float = 1.0, upper: float = 99.5,
                 symmetric: bool = False, max_samples: int = 200_000) -> tuple[float, float]:
    """A display range from percentiles of the finite values (subsampled for speed).

    ``symmetric=True`` returns ``(-m, m)`` with ``m`` the ``upper`` percentile of ``|v|``.
    """
    a = sample_values(array, max_samples)
    a = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    if a.size == 0:
        return (0.0, 1.0)
    if symmetric:
        m = float(np.percentile(np.abs(a), upper))
        m = m if m > 0 else 1.0
        return (-m, m)
    lo, hi = (float(v) for v in np.percentile(a, [lower, upper]))
    if hi <= lo:
        hi = lo + 1.0
    return (lo, hi)


def importance_display(array: np.ndarray, signed: bool = False) -> dict:
    """Display settings for an importance map (Grad-CAM, occlusion, population map).

    Raw values stay untouched; only the display is normalised. With ``hi`` the 99.5th
    percentile of the non-zero ``|v|``, values below the threshold
    ``max(0.25 * hi, min(80th percentile of the non-zero |v|, 0.9 * hi))`` are transparent, so
    at most the top fifth of the map covers the anatomy. The colours are spent on what is
    shown: ReLU map: ``heat`` from the threshold to ``top``, the 99.5th percentile of the
    values at or above it (a coarse map, whose threshold can sit at 0.9 * ``hi``, would
    otherwise draw every visible voxel in the last tenth of the colour map, one colour).
    Signed map: ``bwr`` from ``-hi`` to ``hi``, the same threshold on ``|v|``; the range stays
    symmetric so that white keeps meaning 0, and cannot start at the threshold.
    Opacity :data:`OVERLAY_OPACITY`.
    """
    arr = sample_values(array, 1_000_000)  # a big map: percentiles of a slab sample
    nz = np.abs(arr[np.isfinite(arr) & (arr != 0)]).astype(np.float64)
    if nz.size:
        hi, q80 = (float(v) for v in np.percentile(nz, [99.5, 80.0]))
    else:
        hi, q80 = 1.0, 0.0
    hi = hi if hi > 0 else 1.0
    thr = max(0.25 * hi, min(q80, 0.9 * hi))  # < hi
    if signed:
        return {"kind": "overlay", "colormap": "bwr", "display_range": (-hi, hi),
                "threshold": thr, "opacity": OVERLAY_OPACITY}
    shown = nz[nz >= thr]
    top = float(np.percentile(shown, 99.5)) if shown.size else hi
    top = top if top > thr else hi  # a single value shown (or none): its colour is the first
    return {"kind": "overlay", "colormap": "heat", "display_range": (thr, top),
            "threshold": thr, "opacity": OVERLAY_OPACITY}
