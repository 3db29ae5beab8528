"""The throughput path, checked on the CPU: float16 input cache, the prefetching loader,
batched ensemble prediction and batched Grad-CAM (each equal to one subject at a time), optional
torch.compile, and the smoke mode of bench/bench_gpu.py.

The shipped whole-body model (5 members, 2 x 93 x 44 x 56) runs on body-like phantoms: an
elliptic body with a fat shell and texture, normalised as the cache's inputs are (foreground
mean 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bodyage_core.inference.batch import predict_tta
from bodyage_core.inference.ensemble import AgeRun
from bodyage_core.inference.loader import prefetch, stack_batch
from bodyage_core.inference.subject import CohortInput, predict_subject, predict_subjects
from bodyage_core.preprocess.cache import PreprocessCache, storage_array

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "resources" / "models" / "wholebody-synthetic"
#: predictions from the float16 cache agree with the float32 path within this (years)
FLOAT16_TOLERANCE_Y = 0.01


@pytest.fixture(scope="module")
def run():
    r = AgeRun(MODEL, device="cpu")
    r.load_members()
    return r


def phantom(shape, seed: int) -> np.ndarray:
    """A body-like model input ``(2, Z, Y, X)``: water inside an elliptic body, fat in its
    shell, smooth texture and noise; each channel's foreground mean is 1."""
    rng = np.random.default_rng(seed)
    _c, z, y, x = shape
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, z), np.linspace(-1, 1, y),
                             np.linspace(-1, 1, x), indexing="ij")
    r2 = (yy / (0.6 + 0.05 * rng.random())) ** 2 + (xx / (0.8 + 0.05 * rng.random())) ** 2
    body = (r2 < 1) & (np.abs(zz) < 0.95)
    shell = body & (r2 > 0.7)
    tex = np.sin(3 * zz + rng.random() * 6) * np.cos(4 * xx) * 0.2
    water = np.where(body & ~shell, 1.0 + tex, 0.2 * body)
    fat = np.where(shell, 1.0 + 0.5 * tex, 0.1 * body)
    out = np.stack([water, fat]).astype(np.float32)
    out += rng.normal(0, 0.05, out.shape).astype(np.float32) * body
    out[:, ~body] = 0
    for ch in out:
        ch /= ch[body].mean()
    return out


def test_float16_cache_halves_the_bytes_and_keeps_the_prediction(run, tmp_path, monkeypatch):
    monkeypatch.delenv("BODYAGE_CACHE_DTYPE", raising=False)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    xs = [phantom(run.spec.array_shape, i) for i in range(3)]
    half = PreprocessCache(tmp_path / "c16", "g")
    full = PreprocessCache(tmp_path / "c32", "g", dtype="float32")
    got16, got32 = [], []
    for i, x in enumerate(xs):
        first = half.get(f"s{i}", [src], lambda x=x: x)           # a miss: returned as stored
        got16.append(half.lookup(f"s{i}", [src]))
        assert first.dtype == np.float16 and np.array_equal(first, got16[-1])
        full.store(f"s{i}", [src], x)
        got32.append(full.lookup(f"s{i}", [src]))
    assert got32[0].dtype == np.float32 and np.array_equal(got32[0], xs[0])
    row = np.empty(run.spec.array_shape, np.float16)          # read straight into a batch row
    assert half.lookup("s1", [src], out=row) is row and np.array_equal(row, got16[1])
    assert full.lookup("s1", [src], out=row) is not row        # float32 entry: its own array
    n16 = (half.dir / "s0.npy").stat().st_size
    n32 = (full.dir / "s0.npy").stat().st_size
    assert n16 < 0.51 * n32                                       # half the bytes
    assert np.abs(got16[0].astype(np.float32) - xs[0]).max() <= 2 ** -11 * np.abs(xs[0]).max()
    p16 = run.predict(np.stack(got16), out_of_fold=False)        # widened on the device
    p32 = run.predict(np.stack(got32), out_of_fold=False)
    assert np.abs(p16.corrected - p32.corrected).max() < FLOAT16_TOLERANCE_Y
    assert np.abs(p16.sigma - p32.sigma).max() < FLOAT16_TOLERANCE_Y
    # what float16 cannot hold stays float32
    assert storage_array(np.full(4, 1e6, np.float32)).dtype == np.float32
    assert storage_array(np.array([1.0, np.nan], np.float32)).dtype == np.float32
    monkeypatch.setenv("BODYAGE_CACHE_DTYPE", "float32")
    assert PreprocessCache(tmp_path / "c", "g").dtype == "float32"


