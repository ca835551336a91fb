"""GET /recommend for a known user (history from the interaction log), POST /recommend with an explicit
history. Users with no known history get a cold-start answer (popular items), never an error."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query

from models.backend import Request
from service.deps import CacheDep, CatalogDep, EngineDep, EventsDep, SettingsDep, user_history
from service.engine import UnknownBackend
from service.pipeline import check_k, ranked
from service.schemas import MAX_K, RankedResponse, RecommendBody

router = APIRouter(tags=["recommend"])


async def _recommend(user_id, history, k, budget, backend, engine, catalog, cache, settings) -> RankedResponse:
    check_k(k, settings)
    known = [i for i in history if i in catalog.items]
    cold = not known
    request = Request("recommend", user_id=user_id, history=known, k=k)
    chosen = engine.cheapest("recommend") if cold else backend
    if cold and backend:
        try:
            engine.resolve("recommend", backend)  # still reject an unknown backend name with a 400
        except UnknownBackend as e:
            raise HTTPException(400, str(e)) from None
    resp = await ranked("recommend", request, chosen, budget, engine=engine, catalog=catalog, cache=cache,
                        settings=settings, cache_params={"history": known, "k": k}, cold_start=cold)
    if cold and backend:
        resp.requested_backend = backend
    return resp


@router.get("/recommend", response_model=RankedResponse)
async def recommend(
    user_id: str = Query(..., min_length=1, max_length=128),
    k: int = Query(10, ge=1, le=MAX_K, description="results wanted (at most UNISR_MAX_K)"),
    latency_budget_ms: float | None = Query(None, gt=0, le=60_000),
    backend: str | None = Query(None, description="popularity | cooc | sasrec (default from settings)"),
    *, engine: EngineDep, catalog: CatalogDep, cache: CacheDep, settings: SettingsDep, events: EventsDep,
) -> RankedResponse:
    history = user_history(catalog, events, user_id)
    return await _recommend(user_id, history, k, latency_budget_ms, backend, engine, catalog,
                            cache, settings)


@router.post("/recommend", response_model=RankedResponse)
async def recommend_with_history(
    body: RecommendBody, engine: EngineDep, catalog: CatalogDep, cache: CacheDep, settings: SettingsDep,
    events: EventsDep,
) -> RankedResponse:
    history = body.history or user_history(catalog, events, body.user_id)
    return await _recommend(body.user_id, history, body.k, body.latency_budget_ms, body.backend, engine, catalog,
                            cache, settings)
