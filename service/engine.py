"""The engine: owns the loaded backends of every task, fits each request into its latency budget and
falls back to the task's cheapest backend when the chosen one cannot fit (or misses its deadline).

Entry points (HTTP routers) only call `Engine.answer`; they never touch a backend directly.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from models.artifacts import artifact_dir
from models.backend import TASKS, Answer, Backend, DeadlineExceeded, Request
from models.collab_info import CollabInfo
from models.registry import backends_for, load_backend
from service import metrics
from service.batcher import Batcher, WouldMissDeadline
from service.settings import Settings
from service.stores.catalog import Catalog

log = structlog.get_logger("unisr.engine")


def warmup_samples(catalog: Catalog) -> dict[str, Request]:
    """One representative request per task (a user with some history for recommend)."""
    user, history = next(((u, h) for u, h in catalog.histories.items() if len(h) >= 5), (None, []))
    return {"search": Request("search", query="animation comedy 1990s", k=10),
            "recommend": Request("recommend", user_id=user, history=history, k=10),
            "retrieve": Request("retrieve", query="what is the boiling point of water", k=10)}


class UnknownBackend(ValueError):
    pass


class Overloaded(RuntimeError):
    """Even the task's fallback cannot answer within the budget (it is busy): the router answers 503 with
    Retry-After at once, so a load balancer can retry elsewhere."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Outcome:
    answer: Answer
    requested: str
    degraded: bool = False
    reason: str | None = None
    extra: dict = field(default_factory=dict)


