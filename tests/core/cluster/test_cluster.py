"""Per-subject idempotent stages on Dask (bodyage_core.cluster): real LocalClusters (threads and
worker processes), real SQLite, real NIfTI files from a tiny synthetic cohort and a tiny run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bodyage_core.cli.main import main
from bodyage_core.cluster import (
    Engine,
    EngineOptions,
    ExplainStage,
    Job,
    PredictStage,
    RegisterStage,
    Stage,
    SubjectTask,
    WorkspaceLock,
    WorkspaceLockedError,
)
from bodyage_core.cohort import SCHEMA_VERSION, Workspace
from bodyage_core.errors import BodyageError

PY = sys.executable
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """6 synthetic subjects (3 F, 3 M) on a 16 x 16 x 20 mm grid, a 1-member-per-fold run
    ``r`` (2 folds, 1 epoch, width 4) and an atlas for F (no template iterations)."""
    root = tmp_path_factory.mktemp("cluster") / "ws"
    assert main(["synth", str(root), "--n", "6", "--grid", "16,16,20"]) == 0
    assert main(["train", str(root), "--run", "r", "--model", "resnet3d", "--members", "1",
                 "--folds", "2", "--epochs", "1", "--width", "4", "--spacing", "20", "16", "16",
                 "--batch-size", "4", "--device", "cpu", "--early-stopping", "0"]) == 0
    assert main(["atlas", "build", str(root), "--groups", "sex", "--group", "F",
                 "--iterations", "0"]) == 0
    return root


@pytest.fixture
def ws_path(base, tmp_path):
    dst = tmp_path / "ws"
    shutil.copytree(base, dst)
    return dst


def _sync(**kw) -> EngineOptions:
    return EngineOptions(scheduler="none", **kw)


def _threads(n=2, **kw) -> EngineOptions:
    return EngineOptions(scheduler="local", workers=n, processes=False, min_cluster_jobs=1, **kw)


# -- stages: results, idempotence, one writer ------------------------------------------------

def _batch_predict(ws, run):
    """Every subject's prediction in one batched call of the loaded ensemble."""
    import numpy as np

    from bodyage_core.inference.ensemble import AgeRun
    from bodyage_core.training.data import records_from_workspace

    ar = AgeRun(ws.model_dir(run), device="cpu")
    recs = records_from_workspace(ws, ar.spec, require_age=False)
    pred = ar.predict(np.stack([r.loader() for r in recs]), [r.subject_id for r in recs])
    return pred.rows({r.subject_id: r.age for r in recs})


def test_predict_stage_matches_batch_predict_and_is_idempotent(ws_path):
    with Workspace.open(ws_path) as ws:
        batch = _batch_predict(ws, "r")
        expected = {r["subject_id"]: r for r in batch}
        with Engine(ws, _threads(2)) as eng:
            s1 = eng.run(PredictStage("r", device="cpu"))
            s2 = eng.run(PredictStage("r", device="cpu"))
        assert sorted(s1.done) == sorted(expected) and not s1.failed and not s1.skipped
        assert s2.done == [] and sorted(s2.skipped) == sorted(expected)   # finished: skipped
        got = {p["subject_id"]: p for p in ws.db.predictions("r")}
        for sid, e in expected.items():       # one subject per task == the batched prediction
            assert got[sid]["corrected"] == pytest.approx(e["corrected"], abs=1e-4)
            assert got[sid]["sigma"] == pytest.approx(e["sigma"], abs=1e-4)
            assert got[sid]["fold"] == e["fold"]
            side = json.loads((ws.subject_dir(sid) / "prediction_r.json").read_text())
            assert side["mean"] == pytest.approx(e["mean"], abs=1e-4)
        tasks = ws.db.tasks("predict", "r")
        assert {t["status"] for t in tasks.values()} == {"done"}
        assert all(t["attempts"] == 1 and t["seconds"] > 0 for t in tasks.values())
        assert len({t["worker"] for t in tasks.values()}) >= 1
        csv = (ws.root / "reports" / "predictions_r.csv").read_text().splitlines()
        assert len(csv) == 1 + len(expected)
        # --overwrite redoes every subject; attempts add up over runs; a temporary file left
        # by a killed attempt is cleared
        stale = ws.subject_dir(sid) / ".prediction_r.k1ll3d.json"
        stale.write_text("{")
        with Engine(ws, _sync()) as eng:
            s3 = eng.run(PredictStage("r", device="cpu", overwrite=True))
        assert len(s3.done) == len(expected)
        assert all(t["attempts"] == 2 for t in ws.db.tasks("predict", "r").values())
        assert not stale.exists()


