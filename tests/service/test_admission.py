"""Admission under load: a request for a backend already busy with others degrades at once when the wait for them
cannot fit its budget (the engine counts the requests in flight per backend), instead of queueing past it."""
from __future__ import annotations

import asyncio

from models.backend import Request
from service.engine import Engine
from service.stores.catalog import Catalog
from tests.conftest import ROOT


def test_a_busy_backend_degrades_at_once_when_its_queue_cannot_fit_the_budget(settings):
    s = settings.model_copy(update={"warmup": True})
    catalog = Catalog.load(ROOT / "data" / "ml100k", ROOT / "data" / "strategyqa-facts")
    engine = Engine.start(s, catalog)
    try:
        cost = engine.backends["retrieve"]["dense"].estimate_ms(Request("retrieve", query="x", k=10))
        budget = 3.5 * cost  # three requests fit (waits of 1, 2, 3 costs); the fourth and later do not

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
