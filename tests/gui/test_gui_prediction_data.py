"""A tiny synthetic workspace with a tiny trained run, built once per test process and shared
by the GUI analysis tests (prediction panel, cohort panel, training wizard). No tests here."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

#: synthetic cohort on a coarse grid (x, y, z mm): 42 x 32 x 74 voxels
SYNTH_GRID = (12.0, 12.0, 15.0)
#: model grid (z, y, x): spacing mm and shape
MODEL_SPACING = (15.0, 12.0, 12.0)
MODEL_SHAPE = (16, 12, 12)
RUN = "tiny"
N_SUBJECTS = 8


def train_tiny(ws, run: str = RUN, epochs: int = 2, reporter=None):
    from bodyage_core.training.augment import AugmentConfig
    from bodyage_core.training.trainer import TrainConfig
    from bodyage_core.training.workflow import make_spec, train_workspace

    spec = make_spec(ws, "resnet3d", spacing=MODEL_SPACING, shape=MODEL_SHAPE)
    cfg = TrainConfig(epochs=epochs, batch_size=4, loss="meanvar", device="cpu",
                      augment=AugmentConfig(0, 0, 0, 0, 0, 0, False))
    return train_workspace(ws, run, spec, {"arch": "resnet3d", "width": 4}, cfg, folds=2,
                           members=1, reporter=reporter)


@functools.lru_cache(maxsize=1)
def tiny_workspace_root() -> Path:
    """Folder of the shared workspace: 8 synthetic subjects, run ``tiny`` (2 folds x 1 member,
    width 4, 2 epochs, mean-variance loss) with its out-of-fold predictions stored."""
    import torch

    from bodyage_core.cohort import Workspace
    from bodyage_core.synth import generate_cohort

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bodyage_gui_ws_"))
    atexit.register(shutil.rmtree, tmp, True)
    root = tmp / "ws"
    generate_cohort(root, n=N_SUBJECTS, seed=3, grid=SYNTH_GRID)
    with Workspace.open(root) as ws:
        train_tiny(ws)
    return root


def copy_workspace(dest: Path) -> Path:
    """A private copy of the shared workspace (for tests that add runs)."""
    shutil.copytree(tiny_workspace_root(), dest)
    return dest
