"""Model calls off the event loop, a bounded number at a time.

A model call (sampling, encoding, a diffusion chain) is CPU-bound Python and torch: run on the
event loop it would stall every other request, the page included. The gate runs each call in a
small thread pool and admits at most `workers + queue` calls at once (running or waiting); past
that it refuses at once (`Busy`, answered 429), so a flood of requests costs a refusal each
instead of an unbounded queue of work and memory.

A call whose client went away keeps its slot until its thread finishes (a running thread cannot
be stopped), so the bound holds for the work actually in flight, not just for waiting clients.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class Busy(Exception):
    """Every slot is taken: the client should retry later."""


class Gate:
    def __init__(self, workers: int = 2, queue: int = 8):
        if workers < 1 or queue < 0:
            raise ValueError(f"workers={workers} must be >= 1 and queue={queue} >= 0")
        self.workers = workers
        self.capacity = workers + queue
        self.admitted = 0          # running or waiting for a thread; only touched on the loop
        self.refused = 0
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="studio-model")

    def _release(self) -> None:
        self.admitted -= 1

    def _release_from_thread(self, loop) -> None:
        try:
            loop.call_soon_threadsafe(self._release)
        except RuntimeError:       # the loop is closed: the server is shutting down
            pass

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn()` in a worker thread; raises `Busy` when every slot is taken."""
        if self.admitted >= self.capacity:
            self.refused += 1
            raise Busy(f"the studio is busy ({self.admitted} model calls running or waiting); "
                       f"try again in a moment")
        loop = asyncio.get_running_loop()
        self.admitted += 1
        try:
            future = self._executor.submit(fn)
        except BaseException:
            self.admitted -= 1
            raise
        # Released when the thread is done (or the call is cancelled before it started), never
        # merely because the awaiting request was cancelled.
        future.add_done_callback(lambda _: self._release_from_thread(loop))
        return await asyncio.wrap_future(future)

    def stats(self) -> dict:
        return {"workers": self.workers, "capacity": self.capacity, "in_flight": self.admitted,
                "refused": self.refused}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
