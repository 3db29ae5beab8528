"""Network weights on disk, read without running code from the file.

Two formats: the members and checkpoints of a workspace run (``torch.save`` archives, read with
``weights_only=True``: tensors, dicts and plain values only; anything else is refused) and the
weights of a model bundle (safetensors: a JSON header and raw tensor bytes, nothing to execute).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bodyage_core.atomic import atomic_path
from bodyage_core.errors import BodyageError

REFUSED = ("holds Python objects besides weights (loading it could run code); refused, "
           "nothing was loaded")

_PAYLOAD_WORDS = ("GLOBAL", "global", "REDUCE", "reduce", "blocked", "BUILD")


def load_torch_file(path: str | Path, what: str = "file") -> Any:
    """A run member or checkpoint, loaded on the CPU with ``weights_only=True``.

    A file whose pickle names anything but tensors, containers and plain values (a payload that
    would run on load) is refused with a :class:`BodyageError` before any of it runs; a
    missing or damaged file is a BodyageError naming it too.
    """
    path = Path(path)
    if not path.exists():
        raise BodyageError(f"{what} not found", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the callable a payload asks for ("unsupported GLOBAL posix.system",
        # "reduce ..."); anything else is a file that is not a pickle at all
        if any(k in str(exc) for k in _PAYLOAD_WORDS):
            raise BodyageError(f"{what} {REFUSED}", path=path,
                               hint="use only model files you trust; retrain or re-export the "
                                    "model") from None
        raise BodyageError(f"{what} is damaged or unreadable (UnpicklingError)", path=path,
                           hint="delete the run and train again (or --overwrite)") from None
    except Exception as exc:  # noqa: BLE001
        raise BodyageError(f"{what} is damaged or unreadable ({type(exc).__name__})", path=path,
                           hint="delete the run and train again (or --overwrite)") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | Path,
                     dtype: torch.dtype | None = torch.float16,
                     metadata: Mapping[str, str] | None = None) -> str:
    """Write a state dict as safetensors, atomically; floating tensors stored as ``dtype``
    (float16 halves the size; the networks compute in float32 after loading). Returns the
    file's sha256."""
    from safetensors.torch import save_file

    out = {}
    for k, v in state.items():
        t = v.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[k] = t.contiguous()
    with atomic_path(path) as tmp:
        save_file(out, str(tmp), metadata=dict(metadata or {}))
    return sha256_file(path)


def load_safetensors(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """A safetensors state dict (floating tensors as float32) on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise BodyageError(f"{what} not found", path=path,
                           hint="the model folder is incomplete; copy or export it again")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise BodyageError(f"{what} is damaged or not safetensors ({exc})", path=path,
                           hint="copy or export the model again") from None
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def save_torch_file(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically. torch's writer reports a full disk or a file-size limit as a
    ``RuntimeError`` ("file write failed", "unexpected pos"...); it is raised as the ``OSError``
    it is, naming the target, so the command says "disk full" in one line."""
    import errno

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except RuntimeError as exc:
        msg = str(exc).lower()
        if any(k in msg for k in ("write", "unexpected pos", "iostream", "file")):
            raise OSError(errno.ENOSPC, f"could not write ({exc})".splitlines()[0],
                          str(path)) from exc
        raise