def test_batched_ensemble_equals_one_subject_at_a_time(run, monkeypatch):
    """All members on each on-device batch (with the flip test-time augmentation) give the
    outputs of the one-member-at-a-time, one-subject-at-a-time path; predict_subjects gives each
    subject what predict_subject gives it alone, and a broken input fails alone."""
    shape = run.spec.array_shape
    xs16 = np.stack([phantom(shape, 10 + i) for i in range(5)]).astype(np.float16)
    xs = xs16.astype(np.float32)                        # exact in float16 and float32
    monkeypatch.setattr(run, "tta", ["flip_x"])
    mu, var = run.member_outputs(xs, batch_size=3)
    for k, net in enumerate(run.load_members()):
        out = predict_tta(net, xs, run.tta, None, 1, torch.device("cpu"))
        m = run.members[k]
        assert np.abs(out[:, 0] * m["target_std"] + m["target_mean"] - mu[k]).max() < 1e-4
    monkeypatch.setattr(run, "tta", [])
    def into(i):
        def fill(row):
            row[...] = xs16[i]
            return row
        return fill

    # even subjects read into their row of the float16 batch, odd ones come as float32 arrays
    # of their own (the batch is widened to float32 then)
    ins = [CohortInput(f"s{i}", (lambda i=i: xs[i]), 40.0 + i,
                       load_into=into(i) if i % 2 == 0 else None) for i in range(5)]
    nan = xs[0].astype(np.float16)
    nan[0, 5, 5, 5] = np.nan
    ins.insert(2, CohortInput("broken", lambda: np.zeros((2, 4, 4, 4), np.float32)))
    ins.insert(4, CohortInput("nan", lambda: nan))
    got = predict_subjects(run, ins, batch_size=2, out_of_fold=False)
    assert isinstance(got[2], Exception) and "does not match model" in str(got[2])
    assert isinstance(got[4], Exception) and "NaN or inf" in str(got[4])
    got = got[:2] + got[3:4] + got[5:]
    for i, g in enumerate(got):
        one = predict_subject(run, subject_id=f"s{i}", age=40.0 + i, model_input=xs[i],
                              out_of_fold=False)
        assert g.subject_id == one.subject_id and g.age == one.age
        assert g.corrected == pytest.approx(one.corrected, abs=1e-4)
        assert g.sigma == pytest.approx(one.sigma, abs=1e-4)
        assert np.allclose(g.member_mu, one.member_mu, atol=1e-4)
        assert g.qc_score == pytest.approx(one.qc_score, rel=1e-4)


def test_batched_gradcam_equals_one_subject_at_a_time(run):
    from bodyage_core.explain.gradcam import gradcam

    nets = run.load_members()[:3]
    xs = np.stack([phantom(run.spec.array_shape, 20 + i) for i in range(3)])
    both = gradcam(nets, xs, layer="layer3", variant="signed", target_std=[10.0] * 3)
    for i in range(3):
        one = gradcam(nets, xs[i:i + 1], layer="layer3", variant="signed",
                      target_std=[10.0] * 3)
        scale = np.abs(one.members).max()
        assert scale > 0
        assert np.abs(both.members[:, i] - one.members[:, 0]).max() <= 1e-4 * scale
        assert np.allclose(both.mu[:, i], one.mu[:, 0], atol=1e-5)


def test_prefetch_reads_ahead_in_order_and_hands_back_errors():
    seen: list[tuple[int, str]] = []

    def load(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        if i == 3:
            raise ValueError("unreadable")
        time.sleep(0.01)
        return i * i

    out = list(prefetch(range(6), load, depth=2, workers=2))
    assert [i for i, _ in out] == list(range(6))
    assert [r for i, r in out if i != 3] == [0, 1, 4, 16, 25]
    assert isinstance(out[3][1], ValueError)
    assert all(name.startswith("bodyage-prefetch") for _, name in seen)
    before = len(seen)
    gen = prefetch(range(100), load, depth=2)
    assert next(gen) == (0, 0)
    gen.close()                                     # stops: not all 100 are read
    time.sleep(0.1)
    assert len(seen) - before <= 4
    assert list(prefetch([1, 2], load, depth=0)) == [(1, 1), (2, 4)]
    t = stack_batch([np.ones((2, 3), np.float16), np.zeros((2, 3), np.float16)])
    assert t.dtype == torch.float16 and tuple(t.shape) == (2, 2, 3) and float(t.sum()) == 6


def test_compiled_ensemble_gives_the_same_prediction(run):
    xs = np.stack([phantom(run.spec.array_shape, 30)])
    comp = AgeRun(MODEL, device="cpu", compile=True)
    assert comp.compile and not run.compile
    try:
        got = comp.member_outputs(xs, members=[0])
    except Exception as exc:  # noqa: BLE001 - no compiler toolchain, an unsupported platform
        pytest.skip(f"torch.compile is not available here: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200]}")
    want = run.member_outputs(xs, members=[0])
    assert np.abs(got[0][0] - want[0][0]).max() < 1e-3
    assert comp.load_members()[0] is not comp.forward_nets()[0]   # hooks go on the plain one


def test_bench_gpu_smoke_mode_runs(tmp_path):
    out = tmp_path / "gpu_smoke.json"
    t0 = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--smoke",
                        "--device", "cpu", "--out", str(out)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert time.perf_counter() - t0 < 60
    res = json.loads(out.read_text())
    assert res["device"]["type"] == "cpu" and res["smoke"] is True
    for key in ("predict", "gradcam", "train", "flops"):
        assert key in res, key
    assert res["predict"]["pipeline_subjects_per_s"] > 0
    assert res["gradcam"]["subjects_per_s"] > 0
    assert res["train"]["seconds_per_epoch_1536"] > 0
    assert res["flops"]["forward_per_subject"] > 0
