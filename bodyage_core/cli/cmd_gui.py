"""``bodyage gui [WORKSPACE | FILES...] [--overlay MAP ...] [--threshold T] [--session FILE]
[--screenshot PNG]``: the desktop viewer.

The command line parses into the same :class:`~bodyage_core.viewer.ViewerState` the
session file restores (FSLeyes style): the first file is the image, the others and every
``--overlay`` are layers on top (read as File > Add overlay reads them:
:mod:`bodyage_core.viewer.files`), ``--threshold`` applies to the overlays. The GUI package is
imported only when the command runs, so ``bodyage_core`` stays Qt-free.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from bodyage_core.cohort.paths import WorkspacePaths
from bodyage_core.errors import ConfigError
from bodyage_core.viewer import CONVENTIONS, LAYOUTS, ViewerState
from bodyage_core.viewer.files import add_map, read_map


def register(sub) -> None:
    p = sub.add_parser(
        "gui", help="open the desktop viewer",
        description="Open the viewer on a workspace, image files or a saved session. "
                    "World coordinates are RAS mm; voxel indices are 0-based.")
    p.add_argument("inputs", nargs="*", metavar="WORKSPACE_OR_FILE",
                   help="a workspace folder, or image files (first = image, rest = overlays)")
    p.add_argument("--overlay", action="append", default=[], metavar="MAP",
                   help="a map to show on top (repeatable)")
    p.add_argument("--threshold", type=float, default=None,
                   help="overlay values below this (|v| for signed maps) are transparent")
    p.add_argument("--colormap", default=None, help="colour map of the overlays")
    p.add_argument("--session", default=None, metavar="FILE", help="restore a session JSON")
    p.add_argument("--convention", choices=CONVENTIONS, default="radiological")
    p.add_argument("--layout", choices=LAYOUTS, default="grid")
    p.add_argument("--screenshot", default=None, metavar="PNG",
                   help="render the views (offscreen or under xvfb-run), save a PNG and exit")
    p.add_argument("--whole-window", action="store_true",
                   help="with --screenshot: the whole window, not only the views")
    p.add_argument("--size", default="1400x900", help="window size WxH (default 1400x900)")
    p.set_defaults(func=run)


def several_series(folder: Path) -> bool:
    """``folder`` holds more than one DICOM series (the viewer then lets you pick one)."""
    from bodyage_core.errors import BodyageError
    from bodyage_core.viewer.dicom_series import scan_folder

    try:
        return len(scan_folder(folder, max_files=4000)) > 1
    except (OSError, BodyageError):
        return False


def dicom_folder_of(args) -> Path | None:
    """The single input when it is a DICOM folder of several series: the viewer opens its
    series browser on it (instead of refusing it with a hint for another command)."""
    inputs = [Path(p) for p in args.inputs]
    if len(inputs) == 1 and not args.overlay and inputs[0].is_dir() and \
            not WorkspacePaths.is_workspace(inputs[0]) and several_series(inputs[0]):
        return inputs[0]
    return None


def state_from_args(args) -> tuple[ViewerState, Path | None]:
    """Build the ViewerState the command line describes; returns it and the workspace (if the
    single input is a workspace folder)."""
    from bodyage_core.io import load_volume

    state = ViewerState(convention=args.convention, layout=args.layout)
    inputs = [Path(p) for p in args.inputs]
    workspace = None
    if len(inputs) == 1 and inputs[0].is_dir() and WorkspacePaths.is_workspace(inputs[0]):
        workspace = inputs[0]
        inputs = []
    if args.overlay and not inputs and workspace is None:
        raise ConfigError("--overlay needs an image to lie on", hint="give the image file first")
    from bodyage_core.viewer.scan import is_contrast_file, merge_contrasts

    # the first file is the image, with the other contrasts of its scan as its channels (a
    # water + fat pair is one Dixon image); the rest are maps on top, as File > Add overlay
    if inputs:
        scan = [inputs[0]] + [p for p in inputs[1:] if is_contrast_file(p)]
        merged = merge_contrasts([(p, load_volume(p)) for p in scan])
        state.add_layer(merged[0][1], path=merged[0][0], kind="image")
        kept = {str(p) for p, _ in merged[1:]}
        inputs = [p for p in inputs[1:] if str(p) not in set(map(str, scan)) or str(p) in kept]
    for path in inputs + [Path(p) for p in args.overlay]:
        add_map(state, read_map(path), path, args.threshold, args.colormap)
    return state, workspace


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ConfigError(f"--size must look like 1400x900, got {text!r}") from exc
    return w, h


def run(args) -> int:
    size = _size(args.size)
    dicom = dicom_folder_of(args)
    if dicom is not None:
        state, workspace = ViewerState(convention=args.convention, layout=args.layout), None
    else:
        state, workspace = state_from_args(args)
    app = importlib.import_module("bodyage_gui.app")
    return app.run_viewer(state, workspace=workspace, session=args.session,
                          screenshot=args.screenshot, size=size,
                          whole_window=args.whole_window, dicom_folder=dicom)
