"""``bodyage import``: import a cohort (image folder + CSV) into a workspace."""

from __future__ import annotations

import sys

from bodyage_core.cohort.importer import ColumnMap, import_cohort
from bodyage_core.progress import TerminalProgress


def register(sub) -> None:
    p = sub.add_parser(
        "import", help="import a cohort from an image folder and a CSV",
        description="Import subjects into WORKSPACE (created if missing). Images are matched "
                    "to CSV rows by name (the id, or the id followed by '_' or '-'); they are "
                    "recorded where they lie, not copied.")
    p.add_argument("workspace", help="workspace folder (created if missing)")
    p.add_argument("--images", required=True, help="folder with one image file/folder per subject")
    p.add_argument("--csv", required=True, help="CSV with one row per subject")
    p.add_argument("--kind", default="image",
                   help="image kind to record, e.g. t1, water, ukbb_zip (default: image)")
    for key in ("id", "age", "sex", "bmi", "site"):
        p.add_argument(f"--{key}-column", default=None,
                       help=f"CSV column with the {key} (default: found by its usual names)")
    p.set_defaults(func=run)


def run(args) -> int:
    columns = ColumnMap(args.id_column, args.age_column, args.sex_column, args.bmi_column,
                        args.site_column)
    summary = import_cohort(args.workspace, args.images, args.csv, kind=args.kind,
                            columns=columns, reporter=TerminalProgress())
    print(f"imported {summary.imported} subjects into {args.workspace}")
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0
