"""One check for every backend: concurrent calls on one engine return what each call returns alone."""

from __future__ import annotations

import threading

import numpy as np


def assert_thread_safe(engine, feeds: list[dict[str, np.ndarray]], output: str, repeats: int = 5) -> None:
    """One thread per feed, all released at once, each calling ``repeats`` times (feeds of several shapes
    also exercise building a shape while others run)."""
    expected = [engine.run(f)[output] for f in feeds]
    results: dict[int, list[np.ndarray]] = {i: [] for i in range(len(feeds))}
    barrier = threading.Barrier(len(feeds))

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(repeats):
            results[i].append(engine.run(feeds[i])[output])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        assert len(results[i]) == repeats, f"thread {i} failed"
        for got in results[i]:
            np.testing.assert_array_equal(got, want)
