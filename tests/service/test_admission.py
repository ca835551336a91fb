"""Admission under load: a request for a backend already busy with others degrades at once when the wait for them
cannot fit its budget (the engine counts the requests in flight per backend), instead of queueing past it."""
from __future__ import annotations

import asyncio

import httpx

from models.backend import Request
from service.app import create_app
from service.engine import Engine, Overloaded
from service.stores.catalog import Catalog
from tests.conftest import ROOT


def test_a_busy_backend_degrades_at_once_when_its_queue_cannot_fit_the_budget(settings):
    s = settings.model_copy(update={"warmup": True})
    catalog = Catalog.load(ROOT / "data" / "ml100k", ROOT / "data" / "strategyqa-facts")
    engine = Engine.start(s, catalog)
    try:
        cost = engine.backends["retrieve"]["dense"].estimate_ms(Request("retrieve", query="x", k=10))
        reserve = 2 * engine.backends["retrieve"]["bm25"].estimate_ms(Request("retrieve", query="x", k=10))
        # three requests fit (waits of 1, 2, 3 costs) beside the time kept for the fallback and the gateway's margin;
        # the fourth and later do not
        budget = (3.5 * cost + reserve) / (1 - s.budget_margin)

        async def burst():  # all enter the engine before any answer comes back: request i has i ahead of it
            reqs = [Request("retrieve", query=f"is question {n} answerable", k=10) for n in range(8)]
            return await asyncio.gather(*(engine.answer(r, "dense", budget) for r in reqs))

        outcomes = asyncio.run(burst())
    finally:
        engine.close()
    reasons = [(o.answer.backend, o.reason) for o in outcomes]
    assert not any((o.reason or "").startswith("dense is busy") for o in outcomes[:3]), reasons
    assert all(o.degraded and o.answer.backend == "bm25" and o.reason.startswith("dense is busy: ")
               for o in outcomes[3:]), reasons
    assert sum(engine.active.values()) == 0  # every counted request was let go


def test_a_busy_fallback_is_a_fast_503_with_retry_after(settings):
    """When even the task's fallback is queued past the budget, the engine refuses at once (Overloaded -> 503 with
    Retry-After) instead of answering late; an idle fallback always answers, however small the budget."""
    s = settings.model_copy(update={"warmup": True})
    catalog = Catalog.load(ROOT / "data" / "ml100k", ROOT / "data" / "strategyqa-facts")
    engine = Engine.start(s, catalog)
    try:
        fallback = engine.cheapest("retrieve")
        cost = engine.backends["retrieve"][fallback].estimate_ms(Request("retrieve", query="x", k=10))
        threads = s.fallback_threads  # the fallback runs this many requests at once
        budget = 2.5 * cost  # two rounds of `threads` requests fit (waits of 1 and 2 costs); the rest are refused

        async def burst():
            reqs = [Request("retrieve", query=f"is question {n} answerable", k=10) for n in range(3 * threads)]
            return await asyncio.gather(*(engine.answer(r, fallback, budget) for r in reqs), return_exceptions=True)

        outcomes = asyncio.run(burst())
        idle = asyncio.run(engine.answer(Request("retrieve", query="pear density", k=10), fallback, 0.001))
    finally:
        engine.close()
    assert all(not isinstance(o, Exception) for o in outcomes[:2 * threads]), outcomes
    refused = outcomes[2 * threads:]
    assert all(isinstance(o, Overloaded) and "retry later" in str(o) and o.retry_after_s >= 1 for o in refused)
    assert idle.answer.backend == fallback and idle.answer.hits  # nothing queued: the floor of service answers
    assert sum(engine.active.values()) == 0


