"""``bodyage exclude WORKSPACE ID [ID ...]``: leave subjects out of training (a flag in the
cohort with its reason), ``--include`` to take them back, ``--list`` to show them.

Excluded subjects keep their images and can still be predicted, explained and viewed; every
``bodyage train`` leaves them out (``train --exclude ID`` leaves subjects out of one run only).
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "exclude", help="leave subjects out of training (or take them back)",
        description="Flag subjects of WORKSPACE as excluded from training, with a reason "
                    "(e.g. a corrupt image); they stay in the cohort for prediction and the "
                    "viewer. --include takes them back; --list shows the excluded subjects.")
    p.add_argument("workspace", help="workspace folder")
    p.add_argument("ids", nargs="*", metavar="ID", help="subject ids")
    p.add_argument("--reason", default="excluded by the user",
                   help="why (stored with the flag, shown by --list and train)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--include", action="store_true", help="take the subjects back")
    g.add_argument("--list", action="store_true", help="list the excluded subjects")
    p.add_argument("--wait", action="store_true", dest="wait_lock",
                   help="if another run holds the workspace, wait for it instead of refusing")
    p.set_defaults(func=run, writes_workspace=_writes)


def _writes(args) -> bool:
    return not args.list        # --list only reads: no lock


def run(args) -> int:
    from bodyage_core.cohort import Workspace
    from bodyage_core.errors import ConfigError

    with Workspace.open(args.workspace) as ws:
        if args.list:
            excluded = ws.db.excluded()
            for sid, why in excluded.items():
                print(f"{sid}: {why}")
            print(f"{len(excluded)} of {ws.db.count()} subject(s) excluded from training")
            return 0
        if not args.ids:
            raise ConfigError("give the subject ids to exclude (or --list)")
        reason = " ".join(str(args.reason).split())[:500] or "excluded by the user"
        n = ws.db.set_excluded(args.ids, None if args.include else reason)
        what = "included again" if args.include else f"excluded from training ({reason})"
        print(f"{n} subject(s) {what}; {len(ws.db.excluded())} excluded in all")
    return 0
