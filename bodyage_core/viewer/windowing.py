"""Window / level of an image layer: the modality-aware default, presets, width/level
arithmetic and the histogram the contrast panel draws the window on (ITK-SNAP's contrast
dialog, the CT presets of every PACS).

* **CT** is recognised from the header (DICOM ``Modality``) or, for files without one (NIfTI),
  from the value range: Hounsfield units have air near -1000 and bone in the hundreds. A CT
  opens in the soft-tissue window (W400/L40); presets brain (W80/L40), soft tissue, lung
  (W1500/L-600) and bone (W1800/L400).
* **Other images** (MR) open on the 1-99.5 % range of their values, as before; presets "auto"
  and "full range", and for a Dixon image (``water`` and ``fat`` channels) "water" and "fat",
  which show that channel on its own 1-99.5 % range.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bodyage_core import display
from bodyage_core.volume import Volume


def _ct_presets() -> tuple[dict[str, tuple[float, float]], str]:
    from bodyage_core.resources import load_json

    ct = load_json("presets", "windows.json")["ct"]
    return {k: (float(w), float(lv)) for k, (w, lv) in ct["presets"].items()}, ct["default"]


#: name -> (width, level) in Hounsfield units (``resources/presets/windows.json``)
CT_PRESETS, CT_DEFAULT = _ct_presets()
AUTO = "auto (1-99.5 %)"
FULL = "full range"


def window_of(vmin: float, vmax: float) -> tuple[float, float]:
    """``(width, level)`` of a display range."""
    return float(vmax) - float(vmin), (float(vmin) + float(vmax)) / 2.0


def range_of(width: float, level: float) -> tuple[float, float]:
    """The display range ``(vmin, vmax)`` of a window ``width`` centred on ``level``."""
    return float(level) - float(width) / 2.0, float(level) + float(width) / 2.0


#: (id(volume), channel) -> (weak reference to the volume, guess): the layer panel asks again
#: on every layer change, and sampling and sorting 200,000 values takes milliseconds
_MODALITY_CACHE: dict[tuple[int, str | None], tuple[Any, tuple[str | None, str]]] = {}


def guess_modality(volume: Volume, channel: str | None = None) -> tuple[str | None, str]:
    """``('CT' | 'MR' | None, why)``: from the header when it says (DICOM ``Modality``, a
    ``modality`` recorded in the provenance or metadata), else CT when the values look like
    Hounsfield units (minimum at or below -900, the 1st percentile below -100, the 99th above
    50), else None (shown as before: not a CT window). Remembered per volume and channel."""
    key = (id(volume), channel)
    hit = _MODALITY_CACHE.get(key)
    if hit is not None and hit[0]() is volume:
        return hit[1]
    out = _guess_modality(volume, channel)
    try:
        ref = weakref.ref(volume)
    except TypeError:                     # not weak-referenceable: not remembered
        return out
    while len(_MODALITY_CACHE) >= 64:
        _MODALITY_CACHE.pop(next(iter(_MODALITY_CACHE)), None)
    _MODALITY_CACHE[key] = (ref, out)
    return out


def _guess_modality(volume: Volume, channel: str | None) -> tuple[str | None, str]:
    for where in (volume.provenance, volume.metadata):
        m = where.get("modality") if isinstance(where, dict) else None
        if isinstance(m, str) and m.strip():
            m = m.strip().upper()
            return ("CT" if m == "CT" else "MR" if m in ("MR", "MRI") else m,
                    f"header (Modality {m})")
    arr = volume.channel(channel or volume.channels[0])
    vals = display.sample_values(arr, 200_000)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return None, ""
    lo = float(vals.min())
    p1, p99 = (float(v) for v in np.percentile(vals, [1.0, 99.0]))
    if lo <= -900.0 and p1 < -100.0 and p99 > 50.0:
        return "CT", f"value range (Hounsfield units, minimum {lo:.0f})"
    return None, ""


def default_image_range(volume: Volume, channel: str | None = None) -> tuple[float, float]:
    """The display range an image opens with: the CT soft-tissue window for a CT, the 1-99.5 %
    range of its values otherwise."""
    if guess_modality(volume, channel)[0] == "CT":
        return range_of(*CT_PRESETS[CT_DEFAULT])
    return display.robust_range(volume.channel(channel or volume.channels[0]), 1.0, 99.5)


@dataclass(frozen=True)
class Preset:
    """A named display setting of an image layer; :meth:`apply` sets it through the state."""

    name: str
    apply_fn: Callable[[Any, Any], None]
    window: tuple[float, float] | None = None   # (width, level) for fixed windows

    def apply(self, state: Any, layer: Any) -> None:
        self.apply_fn(state, layer)


def _fixed(width: float, level: float) -> Callable[[Any, Any], None]:
    def apply(_state: Any, layer: Any) -> None:
        layer.set(**dict(zip(("vmin", "vmax"), range_of(width, level))))
    return apply


def _auto(_state: Any, layer: Any) -> None:
    layer.set(**dict(zip(("vmin", "vmax"), display.robust_range(layer.data, 1.0, 99.5))))


def _full(_state: Any, layer: Any) -> None:
    vals = display.sample_values(layer.data, 2_000_000)
    vals = vals[np.isfinite(vals)]
    if vals.size:
        layer.set(vmin=float(vals.min()), vmax=float(vals.max()))


def _channel(name: str) -> Callable[[Any, Any], None]:
    def apply(state: Any, layer: Any) -> None:
        if layer.channel != name:
            if state is not None and layer is state.base_layer:
                state.set_channel(name)     # every layer with that channel follows
            else:
                layer.channel = name
        _auto(state, layer)
    return apply


def presets_for(layer: Any) -> dict[str, Preset]:
    """The presets offered for ``layer`` (image and overlay layers; none for labels)."""
    if layer is None or layer.kind == "labels":
        return {}
    out: dict[str, Preset] = {}
    if layer.kind == "image" and guess_modality(layer.volume, layer.channel)[0] == "CT":
        for name, (w, lvl) in CT_PRESETS.items():
            out[name] = Preset(name, _fixed(w, lvl), (w, lvl))
    chans = layer.volume.channels
    if "water" in chans and "fat" in chans:
        out["water"] = Preset("water", _channel("water"))
        out["fat"] = Preset("fat", _channel("fat"))
    out[AUTO] = Preset(AUTO, _auto)
    out[FULL] = Preset(FULL, _full)
    return out


def matching_preset(layer: Any) -> str | None:
    """The fixed-window preset the layer's range is on now, if any."""
    for p in presets_for(layer).values():
        if p.window is not None and np.allclose(range_of(*p.window), (layer.vmin, layer.vmax)):
            return p.name
    return None


def histogram(array: np.ndarray, bins: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, edges)`` of the finite values of ``array`` (sampled), over their whole range;
    what the contrast panel draws, with the window over it."""
    vals = display.sample_values(array, 500_000)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return np.zeros(bins, np.int64), np.linspace(0.0, 1.0, bins + 1)
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(vals, bins=bins, range=(lo, hi))
    return counts, edges
