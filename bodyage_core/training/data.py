"""Subjects as training samples: records, model-grid inputs and their on-disk cache.

A :class:`SubjectRecord` is ``(subject_id, loader, age, sex, bmi_group, site)`` where
``loader()`` returns the model input as a float32 numpy array: ``(C, Z, Y, X)`` for 3D models or
``(C, H, W)`` for the 2.5D projections. Records come from a workspace (:func:`records_from_workspace`,
with inputs cached as ``cache/<grid-hash>/<id>.npy``, see :mod:`bodyage_core.preprocess.cache`)
or from plain arrays
(:func:`records_from_arrays`, used by tests and benchmarks).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.errors import BodyageError, CohortError
from bodyage_core.preprocess.spec import (  # noqa: F401 - the input spec's home is preprocess
    PROJECTIONS,
    InputSpec,
    ModelInput,
    normalise_foreground_mean,
    prepare_input,
    prepare_model_input,
    projections_2p5d,
    projections_for_spec,
    projections_langner,
)
from bodyage_core.progress import ProgressReporter, ensure_reporter
from bodyage_core.volume import Volume


@dataclass
class SubjectRecord:
    subject_id: str
    loader: Callable[[], np.ndarray]
    age: float | None = None
    sex: str | None = None
    bmi_group: str | None = None
    site: str | None = None
    bmi: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class AgeDataset:
    """Indexable collection of records with an optional in-memory cache of the arrays.

    ``max_bytes`` bounds the in-memory cache (least recently used arrays are dropped; they come
    back from the workspace's disk cache). None: ``BODYAGE_MEMORY_CACHE`` (e.g. ``40GB``) when
    set, else unbounded (every array stays in memory: right for cohorts that fit).
    """

    def __init__(self, records: Sequence[SubjectRecord], cache: bool = True,
                 max_bytes: int | None = None):
        self.records = list(records)
        self._cache: OrderedDict[int, np.ndarray] | None = OrderedDict() if cache else None
        if max_bytes is None and os.environ.get("BODYAGE_MEMORY_CACHE", "").strip():
            from bodyage_core.preprocess.cache import parse_size

            max_bytes = parse_size(os.environ["BODYAGE_MEMORY_CACHE"])
        self.max_bytes = max_bytes
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    @property
    def memory_bytes(self) -> int:
        """Bytes of the arrays held in memory now."""
        return self._bytes

    def array(self, i: int, dtype: Any = np.float32) -> np.ndarray:
        """The input of record ``i`` as ``dtype`` (None: as loaded and held in memory --
        float16 from the workspace cache, half the bytes)."""
        if self._cache is not None and i in self._cache:
            self._cache.move_to_end(i)
            return _as(self._cache[i], dtype)
        rec = self.records[i]
        try:
            a = np.asarray(rec.loader())
            if a.dtype not in (np.float16, np.float32):
                a = a.astype(np.float32)
        except BodyageError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the subject, keep the cause
            raise BodyageError(f"cannot load the input of subject {rec.subject_id} "
                               f"({type(exc).__name__}: {exc})") from exc
        if self._cache is not None and (self.max_bytes is None or a.nbytes <= self.max_bytes):
            self._cache[i] = a
            self._bytes += a.nbytes
            while self.max_bytes is not None and self._bytes > self.max_bytes:
                _, old = self._cache.popitem(last=False)
                self._bytes -= old.nbytes
        return _as(a, dtype)

    def batch(self, indices: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
        """The inputs of ``indices`` stacked, as ``dtype`` (None: their stored dtype, float16
        from the cache: the trainer sends that to the device and widens it there)."""
        out = np.stack([self.array(int(i), None) for i in indices])
        return out if dtype is None else out.astype(dtype, copy=False)

    @property
    def ages(self) -> np.ndarray:
        return np.array([np.nan if r.age is None else r.age for r in self.records], dtype=float)

    @property
    def subject_ids(self) -> list[str]:
        return [r.subject_id for r in self.records]

    def column(self, name: str) -> list[Any]:
        return [getattr(r, name) for r in self.records]

    def preload(self, reporter: ProgressReporter | None = None) -> None:
        rep = ensure_reporter(reporter)
        for i in range(len(self)):
            self.array(i)
            rep.update("load", i + 1, len(self), self.records[i].subject_id)


def _as(a: np.ndarray, dtype: Any) -> np.ndarray:
    return a if dtype is None else a.astype(dtype, copy=False)


def records_from_arrays(arrays: Sequence[np.ndarray] | np.ndarray, ages: Sequence[float],
                        subject_ids: Sequence[str] | None = None,
                        sex: Sequence | None = None, bmi_group: Sequence | None = None,
                        site: Sequence | None = None) -> list[SubjectRecord]:
    """Records over in-memory arrays (tests, benchmarks)."""
    n = len(arrays)
    ids = list(subject_ids) if subject_ids is not None else [f"s{i:04d}" for i in range(n)]
    return [SubjectRecord(ids[i], (lambda a=arrays[i]: a), float(ages[i]),
                          None if sex is None else sex[i],
                          None if bmi_group is None else bmi_group[i],
                          None if site is None else site[i]) for i in range(n)]


# -- workspace -----------------------------------------------------------------------------

def subject_sources(ws, subject, kinds: Sequence[str]) -> list[Path]:
    """The files the images ``kinds`` of a subject are read from (distinct, in order)."""
    out: list[Path] = []
    for kind in kinds:
        if kind not in subject.images:
            have = ", ".join(sorted(subject.images)) or "none"
            raise CohortError(f"subject {subject.subject_id} has no {kind!r} image (has: {have})",
                              hint="import the missing image or train on other channels")
        p = ws.resolve(subject.images[kind])
        if p not in out:
            out.append(p)
    return out


def load_subject_volume(ws, subject, kinds: Sequence[str]) -> Volume:
    """Load the images ``kinds`` of one workspace subject as one multi-channel Volume
    (:func:`bodyage_core.io.load_channels`: kinds recorded with the same UK Biobank zip, the
    ``water`` and ``fat`` of a streamed import, are read from it in one pass)."""
    from bodyage_core.io import load_channels

    subject_sources(ws, subject, kinds)          # clear error for a missing kind
    return load_channels({k: ws.resolve(subject.images[k]) for k in kinds})


def input_cache(ws, spec: InputSpec):
    """The workspace's :class:`~bodyage_core.preprocess.cache.PreprocessCache` for ``spec``."""
    from bodyage_core.preprocess.cache import PreprocessCache

    return PreprocessCache.for_workspace(ws.root, spec)


def cache_path(ws, subject_id: str, spec: InputSpec) -> Path:
    """Where the model-grid input of a subject is cached: ``cache/<grid-hash>/<id>.npy``."""
    return input_cache(ws, spec).path(subject_id)


def checked_subject_volume(ws, subject, kinds: Sequence[str]) -> Volume:
    """:func:`load_subject_volume`, then :func:`bodyage_core.qc.image_checks.check_model_input`:
    an empty, constant, too thin or bodiless image is a BodyageError naming the subject (a
    model would give it a confident age)."""
    from bodyage_core.qc.image_checks import check_model_input

    vol = load_subject_volume(ws, subject, kinds)
    check_model_input(vol, f"subject {subject.subject_id}")
    return vol


def cached_input(ws, subject, spec: InputSpec, out: np.ndarray | None = None) -> np.ndarray:
    """The model-grid input of a workspace subject, from ``cache/<grid-hash>/<id>.npy`` when
    its source files are unchanged (size and mtime), else loaded, checked
    (:func:`checked_subject_volume`), prepared and stored atomically (within the workspace's
    cache size limit; a failed cache write only means no cache). ``out``: a cache hit is read
    straight into that array (a row of a batch) and it is returned."""
    sources = subject_sources(ws, subject, spec.channels)
    return input_cache(ws, spec).get(
        subject.subject_id, sources,
        lambda: prepare_input(checked_subject_volume(ws, subject, spec.channels), spec),
        shape=spec.array_shape, out=out)


#: ``tasks`` stage under which subjects whose training input failed are recorded (key: the
#: input spec's hash).
INPUT_STAGE = "train_input"


def records_from_workspace(ws, spec: InputSpec, subject_ids: Sequence[str] | None = None,
                           require_age: bool = True, exclude: Sequence[str] | None = None,
                           skip_failed: bool | None = None,
                           reporter: ProgressReporter | None = None) -> list[SubjectRecord]:
    """Records of the workspace's subjects (all, or ``subject_ids``) that have the images
    ``spec.channels``; inputs are loaded lazily through the ``.npy`` cache.

    The cohort a run trains on (``subject_ids`` None and ``require_age``) is selected:

    * left out: the subjects flagged excluded in the cohort (``bodyage exclude``, an
      ``excluded`` import column) and those in ``ws.train_exclude`` (``train --exclude``), or
      the ids in ``exclude`` when given;
    * ``skip_failed`` (default: True for that cohort, False otherwise): every input is prepared
      once now, through the cache. A subject whose input fails (an unreadable image, one that
      :func:`checked_subject_volume` refuses) is recorded ``failed`` with its one-line error in
      the ``tasks`` table (stage :data:`INPUT_STAGE`, key ``spec.hash``) and in
      ``ws.input_failures``, and left out: one bad image does not stop a training run. When no
      subject's input can be prepared, the first error is raised.

    ``reporter`` (default ``ws.progress`` when set) sees one ``load`` update per subject.
    """
    selecting = subject_ids is None and require_age
    subjects = ws.db.subjects(list(subject_ids)) if subject_ids else ws.db.subjects()
    if subject_ids:
        found = {s.subject_id for s in subjects}
        unknown = [s for s in subject_ids if s not in found]
        if unknown:
            raise CohortError(f"unknown subject(s): {', '.join(unknown[:5])}",
                              hint="check the ids against the cohort (the viewer's subject "
                                   "list, or reports/ of a run)")
    if selecting:
        if exclude is not None:
            leave = {str(i) for i in exclude}
        else:
            leave = {s.subject_id for s in subjects if s.excluded} | set(
                getattr(ws, "train_exclude", ()) or ())
        subjects = [s for s in subjects if s.subject_id not in leave]
    records = []
    for s in subjects:
        if require_age and s.age is None:
            continue
        records.append(SubjectRecord(s.subject_id, (lambda s=s: cached_input(ws, s, spec)),
                                     s.age, s.sex, s.bmi_group, s.site, s.bmi))
    if skip_failed is None:
        skip_failed = selecting
    if skip_failed and records:
        records = _drop_failing(ws, spec, records, {s.subject_id: s for s in subjects},
                                reporter or getattr(ws, "progress", None))
    return records


def _drop_failing(ws, spec: InputSpec, records: list[SubjectRecord], subjects: dict,
                  reporter: ProgressReporter | None) -> list[SubjectRecord]:
    """Prepare every record's input once; record and drop the ones that fail."""
    from bodyage_core.errors import Cancelled

    rep = ensure_reporter(reporter)
    failures: dict[str, str] = {}
    kept = []
    for i, r in enumerate(records):
        try:
            arr = cached_input(ws, subjects[r.subject_id], spec)
        except (Cancelled, KeyboardInterrupt):
            raise
        except BodyageError as err:
            failures[r.subject_id] = str(err)
        except Exception as err:  # noqa: BLE001 - a reader's own failure: name it, go on
            text = str(err).strip().splitlines()[0] if str(err).strip() else ""
            failures[r.subject_id] = f"cannot load the input ({type(err).__name__}: {text})"
        else:
            kept.append(_first_from(r, arr))
        rep.update("load", i + 1, len(records), r.subject_id, failed=len(failures))
    if hasattr(ws, "input_failures"):
        ws.input_failures.update(failures)
    _record_failures(ws, spec, failures, [r.subject_id for r in kept])
    if not kept:
        sid, msg = next(iter(failures.items()))
        raise CohortError(f"no subject's input could be prepared ({len(failures)} failed; "
                          f"the first, {sid}: {msg})", ws.root,
                          "fix the images (check them with `bodyage import --check`) or "
                          "choose other --channels")
    return kept


def _first_from(record: SubjectRecord, arr: np.ndarray) -> SubjectRecord:
    """The record with a loader that hands out the array just prepared once (the check must
    not cost a second read of every input), then loads as before."""
    held = [arr]
    loader = record.loader

    def load() -> np.ndarray:
        return held.pop() if held else loader()

    record.loader = load
    return record


def _record_failures(ws, spec: InputSpec, failures: dict[str, str], ok: list[str]) -> None:
    """Failed inputs as ``tasks`` rows (rank 0 only under torchrun; a database that cannot be
    written does not stop training: the failures are still in ``ws.input_failures``)."""
    if ws.db is None or os.environ.get("RANK", "0") not in ("", "0"):
        return
    try:
        with ws.db.transaction():
            for sid, msg in failures.items():
                ws.db.finish_task(INPUT_STAGE, spec.hash, sid, "failed", msg, attempts=1)
            old = ws.db.tasks(INPUT_STAGE, spec.hash)
            fixed = [sid for sid in ok if old.get(sid, {}).get("status") == "failed"]
            if fixed:
                ws.db.mark_tasks(INPUT_STAGE, spec.hash, fixed, "done")
    except BodyageError:
        pass
