"""Micro-batching: requests that arrive together are scored in one forward pass.

Each request appends its query to the model's pending list and awaits a future. One task per model
takes the first waiting query, everything else already pending, and whatever arrives within
``window`` seconds (up to ``max_batch``), runs ``fn`` on the whole batch in the model's worker
thread, and resolves the futures. While a batch is being scored the next one gathers by itself, so
under load batches grow without any waiting, and a lone request waits at most ``window``.

The event loop pays little per request: a request only appends to a deque (it wakes the batcher
only when the batcher waits for it: for a first query, or for a full batch), the window is one
timer per batch, and the worker thread hands a whole batch back with one thread-safe callback.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

Q = TypeVar("Q")
R = TypeVar("R")


class MicroBatcher(Generic[Q, R]):
    def __init__(
        self,
        fn: Callable[[Sequence[Q]], Sequence[R]],
        executor: Executor,
        *,
        max_batch: int,
        window: float,
        on_batch: Callable[[int], None] | None = None,
    ):
        self._fn = fn
        self._executor = executor
        self._max_batch = max_batch
        self._window = window
        self._on_batch = on_batch
        self._pending: deque[tuple[Q, asyncio.Future[R]]] = deque()
        self._wakeup: asyncio.Future[None] | None = None  # set while the batcher waits for requests
        self._wake_at = 1  # ... until this many are pending
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, query: Q) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((query, future))
        if self._wakeup is not None and len(self._pending) >= self._wake_at:
            self._wake()
        return await future

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _wait_for(self, count: int) -> None:
        """Until ``count`` requests are pending, or ``_wake`` is called (the window's timer)."""
        self._wake_at = count
        self._wakeup = asyncio.get_running_loop().create_future()
        try:
            await self._wakeup
        finally:
            self._wakeup = None

    async def _gather(self) -> list[tuple[Q, asyncio.Future[R]]]:
        if not self._pending:
            await self._wait_for(1)
        if self._window > 0 and len(self._pending) < self._max_batch:
            timer = asyncio.get_running_loop().call_later(self._window, self._wake)
            try:
                await self._wait_for(self._max_batch)
            finally:
                timer.cancel()
        pending = self._pending
        return [pending.popleft() for _ in range(min(len(pending), self._max_batch))]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [(q, f) for q, f in batch if not f.done()]  # a cancelled request needs no scores
            if not live:
                continue
            if self._on_batch is not None:
                self._on_batch(len(live))
            try:
                results = await loop.run_in_executor(self._executor, self._fn, [q for q, _ in live])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
