"""GET /search: rank the catalogue's items for a query (optionally for a known user)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from models.backend import Request
from service.deps import get_cache, get_catalog, get_engine, get_events, get_settings, user_history
from service.ranked import MAX_QUERY_CHARS, clean_query, ranked
from service.schemas import RankedResponse

router = APIRouter(tags=["search"])


@router.get("/search", response_model=RankedResponse)
async def search(
    q: str = Query(..., description="the query text (not blank)", min_length=1, max_length=MAX_QUERY_CHARS),
    user_id: str | None = Query(None, max_length=128),
    k: int = Query(10, ge=1, le=100),
    latency_budget_ms: float | None = Query(None, gt=0, le=60_000),
    backend: str | None = Query(None, description="bm25 | dense (default from settings)"),
    engine=Depends(get_engine), catalog=Depends(get_catalog), cache=Depends(get_cache),
    settings=Depends(get_settings), events=Depends(get_events),
) -> RankedResponse:
    q = clean_query(q, settings)
    request = Request("search", query=q, user_id=user_id, history=user_history(catalog, events, user_id),
                      k=k)
    return await ranked("search", request, backend, latency_budget_ms, engine=engine, catalog=catalog, cache=cache,
                        settings=settings, cache_params={"q": q, "user_id": user_id, "k": k})
