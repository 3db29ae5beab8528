"""A trained ensemble loaded for inference: from a workspace run folder or a model bundle.

Run folders (``workspace/models/<run>/``, written by :mod:`bodyage_core.training.run`) hold
``config.json``, ``member_<k>.pt`` (read with ``weights_only=True``), the bias correction,
calibration and the cross-validation splits. Model bundles (:mod:`bodyage_core.inference.bundle`)
hold ``model.json`` and one safetensors file per member, each checked against the sha256 the card
records before it is read. Both load into the same :class:`AgeRun`, so every caller predicts the
same way whatever the model came from.

Arrays given to :meth:`AgeRun.predict` are numpy ``(N, C, Z, Y, X)`` (3D) or ``(N, C, H, W)``
(2.5D) on the model's input grid; ages, means and sigmas are in years.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.errors import BodyageError
from bodyage_core.models.ensemble import (
    MEMBER_FORMAT,
    RUN_FORMAT,
    Predictions,
    apply_bias_correction,
    apply_variance_scale,
    centre_distance,
    combine_members,
    interval_table,
)
from bodyage_core.preprocess.spec import InputSpec
from bodyage_core.progress import ProgressReporter, ensure_reporter

#: Test-time augmentations a model may ask for: ``"flip_x"`` averages each member's output on
#: the input and on its left-right mirror image.
TTA = ("flip_x",)
#: The cohort template of a model that aligns its inputs (``InputSpec.align == "template"``).
TEMPLATE_NAME = "template.nii.gz"


class AgeRun:
    """A trained ensemble; predicts ages with uncertainty.

    ``source`` is a run folder (``config.json``) or a model bundle folder (``model.json``).
    Subjects of a run's training cohort get their *out-of-fold* prediction (only the members of
    the fold that held them out, with that fold's calibration and bias correction); any other
    subject, and every subject of a bundle, gets all members with the global fits.
    """

    def __init__(self, source: str | Path, device: str = "cpu", compile: bool | None = None):
        from bodyage_core.inference.device import compile_wanted

        self.run_dir = Path(source)
        self.device = device
        #: predict through ``torch.compile`` d networks (``BODYAGE_COMPILE=1``; off by default)
        self.compile = compile_wanted(compile)
        #: bfloat16 autocast on CUDA (no effect on the CPU)
        self.amp = True
        self._models: list[Any] | None = None
        self._compiled: list[Any] | None = None
        if (self.run_dir / "model.json").is_file():
            self._init_bundle()
        else:
            self._init_run()
        self.spec = InputSpec.from_dict(self.config["input"])
        if self.spec.align == "template":
            self.spec.template = self._load_template()
        self.model_config = dict(self.config["model"])
        if not self.members:
            raise BodyageError("the model has no members", path=self.run_dir)
        tta = list(self.config.get("tta") or [])
        unknown = [t for t in tta if t not in TTA]
        if unknown:
            raise BodyageError(f"unknown test-time augmentation {unknown}", path=self.run_dir,
                               hint="this model needs a newer bodyage")
        self.tta = tta

    # -- sources ---------------------------------------------------------------------------
    def _init_run(self) -> None:
        cfg_path = self.run_dir / "config.json"
        if not cfg_path.exists():
            raise BodyageError("not a trained run or model (no config.json or model.json)",
                               path=self.run_dir,
                               hint="train it with `bodyage train WORKSPACE --run NAME`, or "
                                    "name a model from `bodyage models list`")
        self.kind = "run"
        self.config = read_json(cfg_path)
        if self.config.get("format") != RUN_FORMAT:
            raise BodyageError("config.json is not a bodyage run config", path=cfg_path)
        if self.config.get("status") != "complete":
            raise BodyageError(f"run is not complete (status {self.config.get('status')!r})",
                               path=self.run_dir, hint="finish it with `bodyage train --resume`")
        self.name = self.config.get("run", self.run_dir.name)
        self.card: dict[str, Any] | None = None
        self.sha: str | None = None
        self.members: list[dict[str, Any]] = list(self.config["members"])
        self.bias = read_json(self.run_dir / "bias_correction.json")
        self.calibration = read_json(self.run_dir / "calibration.json")
        sp = self.run_dir / "splits.json"
        self.splits = read_json(sp) if sp.exists() else {"folds": {}}

    def _init_bundle(self) -> None:
        from bodyage_core.inference.bundle import card_sha, read_card

        self.kind = "model"
        card = read_card(self.run_dir)
        self.card = card
        self.sha = card_sha(self.run_dir)
        self.name = card["name"]
        self.config = {"model": card["architecture"], "input": card["input"],
                       "train": card.get("training", {}), "tta": card.get("tta", [])}
        self.members = [dict(m) for m in card["members"]]
        self.bias = card["bias_correction"]
        self.calibration = card["calibration"]
        self.splits = {"folds": {}}

    def _load_template(self):
        """The cohort template the model aligns its inputs to (``template.nii.gz``; a bundle's
        is checked against the card's sha256 first)."""
        from bodyage_core.io import load_volume

        path = self.run_dir / TEMPLATE_NAME
        if self.kind == "model":
            from bodyage_core.inference.bundle import verify_file

            want = {f["file"]: f["sha256"] for f in (self.card or {}).get("files", [])}
            if TEMPLATE_NAME not in want:
                raise BodyageError(f"the model aligns its input but its card lists no "
                                   f"{TEMPLATE_NAME}", path=self.run_dir)
            verify_file(path, want[TEMPLATE_NAME])
        elif not path.is_file():
            raise BodyageError(f"the run aligns its input but has no {TEMPLATE_NAME}",
                               path=self.run_dir, hint="train the run again (--overwrite)")
        return load_volume(path)

    @property
    def qc_stats(self) -> dict[str, Any] | None:
        """The reference of the QC score (:mod:`bodyage_core.inference.ood`), None when the
        model has none (runs trained before it existed)."""
        if not hasattr(self, "_qc"):
            from bodyage_core.inference import ood

            path = self.run_dir / ood.FILE
            self._qc = None
            if path.is_file():
                if self.kind == "model":
                    from bodyage_core.inference.bundle import verify_file

                    want = {f["file"]: f["sha256"] for f in (self.card or {}).get("files", [])}
                    if ood.FILE not in want:
                        return None
                    verify_file(path, want[ood.FILE])
                self._qc = ood.load(path)
        return self._qc

    # -- members ---------------------------------------------------------------------------
    def _member_state(self, m: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(model_config, state_dict)`` of one member, read without running code."""
        path = self.run_dir / m["file"]
        if self.kind == "model":
            from bodyage_core.inference.bundle import verify_file
            from bodyage_core.inference.weights import load_safetensors

            verify_file(path, m["sha256"])
            return dict(self.model_config), load_safetensors(path, what="model weights")
        from bodyage_core.inference.weights import load_torch_file

        ck = load_torch_file(path, what="ensemble member")
        if not isinstance(ck, dict) or ck.get("format") != MEMBER_FORMAT:
            raise BodyageError("not a bodyage ensemble member", path=path,
                               hint="train the run again (--overwrite)")
        return ck["model_config"], ck["state_dict"]

    def member_state(self, index: int) -> dict[str, Any]:
        """The state dict of member ``index`` (read without running code)."""
        return self._member_state(self.members[index])[1]

    def load_members(self) -> list[Any]:
        """The member networks (eval mode), loaded once; a damaged file is a BodyageError."""
        if self._models is None:
            from bodyage_core.inference.device import prepare_model, resolve_device
            from bodyage_core.models.factory import build_model

            dev = resolve_device(self.device)
            models = []
            for m in self.members:
                mcfg, state = self._member_state(m)
                net = build_model(dict(mcfg, weights=None))
                try:
                    net.load_state_dict(state)
                except RuntimeError as exc:
                    raise BodyageError(f"member weights do not fit its model ({exc})",
                                       path=self.run_dir / m["file"]) from None
                models.append(prepare_model(net, dev).eval())
            self._models = models
        return self._models

    def forward_nets(self) -> list[Any]:
        """The networks :meth:`member_outputs` runs: :meth:`load_members`, each through
        ``torch.compile`` when :attr:`compile` (the plain modules stay what hooks and Grad-CAM
        use)."""
        models = self.load_members()
        if not self.compile:
            return models
        if self._compiled is None:
            from bodyage_core.inference.device import maybe_compile

            self._compiled = [maybe_compile(m, True) for m in models]
        return self._compiled

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def uses_variance(self) -> bool:
        return self.config.get("train", {}).get("loss") == "meanvar"

    def check_input(self, arrays: np.ndarray, source: str | None = None) -> None:
        """Refuse arrays whose channels or grid differ from the model's input config."""
        want = self.spec.array_shape
        shape = tuple(np.shape(arrays))
        if len(shape) != len(want) + 1 or shape[1:] != want:
            got = shape[1:] if len(shape) == len(want) + 1 else shape
            raise BodyageError(
                f"input of shape {got} does not match model {self.name!r}, trained on "
                f"{len(self.spec.channels)} channel(s) {list(self.spec.channels)} on a "
                f"{self.spec.mode} grid of shape {want[1:]}", path=source,
                hint="prepare the image with the model's input config (bodyage predict does)")

    # -- prediction ------------------------------------------------------------------------
    def member_outputs(self, arrays, batch_size: int = 8,
                       reporter: ProgressReporter | None = None,
                       members: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, var)`` in years, each ``(K, N)``, of every member on ``arrays`` (members not
        in ``members``, when given, are NaN).

        ``arrays``: numpy or torch ``(N, C, ...)``, float32 or float16 (the input cache's
        dtype; widened on the device). Batches of ``batch_size`` subjects go to the device once
        and every member (and test-time augmentation) runs on that same on-device batch; an
        out-of-memory error halves the batch. Progress: one unit per member and subject
        (``member k/K``)."""
        from bodyage_core.inference.batch import forward_tta
        from bodyage_core.inference.device import is_oom, resolve_device, to_device
        from bodyage_core.training.losses import LOGVAR_RANGE

        self.check_input(arrays)
        rep = ensure_reporter(reporter)
        models = self.forward_nets()
        dev = resolve_device(self.device)
        n = len(arrays)
        mu = np.full((len(models), n), np.nan)
        var = np.zeros((len(models), n))
        arrays = _as_batch(arrays)
        wanted = list(range(len(models))) if members is None else list(members)
        total = len(wanted) * n
        pos, bs = 0, max(1, int(batch_size))
        while pos < n:
            sl = slice(pos, min(n, pos + bs))
            try:
                x = to_device(arrays[sl], dev)
                outs = []
                for j, k in enumerate(wanted):
                    outs.append(forward_tta(models[k], x, self.tta, self.amp))
                    rep.update("predict", pos * len(wanted) + (j + 1) * (sl.stop - pos), total,
                               f"member {j + 1}/{len(wanted)}")
            except Exception as exc:
                if is_oom(exc) and bs > 1:
                    x = outs = None
                    bs = max(1, bs // 2)
                    if dev.type == "cuda":
                        import torch

                        torch.cuda.empty_cache()
                    rep.update("predict", pos * len(wanted), total,
                               f"out of memory: batch size now {bs}")
                    continue
                raise
            for k, out in zip(wanted, outs):
                m = self.members[k]
                std = float(m["target_std"])
                mu[k, sl] = out[:, 0] * std + float(m["target_mean"])
                if self.uses_variance:
                    var[k, sl] = np.exp(np.clip(out[:, 1], *LOGVAR_RANGE)) * std ** 2
            pos = sl.stop
        return mu, var

    def fold_of(self, subject_id: str) -> int | None:
        f = self.splits.get("folds", {}).get(str(subject_id))
        return None if f is None else int(f)

    def members_for(self, subject_id: str | None, out_of_fold: bool = True) -> list[int]:
        """The members that predict ``subject_id``: its fold's for a subject a run held out,
        else all."""
        f = self.fold_of(subject_id) if (out_of_fold and subject_id is not None) else None
        all_k = list(range(self.n_members))
        if f is None:
            return all_k
        sel = [k for k, m in enumerate(self.members) if m.get("fold") is not None
               and int(m["fold"]) == f]
        return sel or all_k

    def predict(self, arrays: np.ndarray, subject_ids: Sequence[str] | None = None,
                batch_size: int = 8, reporter: ProgressReporter | None = None,
                out_of_fold: bool = True) -> Predictions:
        """Predict ages for ``arrays`` (numpy, the model's grid). With ``out_of_fold``, subjects
        a run held out in a fold get only that fold's members and fits."""
        arrays = _as_batch(arrays)
        n = len(arrays)
        ids = list(subject_ids) if subject_ids is not None else [f"#{i}" for i in range(n)]
        mu, var = self.member_outputs(arrays, batch_size, reporter)
        mean = np.zeros(n)
        raw_var = np.zeros(n)
        total_var = np.zeros(n)
        corrected = np.zeros(n)
        folds: list[int | None] = []
        splits: list[str] = []
        tables: list[dict[str, float] | None] = []
        mu_used = mu.copy()
        for i, sid in enumerate(ids):
            f = self.fold_of(sid) if out_of_fold else None
            sel = np.zeros(self.n_members, bool)
            sel[self.members_for(sid, out_of_fold)] = True
            mu_used[~sel, i] = np.nan
            m_i, v_i = combine_members(mu[sel, i:i + 1], var[sel, i:i + 1])
            key = str(f) if f is not None else None
            bias = self.bias.get("folds", {}).get(key) if key else None
            bias = bias or self.bias["global"]
            mean[i] = m_i[0]
            raw_var[i] = v_i[0]
            # without a QC score yet: a calibration with a QC term gives its scale-only one
            fit = self.calibration_for(f)
            total_var[i] = apply_variance_scale(
                v_i, fit, {"centre": centre_distance(m_i, fit.get("centre_age"))})[0]
            corrected[i] = apply_bias_correction(m_i, bias)[0]
            tables.append(interval_table(self.calibration_for(f)))
            folds.append(f)
            if f is not None:
                splits.append(self.splits.get("split", {}).get(str(sid), "test"))
            else:   # a training/validation subject of a single-split run, or a new one
                splits.append(self.splits.get("single_split_roles", {}).get(str(sid), "new"))
        sig = np.sqrt(var)
        sig_used = np.where(np.isfinite(mu_used), sig, np.nan)
        return Predictions(ids, mu_used.T, sig_used.T, mean, np.sqrt(total_var), corrected,
                           folds, splits, raw_var, tables)

    def calibration_for(self, fold: int | None) -> dict[str, Any]:
        """The variance calibration of a subject held out in ``fold`` (None: a new subject)."""
        cal = self.calibration.get("folds", {}).get(str(fold)) if fold is not None else None
        return cal or self.calibration["global"]

    def calibrated_sigma(self, variance: float, fold: int | None,
                         covariates: dict[str, float | None] | float | None) -> float:
        """sigma from the ensemble's raw ``variance`` and the input's covariates (``{"qc": QC
        score, "extent": head-foot extent}``, or the QC score alone; a missing one: the
        calibration's scale-only fit)."""
        return float(np.sqrt(apply_variance_scale(np.array([variance]),
                                                  self.calibration_for(fold), covariates)[0]))

    def predict_volume(self, volume, subject_id: str | None = None) -> Predictions:
        """Prepare one :class:`~bodyage_core.volume.Volume` for the model's grid and predict."""
        from bodyage_core.preprocess.spec import prepare_input

        arr = prepare_input(volume, self.spec)
        return self.predict(arr[None], [subject_id or "volume"], out_of_fold=False)

    def describe(self) -> str:
        """``name`` (run) or ``name version`` (model), for rows and messages."""
        if self.card is None:
            return f"run {self.name}"
        return f"model {self.name} {self.card.get('version', '')}".rstrip()


#: The ensemble *is* the run: one name for readers who think of it so.
Ensemble = AgeRun


def _as_batch(arrays):
    """A torch tensor as it is; anything else as a numpy float16 or float32 array."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(arrays, torch.Tensor):
        return arrays
    arrays = np.asarray(arrays)
    return arrays if arrays.dtype in (np.float16, np.float32) else arrays.astype(np.float32)


def read_json(path: Path) -> Any:
    if not path.exists():
        raise BodyageError("missing file of a trained run", path=path,
                           hint="the run is incomplete; train it again (--overwrite)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BodyageError(f"damaged JSON ({exc})", path=path,
                           hint="train the run again (--overwrite)") from None