class Engine:
    def __init__(self, settings: Settings, backends: dict[str, dict[str, Backend]],
                 collab: CollabInfo | None = None, remote: dict[tuple[str, str], Backend] | None = None):
        self.settings = settings
        self.backends = backends  # task -> name -> backend
        # (task, name) -> a backend served by another process (service.serve_app: a Ray Serve deployment that
        # batches on its own); a reload keeps them
        self.remote = dict(remote or {})
        self.collab = collab  # co-occurrence counts behind /recommend?explain=true (None: not built)
        # backend name -> why it is not loaded yet, or None (service/reload.py attaches the job runner's progress)
        self.pending: Callable[[str], str | None] = lambda backend: None
        self.active: collections.Counter[tuple[str, str]] = collections.Counter()  # (task, backend) -> in flight
        # (task, backend) -> moving average of (measured time / warm-up estimate) of its recent calls: under load the
        # cores are shared, so a backend runs slower than its warm-up said; budgets are planned with it
        self.slowdown: dict[tuple[str, str], tuple[float, float]] = {}  # -> (value, time.monotonic() of the last)
        # the fallbacks run on threads of their own: a request whose chosen backend missed is answered at once,
        # never queued behind the heavy backends' calls in the default executor
        self.fallback_pool = ThreadPoolExecutor(max_workers=settings.fallback_threads, thread_name_prefix="fallback")
        self.batchers: dict[tuple[str, str], Batcher] = {
            (task, name): Batcher(task, backend, settings.batch_max_size, settings.batch_max_wait_ms)
            for task, by_name in backends.items() for name, backend in by_name.items()
            if name in settings.batch_backends and (task, name) not in self.remote}

    @classmethod
    def load(cls, settings: Settings, remote: dict[tuple[str, str], Backend] | None = None) -> Engine:
        remote = remote or {}
        backends: dict[str, dict[str, Backend]] = {t: {} for t in TASKS}
        for task in TASKS:
            for name in backends_for(task):
                if (task, name) in remote:
                    backends[task][name] = remote[(task, name)]
                    continue
                try:
                    backends[task][name] = load_backend(settings.artifacts_dir, task, name,
                                                          **settings.backend_options.get(name, {}))
                except FileNotFoundError as e:
                    log.warning("backend_missing", task=task, backend=name, error=str(e))
            if not backends[task]:
                raise RuntimeError(f"no backend for {task} under {settings.artifacts_dir}; run `make artifacts`")
        collab_dir = artifact_dir(settings.artifacts_dir, "recommend", CollabInfo.name)
        collab = CollabInfo.load(collab_dir) if (collab_dir / "meta.json").exists() else None
        if collab is None:
            log.warning("collab_info_missing", path=str(collab_dir), effect="/recommend?explain=true answers 503")
        return cls(settings, backends, collab, remote)

    @classmethod
    def start(cls, settings: Settings, catalog: Catalog,
              remote: dict[tuple[str, str], Backend] | None = None) -> Engine:
        """Load every backend and, unless settings.warmup is off, measure each one's cost (start-up and reload).
        remote: backends another process serves (their warm-up asks them for the cost they measured)."""
        engine = cls.load(settings, remote)
        if settings.warmup:
            engine.warm_up(warmup_samples(catalog))
        return engine

    def warm_up(self, samples: dict[str, Request]) -> dict[str, dict[str, float]]:
        """Measure each backend once per task on a representative request (its cost estimate)."""
        costs: dict[str, dict[str, float]] = {}
        for task, by_name in self.backends.items():
            for name, backend in list(by_name.items()):
                try:
                    backend.answer([samples[task]])  # untimed: lazy loads and first-call set-up are not its cost
                    costs.setdefault(task, {})[name] = backend.warm_up(samples[task], repeats=5)
                except Exception as e:  # noqa: BLE001 - e.g. GEMS's vLLM server not up yet: serve without it
                    if name == self.cheapest(task):
                        raise
                    log.warning("backend_warm_up_failed", task=task, backend=name, error=repr(e),
                                effect="kept out of this engine; POST /admin/reload once it can answer")
                    del by_name[name]
                    batcher = self.batchers.pop((task, name), None)
                    if batcher is not None:
                        batcher.close()
                    continue
                metrics.BACKEND_COST.labels(task, name).set(backend.ms_per_request)
        log.info("warm_up", costs=costs)
        return costs

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()
        self.fallback_pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, task: str, name: str, request: Request, deadline: float | None) -> Answer:
        """One request on one backend: through its micro-batcher when it has one, in another process when it is
        remote, else alone in a thread."""
        if (task, name) in self.remote:  # its deployment plans for the budget and batches: no slowdown kept here
            return await self.remote[(task, name)].answer_async(request, deadline)
        batcher = self.batchers.get((task, name))
        if batcher is not None and deadline is not None:
            answer = await batcher.submit(request, deadline)
            self.observe(task, name, request, answer)
            return answer
        call = functools.partial(self.backends[task][name].answer, [request], deadline)
        if name == self.cheapest(task):
            answer = (await asyncio.get_running_loop().run_in_executor(self.fallback_pool, call))[0]
        else:
            answer = (await asyncio.to_thread(call))[0]
        self.observe(task, name, request, answer)
        return answer

    SLOWDOWN_HALF_LIFE_S = 5.0

    def observe(self, task: str, name: str, request: Request, answer: Answer) -> None:
        estimate = self.backends[task][name].estimate_ms(request)
        if estimate > 0 and name == answer.backend:
            self.slowdown[(task, name)] = (0.9 * self.factor(task, name) + 0.1 * (answer.took_ms / estimate),
                                           time.monotonic())

    def factor(self, task: str, name: str) -> float:
        """The backend's current slowdown (>= 1). It decays towards 1 with a 5 s half-life since its last call: a
        backend the load turned away is not measured again, and must not stay turned away after the load."""
        value, at = self.slowdown.get((task, name), (1.0, 0.0))
        return 1.0 + max(0.0, value - 1.0) * 0.5 ** ((time.monotonic() - at) / self.SLOWDOWN_HALF_LIFE_S)

    def cost(self, task: str, name: str, request: Request) -> float:
        """The backend's expected ms for the request now: its warm-up estimate times its current slowdown."""
        return self.backends[task][name].estimate_ms(request) * self.factor(task, name)

    def reserve_ms(self, task: str, name: str, request: Request, budget_ms: float) -> float:
        """What a request for a model backend keeps of its budget: time for the fallback, so a backend that misses
        its (earlier) deadline is still answered for within the budget (the fallback's cost for this request, the
        ones queued on it, and one more as a margin), and a share of the budget for the gateway's own work around
        the call (parsing, routing, the event loop: settings.budget_margin). Nothing for the fallback itself."""
        fallback = self.cheapest(task)
        if name == fallback:
            return 0.0
        return (self.cost(task, fallback, request) * (2 + self.active[(task, fallback)])
                + self.settings.budget_margin * budget_ms)

    def planning_ms(self, task: str, name: str, request: Request, budget_ms: float) -> float:
        """The budget a backend plans with (steps, beam), in its warm-up milliseconds: what is left after
        reserve_ms, shrunk by its current slowdown."""
        return (budget_ms - self.reserve_ms(task, name, request, budget_ms)) / self.factor(task, name)

    def available(self, task: str) -> list[str]:
        return list(self.backends[task])

    def cheapest(self, task: str) -> str:
        return min(self.backends[task], key=lambda n: (self.backends[task][n].cost_rank, n))

    def resolve(self, task: str, name: str | None) -> str:
        name = name or self.settings.default_backends.get(task) or self.cheapest(task)
        if name not in self.backends[task]:
            if name not in backends_for(task) or not self.backends[task]:
                raise UnknownBackend(f"unknown backend {name!r} for {task}; available: "
                                     f"{', '.join(self.available(task))}")
            # a known backend whose artifacts are missing (e.g. still training): the task's best loaded substitute
            name = next((n for n in self.settings.substitutes.get(task, []) if n in self.backends[task]),
                        self.cheapest(task))
        return name

    def not_loaded_reason(self, requested: str, served: str) -> str:
        pending = self.pending(requested)
        if pending:
            return f"{requested} is not served yet: {pending}; answered by {served}"
        return f"{requested} not loaded; answered by {served}"

    async def answer(self, request: Request, backend: str | None, budget_ms: float) -> Outcome:
        task = request.task
        requested = backend or self.settings.default_backends.get(task) or self.cheapest(task)
        name = self.resolve(task, backend)
        start = time.monotonic()
        deadline = start + budget_ms / 1000.0
        fallback = self.cheapest(task)
        degraded, reason = name != requested, (self.not_loaded_reason(requested, name) if name != requested else None)
        chosen = self.backends[task][name]
        reserve_ms = self.reserve_ms(task, name, request, budget_ms)
        own_ms = budget_ms - reserve_ms
        if name != fallback and not chosen.plan(request, self.planning_ms(task, name, request, budget_ms)):
            kept = f" (+{reserve_ms:.1f} ms kept for the fallback)" if reserve_ms else ""
            degraded, reason = True, (f"{name} needs ~{chosen.estimate_ms(request):.1f} ms{kept}, over the "
                                      f"{budget_ms:g} ms budget")
            name = fallback
        if name != fallback and (ahead := self.active[(task, name)]):
            # the requests already running on it share the same cores: expect to wait for them (a CPU backend's
            # batch costs about the sum of its requests), and degrade at once when that cannot fit
            wait = self.cost(task, name, request) * (1 + ahead)
            if wait > own_ms:
                degraded, reason = True, (f"{name} is busy: {ahead} requests ahead, ~{wait:.0f} ms expected, over the "
                                          f"{budget_ms:g} ms budget")
                name = fallback
        degraded_late = False  # the chosen backend ran and missed: the fallback answers (a refusal now is not fast)
        if name != fallback:
            running = (task, name)
            own_deadline = deadline - reserve_ms / 1000.0
            self.active[running] += 1
            try:
                answer = await asyncio.wait_for(self.run(task, name, request, own_deadline),
                                                timeout=max(0.0, own_deadline - time.monotonic()))
                metrics.BUDGET.labels(task, "hit" if time.monotonic() <= deadline else "miss").inc()
                return Outcome(answer, requested, degraded, reason)
            except (asyncio.TimeoutError, TimeoutError, WouldMissDeadline, DeadlineExceeded):
                degraded, reason = True, f"{name} missed the {budget_ms:g} ms deadline"
                name, degraded_late = fallback, True
            finally:
                self.active[running] -= 1
        if not degraded_late and (ahead := self.active[(task, name)]):
            # even the fallback is queued: when its wait cannot fit what is left of the budget, refuse at once (503,
            # Retry-After); an idle fallback always answers, and so does one after the chosen backend missed
            # it runs on fallback_threads threads at once (its measured slowdown has the sharing of the cores)
            wait = self.cost(task, name, request) * math.ceil((1 + ahead) / self.settings.fallback_threads)
            if wait > (deadline - time.monotonic()) * 1000.0:
                metrics.REFUSED.labels(task, "fallback_busy").inc()
                raise Overloaded(f"overloaded: {name} (the fallback) has {ahead} requests ahead, ~{wait:.0f} ms "
                                 f"expected, over the {budget_ms:g} ms budget; retry later")
        self.active[(task, name)] += 1
        try:
            answer = await self.run(task, name, request, None)
        finally:
            self.active[(task, name)] -= 1
        metrics.BUDGET.labels(task, "hit" if time.monotonic() <= deadline else "miss").inc()
        if degraded:
            metrics.FALLBACKS.labels(task, requested, name).inc()
        return Outcome(answer, requested, degraded, reason)
