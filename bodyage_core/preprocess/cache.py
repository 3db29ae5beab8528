"""A size-limited on-disk cache of model-grid inputs: ``WORKSPACE/cache/<grid-hash>/<id>.npy``.

Preparing a subject for a model (load the images or stitch a UK Biobank zip, resample to the
model grid, crop/pad, normalise) costs seconds; reading the prepared array back costs
milliseconds. Training (every epoch, every ensemble member, every rank) and prediction load
subjects through this cache.

Arrays are stored as **float16** (half the bytes of float32: 58 instead of 115 MB for a
two-channel subject on the full UK Biobank grid, so twice the subjects per disk, page cache and
in-memory dataset, and half the bytes per subject to read and to copy to a GPU); they are widened
to float32 on the device (:func:`bodyage_core.inference.device.to_device`). The inputs are
normalised (foreground mean 1), where float16 keeps 3 significant digits (relative error at most
2^-11); the test suite checks that predictions from the float16 cache match the float32 path
within 0.01 years. ``BODYAGE_CACHE_DTYPE=float32`` keeps float32; an array float16 cannot hold
(values beyond +-65504, or non-finite values) is stored as float32 whatever the setting. A miss
returns the array as it is stored, so a subject's input is the same whether it came from the
cache or was just prepared. Entries written as float32 before stay valid.

Layout and keys::

    cache/
      settings.json                 {"max_bytes": 20000000000}   (``bodyage train --cache-size``)
      <grid-hash>/                  one folder per input config (channels, grid, normalisation,
        grid.json                   preprocessor version): the config that hash stands for
        <subject>.npy               the prepared array
        <subject>.json              its key: every source file's path, size and mtime (ns), and
                                    the .npy's own size and mtime, so a changed source (or a
                                    .npy replaced by another writer) is a miss, never stale data

Every file is written atomically (temporary file beside it, then rename), so concurrent
processes (torchrun ranks, Dask workers) can share the cache: the worst case is that two of them
prepare the same subject once each.

Size limit and eviction: with ``max_bytes`` set, the whole ``cache/`` folder (all grids) is kept
at or under the limit by deleting the least recently *used* entries: every hit and every write
stamps the entry's access time explicitly (``os.utime``), so eviction does not depend on the
file system's ``atime`` mount options. When a write takes the total over the limit the folder is
scanned once and entries are evicted down to 90% of the limit (so a full cache is not rescanned
on every write). ``max_bytes=0`` disables the disk cache (every load prepares the subject).

The limit is read from ``BODYAGE_CACHE_SIZE`` (``20GB``, ``500MB``, ``none``) when set, else from
``cache/settings.json``, else there is none.

The cache is an optimisation, never a reason to fail: a write that fails (disk full, read-only
or unwritable cache folder, a file-size limit) is counted in ``stats.write_errors``, the prepared
array is returned all the same, and after the first such failure the cache stops trying to
write for the rest of the process (one warning on stderr says so).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bodyage_core.atomic import atomic_path, write_json
from bodyage_core.errors import ConfigError

CACHE_DIR = "cache"
SETTINGS = "settings.json"
ENV_SIZE = "BODYAGE_CACHE_SIZE"
ENV_DTYPE = "BODYAGE_CACHE_DTYPE"
DTYPES = ("float16", "float32")
#: the largest magnitude stored as float16 (its maximum is 65504)
FLOAT16_MAX = 60000.0
LOW_WATERMARK = 0.9

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def parse_size(text: str | int | None) -> int | None:
    """``'20GB'`` -> 20_000_000_000 (decimal units; ``GiB`` etc. binary); ``'none'`` /
    ``'unlimited'`` / None -> None (no limit); ``0`` -> 0 (no disk cache)."""
    if text is None:
        return None
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"cache size must not be negative, got {text}")
        return text
    t = str(text).strip().lower()
    if t in ("none", "unlimited", "inf", ""):
        return None
    m = _SIZE.match(t)
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"cannot read the cache size {text!r}",
                          hint="write it like 20GB, 500MB, 2GiB, 0 (no cache) or none")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: int | None) -> str:
    if n is None:
        return "no limit"
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"


def set_workspace_limit(ws_root: str | Path, max_bytes: int | None) -> None:
    """Remember the cache size limit of a workspace (``cache/settings.json``)."""
    write_json(Path(ws_root) / CACHE_DIR / SETTINGS, {"max_bytes": max_bytes})
    with _LOCK:
        for (root, _key), cache in _CACHES.items():
            if root == str(Path(ws_root).resolve() / CACHE_DIR):
                cache.max_bytes = max_bytes


def workspace_limit(ws_root: str | Path) -> int | None:
    """The limit in force: ``BODYAGE_CACHE_SIZE``, else ``cache/settings.json``, else None."""
    env = os.environ.get(ENV_SIZE)
    if env is not None and env.strip():
        return parse_size(env)
    path = Path(ws_root) / CACHE_DIR / SETTINGS
    try:
        return parse_size(json.loads(path.read_text()).get("max_bytes"))
    except (OSError, ValueError, AttributeError):
        return None


def cache_dtype(name: str | None = None) -> str:
    """The dtype cache entries are written in: ``name``, else ``BODYAGE_CACHE_DTYPE``, else
    ``float16``."""
    name = (name or os.environ.get(ENV_DTYPE, "") or "float16").strip().lower()
    if name not in DTYPES:
        raise ConfigError(f"unknown input cache dtype {name!r}",
                          hint=f"use one of {', '.join(DTYPES)}")
    return name


def storage_array(array: np.ndarray, dtype: str = "float16") -> np.ndarray:
    """``array`` as the cache stores it: float16 when ``dtype`` says so and float16 holds it
    (finite, within +-:data:`FLOAT16_MAX`), else float32; other dtypes (integer label maps)
    unchanged."""
    a = np.asarray(array)
    if a.dtype.kind != "f":
        return a
    if dtype == "float16" and a.size and np.isfinite(a).all() and \
            float(np.abs(a).max()) <= FLOAT16_MAX:
        return a.astype(np.float16)
    return a if a.dtype == np.float32 else a.astype(np.float32)


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]


def source_signature(paths: Sequence[str | Path]) -> list[list[Any]] | None:
    """``[[path, size, mtime_ns], ...]`` of the (distinct) source files; None when one is
    missing (then nothing is cached: preparing the subject reports the missing file)."""
    out, seen = [], set()
    for p in paths:
        key = str(Path(p).resolve())
        if key in seen:
            continue
        seen.add(key)
        try:
            st = os.stat(key)
        except OSError:
            return None
        if os.path.isdir(key):   # a DICOM folder: its newest file stands for it
            size, mtime = _folder_stat(key)
        else:
            size, mtime = st.st_size, st.st_mtime_ns
        out.append([key, int(size), int(mtime)])
    return out


def _folder_stat(folder: str) -> tuple[int, int]:
    size, mtime = 0, os.stat(folder).st_mtime_ns
    with os.scandir(folder) as it:
        for e in it:
            if e.is_file():
                st = e.stat()
                size += st.st_size
                mtime = max(mtime, st.st_mtime_ns)
    return size, mtime


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0            # prepared from the sources (includes the invalidated ones)
    invalidated: int = 0       # an entry existed but a source (or the entry) had changed
    writes: int = 0
    evicted: int = 0
    evicted_bytes: int = 0
    write_errors: int = 0      # failed writes (disk full, read-only): served without the cache

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class PreprocessCache:
    """Prepared model inputs of one input config, in ``root/<key>/``.

    Parameters
    ----------
    root
        The cache folder (``WORKSPACE/cache``); the size limit covers everything under it.
    key
        The input config's hash (a folder name), or the config dict itself (hashed).
    max_bytes
        Size limit of ``root`` (None: none; 0: do not cache on disk).
    describe
        The config written to ``<key>/grid.json`` for people reading the folder.
    dtype
        ``float16`` or ``float32``: how new entries are stored (default :func:`cache_dtype`).
    """

    def __init__(self, root: str | Path, key: str | dict[str, Any],
                 max_bytes: int | None = None, describe: dict[str, Any] | None = None,
                 dtype: str | None = None):
        self.root = Path(root)
        if isinstance(key, dict):
            describe = describe or key
            key = config_hash(key)
        self.key = str(key)
        self.dir = self.root / self.key
        self.max_bytes = max_bytes
        self.describe = describe
        self.dtype = cache_dtype(dtype)
        self.stats = CacheStats()
        self._total: int | None = None     # running estimate of the bytes under root
        self._lock = threading.Lock()
        self.write_disabled: str | None = None   # why writes stopped (None: they did not)

    @classmethod
    def for_workspace(cls, ws_root: str | Path, spec) -> PreprocessCache:
        """The (process-wide shared) cache of a workspace for an input spec (anything with
        ``.hash`` and ``.to_dict()``, e.g. :class:`~bodyage_core.training.data.InputSpec`)."""
        root = str(Path(ws_root).resolve() / CACHE_DIR)
        key = (root, spec.hash)
        with _LOCK:
            cache = _CACHES.get(key)
            if cache is None:
                cache = cls(root, spec.hash, workspace_limit(ws_root), spec.to_dict())
                _CACHES[key] = cache
            return cache

    # -- paths ---------------------------------------------------------------------------------
    def path(self, subject_id: str) -> Path:
        """``<key>/<id>.npy``: the id itself when it is a valid name (subject ids are), else a
        sanitised name with a digest of the id, so two ids never share a file."""
        from bodyage_core.names import is_valid_name

        sid = str(subject_id)
        if is_valid_name(sid):
            return self.dir / f"{sid}.npy"
        name = _SAFE.sub("_", sid).strip("._")[:64] or "subject"
        digest = hashlib.sha1(sid.encode()).hexdigest()[:8]
        return self.dir / f"{name}.{digest}.npy"

    @staticmethod
    def _meta_path(npy: Path) -> Path:
        return npy.with_suffix(".json")

    # -- lookup / store -------------------------------------------------------------------------
    def lookup(self, subject_id: str, sources: Sequence[str | Path],
               shape: Sequence[int] | None = None, out: np.ndarray | None = None
               ) -> np.ndarray | None:
        """The cached array when its key matches the sources now, else None (counted).
        ``out`` (a C-contiguous array): the entry is read straight into it and ``out``
        returned when its dtype and shape are the entry's; else the entry as its own array."""
        if self.max_bytes == 0:
            return None
        sig = source_signature(sources)
        npy = self.path(subject_id)
        meta_p = self._meta_path(npy)
        try:
            meta = json.loads(meta_p.read_text())
            st = os.stat(npy)
        except (OSError, ValueError):
            return None
        if sig is None or meta.get("sources") != sig or \
                meta.get("npy") != [st.st_size, st.st_mtime_ns]:
            self.stats.invalidated += 1
            return None
        try:
            arr = None if out is None else _read_into(npy, out)
            if arr is None:
                arr = np.load(npy, allow_pickle=False)
        except (OSError, ValueError):
            return None                   # deleted by an eviction in between, or damaged
        if shape is not None and tuple(arr.shape) != tuple(shape):
            self.stats.invalidated += 1
            return None
        self._touch(npy, st.st_mtime_ns)
        self.stats.hits += 1
        return arr

    def store(self, subject_id: str, sources: Sequence[str | Path], array: np.ndarray) -> None:
        """Write ``array`` atomically with its key (as :func:`storage_array` makes it), then
        keep the folder under the limit."""
        if self.max_bytes == 0:
            return
        sig = source_signature(sources)
        if sig is None:
            return
        array = np.ascontiguousarray(storage_array(array, self.dtype))
        npy = self.path(subject_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.describe is not None and not (self.dir / "grid.json").exists():
            write_json(self.dir / "grid.json", self.describe)
        with atomic_path(npy) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
        st = os.stat(npy)
        write_json(self._meta_path(npy), {
            "subject_id": str(subject_id), "sources": sig, "npy": [st.st_size, st.st_mtime_ns],
            "shape": list(array.shape), "dtype": str(array.dtype), "created": time.time()})
        self._touch(npy, st.st_mtime_ns)
        self.stats.writes += 1
        added = st.st_size + self._meta_path(npy).stat().st_size
        with self._lock:
            if self._total is not None:
                self._total += added
        if self.max_bytes is not None:
            self._enforce(protect=npy)

    def get(self, subject_id: str, sources: Sequence[str | Path],
            compute: Callable[[], np.ndarray], shape: Sequence[int] | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
        """The cached array of ``subject_id``, or ``compute()`` stored for next time (returned
        as stored: float16 unless the cache keeps float32, or the disk cache is off). ``out``:
        as for :meth:`lookup` (a hit is read into it; a miss is returned as its own array)."""
        arr = self.lookup(subject_id, sources, shape, out=out)
        if arr is not None:
            return arr
        self.stats.misses += 1
        arr = compute()
        if self.max_bytes != 0:
            arr = storage_array(arr, self.dtype)
        if self.write_disabled is None:
            try:
                self.store(subject_id, sources, arr)
            except OSError as err:
                self._write_failed(err)
        return arr

    def _write_failed(self, err: OSError) -> None:
        """A failed cache write: go on without the cache, say so once."""
        import sys

        self.stats.write_errors += 1
        why = err.strerror or str(err) or type(err).__name__
        self.write_disabled = f"{why} ({err.filename or self.dir})"
        print(f"warning: the input cache cannot be written ({self.write_disabled}); going on "
              "without it (inputs are prepared each time they are needed)", file=sys.stderr)

    @staticmethod
    def _touch(npy: Path, mtime_ns: int) -> None:
        try:
            os.utime(npy, ns=(time.time_ns(), mtime_ns))   # access time = last use
        except OSError:
            pass

    # -- size limit -------------------------------------------------------------------------------
    def entries(self) -> list[tuple[float, int, Path]]:
        """``(last use, bytes, npy path)`` of every entry under ``root`` (all grids)."""
        out = []
        if not self.root.is_dir():
            return out
        for grid in os.scandir(self.root):
            if not grid.is_dir() or grid.name.startswith("."):
                continue
            for e in os.scandir(grid.path):
                if not e.name.endswith(".npy") or e.name.startswith("."):
                    continue
                try:
                    st = e.stat()
                    size = st.st_size
                    meta = Path(e.path).with_suffix(".json")
                    if meta.exists():
                        size += meta.stat().st_size
                except OSError:
                    continue
                out.append((st.st_atime_ns / 1e9, size, Path(e.path)))
        return out

    def total_bytes(self) -> int:
        """Bytes of all cache entries under ``root`` (scanned now)."""
        return sum(size for _, size, _ in self.entries())

    def _enforce(self, protect: Path | None = None) -> None:
        with self._lock:
            if self._total is not None and self._total <= self.max_bytes:
                return
            self._total = self.evict(self.max_bytes, protect)

    def evict(self, max_bytes: int | None = None, protect: Path | None = None) -> int:
        """Delete least recently used entries until the total is at most ``max_bytes``
        (default: the limit), going down to 90% of it; returns the bytes left."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        entries = sorted(self.entries())
        total = sum(size for _, size, _ in entries)
        if limit is None or total <= limit:
            return total
        target = int(limit * LOW_WATERMARK)
        for _, size, npy in entries:
            if total <= target:
                break
            if protect is not None and npy == protect and size <= limit:
                continue
            for f in (npy, self._meta_path(npy)):
                try:
                    f.unlink()
                except FileNotFoundError:
                    pass
            total -= size
            self.stats.evicted += 1
            self.stats.evicted_bytes += size
        return total


def _read_into(npy: Path, out: np.ndarray) -> np.ndarray | None:
    """Read a ``.npy`` file's data straight into ``out`` (no intermediate array) when its
    header's dtype and shape are ``out``'s (C order); None when they are not."""
    if not out.flags.c_contiguous:
        return None
    with open(npy, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shp, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shp, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            return None
        if fortran or dtype != out.dtype or tuple(shp) != out.shape:
            return None
        got = fh.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    if got != out.nbytes:
        raise ValueError(f"{npy}: truncated ({got} of {out.nbytes} bytes)")
    return out


_CACHES: dict[tuple[str, str], PreprocessCache] = {}
_LOCK = threading.Lock()
