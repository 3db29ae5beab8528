"""Loading volumes for the viewer: ``bodyage_core.io`` with the fastest gzip reader there is.

Reading a ``.nii.gz`` is mostly inflating gzip. When `isal <https://pypi.org/project/isal/>`_
(Intel ISA-L bindings) is installed, the viewer process reads gzip files through it (about
three times faster than zlib, same bytes): :func:`use_fast_gzip` registers a read-only gzip
opener with nibabel; writing keeps nibabel's own.
"""

from __future__ import annotations

from pathlib import Path

from bodyage_core.errors import LoadError
from bodyage_core.volume import Volume

_FAST_GZIP: bool | None = None


def use_fast_gzip() -> bool:
    """Let nibabel read ``.gz`` files with ISA-L (``isal.igzip``) when it is installed;
    idempotent. Returns whether it is in use."""
    global _FAST_GZIP
    if _FAST_GZIP is not None:
        return _FAST_GZIP
    try:
        from isal import igzip
        from nibabel import openers
    except ImportError:
        _FAST_GZIP = False
        return False
    from isal.isal_zlib import error as isal_error  # igzip_lib.IsalError

    plain, keys = openers.Opener.gz_def

    class _Reader(igzip.IGzipFile):
        """ISA-L gzip reader whose errors are zlib-like (OSError), as readers expect."""

        def read(self, size=-1):
            try:
                return super().read(size)
            except isal_error as err:
                raise OSError(f"corrupt gzip data ({err})") from err

        def read1(self, size=-1):
            try:
                return super().read1(size)
            except isal_error as err:
                raise OSError(f"corrupt gzip data ({err})") from err

    def gz_open(filename, mode="rb", compresslevel=9, mtime=0, keep_open=False):
        if "r" in str(mode) and "+" not in str(mode):
            return _Reader(filename, "rb")
        return plain(filename, mode, compresslevel, mtime, keep_open)

    for cls in (openers.Opener, openers.ImageOpener):
        cls.compress_ext_map[".gz"] = (gz_open, keys)
    _FAST_GZIP = True
    return True


def load_for_viewer(path: str | Path, labels: bool = False) -> Volume:
    """Load an image (or, with ``labels``, an integer label map) reoriented to RAS.

    Raises
    ------
    LoadError
        When the file does not exist or cannot be read (message names the file and the fix).
    """
    path = Path(path)
    if not path.exists():
        raise LoadError("no such file or folder", path=path, hint="check the path")
    use_fast_gzip()
    from bodyage_core import io as bio  # here, not at import: the window shows before it loads

    return bio.load_labels(path) if labels else bio.load_volume(path)


def load_many(paths: list[str | Path], labels: list[bool] | None = None) -> list[Volume]:
    """Load several files at once in threads (gzip and numpy release the GIL, so a water + fat
    pair opens in about the time of one). Errors propagate (the first one raised)."""
    import concurrent.futures as cf

    labels = labels or [False] * len(paths)
    if len(paths) <= 1:
        return [load_for_viewer(p, lab) for p, lab in zip(paths, labels)]
    with cf.ThreadPoolExecutor(max_workers=min(4, len(paths))) as pool:
        futures = [pool.submit(load_for_viewer, p, lab) for p, lab in zip(paths, labels)]
        return [f.result() for f in futures]
