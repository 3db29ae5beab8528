"""The cohort index: one SQLite file (``cohort.sqlite``) per workspace.

Tables (schema version in ``PRAGMA user_version``):

* ``subjects``    one row per subject: id, age, sex ('F'|'M'), BMI, BMI group, site, meta JSON.
* ``images``      (subject, kind) -> path relative to the workspace root (kinds: water, fat, t1,
                  labels, age_mask, gradcam_<run>, ...).
* ``runs``        trained model runs: id, model kind, config JSON, status.
* ``predictions`` (run, subject) -> fold, split, member outputs JSON, mean, sigma, bias-corrected
                  age, gap (corrected - chronological).
* ``registrations`` (subject, group) -> status, quality figures, transform paths.
* ``tasks``       per-subject stage bookkeeping (done / failed with error, attempts, seconds,
                  worker) so batch stages are resumable and idempotent (schema 2 added
                  ``seconds`` and ``worker``; see :mod:`bodyage_core.cluster`).
* ``exclusions``  subjects left out of training (``bodyage exclude``, ``import`` with an
                  ``excluded`` column): id -> reason. Created on first use, outside the schema
                  versions (an older bodyage ignores it and still opens the workspace); a
                  database without it has no exclusions.

Every write happens in one transaction: an exception (or a crash) in the middle of an import
leaves the database exactly as it was. The database runs in WAL mode with a busy timeout so
several readers and one writer at a time coexist (viewer open while a stage runs).
Transactions nest: a :meth:`CohortDB.transaction` opened inside another one (same thread) joins
it, so a stage result and its ``tasks`` row are committed together or not at all.

SQLite errors become one-line :class:`~bodyage_core.errors.CohortError` s that say what happened
(:func:`~bodyage_core.cohort.sqlite_errors.sqlite_error`; the schema and its migrations:
:mod:`~bodyage_core.cohort.schema`): a read-only workspace, a full disk, a lock held too long or an I/O error
is reported as such, and only a file that is not a database is called damaged.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bodyage_core.cohort.schema import (
    EXCLUSIONS_TABLE,
    MIGRATIONS,
    SCHEMA_VERSION,
    split_sql,
)
from bodyage_core.cohort.sqlite_errors import (
    SYSTEM_ERRORS,
    is_read_only_error,
    is_system_error,
    sqlite_error,
    writable,
)
from bodyage_core.errors import CohortError

BMI_GROUPS = ("healthy", "overweight", "obese")
TASK_STATUSES = ("queued", "running", "done", "failed", "cancelled")


def bmi_group(bmi: float | None) -> str | None:
    """WHO groups used by the atlases: healthy < 25, overweight 25-30, obese >= 30."""
    if bmi is None or (isinstance(bmi, float) and math.isnan(bmi)):
        return None
    if bmi < 25.0:
        return "healthy"
    if bmi < 30.0:
        return "overweight"
    return "obese"


@dataclass
class Subject:
    """One subject of the cohort. ``images`` paths are relative to the workspace root."""

    subject_id: str
    age: float | None = None
    sex: str | None = None
    bmi: float | None = None
    bmi_group: str | None = None
    site: str | None = None
    images: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    #: why the subject is left out of training (None: it is not)
    excluded: str | None = None

    @property
    def group(self) -> str | None:
        """The default atlas group, e.g. ``'F_healthy'``; None when sex or BMI group is unknown."""
        if self.sex is None or self.bmi_group is None:
            return None
        return f"{self.sex}_{self.bmi_group}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject_id": self.subject_id, "age": self.age, "sex": self.sex, "bmi": self.bmi,
            "bmi_group": self.bmi_group, "site": self.site, "images": dict(self.images),
            "meta": dict(self.meta), "excluded": self.excluded,
        }


class CohortDB:
    """Access to ``cohort.sqlite``. Create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self._conn = conn
        #: opened read-only because the file or its folder cannot be written
        self.read_only = False
        self._tx_lock = threading.RLock()
        self._tx_depth = 0

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, create: bool = False) -> CohortDB:
        path = Path(path)
        if not path.exists() and not create:
            raise CohortError("no cohort index here", path,
                              "create a workspace with `bodyage import` or `bodyage synth`")
        read_only = False
        try:
            try:
                conn, version = cls._connect(path, create)
            except sqlite3.OperationalError as err:
                if create or writable(path) or not is_read_only_error(err):
                    raise
                # a read-only workspace (a read-only mount, no write permission): open it for
                # reading; a write then fails with a clear "read-only" line
                conn, version = cls._connect(path, create, read_only=True)
                read_only = True
        except CohortError:
            raise
        except sqlite3.DatabaseError as err:
            raise sqlite_error(err, path, "open") from None
        db = cls(path, conn)
        db.read_only = read_only
        try:
            db._migrate(version)
        except BaseException:
            conn.close()
            raise
        return db

    @staticmethod
    def _connect(path: Path, create: bool, read_only: bool = False
                 ) -> tuple[sqlite3.Connection, int]:
        if read_only:
            # immutable: SQLite may not create the -shm file of a WAL database here; nothing
            # can write a read-only file system or file meanwhile
            uri = f"{path.resolve().as_uri()}?mode=ro" + \
                ("" if os.access(path.parent, os.W_OK) else "&immutable=1")
            conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        else:
            conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and create is False:
                tables = conn.execute("SELECT name FROM sqlite_master WHERE type='table'"
                                      ).fetchall()
                if not tables:
                    raise CohortError("the cohort index is empty (no schema)", path,
                                      "delete it and import the cohort again")
            if not read_only:
                conn.execute("PRAGMA journal_mode = WAL")
        except BaseException:
            conn.close()
            raise
        return conn, version

    def _migrate(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise CohortError(
                f"this workspace was written by a newer bodyage (schema {version}, this one "
                f"knows up to {SCHEMA_VERSION})", self.path, "upgrade bodyage to open it")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction() as cur:
                # another process may have migrated since we read the version
                if cur.execute("PRAGMA user_version").fetchone()[0] >= v:
                    continue
                for statement in split_sql(MIGRATIONS[v]):
                    cur.execute(statement)
                cur.execute(f"PRAGMA user_version = {v}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception).

        Nested calls from the same thread join the outermost transaction; other threads using
        this connection wait for it to end.
        """
        with self._tx_lock:
            cur = self._conn.cursor()
            if self._tx_depth > 0:
                self._tx_depth += 1
                try:
                    yield cur
                finally:
                    self._tx_depth -= 1
                return
            for attempt in range(50):
                try:
                    cur.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as err:
                    if ("locked" not in str(err) and "busy" not in str(err)) or attempt == 49:
                        raise sqlite_error(err, self.path) from None
                    time.sleep(0.1)
            self._tx_depth = 1
            try:
                yield cur
            except SYSTEM_ERRORS as err:
                if not is_system_error(err):
                    self._rollback(cur)
                    raise
                self._rollback(cur)
                raise sqlite_error(err, self.path) from None
            except BaseException:
                self._rollback(cur)
                raise
            else:
                try:
                    cur.execute("COMMIT")
                except SYSTEM_ERRORS as err:
                    self._rollback(cur)
                    if not is_system_error(err):
                        raise
                    raise sqlite_error(err, self.path) from None
            finally:
                self._tx_depth = 0

    @staticmethod
    def _rollback(cur: sqlite3.Cursor) -> None:
        """Roll back, never masking the error that caused it (a full disk can fail this too;
        SQLite then rolls back itself when the connection closes)."""
        try:
            cur.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # -- subjects -----------------------------------------------------------------------------
    def add_subjects(self, records: Iterable[dict[str, Any] | Subject]) -> int:
        """Insert or update subjects (and their images) in one transaction; returns the count.

        A record is a :class:`Subject` or a dict with ``subject_id`` and any of ``age, sex, bmi,
        bmi_group, site, images, meta``. ``bmi_group`` is derived from ``bmi`` when missing.
        Updating a subject replaces its metadata and merges its images.
        """
        now = time.time()
        subject_rows = []
        image_rows = []
        flags: list[tuple[str, str | None]] = []
        seen: set[str] = set()
        for rec in records:
            d = rec.to_dict() if isinstance(rec, Subject) else dict(rec)
            sid = str(d["subject_id"])
            if sid in seen:
                raise CohortError(f"subject id {sid!r} appears twice in one import",
                                  hint="make subject ids unique")
            seen.add(sid)
            sex = normalise_sex(d.get("sex"))
            bmi = _float_or_none(d.get("bmi"))
            group = d.get("bmi_group") or bmi_group(bmi)
            subject_rows.append((sid, _float_or_none(d.get("age")), sex, bmi, group,
                                 None if d.get("site") is None else str(d.get("site")),
                                 json.dumps(d.get("meta") or {}, default=str), now))
            for kind, p in (d.get("images") or {}).items():
                image_rows.append((sid, kind, str(p)))
            if "excluded" in d:
                flags.append((sid, d["excluded"]))
        with self.transaction() as cur:
            cur.executemany(
                "INSERT INTO subjects (subject_id, age, sex, bmi, bmi_group, site, meta, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(subject_id) DO UPDATE SET"
                " age=excluded.age, sex=excluded.sex, bmi=excluded.bmi,"
                " bmi_group=excluded.bmi_group, site=excluded.site, meta=excluded.meta",
                subject_rows)
            cur.executemany(
                "INSERT INTO images (subject_id, kind, path) VALUES (?, ?, ?)"
                " ON CONFLICT(subject_id, kind) DO UPDATE SET path=excluded.path", image_rows)
            if flags:
                self._write_exclusions(cur, flags)
        return len(subject_rows)

    # -- exclusions from training ------------------------------------------------------------
    def _write_exclusions(self, cur: sqlite3.Cursor, flags: Iterable[tuple[str, str | None]]
                          ) -> None:
        cur.execute(EXCLUSIONS_TABLE)
        now = time.time()
        for sid, reason in flags:
            if reason:
                cur.execute("INSERT OR REPLACE INTO exclusions (subject_id, reason, updated)"
                            " VALUES (?, ?, ?)", (sid, str(reason), now))
            else:
                cur.execute("DELETE FROM exclusions WHERE subject_id = ?", (sid,))

    def set_excluded(self, subject_ids: Iterable[str], reason: str | None) -> int:
        """Flag subjects as left out of training (``reason``: why, one line) or, with
        ``reason=None``, include them again; one transaction. Unknown ids are a CohortError."""
        ids = [str(i) for i in subject_ids]
        known = set(self._ages(set(ids)))
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise CohortError(f"no subject(s) {', '.join(unknown[:5])} in the cohort", self.path,
                              "check the ids (`bodyage exclude WORKSPACE --list` lists the "
                              "excluded ones)")
        with self.transaction() as cur:
            self._write_exclusions(cur, [(i, reason) for i in ids])
        return len(ids)

    def excluded(self) -> dict[str, str]:
        """``{subject_id: reason}`` of the subjects left out of training."""
        try:
            return {r[0]: r[1] for r in self._conn.execute(
                "SELECT subject_id, reason FROM exclusions ORDER BY subject_id")}
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return {}
            raise sqlite_error(err, self.path) from None

    def subject_ids(self) -> list[str]:
        return [r[0] for r in self._conn.execute(
            "SELECT subject_id FROM subjects ORDER BY subject_id")]

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM subjects").fetchone()[0])

    def subjects(self, ids: Sequence[str] | None = None, sex: str | None = None,
                 bmi_group: str | None = None) -> list[Subject]:
        """Subjects with their images, ordered by id; optionally filtered."""
        where, params = [], []
        if sex is not None:
            where.append("sex = ?")
            params.append(sex)
        if bmi_group is not None:
            where.append("bmi_group = ?")
            params.append(bmi_group)
        sql = "SELECT * FROM subjects"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY subject_id"
        rows = self._conn.execute(sql, params).fetchall()
        images: dict[str, dict[str, str]] = {}
        for r in self._conn.execute("SELECT subject_id, kind, path FROM images"):
            images.setdefault(r[0], {})[r[1]] = r[2]
        excluded = self.excluded()
        out = [Subject(r["subject_id"], r["age"], r["sex"], r["bmi"], r["bmi_group"], r["site"],
                       images.get(r["subject_id"], {}), json.loads(r["meta"]),
                       excluded.get(r["subject_id"])) for r in rows]
        if ids is not None:
            wanted = {str(i) for i in ids}
            missing = wanted - {s.subject_id for s in out}
            if missing:
                raise CohortError(f"no subject(s) {', '.join(sorted(missing)[:5])} in the cohort",
                                  self.path, "check the ids in the workspace's participants "
                                             "(the viewer's subject list)")
            out = [s for s in out if s.subject_id in wanted]
        return out

    def get_subject(self, subject_id: str) -> Subject:
        return self.subjects(ids=[subject_id])[0]

    def set_image(self, subject_id: str, kind: str, path: str | Path) -> None:
        """Record (or replace) the path of one image of a subject (relative to the workspace)."""
        with self.transaction() as cur:
            cur.execute("INSERT INTO images (subject_id, kind, path) VALUES (?, ?, ?)"
                        " ON CONFLICT(subject_id, kind) DO UPDATE SET path=excluded.path",
                        (subject_id, kind, str(path)))

    def delete_subjects(self, ids: Iterable[str]) -> None:
        with self.transaction() as cur:
            cur.executemany("DELETE FROM subjects WHERE subject_id = ?", [(i,) for i in ids])

    # -- runs and predictions -----------------------------------------------------------------
    def add_run(self, run_id: str, model: str | None = None, config: dict | None = None,
                status: str = "created") -> None:
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO runs (run_id, model, config, status, created) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(run_id) DO UPDATE SET model=excluded.model,"
                " config=excluded.config, status=excluded.status",
                (run_id, model, json.dumps(config or {}, default=str), status, time.time()))

    def set_run_status(self, run_id: str, status: str) -> None:
        with self.transaction() as cur:
            cur.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    def end_run(self, run_id: str, status: str) -> bool:
        """Mark a run that is still ``training`` as ended (``failed`` / ``interrupted``).

        Never raises: called while another error is on its way (a full disk, a read-only
        index), which must not be masked. Returns whether the row was changed."""
        try:
            with self.transaction() as cur:
                cur.execute("UPDATE runs SET status = ? WHERE run_id = ? AND "
                            "status = 'training'", (status, run_id))
                return cur.rowcount > 0
        except (CohortError, sqlite3.Error, OSError):
            return False

    def runs(self) -> list[dict[str, Any]]:
        return [{"run_id": r["run_id"], "model": r["model"], "config": json.loads(r["config"]),
                 "status": r["status"], "created": r["created"]}
                for r in self._conn.execute("SELECT * FROM runs ORDER BY created")]

    def add_predictions(self, run_id: str, rows: Iterable[dict[str, Any]]) -> int:
        """Insert or replace predictions of ``run_id`` in one transaction.

        Each row: ``subject_id, mean, sigma`` and optionally ``fold, split, members`` (list of
        ``{"mu":..., "sigma":...}`` per ensemble member), ``corrected``, ``gap``, ``qc`` (the
        QC flags, ``{"flag", "message", "severity"}``), ``qc_score`` and ``interval_z`` (the
        multipliers of sigma per coverage, ``{"0.95": z, ...}``; None: Gaussian). When ``gap``
        is missing it is computed as (corrected, else mean) minus the subject's age.
        """
        rows = list(rows)
        ages = self._ages({str(r["subject_id"]) for r in rows})
        now = time.time()
        data = []
        for row in rows:
            sid = str(row["subject_id"])
            if sid not in ages:
                raise CohortError(f"prediction for unknown subject {sid!r}", self.path)
            mean = _float_or_none(row.get("mean"))
            corrected = _float_or_none(row.get("corrected"))
            gap = _float_or_none(row.get("gap"))
            if gap is None and ages[sid] is not None:
                ref = corrected if corrected is not None else mean
                gap = None if ref is None else ref - ages[sid]
            data.append((run_id, sid, row.get("fold"), row.get("split"),
                         json.dumps(row.get("members") or [], default=float), mean,
                         _float_or_none(row.get("sigma")), corrected, gap, now,
                         json.dumps(row.get("qc") or []), _float_or_none(row.get("qc_score")),
                         _interval_json(row.get("interval_z"))))
        with self.transaction() as cur:
            cur.executemany(
                "INSERT OR REPLACE INTO predictions (run_id, subject_id, fold, split, members,"
                " mean, sigma, corrected, gap, created, qc, qc_score, interval_z)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", data)
        return len(data)

    def _ages(self, ids: set[str]) -> dict[str, float | None]:
        """Age of each of ``ids`` that is a subject (the cluster's writer stores one
        subject's prediction at a time: reading every subject's age per row would make a
        100,000-subject cohort quadratic)."""
        out: dict[str, float | None] = {}
        ids_l = sorted(ids)
        for i in range(0, len(ids_l), 900):   # SQLite's bound-parameter limit
            chunk = ids_l[i:i + 900]
            q = ("SELECT subject_id, age FROM subjects WHERE subject_id IN ("
                 + ",".join("?" * len(chunk)) + ")")
            out.update({r[0]: r[1] for r in self._conn.execute(q, chunk)})
        return out

    def predictions(self, run_id: str | None = None,
                    subject_id: str | None = None) -> list[dict[str, Any]]:
        """Predictions joined with subject facts (age, sex, bmi_group), one dict per row;
        ``subject_id`` reads one subject's rows only (the primary key with ``run_id``: one
        row, not a scan of the run)."""
        sql = ("SELECT p.*, s.age, s.sex, s.bmi, s.bmi_group, s.site FROM predictions p"
               " JOIN subjects s USING (subject_id)")
        where, params = [], []
        if run_id is not None:
            where.append("p.run_id = ?")
            params.append(run_id)
        if subject_id is not None:
            where.append("p.subject_id = ?")
            params.append(str(subject_id))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY p.run_id, p.subject_id"
        out = []
        for r in self._conn.execute(sql, params):
            d = dict(r)
            d["members"] = json.loads(d["members"])
            d["qc"] = json.loads(d.get("qc") or "[]")
            d["interval_z"] = json.loads(d["interval_z"]) if d.get("interval_z") else None
            out.append(d)
        return out

    def latest_run(self) -> str | None:
        """The run with predictions made most recently (what the viewer shows by default)."""
        r = self._conn.execute(
            "SELECT run_id FROM predictions GROUP BY run_id ORDER BY MAX(created) DESC LIMIT 1"
        ).fetchone()
        return None if r is None else r[0]

    # -- registrations ------------------------------------------------------------------------
    def set_registration(self, subject_id: str, atlas_group: str, status: str,
                         metric: float | None = None, dice_body: float | None = None,
                         dice_labels: float | None = None, reason: str | None = None,
                         forward: str | None = None, inverse: str | None = None) -> None:
        with self.transaction() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO registrations (subject_id, atlas_group, status, metric,"
                " dice_body, dice_labels, reason, forward, inverse, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (subject_id, atlas_group, status, metric, dice_body, dice_labels, reason,
                 forward, inverse, time.time()))

    def registrations(self, atlas_group: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM registrations"
        params: list[Any] = []
        if atlas_group is not None:
            sql += " WHERE atlas_group = ?"
            params.append(atlas_group)
        return [dict(r) for r in self._conn.execute(sql + " ORDER BY subject_id", params)]

    # -- per-subject task bookkeeping ---------------------------------------------------------
    def set_task(self, stage: str, key: str, subject_id: str, status: str,
                 error: str | None = None) -> None:
        """Record a per-subject stage outcome ('done', 'failed', 'running'); counts attempts."""
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO tasks (stage, key, subject_id, status, attempts, error, updated)"
                " VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT(stage, key, subject_id) DO UPDATE SET"
                " status=excluded.status, error=excluded.error, updated=excluded.updated,"
                " attempts=tasks.attempts + (excluded.status = 'running')",
                (stage, key, subject_id, status, error, time.time()))

    def tasks(self, stage: str, key: str) -> dict[str, dict[str, Any]]:
        return {r["subject_id"]: dict(r) for r in self._conn.execute(
            "SELECT * FROM tasks WHERE stage = ? AND key = ?", (stage, key))}

    def mark_tasks(self, stage: str, key: str, subject_ids: Iterable[str], status: str,
                   error: str | None = None, only_status: Sequence[str] | None = None) -> int:
        """Set the status of many tasks in one transaction without counting an attempt
        (``queued`` before submission, ``cancelled`` after Ctrl+C). With ``only_status``, only
        rows currently in one of those states (or missing) change. Returns rows written."""
        if status not in TASK_STATUSES:
            raise ValueError(f"unknown task status {status!r}")
        now = time.time()
        sql = ("INSERT INTO tasks (stage, key, subject_id, status, attempts, error, updated)"
               " VALUES (?, ?, ?, ?, 0, ?, ?) ON CONFLICT(stage, key, subject_id) DO UPDATE SET"
               " status=excluded.status, error=excluded.error, updated=excluded.updated")
        if only_status:
            sql += " WHERE tasks.status IN (" + ", ".join("?" * len(only_status)) + ")"
        rows = [(stage, key, str(s), status, error, now, *(only_status or ()))
                for s in subject_ids]
        with self.transaction() as cur:
            cur.executemany(sql, rows)
        return len(rows)

    def finish_task(self, stage: str, key: str, subject_id: str, status: str,
                    error: str | None = None, attempts: int = 1, seconds: float | None = None,
                    worker: str | None = None) -> None:
        """Record the outcome of ``attempts`` tries of one per-subject task ('done' or
        'failed'); attempts add up over runs. Call it inside the transaction that stores the
        task's results so both land together."""
        if status not in TASK_STATUSES:
            raise ValueError(f"unknown task status {status!r}")
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO tasks (stage, key, subject_id, status, attempts, error, updated,"
                " seconds, worker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(stage, key, subject_id) DO UPDATE SET status=excluded.status,"
                " error=excluded.error, updated=excluded.updated, seconds=excluded.seconds,"
                " worker=excluded.worker, attempts=tasks.attempts + excluded.attempts",
                (stage, key, subject_id, status, int(attempts), error, time.time(), seconds,
                 worker))

    def task_counts(self, stage: str, key: str | None = None) -> dict[str, int]:
        """``{status: count}`` of a stage (all keys, or one)."""
        sql = "SELECT status, COUNT(*) FROM tasks WHERE stage = ?"
        params: list[Any] = [stage]
        if key is not None:
            sql += " AND key = ?"
            params.append(key)
        return {r[0]: int(r[1]) for r in self._conn.execute(sql + " GROUP BY status", params)}


def normalise_sex(value: Any) -> str | None:
    """'M'/'F' from the spellings found in CSVs and DICOM headers; None when unknown."""
    if value is None:
        return None
    s = str(value).strip().lower()
    if s in ("m", "male", "man"):
        return "M"
    if s in ("f", "female", "woman", "w"):
        return "F"
    if s in ("", "nan", "none", "o", "other", "u", "unknown"):
        return None
    raise CohortError(f"sex {value!r} is neither M nor F", hint="use M/F or male/female")


def _interval_json(table) -> str | None:
    """An interval table as stored (finite positive multipliers only; None: Gaussian)."""
    if not table:
        return None
    out = {}
    for k, v in dict(table).items():
        z = _float_or_none(v)
        if z is None or not math.isfinite(z) or z <= 0:
            return None
        out[str(k)] = z
    return json.dumps(out, sort_keys=True)


def _float_or_none(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = v.strip()
        if v == "" or v.lower() in ("nan", "na", "n/a", "none"):
            return None
    f = float(v)
    return None if math.isnan(f) else f
