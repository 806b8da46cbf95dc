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

import gc
import threading

_lock = threading.Lock()


def settle() -> None:
    """What is alive now lives long (modules, a model just loaded): the collector stops scanning it."""
    with _lock:
        gc.freeze()


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
