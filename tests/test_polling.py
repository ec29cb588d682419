"""The simulation engine's shorter polling: what it patches, and that it puts everything back."""

import threading
import time

from flwr.server.superlink.fleet.vce import vce_api

from fedzip.fl.polling import _CappedWait, fast_polling, shorten_grid_polling


def test_capped_wait_returns_early_and_follows_the_event():
    event = threading.Event()
    capped = _CappedWait(event, 0.01)
    started = time.perf_counter()
    assert capped.wait(5.0) is False
    assert time.perf_counter() - started < 1.0  # not the 5 s asked for
    capped.set()
    assert event.is_set() and capped.is_set() and capped.wait(5.0) is True


def test_fast_polling_wraps_the_engine_and_restores_it():
    original = vce_api.add_messages_to_queue
    seen = []
    with fast_polling(0.02) as active:
        assert active
        wrapped = vce_api.add_messages_to_queue
        assert wrapped is not original
    assert vce_api.add_messages_to_queue is original

    # The wrapper hands the original a stop event capped at the interval.
    def fake(state, queue, nodes, f_stop):
        seen.append(f_stop)

    vce_api.add_messages_to_queue = fake
    try:
        with fast_polling(0.02):
            stop = threading.Event()
            vce_api.add_messages_to_queue("state", "queue", {}, stop)
    finally:
        vce_api.add_messages_to_queue = original
    assert isinstance(seen[0], _CappedWait)
    stop.set()
    assert seen[0].is_set()


def test_fast_polling_restores_on_error():
    original = vce_api.add_messages_to_queue
    try:
        with fast_polling():
            raise KeyError("boom")
    except KeyError:
        pass
    assert vce_api.add_messages_to_queue is original


def test_grid_polling_is_only_shortened():
    class Grid:
        pull_interval = 0.1

    grid = Grid()
    shorten_grid_polling(grid, 0.01)
    assert grid.pull_interval == 0.01
    grid.pull_interval = 0.001
    shorten_grid_polling(grid, 0.01)
    assert grid.pull_interval == 0.001  # never made longer
    other = object()
    shorten_grid_polling(other)  # grids without the attribute (deployment) are left alone


def test_the_wait_grows_with_the_sweep_it_follows():
    """A slow sweep (many nodes) is followed by a wait of SWEEP_SHARE times its length, at most
    the engine's own interval; a fast sweep keeps the short interval."""
    from fedzip.fl.polling import SWEEP_SHARE

    capped = _CappedWait(threading.Event(), 0.001)
    capped.wait(0.1)  # the first wait: nothing measured yet
    time.sleep(0.002)  # a "sweep" of 2 ms
    started = time.perf_counter()
    capped.wait(1.0)
    waited = time.perf_counter() - started
    assert SWEEP_SHARE * 0.002 * 0.9 <= waited < 0.5
    time.sleep(0.05)  # a sweep of 50 ms: 20x would be 1 s, the engine's 0.1 s caps it
    started = time.perf_counter()
    capped.wait(0.1)
    assert time.perf_counter() - started < 0.5
    started = time.perf_counter()
    capped.wait(1.0)  # a sweep of ~0 s: back to the short interval
    assert time.perf_counter() - started < SWEEP_SHARE * 0.002
