"""The predict and explain stages validate a run in the client by loading its networks; tasks
run in the same thread (in-process) reuse them instead of loading every member again."""

from __future__ import annotations

import pytest

from bodyage_core.cli.main import main
from bodyage_core.cluster import Engine, EngineOptions, ExplainStage, PredictStage, tasks
from bodyage_core.cohort import Workspace
from bodyage_core.errors import BodyageError


@pytest.fixture(scope="module")
def ws_path(tmp_path_factory):
    """4 synthetic subjects and a run ``r`` of 2 members (2 folds, 1 epoch, width 4)."""
    root = tmp_path_factory.mktemp("loads") / "ws"
    assert main(["synth", str(root), "--n", "4", "--grid", "16,16,20"]) == 0
    assert main(["train", str(root), "--run", "r", "--model", "resnet3d", "--members", "1",
                 "--folds", "2", "--epochs", "1", "--width", "4", "--spacing", "20", "16", "16",
                 "--batch-size", "4", "--device", "cpu", "--early-stopping", "0"]) == 0
    return root


@pytest.fixture
def loads(monkeypatch):
    """The member files read from now on (with an empty run cache)."""
    import bodyage_core.inference.weights as trainer

    seen: list[str] = []
    real = trainer.load_torch_file

    def counting(path, *args, **kwargs):
        seen.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(trainer, "load_torch_file", counting)
    monkeypatch.setattr(tasks, "_RUNS", {})
    return seen


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_in_process_stages_load_each_member_once(ws_path, loads, device):
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            pytest.skip("auto is the GPU here: the client's CPU copy cannot be reused")
    with Workspace.open(ws_path) as ws:
        first = ws.db.subject_ids()[0]
        with Engine(ws, EngineOptions(scheduler="none")) as eng:
            p = eng.run(PredictStage("r", device=device, overwrite=True))
            assert len(p.done) == 4 and not p.failed
            assert len(loads) == 2 and len(set(loads)) == 2     # 2 members, each once
            e = eng.run(ExplainStage("r", subject_ids=[first], device=device,
                                     overwrite=True))
            assert e.done == [first] and not e.failed
            assert len(loads) == 2                               # the same networks again


def test_damaged_run_and_unknown_layer_still_fail_in_the_client(ws_path, loads, tmp_path):
    import shutil

    dst = tmp_path / "ws"
    shutil.copytree(ws_path, dst)
    with Workspace.open(dst) as ws:
        before = (ws.db.tasks("predict", "r"), ws.db.tasks("explain", "gradcam_r"))
        with Engine(ws, EngineOptions(scheduler="none")) as eng:
            with pytest.raises(BodyageError, match="no layer 'nope'"):
                eng.run(ExplainStage("r", layer="nope", device="cpu"))
            member = next(ws.model_dir("r").glob("*.pt"))
            member.write_bytes(b"not a checkpoint")
            tasks._RUNS.clear()
            with pytest.raises(BodyageError):
                eng.run(PredictStage("r", device="cpu"))
            with pytest.raises(BodyageError):
                eng.run(ExplainStage("r", device="cpu"))
        # no subject was tried
        assert (ws.db.tasks("predict", "r"), ws.db.tasks("explain", "gradcam_r")) == before
