"""The path every ranked answer takes: validate, look in the cache, ask the engine, attach titles, cache."""
from __future__ import annotations

import time

from fastapi import HTTPException

from models.backend import Request
from service import metrics
from service.engine import Engine, Overloaded, UnknownBackend
from service.middleware import waited_ms
from service.schemas import RankedResponse, ResultItem
from service.settings import Settings
from service.stores.cache import cache_key

MAX_QUERY_CHARS = Settings.model_fields["max_query_chars"].default  # the documented bound; settings may lower it


def clean_query(q: str, settings: Settings) -> str:
    q = q.strip()
    if not q:
        raise HTTPException(422, "q must not be empty or whitespace")
    if len(q) > settings.max_query_chars:
        raise HTTPException(422, f"q is {len(q)} characters long; the limit is {settings.max_query_chars}")
    return q


def check_k(k: int, settings: Settings) -> int:
    """k within the configured limit (UNISR_MAX_K); the schema's own bound (schemas.MAX_K) is the most it may be."""
    if k > settings.max_k:
        raise HTTPException(422, f"k is {k}; the limit is {settings.max_k} (UNISR_MAX_K)")
    return k


async def ranked(endpoint: str, request: Request, backend: str | None, budget_ms: float | None, *, engine: Engine,
                 catalog, cache, settings: Settings, cache_params: dict, cold_start: bool = False) -> RankedResponse:
    t0 = time.perf_counter() - waited_ms() / 1000  # from arrival: time queued for an in-flight slot counts
    budget = float(budget_ms or settings.default_latency_budget_ms)
    # the served version is part of the key: after a swap (a new checkpoint) no answer of the old one is reused
    key = cache_key(endpoint, {**cache_params, "backend": backend, "budget": budget,
                               "version": str(engine.settings.artifacts_dir)})
    hit = await cache.get(key)
    if hit is not None:
        resp = RankedResponse(**{**hit, "cached": True, "took_ms": (time.perf_counter() - t0) * 1000})
        metrics.REQUESTS.labels(endpoint, resp.backend, "cached").inc()
        return resp
    try:
        # what is left of the budget (at least a sliver: an idle fallback always answers)
        outcome = await engine.answer(request, backend, max(0.001, budget - (time.perf_counter() - t0) * 1000))
    except UnknownBackend as e:
        raise HTTPException(400, str(e)) from None
    except Overloaded as e:  # even the fallback cannot fit: refuse now, so the client can retry elsewhere
        raise HTTPException(503, str(e), headers={"Retry-After": str(e.retry_after_s)}) from None
    entries = catalog.entries(request.task)
    results = [ResultItem(id=h.id, title=entries[h.id].title if h.id in entries else h.id,
                          snippet=entries[h.id].snippet if h.id in entries else "", score=h.score)
               for h in outcome.answer.hits]
    took = (time.perf_counter() - t0) * 1000
    resp = RankedResponse(results=results, backend=outcome.answer.backend, requested_backend=outcome.requested,
                          config=outcome.answer.config, took_ms=took, latency_budget_ms=budget,
                          degraded=outcome.degraded, degraded_reason=outcome.reason, cold_start=cold_start)
    if not outcome.degraded:
        await cache.set(key, resp.model_dump())
    metrics.REQUESTS.labels(endpoint, resp.backend, "degraded" if resp.degraded else "ok").inc()
    metrics.LATENCY.labels(endpoint).observe(took / 1000)
    return resp
