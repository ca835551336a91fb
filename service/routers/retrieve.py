"""GET /retrieve: rank the document corpus for a query."""
from __future__ import annotations

from fastapi import APIRouter, Query

from models.backend import Request
from service.deps import CacheDep, CatalogDep, EngineDep, SettingsDep
from service.pipeline import MAX_QUERY_CHARS, check_k, clean_query, ranked
from service.schemas import MAX_K, RankedResponse

router = APIRouter(tags=["retrieve"])


@router.get("/retrieve", response_model=RankedResponse)
async def retrieve(
    q: str = Query(..., description="the query text (not blank)", min_length=1, max_length=MAX_QUERY_CHARS),
    k: int = Query(10, ge=1, le=MAX_K, description="results wanted (at most UNISR_MAX_K)"),
    latency_budget_ms: float | None = Query(None, gt=0, le=60_000),
    steps: int | None = Query(None, ge=1, le=64, description="denoising steps (generative backends)"),
    backend: str | None = Query(None, description="bm25 | dense | diffugr | ar (default from settings)"),
    *, engine: EngineDep, catalog: CatalogDep, cache: CacheDep, settings: SettingsDep,
) -> RankedResponse:
    q = clean_query(q, settings)
    check_k(k, settings)
    request = Request("retrieve", query=q, k=k, options={"steps": steps} if steps else {})
    return await ranked("retrieve", request, backend, latency_budget_ms, engine=engine, catalog=catalog,
                        cache=cache, settings=settings, cache_params={"q": q, "k": k, "steps": steps})
