"""``bodyage train --distributed`` under real ``torchrun`` processes (2 ranks, gloo on CPU).

* members mode, launched through the ``bodyage`` console script, resuming a run interrupted
  after its first member: every member is trained exactly once (the interrupted run's member is
  reused, not retrained), rank r trains the members k with k % 2 == r, rank 0 alone writes the
  run's files and the cohort database rows;
* ddp mode, launched as ``-m bodyage_core.cli.main``: both ranks end with bit-identical weights,
  equal to the saved member and different from the initial weights;
* bad input: ``--distributed`` without torchrun, more ranks than networks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bodyage_core.cli.main import main
from bodyage_core.cohort import Workspace
from bodyage_core.errors import Cancelled
from bodyage_core.models.factory import build_model
from bodyage_core.progress import ProgressReporter
from bodyage_core.training.data import records_from_workspace
from bodyage_core.training.distributed import parameter_digest, shard
from bodyage_core.training.events import Events
from bodyage_core.training.presets import train_config
from bodyage_core.training.run import train_run
from bodyage_core.training.trainer import seed_everything
from bodyage_core.training.workflow import make_spec

sys.path.insert(0, str(Path(__file__).parent))
from test_training_cli import FAST, _make_ws  # noqa: E402

torch.set_num_threads(1)
BIN = Path(sys.executable).parent
TORCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
             "GROUP_RANK", "TORCHELASTIC_RUN_ID")


def _torchrun(launch: list[str], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in TORCH_ENV}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", *launch, "--", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_shard_pads_to_equal_lengths():
    idx = np.arange(7)
    parts = [shard(idx, r, 2) for r in range(2)]
    assert [len(p) for p in parts] == [4, 4]
    assert sorted(set(np.concatenate(parts).tolist())) == list(range(7))
    assert np.array_equal(shard(idx, 0, 1), idx)


def test_members_mode_resumes_and_trains_each_member_once(tmp_path):
    ws = _make_ws(tmp_path / "ws", list(np.linspace(20, 80, 12)))
    spec = make_spec(ws, "resnet3d", spacing=(4, 4, 4), shape=(12, 12, 12))
    # what `bodyage train` gives for the options below (the 3D defaults, then the options)
    cfg = train_config("3d", augment=False, epochs=1, batch_size=4, device="cpu")
    rep = ProgressReporter()
    # interrupt the (single-process) run as soon as its first member is complete
    first_done = []

    def stop(state):
        first_done.append(state.member)
        rep.cancel()

    with pytest.raises(Cancelled):
        train_run(records_from_workspace(ws, spec), ws.model_dir("r"), spec,
                  {"arch": "resnet3d", "width": 4}, cfg, folds=2, members=2, reporter=rep,
                  handlers={Events.COMPLETED: stop})
    partial = tmp_path / "ws" / "models" / "r.partial"
    assert first_done == ["fold 1/2 member 1/2"]
    assert (partial / "member_0.pt").exists() and not (partial / "member_1.pt").exists()
    before = (partial / "member_0.pt").read_bytes()

    args = ["train", str(tmp_path / "ws"), "--run", "r", "--folds", "2", "--members", "2",
            "--distributed", "--resume", "--no-augment", *FAST]
    out = _ok(_torchrun(["--no-python", str(BIN / "bodyage")], args, tmp_path))
    # only rank 0 reports (the other ranks are silent)
    assert out.count("trained under torchrun: 2 rank(s), mode members, backend gloo") == 1
    assert out.count("run r: 4 member(s)") == 1
    run = tmp_path / "ws" / "models" / "r"
    assert not partial.exists() and not (run / "checkpoints").exists()
    rec = json.loads((run / "distributed.json").read_text())
    assert rec["world_size"] == 2 and rec["mode"] == "members" and rec["backend"] == "gloo"
    assert rec["ranks"]["0"] == {"device": "cpu", "trained": [2], "reused": [0]}
    assert rec["ranks"]["1"] == {"device": "cpu", "trained": [1, 3], "reused": []}
    trained = rec["ranks"]["0"]["trained"] + rec["ranks"]["1"]["trained"]
    assert sorted(trained + rec["ranks"]["0"]["reused"]) == [0, 1, 2, 3]   # each exactly once
    assert (run / "member_0.pt").read_bytes() == before                   # reused, not retrained
    cfg_json = json.loads((run / "config.json").read_text())
    assert cfg_json["status"] == "complete" and len(cfg_json["members"]) == 4
    for m in cfg_json["members"]:
        k = int(m["file"].split("_")[1].split(".")[0])
        if k == 0:
            assert "distributed" not in m
        else:
            assert m["distributed"] == {"mode": "members", "world_size": 2, "rank": k % 2}
        assert m["epochs_run"] == 1
    # each owner's weights are what it saved (digest of the file == digest the rank reported)
    for k in (1, 2, 3):
        ck = torch.load(run / f"member_{k}.pt", map_location="cpu", weights_only=False)
        net = build_model(ck["model_config"])
        net.load_state_dict(ck["state_dict"])
        assert rec["parameter_sha1"][f"member_{k}.pt"] == {str(k % 2): parameter_digest(net)}
    # rank 0 alone wrote the database rows: one run, one row per subject, 2 members each
    db = Workspace.open(tmp_path / "ws").db
    assert [r["status"] for r in db.runs() if r["run_id"] == "r"] == ["complete"]
    preds = db.predictions("r")
    assert len(preds) == 12 and len({p["subject_id"] for p in preds}) == 12
    assert all(len(p["members"]) == 2 for p in preds)
    assert not list(run.glob(".*"))       # no temporary files left by any rank


def test_ddp_mode_ranks_end_with_identical_weights(tmp_path):
    _make_ws(tmp_path / "ws", list(np.linspace(20, 80, 12)))
    args = ["train", str(tmp_path / "ws"), "--run", "d", "--folds", "2", "--members", "1",
            "--distributed", "ddp", *FAST, "--epochs", "2", "--batch-size", "2",
            "--accumulate", "2"]
    out = _ok(_torchrun(["-m", "bodyage_core.cli.main"], args, tmp_path))
    assert out.count("trained under torchrun: 2 rank(s), mode ddp, backend gloo") == 1
    run = tmp_path / "ws" / "models" / "d"
    rec = json.loads((run / "distributed.json").read_text())
    assert rec["mode"] == "ddp"
    assert rec["ranks"]["0"]["trained"] == [0, 1] == rec["ranks"]["1"]["trained"]
    cfg = json.loads((run / "config.json").read_text())
    for k in (0, 1):
        digests = rec["parameter_sha1"][f"member_{k}.pt"]
        assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
        ck = torch.load(run / f"member_{k}.pt", map_location="cpu", weights_only=False)
        net = build_model(ck["model_config"])
        net.load_state_dict(ck["state_dict"])
        assert parameter_digest(net) == digests["0"]
        seed_everything(cfg["members"][k]["seed"])
        assert parameter_digest(build_model(ck["model_config"])) != digests["0"]  # it trained
        assert cfg["members"][k]["distributed"]["mode"] == "ddp"
    # the out-of-fold predictions (shared out over both ranks) are those of the saved members
    preds = Workspace.open(tmp_path / "ws").db.predictions("d")
    assert len(preds) == 12
    nets = {}
    for k in (0, 1):
        ck = torch.load(run / f"member_{k}.pt", map_location="cpu", weights_only=False)
        nets[k] = (build_model(ck["model_config"]), ck["info"])
        nets[k][0].load_state_dict(ck["state_dict"])
        nets[k][0].eval()
    for row in preds:
        x = np.load(next((tmp_path / "ws" / "cache").glob(f"*/{row['subject_id']}.npy")))
        net, info = nets[row["fold"]]
        with torch.no_grad():
            mu = float(net(torch.as_tensor(x[None]).float())[0, 0])   # the cache is float16
        assert row["members"][0]["mu"] == pytest.approx(
            mu * info["target_std"] + info["target_mean"], abs=1e-3)


def test_distributed_without_torchrun_or_with_too_many_ranks(tmp_path, capsys, monkeypatch):
    _make_ws(tmp_path / "ws", list(np.linspace(20, 80, 12)))
    for k in TORCH_ENV:
        monkeypatch.delenv(k, raising=False)
    rc = main(["train", str(tmp_path / "ws"), "--run", "x", "--distributed", *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "torchrun" in err and "--nproc_per_node" in err
    assert len(err.strip().splitlines()) == 1
    # the environment torchrun would set for 3 ranks, but only 2 networks (2 folds x 1)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    rc = main(["train", str(tmp_path / "ws"), "--run", "x", "--folds", "2", "--distributed",
               *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and "world size 3 is larger than the 2 network(s)" in err
    assert "--distributed ddp" in err
    assert not (tmp_path / "ws" / "models" / "x.partial").exists()
