"""GET /recommend for a known user (history from the interaction log), POST /recommend with an explicit
history. Users with no known history get a cold-start answer (popular items), never an error. explain=true adds
each result's collaborative information (models/collab_info.py)."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query

from models.backend import Request
from service.deps import CacheDep, CatalogDep, EngineDep, EventsDep, SettingsDep, user_history
from service.engine import UnknownBackend
from service.pipeline import check_k, ranked
from service.schemas import MAX_K, RankedResponse, RecommendBody

router = APIRouter(tags=["recommend"])


def collab_counts(engine):
    """The engine's co-occurrence counts; 503 when they were not built."""
    if engine.collab is None:
        raise HTTPException(503, "explain=true needs the co-occurrence counts (recommend/collab under the "
                                 "artifacts directory): run `python -m indexing.build`")
    return engine.collab


def explained(resp: RankedResponse, history: list[str], engine) -> RankedResponse:
    """A copy of resp whose results carry CI(history, item)."""
    scores = collab_counts(engine).scores(history, [r.id for r in resp.results])
    return resp.model_copy(update={"results": [r.model_copy(update={"collab_info": round(float(s), 6)})
                                               for r, s in zip(resp.results, scores)]})


async def _recommend(user_id, history, k, budget, backend, engine, catalog, cache, settings,
                     want_explain: bool = False) -> RankedResponse:
    check_k(k, settings)
    if want_explain:
        collab_counts(engine)  # fail fast, before any work
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
    return explained(resp, known, engine) if want_explain else resp


@router.get("/recommend", response_model=RankedResponse)
async def recommend(
    user_id: str = Query(..., min_length=1, max_length=128),
    k: int = Query(10, ge=1, le=MAX_K, description="results wanted (at most UNISR_MAX_K)"),
    latency_budget_ms: float | None = Query(None, gt=0, le=60_000),
    backend: str | None = Query(None, description="popularity | cooc | sasrec (default from settings)"),
    explain: bool = Query(False, description="add each result's collaborative information (collab_info)"),
    *, engine: EngineDep, catalog: CatalogDep, cache: CacheDep, settings: SettingsDep, events: EventsDep,
) -> RankedResponse:
    history = await user_history(catalog, events, user_id)
    return await _recommend(user_id, history, k, latency_budget_ms, backend, engine, catalog,
                            cache, settings, explain)


@router.post("/recommend", response_model=RankedResponse)
async def recommend_with_history(
    body: RecommendBody, engine: EngineDep, catalog: CatalogDep, cache: CacheDep, settings: SettingsDep,
    events: EventsDep,
) -> RankedResponse:
    history = body.history or await user_history(catalog, events, body.user_id)
    return await _recommend(body.user_id, history, body.k, body.latency_budget_ms, body.backend, engine, catalog,
                            cache, settings, body.explain)
