"""Dynamic batching: images from concurrent requests are gathered for at most `max_wait_s`
(counted from the first one's arrival) or until `max_batch` are waiting, then run as one network
call on a single inference thread.

Why a thread: the model's forward pass is blocking TensorFlow work (tens of milliseconds); run on
the event loop it would stall every connection, and run from many threads it would contend for
the same cores. The event loop only queues (image, future) pairs and awaits the future; the
inference thread settles each future through `loop.call_soon_threadsafe`. Images that arrived
while a batch was running have already waited, so the next batch starts at once. And the wait
is only for company that is on its way: `coming()` says how many images the server has accepted
and is still decoding; when none are, the batch goes without waiting (a lone request pays no
--max-wait-ms).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bottleneck.serve.limits import Busy

_STOP = object()
POLL_S = 0.001   # while waiting for company, how often `coming()` is asked again


@dataclass
class _Waiting:
    item: object
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    arrived: float


class Batcher:
    """`await batcher.submit(item)` -> run_batch([... item ...])[its row]."""

    def __init__(self, run_batch: Callable[[list], object], max_batch: int = 32,
                 max_wait_s: float = 0.005, max_queue: int = 512,
                 coming: Callable[[], int] | None = None):
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.max_queue = max_queue
        self.coming = coming or (lambda: 1)   # default: always wait the whole window
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="bottleneck-inference",
                                        daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    async def submit(self, item):
        """The row of `item` in its batch's output; Busy when the queue is full."""
        if self._queue.qsize() >= self.max_queue:
            raise Busy(f"{self._queue.qsize()} images waiting (--max-queue {self.max_queue})")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Waiting(item, loop, future, time.monotonic()))
        return await future

    def close(self, timeout: float = 10.0) -> None:
        """Finish the batches already queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while (batch := self._gather()) is not None:
            self._run(batch)

    def _gather(self) -> list[_Waiting] | None:
        """The next batch: the first waiting image, then what comes before its deadline."""
        first = self._queue.get()
        if first is _STOP:
            return None
        batch, deadline = [first], first.arrived + self.max_wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            wait = min(left, POLL_S) if left > 0 and self.coming() else 0
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                if wait > 0:
                    continue   # ask coming() again until the deadline
                break
            if item is _STOP:
                self._queue.put(_STOP)   # stop after this batch
                break
            batch.append(item)
        return batch

    def _run(self, batch: list[_Waiting]) -> None:
        try:
            rows = self.run_batch([w.item for w in batch])
        except Exception as exc:  # noqa: BLE001 - the requests get the error, the thread lives
            for w in batch:
                w.loop.call_soon_threadsafe(_settle, w.future, None, exc)
            return
        for w, row in zip(batch, rows):
            w.loop.call_soon_threadsafe(_settle, w.future, row, None)


def _settle(future: asyncio.Future, row, exc) -> None:
    if future.done():   # the client went away (cancelled)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(row)
