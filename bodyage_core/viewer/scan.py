"""The scan the viewer shows, as a model's input (Qt-free): what Predict hands to a model.

A viewer shows one base image and layers on top. A Dixon pair opened as two files
(``water.nii.gz`` and ``fat.nii.gz``) is two layers whose channel is the loader's ``image``; a
model needs one volume with named channels. :func:`scan_volume` builds that volume from what is
shown: the base image's channels, the base named by its layer name when that name is a contrast
(``water``, ``fat``, ``t1`` ...), and every other image layer on the base grid named like a
contrast. :func:`model_input_volume` then picks a model's channels from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bodyage_core.volume import Volume

#: Layer names that name a contrast (a file called ``fat.nii.gz`` is the fat image).
CONTRASTS = ("water", "fat", "in", "opp", "t1", "t2", "flair", "ct")


def _contrast_of(name: str) -> str | None:
    low = name.lower()
    for c in CONTRASTS:
        if low == c or low.endswith(("_" + c, "-" + c)):
            return c
    return None


def scan_volume(state: Any) -> Volume | None:
    """The base image with every contrast the viewer shows on its grid, as one volume with
    named channels (None without an image). Label maps, and layers not named like a contrast
    (heat maps), are not part of it."""
    base = state.base_layer
    if base is None:
        return None
    bv = base.volume
    channels = list(bv.channels)
    data = [np.asarray(bv.data[i]) for i in range(bv.n_channels)]
    own = _contrast_of(base.name)
    if bv.n_channels == 1 and own is not None and channels[0] not in CONTRASTS:
        channels[0] = own
    for lay in state.layers:
        if lay is base or lay.kind == "labels" or not lay.volume.same_grid(bv):
            continue
        for i, ch in enumerate(lay.volume.channels):
            name = ch if ch in CONTRASTS else (_contrast_of(lay.name)
                                               if lay.volume.n_channels == 1 else None)
            if name is not None and name not in channels:
                channels.append(name)
                data.append(np.asarray(lay.volume.data[i]))
    if channels == list(bv.channels):
        return bv
    return Volume(np.stack(data), bv.affine, tuple(channels), dict(bv.provenance),
                  dict(bv.metadata))


def model_input_volume(state: Any, channels: tuple[str, ...]) -> Volume | None:
    """The shown scan with a model's ``channels`` when it has them by name (in the model's
    order), else the scan as it is (the prediction then says what is missing)."""
    vol = scan_volume(state)
    if vol is None:
        return None
    if all(c in vol.channels for c in channels):
        if tuple(vol.channels) == tuple(channels):
            return vol
        return Volume(np.stack([vol.channel(c) for c in channels]), vol.affine,
                      tuple(channels), dict(vol.provenance), dict(vol.metadata))
    return vol


def _stem(path) -> str:
    from pathlib import Path

    name = Path(str(path)).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name.split(".")[0]


def is_contrast_file(path) -> bool:
    """A file named like a contrast (``fat.nii.gz``, ``sub-01_water.nii.gz``)."""
    return _contrast_of(_stem(path)) is not None


def merge_contrasts(images: list[tuple[Any, Volume]]) -> list[tuple[Any, Volume]]:
    """Image files that are one scan's contrasts (``water.nii.gz`` and ``fat.nii.gz``: named
    like a contrast, one channel each, on one grid) as one volume with those channels, in
    place of the first; the others as they were. A Dixon pair given as two files then shows
    as a workspace subject does (one image, a channel menu), not as a heat map of fat over
    water, and is the two-channel scan a model reads."""
    if not images:
        return images
    first_path, first = images[0]
    own = _contrast_of(_stem(first_path))
    if own is None or first.n_channels != 1:
        return images
    channels, data, rest = [own], [np.asarray(first.data[0])], []
    for path, vol in images[1:]:
        c = _contrast_of(_stem(path))
        if c is not None and c not in channels and vol.n_channels == 1 and \
                vol.same_grid(first):
            channels.append(c)
            data.append(np.asarray(vol.data[0]))
        else:
            rest.append((path, vol))
    if len(channels) == 1:
        return images
    merged = Volume(np.stack(data), first.affine, tuple(channels), dict(first.provenance),
                    dict(first.metadata))
    return [(first_path, merged), *rest]


def scan_id(layer: Any) -> str:
    """The id a prediction of the shown scan goes under, as ``bodyage predict`` names it: the
    folder's name for a file named only by its contrast (``subjects/synth011_00000/water.nii.gz``)
    and for a Dixon pair given as two files (one image with their channels), else the layer's
    name (``IXI013-HH-1212_T1``, ``example_ct``: a name that merely ends in a contrast is the
    scan's own, not its folder's)."""
    from pathlib import Path

    path = getattr(layer, "path", None)
    image_file = path and str(path).lower().endswith((".nii", ".nii.gz", ".nrrd", ".nhdr",
                                                       ".mha", ".mhd"))
    folder = Path(str(path)).parent.name if image_file else ""
    if folder and is_contrast_file(path):
        only_contrast = _stem(path).lower() in CONTRASTS
        merged = getattr(getattr(layer, "volume", None), "n_channels", 1) > 1
        if only_contrast or merged:
            return folder
    return layer.name
