"""Is an input unlike what the model was trained on? A feature-space distance, calibrated on
the model's own validation subjects.

Each member's pooled last-stage features (the input of its regression head) of the validation
subjects give a mean and a (shrunk) covariance; a new input's Mahalanobis distance to them,
divided by the median distance of the validation subjects, is averaged over the members: the
**QC score** (about 1 for a typical input). Its percentile among the validation subjects' own
scores says how unusual it is; above :data:`FLAG_PERCENTILE` the prediction is flagged
``unlike_training``. Fitted when a run finishes (``ood.safetensors`` in the run, copied into
exported models) -- a model without it simply gives no score.

**Laterality.** A left-right mirrored scan (heart, liver, spleen on the wrong side, or a header
that says left for right) barely moves the pooled features. The laterality term looks at the
input itself: its left-right asymmetry map on the model grid, in RAS (the grid is turned to RAS
with its affine first, so a scan stored in another orientation is not a flip), mirrored about
the body's own midline, block-averaged and scaled to unit length (:func:`asymmetry`). The
reference subjects' mean map is the training set's consistent asymmetry; a new map's
projection on it, ``t``, is about 1 for a typical subject and about -1 for a mirrored one. Its
spread over the reference subjects (leave-one-out) gives ``z = (mean t - t) / sd t`` and the
*separation* ``d = 2 mean t / sd t``: how many reference SDs a mirrored training scan would lie
away, i.e. how consistent the training set's asymmetry is. Where ``d`` is small (a near-
symmetric anatomy, e.g. brains without a consistent asymmetry) the term is weak
(:data:`LAT_WEIGHT_FROM` .. :data:`LAT_MIN_SEPARATION`) or off. The score gains ``weight *
max(0, z - min(d / 2, LAT_SOFT_Z))`` (past :data:`LAT_SOFT_Z` SDs, or halfway to the mirrored
training set if that is nearer); the ``laterality`` flag is raised where a mirrored training
scan is :data:`LAT_ODDS` times likelier than a typical one (two Gaussians ``d`` apart; and
``z >= LAT_MIN_Z``), unless the feature score already flags the input ``unlike_training``
(a water/fat swap also turns the asymmetry map's sign: its cause is the contrast). For a
model that aligns its input to a template the alignment absorbs part of a mirrored scan's
asymmetry, so ``d`` overstates how far a mirror lies and the flag is the more conservative
there. A model whose QC reference was made before the term existed gives no laterality term
(logged once when it loads): refit the run's reference
(:func:`bodyage_core.training.workflow.add_qc_reference`) or add the term to a bundle
(:func:`bodyage_core.inference.export.add_laterality_reference`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FILE = "ood.safetensors"
#: Flag an input whose score is above this share of the validation subjects' scores...
FLAG_PERCENTILE = 0.99
#: ... and at least this many times their median (a small reference set has a noisy tail).
FLAG_MIN_SCORE = 1.5
SHRINK = 0.1

#: Laterality term: asymmetry maps are block-averaged over this many model-grid voxels per axis
LAT_BLOCK = 2
#: ... fitted on at least this many reference subjects
LAT_MIN_SUBJECTS = 10
#: a separation below this gives no term; from it to LAT_MIN_SEPARATION the weight rises 0 -> 1
LAT_WEIGHT_FROM = 2.0
#: the score gains from this many reference SDs towards the mirror (or halfway, if nearer)
LAT_SOFT_Z = 3.5
#: the separation (reference SDs between typical and mirrored) the flag needs
LAT_MIN_SEPARATION = 4.0
#: flag where a mirrored training scan is this many times likelier than a typical one ...
LAT_ODDS = 100.0
#: ... and at least this many reference SDs towards the mirror
LAT_MIN_Z = 4.0
LATERALITY_FLAG = "laterality"


def pooled_features(net: torch.nn.Module, x: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """The input of ``net.head`` (pooled last-stage features) for a batch ``(N, C, ...)``, on
    the network's own device."""
    from bodyage_core.inference.device import to_device

    device = next(net.parameters()).device
    head = getattr(net, "head", None)
    if head is None:
        raise ValueError("this network has no head to read features from")
    out: list[np.ndarray] = []
    got: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: got.append(args[0].detach()))
    try:
        net.eval()
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                got.clear()
                net(to_device(np.asarray(x[i:i + batch_size], dtype=np.float32), device))
                out.append(got[0].float().flatten(1).cpu().numpy())
    finally:
        hook.remove()
    return np.concatenate(out).astype(np.float64)


