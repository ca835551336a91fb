"""Dynamic micro-batching in front of one backend.

Requests with the same options (e.g. the same number of denoising steps) queue together; a worker takes the
first one, waits up to `max_wait_ms` for more (or until `max_size`), and answers them with one
`backend.answer(batch)` call in a worker thread. Arrivals while a batch runs form the next batch, so batches
grow with the load and stay at 1 when the gateway is idle (plus at most max_wait_ms).

Each request keeps its own deadline: the caller waits on its future with a timeout, and a request whose
deadline has passed (or cannot fit the backend's estimated cost) when its batch is formed is answered with
`WouldMissDeadline` so the engine serves it from the cheaper fallback at once. Nothing is dropped.
A worker exits after `idle_s` without work and is started again on the next request, so an engine that was
swapped out by a hot reload leaves no task behind.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from models.backend import Answer, Backend, Request
from service import metrics


def would_miss(backend: Backend, request: Request, deadline: float | None, now: float) -> bool:
    """Whether the backend's estimated cost for the request, started now, ends past its deadline (time.monotonic())."""
    return deadline is not None and now + backend.estimate_ms(request) / 1000.0 > deadline

class WouldMissDeadline(Exception):
    """The request's deadline cannot be met by this backend any more."""


@dataclass
class _Item:
    request: Request
    deadline: float  # time.monotonic()
    future: asyncio.Future


def options_key(request: Request) -> str:
    return json.dumps(request.options, sort_keys=True, default=str)


class _Queue:
    """One options group of one backend: an asyncio queue and the worker draining it."""

    def __init__(self, owner: Batcher):
        self.owner = owner
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.worker: asyncio.Task | None = None

    def put(self, item: _Item) -> None:
        self.queue.put_nowait(item)
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._run())

    async def _collect(self) -> list[_Item] | None:
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout=self.owner.idle_s)
        except (asyncio.TimeoutError, TimeoutError):
            return None
        batch, end = [first], time.monotonic() + self.owner.max_wait_s
        while len(batch) < self.owner.max_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), timeout=left))
            except (asyncio.TimeoutError, TimeoutError):
                break
        return batch

    async def _run(self) -> None:
        try:
            while True:
                batch = await self._collect()
                if batch is None:
                    if self.queue.empty():
                        return
                    continue
                await self.owner.run_batch(batch)
        finally:
            self.worker = None


class Batcher:
    def __init__(self, task: str, backend: Backend, max_size: int = 16, max_wait_ms: float = 2.0,
                 idle_s: float = 10.0):
        self.task, self.backend = task, backend
        self.max_size, self.max_wait_s, self.idle_s = max_size, max_wait_ms / 1000.0, idle_s
        self._queues: dict[tuple[int, str], _Queue] = {}  # (event loop, options) -> queue

    async def submit(self, request: Request, deadline: float) -> Answer:
        """Queue the request; its answer (or WouldMissDeadline / the backend's error) when its batch ran.
        Cancelling the wait (e.g. asyncio.wait_for timing out) withdraws the request from its batch."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        key = (id(loop), options_key(request))  # a queue never outlives or crosses its event loop
        group = self._queues.get(key)
        if group is None:
            group = self._queues[key] = _Queue(self)
        group.put(_Item(request, deadline, future))
        return await future

    async def run_batch(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live: list[_Item] = []
        for item in batch:
            if item.future.done():  # the caller gave up (deadline) while queued
                continue
            if would_miss(self.backend, item.request, item.deadline, now):
                item.future.set_exception(WouldMissDeadline())
            else:
                live.append(item)
        if not live:
            return
        metrics.BATCH_SIZE.labels(self.task, self.backend.name).observe(len(live))
        deadline = max(i.deadline for i in live)  # the backend may stop once every request is past it
        try:
            answers = await asyncio.to_thread(self.backend.answer, [i.request for i in live], deadline)
        except Exception as e:  # deadline exceeded or a backend failure: every caller sees it
            for item in live:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        for item, answer in zip(live, answers):
            if not item.future.done():
                item.future.set_result(answer)

    def close(self) -> None:
        for group in self._queues.values():
            if group.worker is not None:
                group.worker.cancel()
        self._queues.clear()
