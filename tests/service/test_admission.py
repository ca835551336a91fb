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
        budget = max(50.0, 1.5 * cost)  # one request fits; one behind another does not

        async def burst():
            reqs = [Request("retrieve", query=f"is question {n} answerable", k=10) for n in range(6)]
            return await asyncio.gather(*(engine.answer(r, "dense", budget) for r in reqs))

        outcomes = asyncio.run(burst())
    finally:
        engine.close()
    served = [o.answer.backend for o in outcomes]
    assert served[0] == "dense" and not outcomes[0].degraded
    busy = [o for o in outcomes if o.degraded]
    assert busy and all(o.answer.backend == "bm25" and o.reason.startswith("dense is busy: ") for o in busy), \
        [(o.answer.backend, o.reason) for o in outcomes]
    assert sum(engine.active.values()) == 0  # every counted request was let go
