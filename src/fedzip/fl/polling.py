"""Shorter polling in Flower's simulation engine.

Flower's simulation engine (1.41 and 1.42) moves messages by polling: a thread looks for
new messages every 0.1 s and the in-memory grid looks for replies every 0.1 s.
A phase of a round therefore waits on average ~0.1 s for nothing, which is
most of a round when clients train for milliseconds (the MLP plan: 0.03 s per
client). ``fast_polling`` shortens both waits for fedzip's own experiment
runner; it changes no message, only when they are picked up. Users' Flower apps
are never touched.

The engine's sweep asks the state for every node's messages in turn, so a
sweep's cost grows with the number of nodes: with 100 nodes, sweeping every
0.01 s took 13-33% of a core from the clients on 2 cores. The wait after a
sweep is therefore at least ``SWEEP_SHARE`` times the sweep's own duration,
which bounds the polling to a few percent of a core at any number of nodes
(and never waits longer than the engine's own interval).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

POLL_SECONDS = 0.01
SWEEP_SHARE = 20  # wait at least 20x as long as a sweep took: polling stays under 5% of a core


class _CappedWait:
    """A stop event whose ``wait`` never sleeps longer than ``seconds``."""

    def __init__(self, event: threading.Event, seconds: float) -> None:
        self._event = event
        self._seconds = seconds
        self._woke: float | None = None  # when the last wait returned: a sweep ran since

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        cap = self._seconds
        if self._woke is not None:
            cap = max(cap, SWEEP_SHARE * (time.perf_counter() - self._woke))
        if timeout is not None:
            cap = min(cap, timeout)  # never slower than the engine's own interval
        stopped = self._event.wait(cap)
        self._woke = time.perf_counter()
        return stopped


def shorten_grid_polling(grid: Any, seconds: float = POLL_SECONDS) -> None:
    """Let an in-memory grid look for replies every ``seconds`` (no-op on other grids)."""
    if isinstance(getattr(grid, "pull_interval", None), float | int):
        grid.pull_interval = min(float(grid.pull_interval), seconds)


@contextlib.contextmanager
def fast_polling(seconds: float = POLL_SECONDS) -> Iterator[bool]:
    """Within the block, the simulation engine picks up messages every ``seconds``.

    Yields whether the engine could be adjusted: a Flower version without the
    hook runs unchanged (only slower on tiny models).
    """
    try:
        from flwr.server.superlink.fleet.vce import vce_api
    except ImportError:
        yield False
        return
    original = getattr(vce_api, "add_messages_to_queue", None)
    if original is None:
        yield False
        return

    def add_messages_to_queue(state: Any, queue: Any, nodes: Any, f_stop: threading.Event) -> None:
        original(state, queue, nodes, _CappedWait(f_stop, seconds))

    vce_api.add_messages_to_queue = add_messages_to_queue
    try:
        yield True
    finally:
        vce_api.add_messages_to_queue = original
