"""The one interface every backend implements: baselines now, DiffuGR, GEMS and EXSEARCH later.

A backend loads from an artifact directory, answers a batch of requests before a deadline, and reports
what it did (backend, configuration, time). Backends are synchronous and CPU/GPU bound; the gateway runs
them in a worker thread.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

TASKS = ("search", "recommend", "retrieve")


class DeadlineExceeded(Exception):
    """A backend gave up because the request's deadline passed."""


@dataclass
class Request:
    task: str
    query: str = ""
    user_id: str | None = None
    history: list[str] = field(default_factory=list)  # item ids, oldest first
    k: int = 10
    options: dict = field(default_factory=dict)  # backend-specific knobs (steps, beam, ...)


@dataclass
class Hit:
    id: str
    score: float


@dataclass
class Answer:
    hits: list[Hit]
    backend: str
    config: dict
    took_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


class Backend(ABC):
    """Base class: subclasses set `name`, `tasks` and `cost_rank`, implement `build`, `load` and `_answer`."""

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]
    cost_rank: ClassVar[int] = 10  # lower is cheaper; the cheapest backend of a task is the fallback
    # True: the backend can stop between steps (denoising steps, beam levels): its _answer(requests, deadline)
    # gets the deadline and checks it (check_deadline); the others get _answer(requests) and always finish
    interruptible: ClassVar[bool] = False

    def __init__(self) -> None:
        self.ms_per_request: float = 0.0  # measured at warm-up

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> Backend:
        ...

    @abstractmethod
    def _answer(self, requests: list[Request]) -> list[list[Hit]]:
        """The hits of each request (an interruptible backend's takes a second argument: the deadline)."""

    def _run(self, requests: list[Request], deadline: float | None) -> list[list[Hit]]:
        return self._answer(requests, deadline) if self.interruptible else self._answer(requests)

    def config(self, request: Request) -> dict:
        return {}

    def answer(self, requests: list[Request], deadline: float | None = None) -> list[Answer]:
        """Answer a batch; deadline is an absolute time.monotonic() value (None: no deadline), which an
        interruptible backend may give up at (DeadlineExceeded); the others ignore it."""
        t0 = time.perf_counter()
        hits = self._run(requests, deadline)
        took = (time.perf_counter() - t0) * 1000 / max(1, len(requests))
        return [Answer(h, self.name, self.config(r), took) for h, r in zip(hits, requests)]

    def estimate_ms(self, request: Request) -> float:
        return self.ms_per_request

    def plan(self, request: Request, budget_ms: float) -> bool:
        """Fit the request into the budget, choosing a configuration (e.g. steps) in request.options when the
        backend has one; False when even its cheapest configuration is expected to miss the budget."""
        return self.estimate_ms(request) <= budget_ms

    def warm_up(self, request: Request, repeats: int = 3) -> float:
        """Measure the cost of one request; the gateway uses it to decide whether a budget fits."""
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self._run([request], None)
            times.append((time.perf_counter() - t0) * 1000)
        self.ms_per_request = sorted(times)[len(times) // 2]
        return self.ms_per_request


def group_requests(requests: list[Request], key) -> dict:
    """Indices of the requests by key(request), e.g. a model backend's steps or beam: one batched call each."""
    groups: dict = {}
    for n, r in enumerate(requests):
        groups.setdefault(key(r), []).append(n)
    return groups


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded()
