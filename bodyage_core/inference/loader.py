"""Read the next batch while the current one runs: a background-thread prefetcher for inference.

The cohort predict path (:func:`bodyage_core.inference.subject.predict_subjects`) reads each
batch of subjects' model-grid inputs from the workspace cache (``np.load`` of ``.npy`` files:
file I/O and memory copies, which release the GIL) while the device computes the previous batch.
:func:`prefetch` runs a loader over items in background threads, at most ``depth`` results
ahead, and hands back each item with its result *or the exception it raised* (one unreadable
subject does not stop the others). :func:`empty_batch` is the batch tensor the readers fill row
by row (float16 from the cache: half the bytes to copy; pinned memory when the batch goes to a
CUDA device: an asynchronous copy), :func:`stack_batch` the same from arrays in hand.

Threads, not DataLoader worker processes: the arrays are ready-made (no decoding or
augmentation to parallelise), and threads share them without pickling 50-100 MB per subject
between processes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def prefetch(items: Iterable[T], load: Callable[[T], R], depth: int = 2, workers: int = 1
             ) -> Iterator[tuple[T, R | BaseException]]:
    """``(item, load(item))`` for every item, in order, ``load`` running in ``workers``
    background threads up to ``depth`` items ahead of the consumer (at least ``workers``). An
    exception ``load`` raises is handed back in place of the result
    (``isinstance(result, BaseException)``). ``depth=0`` loads in the calling thread. Closing
    the generator early drops the items not started; those being loaded finish in the
    background."""
    if depth <= 0:
        for item in items:
            try:
                yield item, load(item)
            except Exception as exc:  # noqa: BLE001 - handed back, as the threads do
                yield item, exc
        return
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, int(workers))
    depth = max(int(depth), workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bodyage-prefetch")
    pending: deque = deque()
    it = iter(items)
    try:
        while True:
            while len(pending) < depth:
                try:
                    item = next(it)
                except StopIteration:
                    break
                pending.append((item, pool.submit(_call, load, item)))
            if not pending:
                return
            item, fut = pending.popleft()
            yield item, fut.result()
    finally:
        for _item, fut in pending:
            fut.cancel()
        pool.shutdown(wait=False)


def _call(load, item):
    try:
        return load(item)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer
        return exc


def empty_batch(n: int, shape: Sequence[int], dtype=np.float16, pin: bool = False):
    """An uninitialised torch tensor ``(n, *shape)`` of ``dtype`` (float16 or float32), in
    pinned memory when ``pin`` (falls back to ordinary memory without a CUDA driver)."""
    import torch

    tdt = torch.float16 if np.dtype(dtype) == np.float16 else torch.float32
    try:
        return torch.empty((n, *shape), dtype=tdt, pin_memory=bool(pin))
    except RuntimeError:
        return torch.empty((n, *shape), dtype=tdt)


def stack_batch(arrays: Sequence[np.ndarray], pin: bool = False):
    """The arrays ``(C, ...)`` in one torch tensor ``(N, C, ...)`` of their common dtype
    (float16 stays float16; anything else but float32 becomes float32), written straight into
    pinned memory when ``pin`` (a batch bound for a CUDA device: one copy, and the copy to the
    device runs asynchronously)."""
    dt = np.result_type(*arrays) if len(arrays) else np.dtype(np.float32)
    if dt not in (np.float16, np.float32):
        dt = np.dtype(np.float32)
    out = empty_batch(len(arrays), np.shape(arrays[0]) if len(arrays) else (), dt, pin)
    view = out.numpy()
    for i, a in enumerate(arrays):
        view[i] = a
    return out


def batched(seq: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of ``seq`` of ``size`` items (the last may be shorter)."""
    size = max(1, int(size))
    for i in range(0, len(seq), size):
        yield list(seq[i:i + size])