def test_explain_and_register_stages_on_a_thread_cluster(ws_path):
    from bodyage_core.explain.pipeline import explain_subjects

    with Workspace.open(ws_path) as ws:
        females = [s.subject_id for s in ws.db.subjects(sex="F")]
        first = ws.db.subject_ids()[0]
        explain_subjects(ws, "r", subject_ids=[first], device="cpu")    # the in-process path
        reference = nib.load(str(ws.subject_dir(first) / "gradcam_r.nii.gz")).get_fdata()
        with Engine(ws, _threads(2)) as eng:
            ex = eng.run(ExplainStage("r", device="cpu", overwrite=True))
            rg = eng.run(RegisterStage(group="F", force=True))
        assert len(ex.done) == 6 and not ex.failed
        again = nib.load(str(ws.subject_dir(first) / "gradcam_r.nii.gz")).get_fdata()
        assert reference.max() > 0 and np.allclose(again, reference, rtol=1e-4, atol=1e-6)
        # gradient x input, signed: the same map and sidecar as the in-process pipeline
        explain_subjects(ws, "r", subject_ids=[first], method="gradxinput", variant="signed",
                         device="cpu")
        gx = ws.subject_dir(first) / "gradxinput_signed_r.nii.gz"
        ref_gx, ref_side = nib.load(str(gx)).get_fdata(), json.loads(
            gx.with_name("gradxinput_signed_r.json").read_text())
        with Engine(ws, _sync()) as eng:
            s = eng.run(ExplainStage("r", subject_ids=[first], method="gradxinput",
                                     variant="signed", device="cpu", overwrite=True))
        assert s.done == [first]
        assert np.allclose(nib.load(str(gx)).get_fdata(), ref_gx, rtol=1e-4, atol=1e-7)
        side = json.loads(gx.with_name("gradxinput_signed_r.json").read_text())
        assert side.keys() == ref_side.keys() and side["units"] == ref_side["units"]
        assert (ref_gx < 0).any() and (ref_gx > 0).any()
        for sid in ex.done:
            img = nib.load(str(ws.subject_dir(sid) / "gradcam_r.nii.gz"))
            water = nib.load(str(ws.image_path(sid, "water")))
            assert img.shape == water.shape and np.allclose(img.affine, water.affine)
            assert np.isfinite(img.get_fdata()).all()
            assert ws.db.get_subject(sid).images["gradcam_r"] == f"subjects/{sid}/gradcam_r.nii.gz"
        assert sorted(rg.done) == sorted(females) and not rg.failed
        regs = {r["subject_id"]: r for r in ws.db.registrations("F")}
        assert all(regs[s]["dice_body"] > 0.8 for s in females)
        assert all(ws.db.tasks("register", "F")[s]["status"] == "done" for s in females)
        # second run: the current transforms are found, nothing is registered again
        with Engine(ws, _sync()) as eng:
            again = eng.run(RegisterStage(group="F"))
        assert again.done == [] and sorted(again.skipped) == sorted(females)


