"""Two commands on one workspace (issue 12, item 4): every command that writes a workspace holds
its lock, a second writer is refused naming the holder (pid, host, command, since), the finished
run survives, SIGTERM is handled like Ctrl+C (the run is marked interrupted, the lock released).

The holders are real processes: a ``bodyage train`` started with ``python -m``, or a process
holding :class:`~bodyage_core.cluster.lock.WorkspaceLock` as a command does."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bodyage_core.cli.main import main
from bodyage_core.cluster.lock import WorkspaceLock, WorkspaceLockedError
from bodyage_core.cohort import Workspace

PY = sys.executable
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
FAST = ["--width", "4", "--epochs", "1", "--device", "cpu", "--threads", "1", "--loss", "l1",
        "--spacing", "4", "4", "4", "--shape", "12", "12", "12", "--batch-size", "4",
        "--folds", "2"]


def _make_ws(root: Path, n: int = 8) -> Path:
    ws = Workspace.create(root)
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        sid = f"sub{i:02d}"
        d = ws.subject_dir(sid, create=True)
        a = rng.normal(0, 0.1, (20, 20, 20)).astype(np.float32)
        r = 2 + i % 4
        a[10 - r:10 + r, 10 - r:10 + r, 10 - r:10 + r] += 1.0
        nib.save(nib.Nifti1Image(a, np.diag([2.0, 2.0, 2.0, 1.0])), str(d / "t1.nii.gz"))
        recs.append({"subject_id": sid, "age": 25 + 6 * i, "sex": "FM"[i % 2], "bmi": 22,
                     "images": {"t1": f"subjects/{sid}/t1.nii.gz"}})
    ws.db.add_subjects(recs)
    ws.close()
    return root


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _status(root: Path, run: str) -> str | None:
    with Workspace.open(root) as ws:
        return next((r["status"] for r in ws.db.runs() if r["run_id"] == run), None)


_HOLD = textwrap.dedent("""
    import sys, time
    from bodyage_core.cluster.lock import WorkspaceLock
    lock = WorkspaceLock(sys.argv[1], command=sys.argv[2]).acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
