"""Losses, target scaling, augmentation, splits and the trainer (events, cancel, resume, OOM)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_training_helpers import age_volumes  # the same folder

from bodyage_core.errors import BodyageError, Cancelled, CohortError, ConfigError
from bodyage_core.models import build_model
from bodyage_core.progress import ProgressReporter
from bodyage_core.training import (
    AgeDataset,
    AugmentConfig,
    Events,
    TargetScaler,
    TrainConfig,
    Trainer,
    augment_batch,
    get_loss,
    make_folds,
    records_from_arrays,
    resolve_device,
    split_indices,
)

torch.set_num_threads(1)
NO_AUG = AugmentConfig(0, 0, 0, 0, 0, 0, False)


def test_losses():
    out = torch.tensor([[1.0, 0.0], [3.0, math.log(4.0)]])
    y = torch.tensor([2.0, 1.0])
    assert get_loss("l1")(out, y).item() == pytest.approx(1.5)
    assert get_loss("mse")(out, y).item() == pytest.approx(2.5)
    # exp(-s)(y-mu)^2 + s: (1 + 0) and (4/4 + log 4)
    assert get_loss("meanvar")(out, y).item() == pytest.approx((1 + 1 + math.log(4)) / 2)
    with pytest.raises(ConfigError):
        get_loss("huber")


def test_target_scaler_roundtrip():
    s = TargetScaler.fit([20, 40, 60])
    z = s.transform([20, 40, 60])
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    np.testing.assert_allclose(s.inverse(z), [20, 40, 60])
    assert s.inverse_var(1.0) == pytest.approx(s.std ** 2)
    assert TargetScaler.fit([5, 5]).std == 1.0


def test_augment_shapes_and_seed():
    x = torch.rand(3, 2, 10, 12, 14)
    cfg = AugmentConfig(translate=2, rotate_deg=5, scale=0.05, gain=0.1, offset=0.05, flip=True)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    img = torch.rand(2, 2, 16, 32)
    assert augment_batch(img, AugmentConfig(translate=4), None).shape == img.shape
    assert augment_batch(x, NO_AUG) is x


def test_fast_shift_flip_path():
    x = torch.zeros(4, 1, 8, 8, 8)
    x[:, :, 3:5, 3:5, 3:5] = 1.0
    cfg = AugmentConfig(translate=2, rotate_deg=0, scale=0, gain=0, offset=0, flip=True)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    assert a.shape == x.shape
    assert torch.allclose(a.sum(dim=(1, 2, 3, 4)), x.sum(dim=(1, 2, 3, 4)))  # shifted, not cut
    assert torch.equal(a, augment_batch(x, cfg, torch.Generator().manual_seed(0)))


def test_stratified_folds_balanced():
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 100)
    sex = list(rng.choice(["F", "M"], 100))
    bmi = list(rng.choice(["healthy", "overweight", "obese"], 100))
    f = make_folds(5, ages, sex, bmi, seed=1)
    assert sorted(np.bincount(f)) == [20] * 5
    means = [ages[f == k].mean() for k in range(5)]
    assert max(means) - min(means) < 5
    assert np.array_equal(f, make_folds(5, ages, sex, bmi, seed=1))
    for k in range(5):
        assert abs(sum(1 for i in np.where(f == k)[0] if sex[i] == "F")
                   - sum(s == "F" for s in sex) / 5) <= 3


def test_site_folds_keep_sites_together_and_random():
    ages = np.arange(30.0)
    site = [f"site{i % 6}" for i in range(30)]
    f = make_folds(3, ages, site=site, method="site")
    for s in set(site):
        assert len({f[i] for i in range(30) if site[i] == s}) == 1
    with pytest.raises(CohortError, match="sites"):
        make_folds(8, ages, site=site, method="site")
    r = make_folds(4, ages, method="random", seed=3)
    assert sorted(np.bincount(r)) == [7, 7, 8, 8]
    with pytest.raises(CohortError, match="fewer|cannot"):
        make_folds(5, np.arange(3.0))
    tr, va = split_indices(np.arange(20), 0.2, np.arange(20.0))
    assert len(va) == 4 and not set(tr) & set(va)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")


def _setup(n=24, epochs=3, **kw):
    x, ages = age_volumes(n, 12)
    ds = AgeDataset(records_from_arrays(x, ages))
    torch.manual_seed(0)
    model = build_model({"arch": "resnet3d", "width": 4})
    cfg = TrainConfig(**{**dict(epochs=epochs, batch_size=6, lr=3e-3, augment=NO_AUG,
                                early_stopping=0), **kw})
    return ds, model, cfg, ages


def test_trainer_events_progress_and_checkpoint(tmp_path):
    ds, model, cfg, _ = _setup(accumulate=2)
    events, progress = [], []
    rep = ProgressReporter(progress.append)
    t = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg, checkpoint=tmp_path / "c.ckpt",
                reporter=rep)
    for ev in Events.ALL:
        t.on(ev, lambda s, ev=ev: events.append(ev))
    st = t.fit()
    assert st.epoch == 3 and len(st.history) == 3
    assert events[0] == "started" and events[-1] == "completed"
    assert events.count("epoch_completed") == 3 and events.count("validation_completed") == 3
    assert events.count("iteration_completed") == 9
    assert (tmp_path / "c.ckpt").exists()
    train_ev = [e for e in progress if e.stage == "train"]
    assert {"epoch", "step", "loss", "val_mae", "lr"} <= set(train_ev[-1].values)
    assert train_ev[-1].done == train_ev[-1].total == 9
    assert train_ev[2].eta is not None
    assert np.isfinite(st.best_val_mae)


def test_cancel_within_one_step_and_resume_matches(tmp_path):
    ds, model, cfg, _ = _setup(epochs=3)
    ref = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg)
    ref_state = ref.fit()
    ref_w = {k: v.clone() for k, v in ref.model.state_dict().items()}

    ds, model, cfg, _ = _setup(epochs=3)
    rep = ProgressReporter()
    steps = []
    t = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg,
                checkpoint=tmp_path / "c.ckpt", reporter=rep)

    def stop(state):
        steps.append(state.iteration)
        if state.iteration == 5:      # in epoch 2 (3 steps per epoch)
            rep.cancel()

    t.on(Events.ITERATION_COMPLETED, stop)
    with pytest.raises(Cancelled):
        t.fit()
    assert steps[-1] == 5                      # stopped at the very step
    ds, model, cfg, _ = _setup(epochs=3)
    t2 = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg,
                 checkpoint=tmp_path / "c.ckpt")
    st = t2.fit(resume=True)
    assert st.epoch == 3
    assert st.history[0]["val_mae"] == pytest.approx(ref_state.history[0]["val_mae"])
    assert st.best_val_mae == pytest.approx(ref_state.best_val_mae, rel=1e-5)
    for k, v in t2.model.state_dict().items():
        assert torch.allclose(v.float(), ref_w[k].float(), atol=1e-5), k


def test_corrupt_checkpoint_is_clear(tmp_path):
    ds, model, cfg, _ = _setup(epochs=1)
    ck = tmp_path / "c.ckpt"
    ck.write_bytes(b"\x00garbage")
    t = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg, checkpoint=ck)
    with pytest.raises(BodyageError, match="damaged"):
        t.fit(resume=True)


def test_oom_retries_with_smaller_batch():
    ds, model, cfg, _ = _setup(epochs=1, batch_size=8)
    real_forward = model.forward

    def forward(x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(x)

    model.forward = forward
    msgs = []
    t = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg,
                reporter=ProgressReporter(lambda e: msgs.append(e.message)))
    fired = []
    t.on(Events.BATCH_SIZE_REDUCED, lambda s: fired.append((s.batch_size, s.accumulate)))
    st = t.fit()
    assert fired == [(4, 2), (2, 4)]
    assert st.batch_size == 2 and st.epoch == 1
    assert any("out of memory" in m for m in msgs)


def test_step_schedule_divides_lr_by_ten():
    ds, model, cfg, _ = _setup(epochs=6, scheduler="step", lr=1e-3)
    t = Trainer(model, ds, np.arange(18), [], cfg)
    st = t.fit()
    assert st.lr_stepped and st.history[-1]["lr"] == pytest.approx(1e-4)
    assert st.history[0]["lr"] == pytest.approx(1e-3)


def test_tiny_model_learns_age():
    """Age drives the size of a bright cube: a few epochs beat the mean baseline clearly."""
    x, ages = age_volumes(64, 12, seed=1)
    ds = AgeDataset(records_from_arrays(x, ages))
    torch.manual_seed(0)
    model = build_model({"arch": "resnet3d", "width": 4})
    cfg = TrainConfig(epochs=12, batch_size=8, lr=5e-3, loss="l1", early_stopping=0,
                      augment=AugmentConfig(translate=1, rotate_deg=0, scale=0, gain=0.05,
                                            offset=0, flip=True))
    tr, va = np.arange(48), np.arange(48, 64)
    t = Trainer(model, ds, tr, va, cfg)
    st = t.fit()
    baseline = np.abs(ages[va] - ages[tr].mean()).mean()
    assert st.best_val_mae < 0.5 * baseline, (st.best_val_mae, baseline)


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_best_or_last_epoch_weights(keep):
    """``keep='best'`` ends with the best validation epoch's weights, ``'last'`` with the last
    epoch's (what the per-epoch validation would predict after the final epoch)."""
    ds, model, cfg, _ = _setup(epochs=5, lr=1e-1, keep=keep)  # val MAE best at epoch 3
    t = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg)
    last: dict = {}
    t.on(Events.EPOCH_COMPLETED,
         lambda s: last.update({k: v.detach().clone() for k, v in t.model.state_dict().items()}))
    st = t.fit()
    final = t.model.state_dict()
    same_as_last = all(torch.equal(final[k], last[k]) for k in final)
    maes = [h["val_mae"] for h in st.history]
    if keep == "last" or int(np.argmin(maes)) == len(maes) - 1:
        assert same_as_last
    else:
        assert not same_as_last
        assert all(torch.equal(final[k], t.best_state[k]) for k in final)