def burst(s, n: int, then):
    """n concurrent /retrieve requests (dense, 5 s budget) to a fresh gateway with settings s, then
    `await then(client, params)` on the same gateway: (the n responses, what `then` returned)."""
    async def go():
        app = create_app(s)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                params = [{"q": f"is question {i} answerable", "backend": "dense", "latency_budget_ms": 5000}
                          for i in range(n)]
                answers = await asyncio.gather(*(client.get("/retrieve", params=p) for p in params))
                return answers, await then(client, params)

    return asyncio.run(go())


def test_over_the_in_flight_limit_is_a_429_before_routing(settings):
    """UNISR_MAX_IN_FLIGHT: ranked requests beyond the limit get 429 + Retry-After at once; health is not
    counted. 12 concurrent requests against a limit of 2 (the engine answers in worker threads, so they overlap)."""
    s = settings.model_copy(update={"max_in_flight": 2, "warmup": False})

    async def then(client, params):
        return (await client.get("/healthz"),
                await client.get("/retrieve", params={"q": "pear density", "backend": "dense"}))

    answers, (health, after) = burst(s, 12, then)
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 429} and codes.count(200) >= 2, codes
    refusal = next(r for r in answers if r.status_code == 429)
    assert refusal.headers["retry-after"] == "1" and "UNISR_MAX_IN_FLIGHT" in refusal.json()["detail"]
    assert refusal.headers["x-unisr-instance"]
    assert health.status_code == 200 and after.status_code == 200  # the slots were let go


def test_a_backends_slowdown_scales_its_cost_and_fades_after_the_load(settings):
    """Calls slower than the warm-up estimate raise the backend's cost (its slowdown); with no calls the slowdown
    decays towards 1 (half-life SLOWDOWN_HALF_LIFE_S), so a backend the load turned away is used again after it."""
    catalog = Catalog.load(ROOT / "data" / "ml100k", ROOT / "data" / "strategyqa-facts")
    engine = Engine.start(settings.model_copy(update={"warmup": True}), catalog)
    try:
        request = Request("retrieve", query="x", k=10)
        base = engine.cost("retrieve", "dense", request)
        slow = engine.backends["retrieve"]["dense"].answer([request])[0]
        slow.took_ms = 5 * base  # a call five times slower than the warm-up measured (e.g. cores shared under load)
        for _ in range(30):
            engine.observe("retrieve", "dense", request, slow)
        loaded = engine.cost("retrieve", "dense", request)
        value, at = engine.slowdown[("retrieve", "dense")]
        engine.slowdown[("retrieve", "dense")] = (value, at - 4 * engine.SLOWDOWN_HALF_LIFE_S)  # 4 half-lives ago
        later = engine.cost("retrieve", "dense", request)
    finally:
        engine.close()
    assert loaded > 3.5 * base  # the moving average approached the slower calls' time
    assert base <= later < base + (loaded - base) / 10  # 1/16 of the excess is left



def test_requests_over_the_limit_wait_in_a_bounded_queue_and_their_wait_counts(settings):
    """UNISR_MAX_QUEUED: beyond the in-flight limit, requests wait for a slot in arrival order; beyond the queue
    they get 429 at once. Limit 1, queue 3, 8 concurrent requests: 4 answered (one running, three queued, each
    after the one before it, so their took_ms, counted from arrival, grows), 4 refused; the slots are let go."""
    s = settings.model_copy(update={"max_in_flight": 1, "max_queued": 3, "warmup": False})

    async def then(client, params):
        return await asyncio.gather(*(client.get("/retrieve", params=p) for p in params[:4]))

    answers, after = burst(s, 8, then)
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 4 and codes.count(429) == 4, codes
    refusal = next(r for r in answers if r.status_code == 429)
    assert "UNISR_MAX_QUEUED" in refusal.json()["detail"] and refusal.headers["retry-after"] == "1"
    took = sorted(r.json()["took_ms"] for r in answers if r.status_code == 200)
    assert took[3] > took[0] * 1.8, took  # the last admitted waited for the three before it (~4x their own time)
    assert [r.status_code for r in after] == [200] * 4  # the queue and slots were let go