def test_existing_scheduler_by_address(ws_path, capsys):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        rc = main(["predict", str(ws_path), "--run", "r", "--device", "cpu",
                   "--scheduler", cluster.scheduler_address])
        # workers that cannot see the workspace path are refused on connect
        from types import SimpleNamespace

        elsewhere = SimpleNamespace(root=Path("/nonexistent/bodyage/ws"))
        with pytest.raises(BodyageError, match="do not see the workspace folder"):
            Engine(elsewhere, EngineOptions(scheduler=cluster.scheduler_address),
                   lock=False).start()
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"[{cluster.scheduler_address}, 1 worker(s)]" in out and "6 done" in out
    with Workspace.open(ws_path) as ws:
        assert len(ws.db.predictions("r")) == 6
        assert {t["status"] for t in ws.db.tasks("predict", "r").values()} == {"done"}


# -- bad input: a worker dying mid-subject ----------------------------------------------------

def _write_map(root: str, sid: str, marker: str, mode: str) -> dict:
    """Writes a real NIfTI; ``mode`` 'once' kills its worker process the first time, 'always'
    every time."""
    if mode == "always" or (mode == "once" and not os.path.exists(marker)):
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        os._exit(13)           # the worker process dies mid-subject
    from bodyage_core.atomic import atomic_path

    target = Path(root) / "subjects" / sid / "probe.nii.gz"
    with atomic_path(target) as tmp:
        nib.save(nib.Nifti1Image(np.full((4, 4, 4), len(sid), np.float32), np.eye(4)), tmp)
    return {"path": str(target), "pid": os.getpid()}


class _ProbeStage(Stage):
    name = "probe"

    def __init__(self, modes: dict[str, str], marker_dir: str):
        self.modes, self.marker_dir = modes, marker_dir

    def jobs(self, ws):
        return [Job("k", sid, {}) for sid in self.modes]

    def task(self, ws, job):
        return SubjectTask(_write_map, {"root": str(ws.root), "sid": job.subject_id,
                                        "marker": f"{self.marker_dir}/{job.subject_id}",
                                        "mode": self.modes[job.subject_id]})