def test_keep_must_be_best_or_last():
    with pytest.raises(ConfigError, match="keep"):
        TrainConfig(keep="middle")


@pytest.mark.parametrize("arch", ["resnet3d", "sfcn3d", "resnet2d", "vgg2d"])
def test_cuda_fast_paths_layout_and_bfloat16(arch):
    """What the trainer switches on for CUDA (``channels_last_3d`` for 3D models and inputs,
    bfloat16 autocast), run on CPU: the same outputs and gradients as the plain layout, and a
    bfloat16 forward within its precision. No GPU is lent here; this checks the networks' code
    under that layout and precision. The backward runs in float32: CPU bfloat16 conv3d backward
    kernels differ between CPUs (one CI machine returned non-finite gradients where this one
    returns finite ones), and the trainer never autocasts on CPU; a non-finite gradient in
    training is dropped by the trainer (test_nonfinite_gradients_skip_the_step)."""
    from bodyage_core.training.trainer import _prepare_model, _to_device

    torch.manual_seed(0)
    cfg = {"arch": arch, "in_channels": 2, "width": 4 if arch.endswith("3d") else 8}
    if arch == "resnet2d":
        cfg["depth"] = 18
    model = build_model(cfg).eval()
    shape = (2, 2, 16, 16, 16) if arch.endswith("3d") else (2, 2, 32, 32)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    cpu = torch.device("cpu")
    target = torch.tensor([0.5, -0.5])

    def grads(net, inp):
        net.zero_grad(set_to_none=True)
        get_loss("meanvar")(net(inp), target).backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    plain_grads = grads(model, _to_device(x, cpu, channels_last=False))
    with torch.no_grad():
        plain = model(_to_device(x, cpu, channels_last=False))
    fast_model = _prepare_model(model, cpu, channels_last=True)
    xt = _to_device(x, cpu, channels_last=True)
    if arch.endswith("3d"):
        assert xt.is_contiguous(memory_format=torch.channels_last_3d)
        conv = next(m for m in fast_model.modules() if isinstance(m, torch.nn.Conv3d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        fast = fast_model(xt)
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = fast_model(xt)
    assert half.dtype == torch.bfloat16
    scale = float(plain.abs().max()) + 1e-3
    assert float((half.float() - plain).abs().max()) < 0.1 * scale + 0.05
    fast_grads = grads(fast_model, xt)
    assert fast_grads.keys() == plain_grads.keys() and len(fast_grads) > 4
    for name, g in fast_grads.items():
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, plain_grads[name], rtol=1e-3, atol=1e-4, msg=name)


def test_nonfinite_gradients_skip_the_step():
    """A finite loss whose gradient is inf/NaN (what bfloat16 can produce) leaves the weights
    as they were and is counted; training goes on. Ten such steps in a row are a clear error
    that names the way out (--no-amp)."""
    from bodyage_core.training.trainer import MAX_BAD_GRAD_STEPS

    ds, model, cfg, _ = _setup(epochs=2)
    first = next(p for p in model.parameters() if p.requires_grad)
    poison = {"left": 1}

    def hook(g):   # the first backward pass yields a NaN gradient
        if poison["left"] > 0:
            poison["left"] -= 1
            return g * float("nan")
        return g

    first.register_hook(hook)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    msgs = []
    t = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg,
                reporter=ProgressReporter(lambda e: msgs.append(e.message)))
    seen = []
    t.on(Events.ITERATION_COMPLETED,
         lambda s: seen.append({k: v.clone() for k, v in t.model.state_dict().items()}))
    st = t.fit()
    assert st.skipped_steps == 1 and st.epoch == 2
    assert any("non-finite gradients" in m for m in msgs)
    for k, v in before.items():   # the dropped step changed no weight (batch-norm stats aside)
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(seen[0][k], v), k
    assert any(not torch.equal(seen[-1][k], v) for k, v in before.items())
    assert all(torch.isfinite(v.float()).all() for v in t.model.state_dict().values())

    ds, model, cfg, _ = _setup(epochs=5)
    next(p for p in model.parameters()).register_hook(lambda g: g * float("inf"))
    t = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg)
    with pytest.raises(BodyageError, match=f"{MAX_BAD_GRAD_STEPS} optimiser steps in a row") as ei:
        t.fit()
    assert "--no-amp" in ei.value.hint


