"""Where a label map's names come from: the map itself or a table beside it, never a guess.

:func:`find_label_table` looks, in this order, for

1. a table **inside the map**: a NIfTI header extension, either the GIFTI/CIFTI-style
   ``<LabelTable>`` XML that TotalSegmentator 2 and Connectome Workbench write (names and
   colours), or bodyage's own JSON extension with a ``labels`` entry;
2. a table **beside the map**, sharing its stem (``liver_seg.nii.gz`` -> ``liver_seg.json``,
   ``liver_seg.txt``, ``liver_seg.label``, ``liver_seg.lut``, ``liver_seg_LUT.txt``,
   ``liver_segColorLUT.txt``):

   * a JSON sidecar: ``{"labels": {"1": "liver", ...}}`` or ``{"1": "liver"}`` (values may be
     ``{"name": ..., "color": [r, g, b]}``), nnU-Net's ``{"labels": {"liver": 1}}``, or
     ``{"label_table": "totalsegmentator:total_mr"}`` naming TotalSegmentator's class list
     (:mod:`bodyage_core.labels.totalsegmentator`) or ``"bodyage:synthetic"``;
   * an ITK-SNAP label description file (``IDX R G B A VIS MSH "LABEL"``);
   * a FreeSurfer-style colour LUT (``No. Label-Name R G B A``);

3. for the synthetic cohort's own label files (``subjects/<id>/labels.nii.gz`` of a workspace
   made by ``bodyage synth``, recorded in its ``synth.json``): the synthetic organ table.

Otherwise there is no table: the viewer shows the numbers only.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bodyage_core.cohort.paths import WorkspacePaths

RGB = tuple[int, int, int]

_STEM_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".gz")
_XML_LABEL = re.compile(
    r"<Label\s+([^>]*)>\s*(?:<!\[CDATA\[(.*?)\]\]>|([^<]*))\s*</Label>", re.S)
_XML_ATTR = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
_BODYAGE_EXT = b"bodyage:"


@dataclass
class LabelTable:
    """Names (and colours where the table has them) of a label map's ids.

    Attributes
    ----------
    names
        id -> name (background 0 left out unless the table names it).
    colors
        id -> ``(r, g, b)`` 0-255, for the ids the table colours.
    source
        Where the table came from, in words (shown in the layer panel).
    """

    names: dict[int, str]
    colors: dict[int, RGB] = field(default_factory=dict)
    source: str = ""

    def __bool__(self) -> bool:
        return bool(self.names)


def stem(path: str | Path) -> str:
    """The file name without its image suffix (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    for suf in _STEM_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def sidecar_candidates(path: str | Path) -> list[Path]:
    """The files beside ``path`` that may hold its label table, in the order they are tried."""
    p = Path(path)
    s = stem(p)
    return [p.with_name(s + ext) for ext in (".json", ".label.json", ".txt", ".label",
                                             ".lut", "_LUT.txt", "ColorLUT.txt")]


def find_label_table(path: str | Path | None) -> LabelTable | None:
    """The label table of the map at ``path`` (see the module docstring), or None."""
    if path is None:
        return None
    p = Path(path)
    table = read_nifti_extension(p) if p.name.lower().endswith((".nii", ".nii.gz")) else None
    if table:
        return table
    for cand in sidecar_candidates(p):
        if cand.is_file():
            table = read_table_file(cand)
            if table:
                return table
    return _synthetic_cohort_table(p)


def read_table_file(path: str | Path) -> LabelTable | None:
    """A label table file of any supported format (JSON, ITK-SNAP, FreeSurfer LUT), or None
    when the file holds none (a BIDS sidecar of an image, say)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if p.suffix.lower() == ".json":
        try:
            return parse_json_table(json.loads(text), f"{p.name} beside the map")
        except ValueError:
            return None
    return parse_itksnap(text, p.name) or parse_freesurfer_lut(text, p.name)


# -- formats ------------------------------------------------------------------------------------
def parse_json_table(d: Any, source: str) -> LabelTable | None:
    """A JSON label table (see the module docstring), or None."""
    if not isinstance(d, dict):
        return None
    ref = d.get("label_table")
    if isinstance(ref, str):
        named = named_table(ref)
        if named is not None:
            return LabelTable(dict(named.names), dict(named.colors),
                              f"{named.source} (named in {source})")
    entries = d.get("labels", d)
    if not isinstance(entries, dict) or not entries:
        return None
    names: dict[int, str] = {}
    colors: dict[int, RGB] = {}
    for k, v in entries.items():
        key_id = _as_id(k)
        if key_id is None and isinstance(v, int) and not isinstance(v, bool):
            key_id, v = v, k          # nnU-Net dataset.json: {"liver": 1}
        if key_id is None:
            return None               # not a label table (a BIDS sidecar, say)
        if isinstance(v, dict):
            name = v.get("name")
            rgb = _rgb(v.get("color") or v.get("colour") or v.get("rgb"))
            if rgb is not None:
                colors[key_id] = rgb
        else:
            name = v
        if not isinstance(name, str):
            return None
        names[key_id] = name
    return LabelTable(names, colors, source)


def parse_itksnap(text: str, source: str) -> LabelTable | None:
    """An ITK-SNAP label description file: ``IDX R G B A VIS MSH "LABEL"`` lines."""
    names: dict[int, str] = {}
    colors: dict[int, RGB] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if '"' not in line:
            return None
        try:
            parts = shlex.split(line)
        except ValueError:
            return None
        if len(parts) != 8:
            return None
        try:
            idx = int(parts[0])
            rgb = (int(parts[1]), int(parts[2]), int(parts[3]))
        except ValueError:
            return None
        names[idx] = parts[7]
        colors[idx] = rgb
    return LabelTable(names, colors, f"ITK-SNAP label file {source}") if names else None


def parse_freesurfer_lut(text: str, source: str) -> LabelTable | None:
    """A FreeSurfer colour LUT: ``No. Label-Name R G B A`` lines (``#`` comments)."""
    names: dict[int, str] = {}
    colors: dict[int, RGB] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 6:
            return None
        try:
            idx = int(parts[0])
            rgb = (int(parts[2]), int(parts[3]), int(parts[4]))
            int(parts[5])
        except ValueError:
            return None
        names[idx] = parts[1]
        colors[idx] = rgb
    return LabelTable(names, colors, f"colour LUT {source}") if names else None


def parse_label_table_xml(text: str, source: str) -> LabelTable | None:
    """A GIFTI/CIFTI-style ``<LabelTable>`` (``Key``, ``Red``/``Green``/``Blue`` 0-1, the
    name as text), as TotalSegmentator 2 writes into its NIfTI maps."""
    if "<LabelTable" not in text:
        return None
    names: dict[int, str] = {}
    colors: dict[int, RGB] = {}
    for attrs, cdata, plain in _XML_LABEL.findall(text):
        a = dict(_XML_ATTR.findall(attrs))
        key = _as_id(a.get("Key"))
        if key is None:
            continue
        names[key] = (cdata or plain).strip()
        try:
            colors[key] = tuple(int(round(255 * min(max(float(a[c]), 0.0), 1.0)))
                                for c in ("Red", "Green", "Blue"))  # type: ignore[assignment]
        except (KeyError, ValueError):
            pass
    return LabelTable(names, colors, source) if names else None


def read_nifti_extension(path: str | Path) -> LabelTable | None:
    """A label table inside a NIfTI file's header extensions (header only), or None."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        exts = list(img.header.extensions)
    except Exception:  # noqa: BLE001 - nibabel raises many types; the loader reports them
        return None
    for ext in exts:
        raw = ext.get_content()
        if not isinstance(raw, (bytes, bytearray)):
            continue
        raw = bytes(raw)
        if raw.startswith(_BODYAGE_EXT):
            try:
                d = json.loads(raw[len(_BODYAGE_EXT):].rstrip(b"\x00").decode())
            except (ValueError, UnicodeDecodeError):
                continue
            table = parse_json_table({"labels": d.get("labels")} if d.get("labels") else {},
                                     "the map's header (bodyage)")
            if table:
                return table
            continue
        text = raw.rstrip(b"\x00").decode("utf-8", errors="replace")
        table = parse_label_table_xml(text, "the map's header (label table extension)")
        if table:
            return table
        if text.lstrip().startswith("{"):
            try:
                table = parse_json_table(json.loads(text), "the map's header (JSON extension)")
            except ValueError:
                table = None
            if table:
                return table
    return None


def named_table(ref: str) -> LabelTable | None:
    """A table shipped with bodyage, by name: ``totalsegmentator:<task>`` or
    ``bodyage:synthetic``."""
    kind, _, task = ref.partition(":")
    if kind.lower() == "totalsegmentator":
        from bodyage_core.labels.totalsegmentator import TASKS

        names = TASKS.get(task)
        if names is not None:
            return LabelTable(dict(names), {}, f"TotalSegmentator class list ({task})")
    if ref.lower() in ("bodyage:synthetic", "bodyage:synth"):
        return synthetic_table()
    return None


def synthetic_table() -> LabelTable:
    """The organ table of bodyage's synthetic cohort."""
    from bodyage_core.labels.synthetic import LABELS

    return LabelTable({k: v for k, v in LABELS.items() if k != 0}, {},
                      "bodyage synthetic cohort")


def write_sidecar(map_path: str | Path, table: LabelTable) -> Path:
    """Write ``table`` as the JSON sidecar of the label map at ``map_path`` (atomically);
    returns the sidecar's path."""
    from bodyage_core.atomic import write_json

    out = Path(map_path).with_name(stem(map_path) + ".json")
    labels: dict[str, Any] = {}
    for k, name in sorted(table.names.items()):
        labels[str(k)] = ({"name": name, "color": list(table.colors[k])} if k in table.colors
                          else name)
    write_json(out, {"labels": labels, "source": table.source})
    return out


def _synthetic_cohort_table(p: Path) -> LabelTable | None:
    """``subjects/<id>/labels.nii.gz`` of a workspace that ``bodyage synth`` made."""
    if p.name != "labels.nii.gz" or p.parent.parent.name != "subjects":
        return None
    root = p.parent.parent.parent
    if (root / "synth.json").is_file() and WorkspacePaths.is_workspace(root):
        t = synthetic_table()
        t.source = "bodyage synthetic cohort (synth.json of the workspace)"
        return t
    return None


def _as_id(k: Any) -> int | None:
    if isinstance(k, bool):
        return None
    if isinstance(k, int):
        return k
    if isinstance(k, str) and re.fullmatch(r"\s*-?\d+\s*", k):
        return int(k)
    return None


def _rgb(v: Any) -> RGB | None:
    if isinstance(v, (list, tuple)) and len(v) >= 3:
        try:
            vals = [float(x) for x in v[:3]]
        except (TypeError, ValueError):
            return None
        if all(0.0 <= x <= 1.0 for x in vals) and any(0 < x < 1 for x in vals):
            vals = [x * 255 for x in vals]
        return tuple(int(round(min(max(x, 0.0), 255.0))) for x in vals)  # type: ignore
    if isinstance(v, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", v):
        return tuple(int(v[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    return None
