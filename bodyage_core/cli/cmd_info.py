"""``bodyage info FILE``: what an image file holds (shape, spacing, orientation, values...),
with the load-time quality flags (non-finite voxels counted and set to 0, constant image, fewer
than 4 slices, missing DICOM slices) as ``warning`` lines."""

from __future__ import annotations

import json
from typing import Any


def register(sub) -> None:
    p = sub.add_parser(
        "info", help="show an image's shape, spacing, orientation, channels and values",
        description="Load an image (NIfTI, DICOM folder, NRRD, MetaImage or UK Biobank Dixon "
                    "zip) the way bodyage does and print what it holds. Geometry is shown after "
                    "reorientation to canonical RAS, with the file's own orientation beside it.")
    p.add_argument("file", help="image file, DICOM folder or UK Biobank zip")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.add_argument("--channels", default=None,
                   help="comma-separated channels (UK Biobank zip: water,fat,in,opp)")
    p.add_argument("--series", default=None, metavar="UID",
                   help="DICOM folder with several series: the SeriesInstanceUID to read")
    p.add_argument("--labels", action="store_true",
                   help="read as a label map (integer values kept)")
    p.set_defaults(func=run)


def info_dict(args) -> dict[str, Any]:
    from bodyage_core.io import load_labels, load_volume

    options: dict[str, Any] = {}
    if args.series:
        options["series_uid"] = args.series
    channels = tuple(c.strip() for c in args.channels.split(",")) if args.channels else None
    if args.labels:
        vol = load_labels(args.file, **options)
    else:
        vol = load_volume(args.file, channels=channels, **options)
    facts = vol.describe()
    facts["file"] = str(args.file)
    facts["format"] = vol.provenance.get("format")
    facts["original_orientation"] = vol.provenance.get("orientation")
    if args.labels:
        import numpy as np

        values = np.unique(vol.data)
        facts["labels"] = [int(v) for v in values[:200]]
        facts["n_labels"] = int(np.count_nonzero(values))
    return facts


def _fmt(values, sep=" x ") -> str:
    return sep.join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def run(args) -> int:
    facts = info_dict(args)
    if args.json:
        print(json.dumps(facts, indent=2, default=str))
        return 0
    rng = facts.get("value_range")
    prov = facts.get("provenance", {})
    lines = [
        ("file", facts["file"]),
        ("format", facts.get("format") or "?"),
        ("shape (z, y, x)", _fmt(facts["shape_zyx"])),
        ("spacing (x, y, z)", _fmt(facts["spacing_xyz_mm"]) + " mm"),
        ("orientation", f"{facts['orientation']} (file: {facts.get('original_orientation')})"),
        ("oblique", "yes" if facts["oblique"] else "no"),
        ("origin (RAS mm)", _fmt(facts["origin_mm"], ", ")),
        ("channels", ", ".join(facts["channels"])),
        ("dtype", facts["dtype"]),
        ("value range", "empty" if rng is None else f"{rng[0]:.6g} .. {rng[1]:.6g}"),
    ]
    if prov.get("nonfinite_voxels") is not None:
        n = int(prov["nonfinite_voxels"])
        lines.append(("non-finite voxels", f"{n:,}" + (" (NaN/inf, shown and used as 0)"
                                                       if n else "")))
    if "n_labels" in facts:
        lines.append(("labels", f"{facts['n_labels']} non-zero: "
                                f"{_fmt(facts['labels'][:30], ', ')}"))
    meta = facts.get("metadata") or {}
    lines.append(("metadata", ", ".join(f"{k}={v}" for k, v in meta.items()) or "none"))
    for key in ("slice_step", "slice_thickness", "affine_source", "scl_slope", "n_stations",
                "series_description"):
        if prov.get(key) not in (None, ""):
            lines.append((key.replace("_", " "), str(prov[key])))
    for flag in prov.get("qc") or []:
        lines.append(("warning", f"{flag.get('message')} [{flag.get('flag')}]"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    return 0