def test_worker_killed_mid_subject_is_retried_then_recorded(ws_path, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    modes = {"synth000_00000": "once", "synth000_00001": "always", "synth000_00002": "ok",
             "synth000_00003": "ok"}
    with Workspace.open(ws_path) as ws:
        # a subject queued on a worker as it dies is lost with it (no exception of its own) and
        # retried like any failure; retries=2 keeps such a bystander from running out of tries
        opts = EngineOptions(scheduler="local", workers=2, processes=True, retries=2,
                             min_cluster_jobs=1)
        with Engine(ws, opts) as eng:
            s = eng.run(_ProbeStage(modes, str(tmp_path)))
        tasks = ws.db.tasks("probe", "k")
    pids = {int(t["worker"].rsplit(":", 1)[1]) for t in tasks.values() if t["worker"]}
    assert pids and os.getpid() not in pids             # real worker processes
    assert sorted(s.done) == ["synth000_00000", "synth000_00002", "synth000_00003"], s.failed
    assert list(s.failed) == ["synth000_00001"]
    assert "worker running this subject died" in s.failed["synth000_00001"]
    assert tasks["synth000_00000"]["status"] == "done" and tasks["synth000_00000"]["attempts"] >= 2
    assert tasks["synth000_00001"]["status"] == "failed"
    assert tasks["synth000_00001"]["attempts"] == 3                  # 1 + 2 retries
    assert len((tmp_path / "synth000_00001").read_text().split()) == 3   # died thrice
    img = nib.load(str(ws_path / "subjects" / "synth000_00000" / "probe.nii.gz"))
    assert float(img.get_fdata()[0, 0, 0]) == len("synth000_00000")
    assert not (ws_path / "subjects" / "synth000_00001" / "probe.nii.gz").exists()



def test_a_bystander_lost_with_a_dying_worker_does_not_use_a_try(ws_path, tmp_path):
    """One worker: the second subject is assigned to it while the first kills it. Without the
    start marker the bystander fails with the dying subject (retries=0)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    modes = {"synth000_00000": "always", "synth000_00001": "ok", "synth000_00002": "ok"}
    with Workspace.open(ws_path) as ws:
        opts = EngineOptions(scheduler="local", workers=1, processes=True, retries=0,
                             min_cluster_jobs=1)
        with Engine(ws, opts) as eng:
            s = eng.run(_ProbeStage(modes, str(tmp_path)))
        tasks = ws.db.tasks("probe", "k")
    assert list(s.failed) == ["synth000_00000"], s.failed
    assert sorted(s.done) == ["synth000_00001", "synth000_00002"]
    assert tasks["synth000_00000"]["attempts"] == 1
    assert len((tmp_path / "synth000_00000").read_text().split()) == 1    # died once
    assert all(tasks[sid]["attempts"] == 1 for sid in s.done)
    assert not (ws_path / ".bodyage_started").exists()                  # markers cleaned up

# -- bad input: a full disk -------------------------------------------------------------------

def _mount_full_tmpfs(folder: Path) -> bool:
    """Mount a tiny tmpfs on ``folder`` holding its current files, then fill it up."""
    keep = folder.with_name(folder.name + ".orig")
    shutil.copytree(folder, keep)
    if subprocess.call(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                       stderr=subprocess.DEVNULL) != 0:
        shutil.rmtree(keep)
        return False
    for p in keep.iterdir():
        if p.is_file():
            shutil.copy2(p, folder / p.name)
    with open(folder / "filler", "wb", buffering=0) as fh:   # nothing left to flush on close
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return True


def test_full_disk_records_a_clear_failure_and_no_half_written_file(ws_path):
    sid = "synth000_00002"
    folder = ws_path / "subjects" / sid
    if os.geteuid() != 0 or not _mount_full_tmpfs(folder):
        pytest.skip("needs root to mount a tiny tmpfs (a real full disk)")
    try:
        with Workspace.open(ws_path) as ws:
            with Engine(ws, _sync(retries=1)) as eng:
                s = eng.run(ExplainStage("r", subject_ids=[sid], device="cpu"))
            row = ws.db.tasks("explain", "gradcam_r")[sid]
        assert s.done == [] and list(s.failed) == [sid]
        msg = s.failed[sid]
        assert "disk full" in msg and f"{sid}/gradcam_r.nii.gz" in msg, msg
        assert row["status"] == "failed" and row["attempts"] == 2 and row["error"] == msg
        left = sorted(p.name for p in folder.iterdir())
        assert not any(n.startswith(".gradcam") or n.startswith("gradcam") for n in left), left
    finally:
        subprocess.call(["umount", str(folder)])
    # space again: the same command finishes the subject
    with Workspace.open(ws_path) as ws, Engine(ws, _sync()) as eng:
        s = eng.run(ExplainStage("r", subject_ids=[sid], device="cpu"))
    assert s.done == [sid]


# -- bad input: scheduler not reachable, bad options ----------------------------------------

def test_unreachable_scheduler_is_one_clear_line_without_hanging(ws_path, capsys):
    t0 = time.perf_counter()
    rc = main(["predict", str(ws_path), "--run", "r", "--scheduler", "tcp://127.0.0.1:1",
               "--connect-timeout", "2"])
    dt = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2 and dt < 8, (rc, dt)
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in err
    assert main(["predict", str(ws_path), "--run", "r", "--scheduler", "somewhere"]) == 2
    assert "--scheduler 'somewhere'" in capsys.readouterr().err
    assert main(["explain", str(ws_path), "--run", "r", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    # the lock was released on the way out
    with WorkspaceLock(ws_path) as lock:
        assert lock.held


# -- bad input: two runs on one workspace ----------------------------------------------------

_HOLD = textwrap.dedent("""
    import sys, time
    from bodyage_core.cluster import WorkspaceLock
    lock = WorkspaceLock(sys.argv[1], command="bodyage holder-test").acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
""")


def _holder(path: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([PY, "-c", _HOLD, str(path), str(seconds)], stdout=subprocess.PIPE,
                         text=True, env=ENV)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_run_refuses_or_waits_and_stale_lock_is_taken_over(ws_path, capsys):
    p = _holder(ws_path, 30)
    try:
        rc = main(["predict", str(ws_path), "--run", "r", "--scheduler", "none"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1
        assert f"pid {p.pid} on {socket.gethostname()} (bodyage holder-test)" in err
        assert "--wait" in err
    finally:
        p.kill()          # SIGKILL: the holder cannot release its lock
        p.wait()
    lock = WorkspaceLock(ws_path).acquire()          # stale lock taken over
    assert lock.stale is not None and f"pid {p.pid}" in lock.stale
    lock.release()
    # --wait queues behind a live holder
    p = _holder(ws_path, 1.5)
    t0 = time.perf_counter()
    rc = main(["predict", str(ws_path), "--run", "r", "--subject", "synth000_00000",
               "--scheduler", "none", "--device", "cpu", "--wait"])
    assert rc == 0 and time.perf_counter() - t0 >= 1.0
    p.wait()
    with pytest.raises(WorkspaceLockedError):
        with WorkspaceLock(ws_path), WorkspaceLock(ws_path):
            pass


# -- no lost updates with concurrent writers -------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys
    from bodyage_core.cohort import CohortDB
    db = CohortDB.open(sys.argv[1])
    for i in range(int(sys.argv[3])):
        with db.transaction():
            db.finish_task("race", "k", f"s{i % 5}", "done", attempts=1)
            db.set_task("race", "k2", sys.argv[2] + str(i), "running")
""")


