"""A folder of UK Biobank bulk files (``<eid>_<field>_<instance>_<array>.zip``), indexed by
their names without opening a zip."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from bodyage_core.errors import LoadError

# -- a folder of UK Biobank bulk files, indexed by name ------------------------------------------

#: UK Biobank field of the neck-to-knee Dixon station zips.
DIXON_FIELD = 20201
_BULK_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.zip$", re.IGNORECASE)


@dataclass(frozen=True)
class UKBBFile:
    """One bulk file: participant ``eid``, data ``field``, ``instance`` (2 = first imaging
    visit, 3 = repeat imaging) and ``array`` index, parsed from its name."""

    eid: str
    field: int
    instance: int
    array: int
    path: Path


def parse_bulk_name(name: str) -> tuple[str, int, int, int] | None:
    """``'1234567_20201_2_0.zip'`` -> ``('1234567', 20201, 2, 0)``; None for other names."""
    m = _BULK_NAME.match(name)
    if not m:
        return None
    return m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))


class UKBBFolderIndex:
    """Lazy index of a folder of UK Biobank bulk zips: participant id -> files by field.

    The index is built on first use by scanning directory entries (``os.scandir``, names only,
    sub-folders included); no zip is opened. Files whose names do not follow UK Biobank's
    ``<eid>_<field>_<instance>_<array>.zip`` pattern are listed in :attr:`skipped`.
    """

    def __init__(self, folder: str | Path, recursive: bool = True):
        self.folder = Path(folder).expanduser()
        self.recursive = recursive
        self._files: dict[str, list[UKBBFile]] | None = None
        self._skipped: list[str] = []

    def _build(self) -> dict[str, list[UKBBFile]]:
        if self._files is not None:
            return self._files
        if not self.folder.is_dir():
            raise LoadError("UK Biobank folder not found", self.folder,
                            "give the folder holding the <eid>_20201_<instance>_0.zip files")
        files: dict[str, list[UKBBFile]] = {}
        skipped: list[str] = []
        stack = [self.folder]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except OSError as err:
                raise LoadError(f"cannot list the folder ({err.strerror})", d,
                                "check its permissions") from None
            with it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    if e.is_dir(follow_symlinks=True):
                        if self.recursive:
                            stack.append(Path(e.path))
                        continue
                    if not e.name.lower().endswith(".zip"):
                        continue
                    parsed = parse_bulk_name(e.name)
                    if parsed is None:
                        skipped.append(e.name)
                        continue
                    eid, fld, inst, arr = parsed
                    files.setdefault(eid, []).append(UKBBFile(eid, fld, inst, arr, Path(e.path)))
        for lst in files.values():
            lst.sort(key=lambda f: (f.field, f.instance, f.array))
        self._files, self._skipped = files, sorted(skipped)
        return files

    @property
    def skipped(self) -> list[str]:
        """Zip names that are not UK Biobank bulk file names."""
        self._build()
        return list(self._skipped)

    def __len__(self) -> int:
        return len(self._build())

    def __contains__(self, eid: object) -> bool:
        return str(eid) in self._build()

    def subjects(self, field: int | None = DIXON_FIELD) -> list[str]:
        """Participant ids with at least one file of ``field`` (None: any field), sorted."""
        files = self._build()
        ids = [e for e, lst in files.items() if field is None or any(f.field == field
                                                                     for f in lst)]
        return sorted(ids, key=lambda e: (len(e), e))

    def files(self, eid: str, field: int | None = None) -> list[UKBBFile]:
        """The files of participant ``eid`` (of ``field`` when given)."""
        return [f for f in self._build().get(str(eid), []) if field is None or f.field == field]

    def zip_for(self, eid: str, field: int = DIXON_FIELD, instance: int | None = None
                ) -> UKBBFile | None:
        """The file of ``eid`` for ``field``: ``instance`` when given, else the earliest
        instance present (array 0 first); None when there is none."""
        cands = [f for f in self.files(eid, field) if instance is None or f.instance == instance]
        return cands[0] if cands else None
