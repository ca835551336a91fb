"""GET /recommend for a known user (history from the interaction log), POST /recommend with an explicit
history. Users with no known history get a cold-start answer (popular items), never an error."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query

from models.backend import Request
from service.deps import get_cache, get_catalog, get_engine, get_events, get_settings, user_history
from service.engine import UnknownBackend
from service.pipeline import ranked
from service.schemas import RankedResponse, RecommendBody

router = APIRouter(tags=["recommend"])


async def _recommend(user_id, history, k, budget, backend, engine, catalog, cache, settings) -> RankedResponse:
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
    k: int = Query(10, ge=1, le=100),
    latency_budget_ms: float | None = Query(None, gt=0, le=60_000),
    backend: str | None = Query(None, description="popularity | cooc | sasrec (default from settings)"),
    engine=Depends(get_engine), catalog=Depends(get_catalog), cache=Depends(get_cache),
    settings=Depends(get_settings), events=Depends(get_events),
) -> RankedResponse:
    history = user_history(catalog, events, user_id)
    return await _recommend(user_id, history, k, latency_budget_ms, backend, engine, catalog,
                            cache, settings)


@router.post("/recommend", response_model=RankedResponse)
async def recommend_with_history(
    body: RecommendBody, engine=Depends(get_engine), catalog=Depends(get_catalog), cache=Depends(get_cache),
    settings=Depends(get_settings), events=Depends(get_events),
) -> RankedResponse:
    history = body.history or user_history(catalog, events, body.user_id)
    return await _recommend(body.user_id, history, body.k, body.latency_budget_ms, body.backend, engine, catalog,
                            cache, settings)
