"""A tiny Dixon model bundle made through the product, once per test process, for the viewer's
tests of Predict without a workspace (no tests here):

    bodyage synth WS --n 12 --grid 16,16,20
    bodyage train WS --run r --folds 2 --epochs 2 --width 4 --device cpu
    bodyage export WS --run r MODELS/tiny-dixon --name tiny-dixon

Point ``BODYAGE_MODEL_PATH`` at :func:`tiny_model_root` ``/ "models"`` to make it a model found
by name. Its envelope (16 x 16 x 20 mm voxels, the phantom's field of view) accepts the
subjects of ``WS`` and refuses other scans.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import shutil
import tempfile
from pathlib import Path

MODEL = "tiny-dixon"


def _cli(*argv: str) -> None:
    from bodyage_core.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(list(argv))
    if rc != 0:
        raise RuntimeError(f"bodyage {' '.join(argv)} failed ({rc}):\n{out.getvalue()}")


@functools.lru_cache(maxsize=1)
def tiny_model_root() -> Path:
    """A folder holding ``WS`` (the cohort the model was trained on) and ``models/tiny-dixon``
    (the exported bundle)."""
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bodyage_tiny_model_"))
    atexit.register(shutil.rmtree, tmp, True)
    ws = tmp / "WS"
    _cli("synth", str(ws), "--n", "12", "--grid", "16,16,20", "--seed", "5")
    _cli("train", str(ws), "--run", "r", "--folds", "2", "--epochs", "2", "--width", "4",
         "--device", "cpu")
    _cli("export", str(ws), "--run", "r", str(tmp / "models" / MODEL), "--name", MODEL)
    return tmp


def subject_files(index: int = 0) -> tuple[Path, Path]:
    """``(water, fat)`` of one subject of the model's cohort."""
    subjects = sorted((tiny_model_root() / "WS" / "subjects").iterdir())
    d = subjects[index]
    return d / "water.nii.gz", d / "fat.nii.gz"
