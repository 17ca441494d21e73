"""Micro-batching: requests that arrive together are scored in one forward pass.

Each request puts its query on an asyncio queue and awaits a future. One task per model takes the
first waiting query, everything else already queued, and whatever arrives within ``window`` seconds
(up to ``max_batch``), runs ``fn`` on the whole batch in the model's worker thread, and resolves the
futures. While a batch is being scored the next one gathers by itself, so under load batches grow
without any waiting, and a lone request waits at most ``window``.
"""

from __future__ import annotations

import asyncio
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
        self._queue: asyncio.Queue[tuple[Q, asyncio.Future[R]]] = asyncio.Queue()
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
        self._queue.put_nowait((query, future))
        return await future

    async def _gather(self) -> list[tuple[Q, asyncio.Future[R]]]:
        batch = [await self._queue.get()]
        while len(batch) < self._max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if self._window > 0 and len(batch) < self._max_batch:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._window
            while len(batch) < self._max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
        return batch

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
