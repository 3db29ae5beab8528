"""The cohort index's schema: the SQL of every version (``PRAGMA user_version``) and the
migrations between them (:class:`~bodyage_core.cohort.database.CohortDB` applies them on open).
Add a version here; never edit an old one (databases in the field were made with it)."""

from __future__ import annotations

SCHEMA_VERSION = 4

SCHEMA_V1 = """
CREATE TABLE subjects (
    subject_id TEXT PRIMARY KEY,
    age REAL,
    sex TEXT CHECK (sex IN ('F', 'M') OR sex IS NULL),
    bmi REAL,
    bmi_group TEXT,
    site TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE TABLE images (
    subject_id TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (subject_id, kind)
);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    model TEXT,
    config TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'created',
    created REAL NOT NULL
);
CREATE TABLE predictions (
    run_id TEXT NOT NULL,
    subject_id TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    fold INTEGER,
    split TEXT,
    members TEXT NOT NULL DEFAULT '[]',
    mean REAL,
    sigma REAL,
    corrected REAL,
    gap REAL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, subject_id)
);
CREATE TABLE registrations (
    subject_id TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    atlas_group TEXT NOT NULL,
    status TEXT NOT NULL,
    metric REAL,
    dice_body REAL,
    dice_labels REAL,
    reason TEXT,
    forward TEXT,
    inverse TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (subject_id, atlas_group)
);
CREATE TABLE tasks (
    stage TEXT NOT NULL,
    key TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (stage, key, subject_id)
);
CREATE INDEX predictions_subject ON predictions(subject_id);
CREATE INDEX subjects_group ON subjects(sex, bmi_group);
"""

# Schema 2: per-subject task timing and the worker that ran it (bodyage_core.cluster).
SCHEMA_V2 = """
ALTER TABLE tasks ADD COLUMN seconds REAL;
ALTER TABLE tasks ADD COLUMN worker TEXT;
CREATE INDEX tasks_status ON tasks(stage, key, status);
"""

# Schema 3: the QC flags (input checks, the model's envelope) and the QC score of a prediction.
SCHEMA_V3 = """
ALTER TABLE predictions ADD COLUMN qc TEXT NOT NULL DEFAULT '[]';
ALTER TABLE predictions ADD COLUMN qc_score REAL;
"""

# Schema 4: each prediction's interval multipliers (JSON {coverage: z}; NULL: Gaussian).
SCHEMA_V4 = """
ALTER TABLE predictions ADD COLUMN interval_z TEXT;
"""

# Not a schema version: created on first use (see the module docstring).
EXCLUSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS exclusions (
    subject_id TEXT PRIMARY KEY REFERENCES subjects(subject_id) ON DELETE CASCADE,
    reason TEXT NOT NULL,
    updated REAL NOT NULL
)
"""

# version -> SQL that brings a database from version-1 to version. Add new versions here; never
# edit an old one (databases in the field were made with it).
MIGRATIONS: dict[int, str] = {1: SCHEMA_V1, 2: SCHEMA_V2, 3: SCHEMA_V3, 4: SCHEMA_V4}


def split_sql(script: str) -> list[str]:
    """The statements of an SQL script (no semicolons inside literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]