def test_concurrent_writers_lose_no_update(ws_path):
    db_path = ws_path / "cohort.sqlite"
    procs = [subprocess.Popen([PY, "-c", _WRITER, str(db_path), f"p{j}-", "60"], env=ENV)
             for j in range(2)]
    with Workspace.open(ws_path) as ws:
        def local():
            for i in range(60):
                ws.db.finish_task("race", "k", f"s{i % 5}", "done", attempts=1)
        threads = [threading.Thread(target=local) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(p.wait(60) == 0 for p in procs)
        rows = ws.db.tasks("race", "k")
        assert sum(r["attempts"] for r in rows.values()) == 4 * 60   # every increment kept
        assert len(ws.db.tasks("race", "k2")) == 2 * 60
        assert ws.db.schema_version == SCHEMA_VERSION


# -- Ctrl+C: cancel futures, close the cluster, DB consistent, exit 130 ----------------------

def test_ctrl_c_cancels_cleanly(ws_path):
    cmd = [PY, "-m", "bodyage_core.cli.main", "explain", str(ws_path), "--run", "r",
           "--method", "occlusion", "--patch", "2", "--stride", "1", "--device", "cpu",
           "--scheduler", "local", "--workers", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=ENV, start_new_session=True)
    try:
        deadline = time.time() + 60
        with Workspace.open(ws_path) as ws:       # wait until the tasks are submitted
            while time.time() < deadline:
                if ws.db.task_counts("explain", "occlusion_r").get("running"):
                    break
                time.sleep(0.2)
            else:
                pytest.fail("the run never submitted its tasks")
        time.sleep(1.0)
        t0 = time.perf_counter()
        os.killpg(p.pid, signal.SIGINT)            # what Ctrl+C in a terminal does
        out, err = p.communicate(timeout=60)
        assert time.perf_counter() - t0 < 30
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, err
    last = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()][-1]
    assert "interrupted" in last and "run the same command again" in last
    assert "Traceback" not in err
    with Workspace.open(ws_path) as ws:
        counts = ws.db.task_counts("explain", "occlusion_r")
        assert "running" not in counts and counts.get("cancelled", 0) >= 1, counts
        assert not any(n.endswith(".nii.gz") and n.startswith(".occlusion")
                       for s in ws.db.subject_ids() for n in os.listdir(ws.subject_dir(s)))
    with WorkspaceLock(ws_path) as lock:           # released: the next run may start
        assert lock.held and lock.stale is None