""")


class _Holder:
    """A process holding the workspace lock as ``command`` would."""

    def __init__(self, root: Path, command: str, seconds: float = 120):
        self.proc = subprocess.Popen([PY, "-c", _HOLD, str(root), command, str(seconds)],
                                     stdout=subprocess.PIPE, text=True, env=ENV)
        assert self.proc.stdout.readline().strip() == "locked"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = _make_ws(tmp_path_factory.mktemp("conc") / "ws")
    assert main(["train", str(root), "--run", "r1", *FAST]) == 0
    return root


def _refused(capsys, rc: int, pid: int, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "another bodyage run holds this workspace" in err
    assert f"pid {pid} on {socket.gethostname()} ({command}) since " in err, err
    assert "--wait" in err
    return err


# -- a second train of the same run, train --overwrite while explain reads -----------------------

def test_second_resume_is_refused_while_a_train_runs_and_sigterm_ends_it_cleanly(trained,
                                                                                  capsys):
    run_dir = trained / "models" / "r1"
    before = _tree_digest(run_dir)
    slow = subprocess.Popen(
        [PY, "-m", "bodyage_core.cli.main", "train", str(trained), "--run", "slow",
         *FAST[:-2], "--folds", "2", "--epochs", "400"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        lock = WorkspaceLock(trained)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:        # until the trainer holds the lock and trains
            info = lock.read()
            if info.get("pid") == slow.pid and info.get("active") and \
                    _status(trained, "slow") == "training":
                break
            assert slow.poll() is None, slow.stderr.read()
            time.sleep(0.2)
        else:
            pytest.fail("the training process never took the lock")
        holder = f"bodyage train {trained} --run slow"
        rc = main(["train", str(trained), "--run", "r1", "--resume", *FAST])
        _refused(capsys, rc, slow.pid, holder + " " + " ".join(FAST[:-2]) +
                 " --folds 2 --epochs 400")
        rc = main(["train", str(trained), "--run", "slow", "--resume", *FAST])
        assert rc == 2 and "(bodyage train" in capsys.readouterr().err
        assert _tree_digest(run_dir) == before and _status(trained, "r1") == "complete"
        # SIGTERM is Ctrl+C: the run is marked interrupted, the lock released, exit 130
        slow.send_signal(signal.SIGTERM)
        err = slow.communicate(timeout=60)[1]
        assert slow.returncode == 130, err
        assert "terminated (SIGTERM)" in err and "Traceback" not in err
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
    assert _status(trained, "slow") == "interrupted"
    assert (trained / "models" / "slow.partial").is_dir()        # resumable
    assert not (trained / "models" / "slow").exists()
    with WorkspaceLock(trained) as lock:                           # released, not stale
        assert lock.held and lock.stale is None
    assert _tree_digest(run_dir) == before


def test_train_overwrite_is_refused_while_explain_reads_the_run(trained, capsys):
    run_dir = trained / "models" / "r1"
    before = _tree_digest(run_dir)
    cmd = f"bodyage explain {trained} --run r1"
    h = _Holder(trained, cmd)
    try:
        rc = main(["train", str(trained), "--run", "r1", "--overwrite", *FAST])
        _refused(capsys, rc, h.proc.pid, cmd)
    finally:
        h.stop()
    assert _tree_digest(run_dir) == before
    assert not (trained / "models" / "r1.partial").exists()
    assert _status(trained, "r1") == "complete"


# -- every writer takes the lock -------------------------------------------------------------------

WRITERS = [
    ["synth", "{ws}", "--n", "1", "--grid", "12,12,16"],
    ["import", "{ws}", "--images", "{imgs}", "--csv", "{csv}"],
    ["exclude", "{ws}", "sub00"],
    ["train", "{ws}", "--run", "r2", *FAST],
    ["predict", "{ws}", "--run", "r1", "--scheduler", "none"],
    ["explain", "{ws}", "--run", "r1", "--scheduler", "none"],
    ["register", "{ws}", "--scheduler", "none"],
    ["atlas", "build", "{ws}"],
    ["atlas", "maps", "{ws}", "--run", "r1", "--scheduler", "none"],
    ["compare", "accelerated", "decelerated", "{ws}", "--run", "r1"],
    ["report", "{ws}", "--run", "r1"],
]


@pytest.fixture
def held(trained):
    """The trained workspace, locked by another process for the tests below."""
    h = _Holder(trained, "bodyage holder-test")
    yield trained, h.proc.pid
    h.stop()


@pytest.mark.parametrize("argv", WRITERS, ids=lambda a: " ".join(a[:2]))
def test_every_writing_command_is_refused_while_another_holds_the_lock(held, tmp_path, capsys,
                                                                       argv):
    root, pid = held
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(imgs / "z.nii"))
    (tmp_path / "p.csv").write_text("id,age\nz,50\n")
    db_before = _tree_digest(root / "models")
    with Workspace.open(root) as ws:
        n, runs = ws.db.count(), ws.db.runs()
    rc = main([a.format(ws=root, imgs=imgs, csv=tmp_path / "p.csv") for a in argv])
    _refused(capsys, rc, pid, "bodyage holder-test")
    with Workspace.open(root) as ws:
        assert ws.db.count() == n and ws.db.runs() == runs and ws.db.excluded() == {}
    assert _tree_digest(root / "models") == db_before


def test_wait_queues_behind_the_holder(trained, capsys):
    h = _Holder(trained, "bodyage holder-test", seconds=1.5)
    t0 = time.monotonic()
    rc = main(["exclude", str(trained), "sub01", "--reason", "motion", "--wait"])
    assert rc == 0 and time.monotonic() - t0 >= 1.0
    h.proc.wait()
    with Workspace.open(trained) as ws:
        assert ws.db.excluded() == {"sub01": "motion"}
        ws.db.set_excluded(["sub01"], None)


def test_readers_take_no_lock(trained, capsys):
    h = _Holder(trained, "bodyage holder-test")
    try:
        assert main(["exclude", str(trained), "--list"]) == 0
        assert "0 of 8 subject(s) excluded" in capsys.readouterr().out
        assert main(["info", str(trained / "subjects" / "sub00" / "t1.nii.gz")]) == 0
    finally:
        h.stop()


def test_the_lock_joins_within_one_thread_and_refuses_another_thread(trained):
    import threading

    from bodyage_core.cluster.lock import workspace_writer

    with workspace_writer(trained, "bodyage test") as outer:
        with workspace_writer(trained, "bodyage inner") as inner:     # the Engine's case
            assert outer.held and inner.held
        errors = []

        def other():
            try:
                with workspace_writer(trained, "bodyage other thread"):
                    pass
            except WorkspaceLockedError as err:
                errors.append(str(err))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert errors and f"pid {os.getpid()}" in errors[0] and "(bodyage test)" in errors[0]
    info = WorkspaceLock(trained).read()
    assert info["active"] is False and info["command"] == "bodyage test"


# -- the viewer's training wizard ----------------------------------------------------------------

def _wizard_settings(root: Path, run: str) -> dict:
    return {"workspace": str(root), "run": run, "overwrite": False,
            "split_method": "random", "folds": 2, "seed": 0, "arch": "resnet3d",
            "loss": "l1", "members": 1, "width": 4, "epochs": 1, "batch_size": 4, "lr": 1e-3,
            "augment": False, "grid": "custom", "spacing": (4.0, 4.0, 4.0),
            "shape": (12, 12, 12), "image_hw": (64, 64), "device": "cpu"}


def test_the_training_wizard_holds_the_workspace_lock(trained, capsys):
    pytest.importorskip("PySide6")
    import threading

    from bodyage_core.errors import ConfigError
    from bodyage_core.progress import ProgressReporter
    from bodyage_gui.wizard.qt_training_wizard import _train

    # refused while another process holds the workspace, and for a name that escapes
    h = _Holder(trained, "bodyage holder-test")
    try:
        with pytest.raises(WorkspaceLockedError, match=r"\(bodyage holder-test\)"):
            _train(_wizard_settings(trained, "w1"), ProgressReporter())
    finally:
        h.stop()
    with pytest.raises(ConfigError, match="run name '../w' is not allowed"):
        _train(_wizard_settings(trained, "../w"), ProgressReporter())
    # while it trains, `bodyage train` is refused naming the wizard
    training, tried = threading.Event(), threading.Event()

    def on_progress(ev):
        if ev.stage == "train" and not training.is_set():
            training.set()
            tried.wait(60)

    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "run", _train(_wizard_settings(trained, "w1"), ProgressReporter(on_progress))))
    t.start()
    try:
        assert training.wait(120), "the wizard never started training"
        rc = main(["train", str(trained), "--run", "w1", "--overwrite", *FAST])
        _refused(capsys, rc, os.getpid(), "bodyage gui: training wizard (run w1)")
    finally:
        tried.set()
        t.join(120)
    assert out.get("run") == "w1" and _status(trained, "w1") == "complete"
    with WorkspaceLock(trained) as lock:
        assert lock.held
