"""Keep Python's cycle collector off long-lived objects.

A loaded diffusion model is hundreds of thousands of Python objects.  A full collection
scans them all with the GIL held: about 0.3 s on two cores, during which no request of the
process answers, ``/healthz`` included.  What is alive once the server started and its
models loaded lives as long as the process (or the model), so it is moved out of the
collector's reach (:func:`gc.freeze`); requests' short-lived objects are collected as ever.

An unloaded model's objects are handed back to the collector once (:func:`release`), so any
reference cycles among them are freed rather than kept for good.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_lock = threading.Lock()
_loads = 0  # loads under way (:func:`loading`)
_enabled_before = True


def settle() -> None:
    """What is alive now lives long (modules, a model just loaded): the collector stops scanning it."""
    with _lock:
        gc.freeze()


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Long-lived objects are being made (a model loading): the collector does not run meanwhile.

    Each full collection during a load scans everything made so far with the GIL held (three of
    0.14-0.21 s in the shipped model's load on two cores), and what it finds lives as long as the
    model anyway.  The collector is on again once the last load under way ends (as it was before
    the first), whether it succeeded or not.  A load that succeeded settles what it made
    (:func:`settle`) before that: the collector's next young collection would otherwise scan
    every object of the load (0.26 s).  What a failed load made is left to the collector."""
    global _loads, _enabled_before
    with _lock:
        if _loads == 0:
            _enabled_before = gc.isenabled()
            gc.disable()
        _loads += 1
    loaded = False
    try:
        yield
        loaded = True
    finally:
        with _lock:
            if loaded:  # before the collector is on again: its next young collection would scan all of it
                gc.freeze()
            _loads -= 1
            if _loads == 0 and _enabled_before:
                gc.enable()


def release() -> None:
    """Something long-lived was let go (a model unloaded): one full collection frees its cycles, then the
    rest settles again."""
    with _lock:
        gc.unfreeze()
        gc.collect()
        gc.freeze()


def thaw() -> None:
    """The server stops: nothing it froze is long-lived any more; the collector takes it back (no scan now)."""
    with _lock:
        gc.unfreeze()
