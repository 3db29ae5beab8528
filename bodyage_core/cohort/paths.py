"""Every file name of a workspace, in one place (the layout of DESIGN.md)::

    workspace/
      cohort.sqlite                           the cohort index
      subjects/<id>/                          images, maps (<kind>.nii.gz + .json),
        prediction_<run>.json                 one subject's stored prediction
        atlas_<group>/                        its registration to an atlas
      models/<run>/ (<run>.partial/ while training)
      atlases/<group>/                        template, labels, members.json,
        population_<tag>[_<subgroup>_<stat>].nii.gz / population_<tag>.json
        population_<tag>_age_trend[_cov|_t].nii.gz
        compare_<run>_accelerated_vs_{decelerated,aligned}[_<what>].nii.gz / .json
        regions_<tag>.csv / .json
      reports/                                predictions_<run>.csv, regions_<tag>.csv,
                                              demo_summary.md/.json, plots

:class:`WorkspacePaths` answers them for a root folder without opening the index (what the
batch workers and the viewer's file lookups need); :class:`~bodyage_core.cohort.workspace.
Workspace` is a WorkspacePaths with its index. Names that become folders are checked against
the one name rule (:func:`bodyage_core.names.check_name`).
"""

from __future__ import annotations

from pathlib import Path

from bodyage_core.errors import ConfigError
from bodyage_core.names import check_name

DB_NAME = "cohort.sqlite"
FOLDERS = ("subjects", "models", "atlases", "reports")
COMPARE_SUFFIX = "accelerated_vs_decelerated"
#: the groups accelerated agers can be compared with
COMPARE_VERSUS = ("decelerated", "aligned")


def check_versus(versus: str) -> str:
    """``versus`` when accelerated agers can be compared with it (:data:`COMPARE_VERSUS`)."""
    if versus not in COMPARE_VERSUS:
        raise ConfigError(f"accelerated agers compare with {' or '.join(COMPARE_VERSUS)}, "
                          f"not {versus!r}")
    return versus


class WorkspacePaths:
    """The paths of a workspace rooted at ``root`` (nothing is created but ``reports/``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def is_workspace(path: str | Path) -> bool:
        """Whether ``path`` is a workspace folder (it holds the cohort index)."""
        return (Path(path) / DB_NAME).is_file()

    # -- stored paths ---------------------------------------------------------------------------
    def resolve(self, relpath: str | Path) -> Path:
        """Absolute path of an image path stored in the index (relative to the root)."""
        p = Path(relpath)
        return p if p.is_absolute() else self.root / p

    def relative(self, path: str | Path) -> str:
        """The path to store in the index: relative to the root when inside it."""
        p = Path(path).resolve()
        try:
            return str(p.relative_to(self.root.resolve()))
        except ValueError:
            return str(p)

    # -- folders ------------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @property
    def subjects_root(self) -> Path:
        return self.root / "subjects"

    @property
    def atlases_root(self) -> Path:
        return self.root / "atlases"

    @property
    def models_root(self) -> Path:
        return self.root / "models"

    def subject_dir(self, subject_id: str, create: bool = False) -> Path:
        """``subjects/<id>/``; a ConfigError for an id that breaks the name rule."""
        p = self.subjects_root / check_name(str(subject_id), "subject id")
        if create:
            p.mkdir(parents=True, exist_ok=True)
        return p

    def model_dir(self, run: str) -> Path:
        """``models/<run>/``; a ConfigError for a run name that breaks the name rule."""
        return self.models_root / check_name(str(run), "run name")

    def partial_model_dir(self, run: str) -> Path:
        """``models/<run>.partial/``: a run while it trains (resumable)."""
        d = self.model_dir(run)
        return d.with_name(d.name + ".partial")

    def atlas_dir(self, group: str) -> Path:
        """``atlases/<group>/``; a ConfigError for a group name that breaks the name rule."""
        return self.atlases_root / check_name(str(group), "atlas group")

    @property
    def reports_dir(self) -> Path:
        p = self.root / "reports"
        p.mkdir(parents=True, exist_ok=True)
        return p

    # -- per subject ----------------------------------------------------------------------------
    def prediction_file(self, subject_id: str, run: str) -> Path:
        """``subjects/<id>/prediction_<run>.json``."""
        return self.subject_dir(subject_id) / f"prediction_{check_name(str(run), 'run name')}.json"

    def map_file(self, subject_id: str, kind: str) -> Path:
        """``subjects/<id>/<kind>.nii.gz`` (its JSON sidecar: ``.with_suffix('')`` + .json)."""
        return self.subject_dir(subject_id) / f"{check_name(str(kind), 'map kind')}.nii.gz"

    def transform_folder(self, subject_id: str, group: str) -> Path:
        """``subjects/<id>/atlas_<group>/``: the subject's registration to an atlas."""
        return self.subject_dir(subject_id) / f"atlas_{check_name(str(group), 'atlas group')}"

    # -- per atlas ------------------------------------------------------------------------------
    def population_json(self, group: str, tag: str) -> Path:
        """``atlases/<group>/population_<tag>.json``: what ``atlas maps`` wrote for ``tag``."""
        return self.atlas_dir(group) / f"population_{tag}.json"

    def population_map(self, group: str, tag: str, subgroup: str, stat: str = "mean") -> Path:
        """``atlases/<group>/population_<tag>_<subgroup>_<stat>.nii.gz``."""
        return self.atlas_dir(group) / f"population_{tag}_{subgroup}_{stat}.nii.gz"

    def age_trend_map(self, group: str, tag: str, part: str = "") -> Path:
        """``atlases/<group>/population_<tag>_age_trend[_cov|_t].nii.gz`` (``part``: ``""``
        the thresholded trend, ``"cov"``, ``"t"``)."""
        suffix = f"_{part}" if part else ""
        return self.atlas_dir(group) / f"population_{tag}_age_trend{suffix}.nii.gz"

    def compare_file(self, group: str, run: str, suffix: str = ".json",
                     versus: str = "decelerated") -> Path:
        """``atlases/<group>/compare_<run>_accelerated_vs_decelerated<suffix>``: ``.json`` (what
        ``compare`` found), ``_t.nii.gz``, ``_diff.nii.gz``, ``_p_fwe.nii.gz``, ...; with
        ``versus="aligned"``, ``..._accelerated_vs_aligned...``."""
        check_versus(versus)
        stem = COMPARE_SUFFIX if versus == "decelerated" else f"accelerated_vs_{versus}"
        return self.atlas_dir(group) / f"compare_{run}_{stem}{suffix}"

    def regions_stem(self, tag: str, group: str | None = None) -> Path:
        """``atlases/<group>/regions_<tag>`` or, for the whole cohort, ``reports/regions_<tag>``
        (add ``.csv`` / ``.json``)."""
        where = self.atlas_dir(group) if group is not None else self.reports_dir
        return where / f"regions_{tag}"

    # -- reports --------------------------------------------------------------------------------
    def predictions_csv(self, run: str) -> Path:
        """``reports/predictions_<run>.csv``."""
        return self.reports_dir / f"predictions_{check_name(str(run), 'run name')}.csv"

    def demo_summary(self, suffix: str = ".json") -> Path:
        """``reports/demo_summary.json`` / ``.md``."""
        return self.reports_dir / f"demo_summary{suffix}"
