"""Pausing Python's cycle collector while a restore or a save builds its per-tensor records.

A restore of thousands of tensors creates tens of thousands of small objects (index entries,
graph nodes, requests, reads) that all live until it returns, and a save as many (values,
descriptions, plan items, batches); each generation-0 collection meanwhile traverses them
again, and in a process with a large heap (a PyTorch model's) a full collection can fall in the
middle. A synchronous save is paused whole, an asynchronous one only while the caller's thread
captures its values: the background write runs with the collector on.

``paused()`` turns automatic collection off for the duration and back on after, if it was on:
the objects are then examined once, by the next collection. Nothing is freed later than it
would be otherwise (reference counting still frees at once); only cycles wait. Pauses on
several threads share one (a counter), and a collector that the program had turned off stays off.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_resume = False  # whether the outermost pause found the collector on


@contextmanager
def paused() -> Iterator[None]:
    """Automatic cycle collection off inside the block, restored as it was when the outermost block ends."""
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()