def _fit_member(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu = feats.mean(axis=0)
    c = np.cov(feats, rowvar=False) if len(feats) > 1 else np.eye(feats.shape[1])
    c = np.atleast_2d(c)
    # shrink towards the diagonal, the more the fewer subjects per feature dimension (a
    # validation set is often smaller than the 64-512 features)
    lam = float(min(1.0, max(SHRINK, feats.shape[1] / max(len(feats), 1))))
    c = (1 - lam) * c + lam * np.diag(np.diag(c)) + 1e-6 * np.eye(len(c))
    prec = np.linalg.pinv(c)
    return mu, prec, _distances(feats, mu, prec)


def _distances(f: np.ndarray, mu: np.ndarray, prec: np.ndarray) -> np.ndarray:
    d = f - mu
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, prec, d), 0.0))


def fit(nets: Sequence[torch.nn.Module], batch, unseen: Sequence[np.ndarray]
        ) -> dict[str, Any]:
    """Reference statistics of ``nets``: member k on the subjects ``unseen[k]`` (indices it was
    never trained on: its validation and held-out subjects), their inputs from
    ``batch(indices)``. The reference score of a subject averages the members that never saw
    it. ``held_out_scores`` (index -> score, not saved) are the same subjects' cross-fitted
    scores (:func:`_cross_fitted`): what each would score as a new input."""
    stats: dict[str, Any] = {"members": []}
    total: dict[int, list[float]] = {}
    held: dict[int, list[float]] = {}
    maps: dict[int, np.ndarray] = {}
    shape: tuple[int, ...] | None = None
    for net, idx in zip(nets, unseen):
        idx = np.asarray(idx, dtype=int)
        x = batch(idx)
        feats = pooled_features(net, x)
        mu, prec, dist = _fit_member(feats)
        med = float(np.median(dist)) or 1.0
        stats["members"].append({"mean": mu, "precision": prec, "median": med})
        for i, d in zip(idx.tolist(), dist / med):
            total.setdefault(i, []).append(float(d))
        for i, d in zip(idx.tolist(), _cross_fitted(feats)):
            held.setdefault(i, []).append(float(d))
        if np.ndim(x) == 5:                              # 3D inputs: the laterality maps too
            shape = tuple(np.shape(x)[1:])
            for i, xi in zip(idx.tolist(), x):
                if i not in maps:
                    maps[i] = asymmetry(np.asarray(xi))  # cached inputs are RAS grids
    ref = {i: float(np.mean(v)) for i, v in total.items()}
    out = {i: float(np.mean(v)) for i, v in held.items()}
    stats["laterality"] = None
    if shape is not None and len(maps) >= LAT_MIN_SUBJECTS:
        ids = sorted(maps)
        lat, z = _fit_laterality(np.stack([maps[i] for i in ids]), shape)
        stats["laterality"] = lat
        for i, zi in zip(ids, z):                        # the reference scores with the term
            if i in ref:
                ref[i] += _lat_excess(lat, float(zi))
                out[i] += _lat_excess(lat, float(zi))    # leave-one-out already
    stats["reference_scores"] = np.sort(list(ref.values()))
    stats["n"] = len(total)
    stats["held_out_scores"] = out
    return stats


#: folds of the cross-fitted reference scores (:func:`_cross_fitted`)
CROSS_FOLDS = 5


def _cross_fitted(feats: np.ndarray, folds: int = CROSS_FOLDS) -> np.ndarray:
    """Each reference subject's distance to a reference fitted without it (``folds``-fold,
    over the median of that fit's own distances), i.e. the score it would get as a new
    input. The in-sample distances are smaller (the covariance is fitted to them, the more so
    the fewer subjects per feature), so a model of sigma on the QC score (the variance
    calibration) is fitted on these, never on the reference scores."""
    n = len(feats)
    out = np.full(n, np.nan)
    if n < 2 * folds:
        return out
    order = np.random.default_rng(0).permutation(n)
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        mu, prec, dist = _fit_member(feats[rest])
        out[part] = _distances(feats[part], mu, prec) / (float(np.median(dist)) or 1.0)
    return out


# -- laterality --------------------------------------------------------------------------------

