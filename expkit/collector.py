"""Python's cyclic garbage collector, paused while a training command starts.

Importing torch, Hydra and TensorBoard allocates about a million objects that live until
the process ends, and every full collection during those imports walks all of them again:
on 2 CPU cores that is most of a second of each `expkit train`. The console script pauses
the collector for the start (`pause`); when the training loop begins, `resume` freezes
what exists by then (gc.freeze: later collections skip it) and turns the collector back
on, so the loop and everything after it run with a working collector over their own
objects. A cycle that became garbage during the start stays in memory: start-up makes few.
In-process callers (tests, notebooks) never pause, so `resume` leaves their collector as
it is."""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