def test_engine_options_validate():
    with pytest.raises(BodyageError, match="--retries"):
        EngineOptions(retries=-1).validate()
    assert EngineOptions(scheduler="sync").validate().is_sync


def test_schema_1_workspace_is_migrated_for_task_timings(tmp_path):
    import sqlite3

    from bodyage_core.cohort.database import CohortDB
    from bodyage_core.cohort.schema import SCHEMA_V1, split_sql

    path = tmp_path / "cohort.sqlite"
    con = sqlite3.connect(str(path))
    for stmt in split_sql(SCHEMA_V1):
        con.execute(stmt)
    con.execute("INSERT INTO tasks (stage, key, subject_id, status, attempts, updated)"
                " VALUES ('explain', 'gradcam_r', 's1', 'done', 1, 0)")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    db = CohortDB.open(path)
    assert db.schema_version == SCHEMA_VERSION
    db.finish_task("explain", "gradcam_r", "s1", "done", attempts=1, seconds=1.5, worker="w")
    row = db.tasks("explain", "gradcam_r")["s1"]
    assert row["attempts"] == 2 and row["seconds"] == 1.5 and row["worker"] == "w"
    db.close()
    assert CohortDB.open(path).schema_version == SCHEMA_VERSION      # opening again changes nothing


# -- grouped predict tasks (a GPU's batch of subjects per task) ------------------------------

def test_grouped_predict_tasks_match_one_per_task_and_fail_per_subject(ws_path, monkeypatch):
    """``--batch-size 2`` (tasks of 2 batches here): 4 subjects per task, predicted 2 at a time
    on the device, the next batch read meanwhile (inference.subject.predict_subjects), give
    what one task per subject gives; a subject whose image is gone fails alone (not retried, a
    user error) and the others of its batch are stored; a task that fails as a whole runs each
    of its subjects again alone."""
    from bodyage_core.cluster import model_stages

    monkeypatch.setattr(model_stages, "TASK_BATCHES", 2)
    with Workspace.open(ws_path) as ws:
        expected = {r["subject_id"]: r for r in _batch_predict(ws, "r")}
        ids = sorted(expected)
        with Engine(ws, _threads(2)) as eng:
            s = eng.run(PredictStage("r", device="cpu", batch_size=2, overwrite=True))
        assert sorted(s.done) == ids and not s.failed
        got = {p["subject_id"]: p for p in ws.db.predictions("r")}
        for sid, e in expected.items():
            assert got[sid]["corrected"] == pytest.approx(e["corrected"], abs=1e-4)
            assert got[sid]["fold"] == e["fold"]
        assert all(t["seconds"] > 0 for t in ws.db.tasks("predict", "r").values())

        calls = []
        real = model_stages.predict_group

        def flaky(root, run, device, subjects, model_dir=None, batch_size=None):
            calls.append(len(subjects))
            if len(subjects) > 1:
                raise RuntimeError("worker lost")
            return real(root, run, device, subjects, model_dir, batch_size)

        monkeypatch.setattr(model_stages, "predict_group", flaky)
        bad = ids[1]
        (ws.subject_dir(bad) / "water.nii.gz").unlink()
        for p in (ws.root / "cache").rglob(f"{bad}.*"):
            p.unlink()
        with Engine(ws, _sync(retries=1)) as eng:
            s = eng.run(PredictStage("r", device="cpu", batch_size=2, overwrite=True))
        assert sorted(calls) == [1] * 6 + [2, 4]                 # each subject again alone
        assert sorted(s.done) == [i for i in ids if i != bad] and list(s.failed) == [bad]
        tasks = ws.db.tasks("predict", "r")
        assert tasks[bad]["status"] == "failed" and tasks[bad]["attempts"] == 1 + 2
        assert all(tasks[i]["attempts"] == 1 + 2 for i in ids if i != bad)   # 1 + 2 this run
