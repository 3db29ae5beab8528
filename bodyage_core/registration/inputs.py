"""The inputs both registration engines prepare alike: the channels two volumes share, a
channel divided by its robust maximum, a label map checked against its image's grid."""

from __future__ import annotations

import numpy as np

from bodyage_core.errors import BodyageError
from bodyage_core.registration.quality import robust_max
from bodyage_core.volume import Volume


def shared_channels(a: Volume, b: Volume, weights: dict[str, float] | None) -> list[str]:
    names = [c for c in a.channels if c in b.channels
             and (weights is None or float(weights.get(c, 0.0)) > 0)]
    if not names:
        if a.n_channels != b.n_channels:
            raise BodyageError(f"no common channels to register: {a.channels} vs {b.channels}",
                               hint="register volumes of the same contrast (e.g. water+fat)")
        names = list(range(a.n_channels))
    return names


def normalised(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    return a / robust_max(a)


def labels_array(labels, like: Volume, what: str) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, Volume):
        if labels.shape != like.shape or not np.allclose(labels.affine, like.affine, atol=1e-2):
            raise BodyageError(
                f"the {what} label map is on another grid ({labels.shape}) than its image "
                f"({like.shape})", path=labels.provenance.get("path"),
                hint="resample the label map onto the image grid (nearest neighbour) first")
        return np.asarray(labels.data[0])
    arr = np.asarray(labels)
    if arr.shape != like.shape:
        raise BodyageError(f"the {what} label map has shape {arr.shape}, its image {like.shape}",
                           hint="give a label map on the image grid")
    return arr
