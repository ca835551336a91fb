"""A backend another process serves (a Ray Serve deployment, service.serve_app): the gateway's engine sees the
ordinary Backend interface, and the work runs where the deployment's replicas are.

The gateway keeps only what routing needs: the backend's name, cost rank and the per-request cost its deployment
measured at warm-up (the cheapest configuration). Planning (steps, beam) happens in the deployment, which has the
backend's full cost model: the request travels with its budget and an absolute wall-clock deadline (time.time();
clocks of a cluster's nodes are assumed in sync to well under a budget), and the deployment answers
DeadlineExceeded when the budget affords no configuration or the deadline passes, which the engine turns into the
fallback's answer like any local miss.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from models.backend import Answer, Backend, DeadlineExceeded, Hit, Request
from service.batcher import would_miss


def wall_deadline(deadline: float | None) -> float | None:
    """A time.monotonic() deadline of this process as a time.time() one another process can read."""
    return None if deadline is None else time.time() + (deadline - time.monotonic())


def local_deadline(wall: float | None) -> float | None:
    return None if wall is None else time.monotonic() + (wall - time.time())


class RemoteBackend(Backend):
    """handle: a Ray Serve deployment handle of service.serve_app.BackendServer (anything with the same
    `.describe.remote()` / `.answer.remote(item)` methods returning awaitable, `.result()`-able responses)."""

    tasks: ClassVar[tuple[str, ...]] = ()

    def __init__(self, task: str, name: str, handle: Any):
        super().__init__()
        self.task, self.backend_name, self.handle = task, name, handle
        self.described: dict = {}

    # the engine reads name / cost_rank on the instance: those of the backend the deployment serves
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.backend_name

    @property
    def cost_rank(self) -> int:  # type: ignore[override]
        return int(self.described.get("cost_rank", 10))

    @classmethod
    def load(cls, directory):  # pragma: no cover - built by service.serve_app, never from a directory
        raise TypeError("a RemoteBackend is built from a deployment handle (service.serve_app)")

    def describe(self) -> dict:
        self.described = self.handle.describe.remote().result()
        self.ms_per_request = float(self.described["ms_per_request"])
        return self.described

    def warm_up(self, request: Request, repeats: int = 3) -> float:
        """The deployment measured its cost at its own start-up: ask for it."""
        return self.ms_per_request if self.described else float(self.describe()["ms_per_request"])

    def plan(self, request: Request, budget_ms: float) -> bool:
        """The cheapest configuration must fit; the deployment picks the configuration for the budget."""
        if self.estimate_ms(request) > budget_ms:
            return False
        request.options.setdefault("budget_ms", budget_ms)
        return True

    @staticmethod
    def item(request: Request, deadline: float | None) -> dict:
        return {"request": request, "deadline": wall_deadline(deadline)}

    @staticmethod
    def unpack(result: Any) -> Answer:
        if isinstance(result, Exception):
            raise result
        return result

    def _answer(self, requests: list[Request]) -> list[list[Hit]]:  # pragma: no cover - answer() is overridden
        raise NotImplementedError

    def answer(self, requests: list[Request], deadline: float | None = None) -> list[Answer]:
        """Synchronous (the engine's warm-up thread): one deployment call per request, batched over there."""
        responses = [self.handle.answer.remote(self.item(r, deadline)) for r in requests]
        return [self.unpack(r.result()) for r in responses]

    async def answer_async(self, request: Request, deadline: float | None) -> Answer:
        return self.unpack(await self.handle.answer.remote(self.item(request, deadline)))


def answer_items(backend: Backend, items: list[dict]) -> list[Answer | Exception]:
    """The deployment's side of a batch: plan each request for its budget, drop those past their deadline (a
    DeadlineExceeded each), answer the rest in one backend call."""
    out: list[Answer | Exception | None] = [None] * len(items)
    deadlines = [local_deadline(item.get("deadline")) for item in items]
    live: list[int] = []
    now = time.monotonic()
    for n, item in enumerate(items):
        request: Request = item["request"]
        budget = request.options.pop("budget_ms", None)
        if budget is not None and not backend.plan(request, float(budget)):
            out[n] = DeadlineExceeded(f"{backend.name}: no configuration fits the {budget:g} ms budget")
        elif would_miss(backend, request, deadlines[n], now):
            out[n] = DeadlineExceeded(f"{backend.name}: the deadline cannot be met any more")
        else:
            live.append(n)
    if live:
        deadline = None if any(deadlines[n] is None for n in live) else max(deadlines[n] for n in live)
        try:
            answers = backend.answer([items[n]["request"] for n in live], deadline)
        except DeadlineExceeded as e:
            answers = [e] * len(live)
        for n, a in zip(live, answers):
            out[n] = a
    return out  # type: ignore[return-value]


async def answer_items_async(backend: Backend, items: list[dict]) -> list[Answer | Exception]:
    return await asyncio.to_thread(answer_items, backend, items)
