"""A workspace folder: every stage reads and writes plain files here (DESIGN.md layout)::

    workspace/
      cohort.sqlite        subjects, metadata, runs, predictions, paths
      subjects/<id>/       input images, maps, transforms of one subject
      models/<run>/        config.json, member_<k>.pt, normalisation, bias correction, metrics
      atlases/<group>/     template, population maps, statistics
      reports/             evaluation tables and plots

Folder names are the names themselves: subject ids, run names and atlas group names follow the
one name rule of :mod:`bodyage_core.names` (checked where they enter and again by
:meth:`Workspace.subject_dir`, :meth:`~Workspace.model_dir`, :meth:`~Workspace.atlas_dir`), so
two different names never share a folder and none leads out of the workspace.

Training selection (``bodyage train --exclude``): :attr:`Workspace.train_exclude` holds ids
left out of training for this session in addition to the subjects flagged ``excluded`` in the
cohort (:meth:`CohortDB.set_excluded <bodyage_core.cohort.database.CohortDB.set_excluded>`);
:attr:`Workspace.input_failures` collects the subjects whose input could not be prepared while
building training records (``{id: one-line error}``; they are recorded failed and skipped, see
:func:`bodyage_core.training.data.records_from_workspace`), whose progress goes to
:attr:`Workspace.progress` when set.
"""

from __future__ import annotations

import re
from pathlib import Path

from bodyage_core.cohort.database import CohortDB
from bodyage_core.cohort.paths import DB_NAME, FOLDERS, WorkspacePaths
from bodyage_core.errors import CohortError
from bodyage_core.names import is_valid_name

__all__ = ["DB_NAME", "Workspace", "WorkspacePaths", "safe_name"]
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A folder name for a value derived from data (an atlas group built from a CSV column).

    A valid name (:func:`bodyage_core.names.check_name`) is returned unchanged, so distinct
    valid names stay distinct. Anything else is sanitised (runs of other characters become
    ``_``, leading/trailing ``._`` are stripped), which can map two values onto one name:
    callers that sanitise several values must check for that (the atlas grouping refuses two
    groups with one folder name). Subject ids and run names are never sanitised: they must be
    valid names.
    """
    text = str(name)
    if is_valid_name(text):
        return text
    cleaned = _SAFE.sub("_", text).strip("._")[:128]
    if not cleaned:
        raise CohortError(f"{name!r} cannot be used as a folder name", hint="use letters/digits")
    return cleaned


class Workspace(WorkspacePaths):
    """A bodyage workspace folder (its file names: :class:`~bodyage_core.cohort.paths.
    WorkspacePaths`) and its cohort index.

    Use :meth:`create` for a new (or existing) folder and :meth:`open` for an existing one.
    """

    def __init__(self, root: Path, db: CohortDB):
        super().__init__(root)
        self.db = db
        #: ids left out of training in this session (``bodyage train --exclude``)
        self.train_exclude: set[str] = set()
        #: subjects whose model input failed while building training records: id -> error
        self.input_failures: dict[str, str] = {}
        #: progress reporter for work done on the workspace's behalf (preparing training inputs)
        self.progress = None

    @classmethod
    def create(cls, path: str | Path) -> Workspace:
        """Create the folder layout and the cohort index if missing; open it if present."""
        root = Path(path).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise CohortError("exists and is not a folder", root, "choose another workspace path")
        for sub in FOLDERS:
            (root / sub).mkdir(parents=True, exist_ok=True)
        return cls(root, CohortDB.open(root / DB_NAME, create=True))

    @classmethod
    def open(cls, path: str | Path) -> Workspace:
        """Open an existing workspace; a clear error if there is none at ``path``."""
        root = Path(path).expanduser().resolve()
        if not (root / DB_NAME).exists():
            raise CohortError(f"not a bodyage workspace (no {DB_NAME})", root,
                              "create one with `bodyage synth` or `bodyage import`")
        return cls(root, CohortDB.open(root / DB_NAME))

    # -- paths of the index ----------------------------------------------------------------
    def image_path(self, subject_id: str, kind: str) -> Path:
        """Absolute path of one image of a subject; a clear error when it is not recorded."""
        subj = self.db.get_subject(subject_id)
        if kind not in subj.images:
            have = ", ".join(sorted(subj.images)) or "none"
            raise CohortError(f"subject {subject_id} has no {kind!r} image (has: {have})",
                              self.root / DB_NAME)
        return self.resolve(subj.images[kind])

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