def test_handlers_run_in_their_documented_order_and_can_be_replaced(tmp_path):
    """Validation, the schedule, best weights, early stopping and the checkpoint are handlers
    (bodyage_core.training.handlers): a caller's epoch handler sees the epoch validated and runs
    before that epoch's checkpoint; a trainer built with another set does only what it holds."""
    from bodyage_core.training.handlers import BestWeights, CheckpointSaver, Validator

    ds, model, cfg, _ = _setup(epochs=2)
    ck = tmp_path / "c.ckpt"
    t = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg, checkpoint=ck)
    seen = []
    t.on(Events.EPOCH_COMPLETED, lambda s: seen.append(
        (s.epoch, len(s.history), math.isfinite(s.val_mae), ck.exists())))
    t.on(Events.CHECKPOINT_SAVED, lambda s: seen.append(("saved", s.epoch)))
    t.fit()
    assert seen == [(1, 1, True, False), ("saved", 1), (2, 2, True, True), ("saved", 2)]

    ds, model, cfg, _ = _setup(epochs=2)
    bare = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg,
                   checkpoint=tmp_path / "none.ckpt", handlers=[Validator(), BestWeights()])
    st = bare.fit()
    assert not (tmp_path / "none.ckpt").exists()          # no CheckpointSaver, no checkpoint
    assert len(st.history) == 2 and st.best_epoch in (1, 2)
    assert any(isinstance(h, CheckpointSaver) for h in t.handlers)


def test_early_stopping_is_a_handler_that_stops_training():
    ds, model, cfg, _ = _setup(epochs=8, lr=0.0, early_stopping=2)   # nothing improves
    t = Trainer(model, ds, np.arange(18), np.arange(18, 24), cfg)
    stopped = []
    t.on(Events.EARLY_STOPPED, lambda s: stopped.append(s.epoch))
    st = t.fit()
    assert st.stopped_early and stopped == [st.epoch] and st.epoch == 3
