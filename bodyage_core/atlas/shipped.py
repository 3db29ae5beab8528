"""Atlases shipped with bodyage (``resources/atlases/<name>/<group>/``), installed into a
workspace so that its subjects are registered once to a ready template instead of building one.

A shipped atlas is what ``bodyage atlas build`` writes for each group (template, labels, body
mask, members.json with its grouping and fingerprint), made by a recorded command
(``scripts/make_shipped_atlas.sh``) from a synthetic cohort that is not the user's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bodyage_core.errors import BodyageError

FILES = ("template.nii.gz", "labels.nii.gz", "body_mask.nii.gz", "members.json",
         "label_names.json")


def shipped_atlases() -> dict[str, list[str]]:
    """``name -> groups`` of the atlases in ``resources/atlases``."""
    from bodyage_core import resources

    root = resources.path("atlases")
    out: dict[str, list[str]] = {}
    if root.is_dir():
        for d in sorted(root.iterdir()):
            groups = sorted(g.name for g in d.iterdir() if (g / "members.json").is_file()) \
                if d.is_dir() else []
            if groups:
                out[d.name] = groups
    return out


def install_atlas(ws, name: str, overwrite: bool = False) -> list[str]:
    """Copy shipped atlas ``name`` into ``ws/atlases/<group>/`` (each group); returns the
    groups. An existing atlas of a group is kept unless ``overwrite``."""
    from bodyage_core import resources
    from bodyage_core.atomic import write_bytes
    from bodyage_core.names import check_name

    check_name(name, "atlas name")
    have = shipped_atlases()
    if name not in have:
        raise BodyageError(f"no shipped atlas {name!r} (shipped: "
                           f"{', '.join(have) or 'none'})",
                           hint="build one with `bodyage atlas build WORKSPACE`")
    src_root = resources.path("atlases", name)
    done = []
    for g in have[name]:
        dst = ws.atlas_dir(g)
        if (dst / "members.json").exists() and not overwrite:
            raise BodyageError(f"the workspace already has an atlas {g!r}", path=dst,
                               hint="use --overwrite to replace it with the shipped one")
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for f in FILES:
            p = src_root / g / f
            if p.is_file():
                write_bytes(dst / f, p.read_bytes())
        info = json.loads((dst / "members.json").read_text())
        info["shipped"] = name
        (dst / "members.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        done.append(g)
    return done


def export_atlas(ws, name: str, groups: list[str] | None = None) -> Path:
    """Copy a workspace's built atlases into ``resources/atlases/<name>/`` (the shipping
    recipe's last step)."""
    from bodyage_core import resources
    from bodyage_core.atlas.workspace import built_atlases

    out = resources.path("atlases", name)
    for g in groups or built_atlases(ws):
        d = out / g
        d.mkdir(parents=True, exist_ok=True)
        for f in FILES:
            p = ws.atlas_dir(g) / f
            if p.is_file():
                shutil.copy2(p, d / f)
    return out