def to_ras(x: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    """A model-grid array ``(C, Z, Y, X)`` with its axes turned (permuted, flipped) to RAS by
    the grid's ``affine`` (voxel ``(x, y, z)`` -> RAS mm); as it is when ``affine`` is None
    (a cached input: always made from a RAS volume)."""
    if affine is None:
        return x
    r = np.asarray(affine, dtype=float)[:3, :3]
    world = [int(w) for w in np.argmax(np.abs(r), axis=0)]   # world axis of index axes x, y, z
    if sorted(world) != [0, 1, 2]:
        return x
    # array axis of index axis a is 3 - a; the output's axis 3 - w holds world axis w
    out = np.transpose(x, [0] + [3 - world.index(w) for w in (2, 1, 0)])
    for w in range(3):
        if r[w, world.index(w)] < 0:
            out = np.flip(out, axis=3 - w)
    return out


def asymmetry(x: np.ndarray, affine: np.ndarray | None = None,
              block: int = LAT_BLOCK) -> np.ndarray:
    """The left-right asymmetry map of a model-grid input ``(C, Z, Y, X)``, flattened, unit
    length: the image (in RAS, :func:`to_ras`) minus its mirror about the body's left-right
    centre (the centroid of its Otsu body mask), block-averaged ``block`` voxels per axis. A
    mirrored image gives (about) the negative mirrored map; a symmetric one zeros."""
    from scipy import ndimage

    from bodyage_core.preprocess.grid import body_mask

    a = np.asarray(to_ras(np.asarray(x, dtype=np.float32), affine), dtype=np.float32)
    n_x = a.shape[-1]
    mask = body_mask(np.clip(a.sum(axis=0), 0, None))
    if mask.any():
        prof = mask.sum(axis=(0, 1)).astype(float)
        centre = float((prof * np.arange(n_x)).sum() / prof.sum())
    else:
        centre = (n_x - 1) / 2.0
    mirror = ndimage.shift(a[..., ::-1], (0, 0, 0, 2 * centre - (n_x - 1)), order=1,
                           mode="constant", cval=0.0)
    d = a - mirror
    b = max(1, int(block))
    if b > 1:
        c, nz, ny, nx = d.shape
        z2, y2, x2 = (max(b, s // b * b) for s in (nz, ny, nx))
        d = np.pad(d, [(0, 0)] + [(0, max(0, t - s)) for s, t in zip((nz, ny, nx),
                                                                       (z2, y2, x2))])
        d = d[:, :z2, :y2, :x2].reshape(c, z2 // b, b, y2 // b, b, x2 // b, b).mean(
            axis=(2, 4, 6))
    v = d.ravel().astype(np.float64)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _fit_laterality(maps: np.ndarray, input_shape: Sequence[int]
                    ) -> tuple[dict[str, Any], np.ndarray]:
    """Reference of the laterality term from unit asymmetry maps ``(n, D)``: their mean and
    the leave-one-out projections' mean and SD. Returns it and each subject's leave-one-out
    z."""
    n = len(maps)
    s = maps.sum(axis=0)
    dots = maps @ s
    sq = np.einsum("ij,ij->i", maps, maps)
    den = np.maximum(float(s @ s) - 2 * dots + sq, 1e-12)
    t = (n - 1) * (dots - sq) / den                     # <p_i, mean of the others> / |mean|^2
    t_mean, t_sd = float(np.mean(t)), float(np.std(t, ddof=1)) or 1e-6
    lat = {"mean": s / n, "t_mean": t_mean, "t_sd": t_sd, "n": n,
           "input_shape": tuple(int(v) for v in input_shape), "block": LAT_BLOCK}
    return lat, (t_mean - t) / t_sd


def fit_laterality(inputs, input_shape: Sequence[int] | None = None) -> dict[str, Any] | None:
    """The laterality reference from model-grid inputs: arrays ``(C, Z, Y, X)`` (RAS grids) or
    ``(array, affine)`` pairs. None for fewer than :data:`LAT_MIN_SUBJECTS`."""
    maps, shape = [], input_shape
    for item in inputs:
        x, aff = item if isinstance(item, tuple) else (item, None)
        maps.append(asymmetry(x, aff))
        shape = shape or tuple(np.shape(x))
    if len(maps) < LAT_MIN_SUBJECTS or shape is None:
        return None
    return _fit_laterality(np.stack(maps), shape)[0]


def separation(lat: dict[str, Any]) -> float:
    """How many reference SDs a mirrored training scan would lie from a typical one."""
    return 2.0 * lat["t_mean"] / lat["t_sd"]


def _lat_weight(d: float) -> float:
    return float(np.clip((d - LAT_WEIGHT_FROM) / (LAT_MIN_SEPARATION - LAT_WEIGHT_FROM),
                         0.0, 1.0))


def _lat_excess(lat: dict[str, Any], z: float) -> float:
    d = separation(lat)
    return _lat_weight(d) * max(0.0, z - min(d / 2.0, LAT_SOFT_Z))


def lat_threshold(lat: dict[str, Any]) -> float:
    """The z from which the flag is raised: a mirrored training scan :data:`LAT_ODDS` times
    likelier than a typical one (two Gaussians of equal SD ``d`` apart: ``z >= d / 2 +
    ln(odds) / d``), and at least :data:`LAT_MIN_Z`."""
    d = max(separation(lat), 1e-6)
    return max(LAT_MIN_Z, d / 2.0 + math.log(LAT_ODDS) / d)


def laterality(stats: dict[str, Any], x: np.ndarray,
               affine: np.ndarray | None = None) -> dict[str, Any] | None:
    """The laterality term of one model input ``x`` ``(C, Z, Y, X)`` on its grid (``affine``,
    None: a RAS grid): ``z`` (reference SDs towards the mirrored training set), the
    ``separation``, the flag ``threshold``, the score's ``excess`` and ``flag``. None when the
    model's reference has no laterality statistics, or for another input shape (2.5D)."""
    lat = stats.get("laterality")
    if not lat or np.ndim(x) != 4:
        return None
    x = to_ras(np.asarray(x), affine)
    if tuple(x.shape) != tuple(lat["input_shape"]):
        return None
    mu = np.asarray(lat["mean"], dtype=np.float64).ravel()
    p = asymmetry(x, None, lat.get("block", LAT_BLOCK))
    if p.shape != mu.shape:
        return None
    t = float(p @ mu / max(float(mu @ mu), 1e-12))
    z = (lat["t_mean"] - t) / lat["t_sd"]
    d = separation(lat)
    thr = lat_threshold(lat)
    return {"z": z, "t": t, "separation": d, "threshold": thr,
            "excess": _lat_excess(lat, z), "weight": _lat_weight(d),
            "flag": d >= LAT_MIN_SEPARATION and z >= thr}


def laterality_flag(lat: dict[str, Any] | None) -> dict[str, str] | None:
    if not lat or not lat["flag"]:
        return None
    return {"flag": LATERALITY_FLAG,
            "message": f"left-right orientation unlike the training scans: check the "
                       f"laterality / the header (the image's left-right asymmetry is that "
                       f"of a mirrored training scan: {lat['z']:.1f} SD from typical, flagged "
                       f"from {lat['threshold']:.1f}; a mirrored training scan lies at about "
                       f"{lat['separation']:.1f})",
            "severity": "warning"}


def feature_score(nets: Sequence[torch.nn.Module], stats: dict[str, Any], x: np.ndarray,
                  members: Sequence[int] | None = None) -> float:
    """The feature-space part of the QC score of one input ``x`` ``(C, ...)``: the members'
    mean Mahalanobis distance over the validation subjects' median."""
    ks = range(len(nets)) if members is None else list(members)
    vals = []
    for k in ks:
        m = stats["members"][k]
        f = pooled_features(nets[k], x[None])
        vals.append(float(_distances(f, m["mean"], m["precision"])[0]) / m["median"])
    return float(np.mean(vals))


def _percentile(stats: dict[str, Any], s: float) -> float:
    ref = np.asarray(stats["reference_scores"])
    return float(np.searchsorted(ref, s, side="right") / max(len(ref), 1))


def assess(nets: Sequence[torch.nn.Module], stats: dict[str, Any], x: np.ndarray,
           members: Sequence[int] | None = None, affine: np.ndarray | None = None
           ) -> dict[str, Any]:
    """QC of one input ``x`` on its model grid (``affine``; None: a RAS grid): ``score`` (the
    feature score plus the laterality excess), its ``percentile`` among the reference
    subjects, ``feature_score``, ``laterality`` (:func:`laterality`, None without its
    statistics) and the ``flags`` to show (``unlike_training`` from the feature score,
    ``laterality``)."""
    fs = feature_score(nets, stats, x, members)
    lat = laterality(stats, x, affine)
    total = fs + (lat["excess"] if lat else 0.0)
    unlike = flag_for(fs, _percentile(stats, fs), stats.get("n", 0))
    # the asymmetry is read in the training scans' contrast: an input already unlike them
    # (water and fat swapped, another contrast) would be blamed on its laterality wrongly,
    # and gets the feature flag alone
    flags = [f for f in (unlike, None if unlike else laterality_flag(lat)) if f is not None]
    return {"score": total, "percentile": _percentile(stats, total), "feature_score": fs,
            "laterality": lat, "flags": flags}


def score(nets: Sequence[torch.nn.Module], stats: dict[str, Any], x: np.ndarray,
          members: Sequence[int] | None = None, affine: np.ndarray | None = None
          ) -> tuple[float, float]:
    """``(QC score, its percentile among the validation subjects)`` of one input ``x``
    ``(C, ...)``, over ``members`` (default all); the laterality term included."""
    a = assess(nets, stats, x, members, affine)
    return a["score"], a["percentile"]


def flag_for(s: float, pct: float, n_ref: int) -> dict[str, str] | None:
    if pct >= FLAG_PERCENTILE and s >= FLAG_MIN_SCORE:
        return {"flag": "unlike_training",
                "message": f"outside the model's envelope: the image is unlike its training "
                           f"images (QC score {s:.1f}, above {100 * pct:.0f} % of its "
                           f"{n_ref} validation subjects; 1 = typical)",
                "severity": "warning"}
    return None


def save(stats: dict[str, Any], path: Path) -> str:
    """Write the statistics as safetensors (no code in the file); returns its sha256."""
    from bodyage_core.inference.weights import save_safetensors

    t = {"reference_scores": torch.as_tensor(np.asarray(stats["reference_scores"]))}
    for k, m in enumerate(stats["members"]):
        t[f"m{k}.mean"] = torch.as_tensor(m["mean"])
        t[f"m{k}.precision"] = torch.as_tensor(m["precision"])
        t[f"m{k}.median"] = torch.as_tensor([m["median"]])
    t.update(_lat_tensors(stats.get("laterality")))
    return save_safetensors(t, path, dtype=None, metadata={"n": str(stats["n"])})


def _lat_tensors(lat: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    if not lat:
        return {}
    return {"lat.mean": torch.as_tensor(np.asarray(lat["mean"], dtype=np.float32)),
            "lat.stats": torch.as_tensor([lat["t_mean"], lat["t_sd"]], dtype=torch.float64),
            "lat.n": torch.as_tensor([int(lat["n"])], dtype=torch.int64),
            "lat.block": torch.as_tensor([int(lat.get("block", LAT_BLOCK))],
                                         dtype=torch.int64),
            "lat.input_shape": torch.as_tensor(list(lat["input_shape"]), dtype=torch.int64)}


def add_laterality(path: Path, lat: dict[str, Any]) -> str:
    """Add (or replace) the laterality statistics in an existing ``ood.safetensors``, every
    other tensor and the metadata kept byte for byte; returns the new file's sha256."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from bodyage_core.inference.weights import save_safetensors

    with safe_open(str(path), "pt") as fh:
        meta = dict(fh.metadata() or {})
    t = {k: v for k, v in load_file(str(path), device="cpu").items()
         if not k.startswith("lat.")}
    t.update(_lat_tensors(lat))
    return save_safetensors(t, path, dtype=None, metadata=meta)


def load(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    from bodyage_core.inference.weights import load_safetensors

    t = load_safetensors(path, what="QC statistics")
    with safe_open(str(path), "pt") as fh:
        n = int((fh.metadata() or {}).get("n", 0))
    k = 0
    members = []
    while f"m{k}.mean" in t:
        members.append({"mean": t[f"m{k}.mean"].double().numpy(),
                        "precision": t[f"m{k}.precision"].double().numpy(),
                        "median": float(t[f"m{k}.median"][0])})
        k += 1
    lat = None
    if "lat.mean" in t:
        t_mean, t_sd = (float(v) for v in t["lat.stats"].double())
        lat = {"mean": t["lat.mean"].double().numpy(), "t_mean": t_mean, "t_sd": t_sd,
               "n": int(t["lat.n"][0]), "block": int(t["lat.block"][0]),
               "input_shape": tuple(int(v) for v in t["lat.input_shape"])}
    else:
        log.warning("the QC reference %s has no laterality statistics (made before they "
                    "existed): a left-right mirrored scan is not checked", path)
    return {"members": members, "reference_scores": t["reference_scores"].double().numpy(),
            "n": n, "laterality": lat}
