"""The image-decode stage of the Ray Data pipeline: a pool of long-lived decode actors.

Both dataset builders (single keyframes, ``pipeline.build_dataset``; scene clips, ``clips.build_clip_dataset``) end
in one ``map_batches`` whose function decodes JPEGs into large uint8 arrays (a block of 16 samples at 384 x 704 is
78 MB). Measured with ``odvla bench data`` on 2 cores, two things cost as much as the decode itself:

- **Task dispatch.** With a task per block, a worker idles about 0.2 s between blocks while the executor sees the
  finished block and schedules the next task. An actor pool queues the next block on each actor
  (``ActorPoolStrategy``), so an actor goes from one block straight to the next.
- **Fresh pages.** glibc serves large allocations (the decoded images, OpenCV's decode buffers) with new ``mmap``
  pages and unmaps them on free, so the pages are faulted in again for every block. Each decode actor raises its
  process's mmap and trim thresholds (``keep_freed_pages``) so that freed memory stays in the heap for the next
  block: 78 -> 106-123 samples/s at 384 x 704 with 2 actors (``odvla bench data``, blocks of 32).

``data.decode_concurrency`` actors (0: an autoscaling pool of at least one), each holding one CPU while the dataset
runs. The output keeps the input's block order (``preserve_order`` on the dataset's own context), whichever actor
finishes first: resume skips exactly the batches already consumed, and evaluation sees scenes in shard order.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter numbers of glibc's ``<malloc.h>``."""
MMAP_THRESHOLD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = 1 << 31


def keep_freed_pages() -> bool:
    """Let this process's heap keep and reuse freed large blocks (glibc ``mallopt``: allocations up to 1 GiB from
    the heap, up to 2 GiB of free heap kept before it is returned). True when applied; False where the C library
    is not glibc (decoding is then only slower)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                               TRIM_THRESHOLD_BYTES))


class DecodeActor:
    """``map_batches`` callable class: ``fn(batch, **kwargs)`` on every block, in a process whose heap keeps freed
    pages. ``fn`` and ``kwargs`` travel once per actor (the example table of a mixture included), not per block."""

    def __init__(self, fn: Callable, kwargs: dict):
        self.fn, self.kwargs = fn, dict(kwargs)
        keep_freed_pages()

    def __call__(self, batch):
        return self.fn(batch, **self.kwargs)


def decode_map(ds, fn: Callable, concurrency: int, batch_size, **kwargs):
    """``ds.map_batches`` of ``fn`` (Arrow blocks in and out) on a pool of ``concurrency`` decode actors of one CPU
    each (0: autoscaling from one actor up). ``batch_size``: rows per call (None: one whole block)."""
    import ray

    n = int(concurrency)
    if n < 0:
        raise ValueError(f"data.decode_concurrency={n}: must be >= 0 (0: an autoscaling pool of decode actors)")
    pool = ray.data.ActorPoolStrategy(size=n) if n > 0 else ray.data.ActorPoolStrategy(min_size=1)
    out = ds.map_batches(DecodeActor, batch_format="pyarrow", batch_size=batch_size, compute=pool, num_cpus=1,
                         fn_constructor_kwargs={"fn": fn, "kwargs": kwargs})
    # the context is this dataset's own copy (``ray.data.from_arrow`` copies the current one), so this changes no
    # other dataset; without it, blocks come out in the order the actors finish them
    out.context.execution_options.preserve_order = True
    return out


__all__ = ["DecodeActor", "decode_map", "keep_freed_pages"]
