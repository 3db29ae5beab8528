"""``bodyage import``: import a cohort (image folder + CSV) into a workspace."""

from __future__ import annotations

import sys

from bodyage_core.cohort.importer import AgeRange, ColumnMap, import_cohort, import_ukbb_folder
from bodyage_core.errors import ConfigError
from bodyage_core.progress import TerminalProgress


def register(sub) -> None:
    p = sub.add_parser(
        "import", help="import a cohort from an image folder and a CSV",
        description="Import subjects into WORKSPACE (created if missing). Images are matched "
                    "to CSV rows by name (the id, or the id followed by '_' or '-'); they are "
                    "recorded where they lie, not copied.")
    p.add_argument("workspace", help="workspace folder (created if missing)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder with one image file/folder per subject")
    src.add_argument("--ukbb-folder", metavar="DIR",
                     help="folder of UK Biobank bulk zips (<eid>_20201_<instance>_0.zip, any "
                          "number, sub-folders included): indexed by name and recorded as each "
                          "participant's water and fat images; nothing is unpacked (the zip is "
                          "read in memory when the subject is loaded)")
    p.add_argument("--csv", default=None,
                   help="CSV with one row per subject (required with --images; with "
                        "--ukbb-folder it adds ages/sex/BMI, id column = eid)")
    p.add_argument("--field", type=int, default=20201,
                   help="UK Biobank bulk field of the zips (default 20201, Dixon)")
    p.add_argument("--instance", type=int, default=None,
                   help="UK Biobank imaging visit (2 or 3; default: the earliest present)")
    p.add_argument("--kind", default="image",
                   help="image kind to record, e.g. t1, water, ukbb_zip (default: image)")
    for key in ("id", "age", "sex", "bmi", "site", "excluded"):
        p.add_argument(f"--{key}-column", default=None,
                       help=f"CSV column with the {key} (default: found by its usual names)"
                       + (" — 1/yes or a reason leaves the subject out of training"
                          if key == "excluded" else ""))
    p.add_argument("--min-age", type=float, default=AgeRange.low, metavar="YEARS",
                   help=f"refuse ages at or below this (default {AgeRange.low:g})")
    p.add_argument("--max-age", type=float, default=AgeRange.high, metavar="YEARS",
                   help=f"refuse ages above this (default {AgeRange.high:g}); non-finite ages "
                        "are always refused, empty ones imported as unknown")
    p.add_argument("--check", action="store_true",
                   help="open every image once: subjects whose image cannot be read (or is "
                        "empty, constant, too thin) are imported excluded from training, with "
                        "the reason; exit code 1 when any failed")
    p.add_argument("--wait", action="store_true", dest="wait_lock",
                   help="if another run holds the workspace, wait for it instead of refusing")
    p.set_defaults(func=run)


def run(args) -> int:
    columns = ColumnMap(args.id_column, args.age_column, args.sex_column, args.bmi_column,
                        args.site_column, args.excluded_column)
    ages = AgeRange(args.min_age, args.max_age)
    if args.ukbb_folder:
        summary = import_ukbb_folder(args.workspace, args.ukbb_folder, args.csv, args.field,
                                     args.instance, columns, reporter=TerminalProgress(),
                                     ages=ages, check=args.check)
    else:
        if not args.csv:
            raise ConfigError("--images needs --csv (one row per subject with its age)",
                              hint="add --csv FILE, or use --ukbb-folder for UK Biobank zips")
        summary = import_cohort(args.workspace, args.images, args.csv, kind=args.kind,
                                columns=columns, reporter=TerminalProgress(), ages=ages,
                                check=args.check)
    print(f"imported {summary.imported} subjects into {args.workspace}")
    if args.check:
        print(f"checked {summary.checked} subject(s): {len(summary.failed_check)} failed "
              f"(excluded from training), {len(summary.qc)} with quality warnings")
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 1 if summary.failed_check else 0
