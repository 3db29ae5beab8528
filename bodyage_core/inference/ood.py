"""Is an input unlike what the model was trained on? A feature-space distance, calibrated on
the model's own validation subjects.

Each member's pooled last-stage features (the input of its regression head) of the validation
subjects give a mean and a (shrunk) covariance; a new input's Mahalanobis distance to them,
divided by the median distance of the validation subjects, is averaged over the members: the
**QC score** (about 1 for a typical input). Its percentile among the validation subjects' own
scores says how unusual it is; above :data:`FLAG_PERCENTILE` the prediction is flagged
``unlike_training``. Fitted when a run finishes (``ood.safetensors`` in the run, copied into
exported models) -- a model without it simply gives no score.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

FILE = "ood.safetensors"
#: Flag an input whose score is above this share of the validation subjects' scores...
FLAG_PERCENTILE = 0.99
#: ... and at least this many times their median (a small reference set has a noisy tail).
FLAG_MIN_SCORE = 1.5
SHRINK = 0.1


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
    it."""
    stats: dict[str, Any] = {"members": []}
    total: dict[int, list[float]] = {}
    for net, idx in zip(nets, unseen):
        idx = np.asarray(idx, dtype=int)
        mu, prec, dist = _fit_member(pooled_features(net, batch(idx)))
        med = float(np.median(dist)) or 1.0
        stats["members"].append({"mean": mu, "precision": prec, "median": med})
        for i, d in zip(idx.tolist(), dist / med):
            total.setdefault(i, []).append(float(d))
    stats["reference_scores"] = np.sort([np.mean(v) for v in total.values()])
    stats["n"] = len(total)
    return stats


def score(nets: Sequence[torch.nn.Module], stats: dict[str, Any], x: np.ndarray,
          members: Sequence[int] | None = None) -> tuple[float, float]:
    """``(QC score, its percentile among the validation subjects)`` of one input ``x``
    ``(C, ...)``, over ``members`` (default all)."""
    ks = range(len(nets)) if members is None else list(members)
    vals = []
    for k in ks:
        m = stats["members"][k]
        f = pooled_features(nets[k], x[None])
        vals.append(float(_distances(f, m["mean"], m["precision"])[0]) / m["median"])
    s = float(np.mean(vals))
    ref = np.asarray(stats["reference_scores"])
    return s, float(np.searchsorted(ref, s, side="right") / max(len(ref), 1))


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
    return save_safetensors(t, path, dtype=None, metadata={"n": str(stats["n"])})


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
    return {"members": members, "reference_scores": t["reference_scores"].double().numpy(),
            "n": n}
