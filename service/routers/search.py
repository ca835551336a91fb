"""GET /search: rank the catalogue's items for a query (optionally for a known user), or, with mode=agentic,
answer a multi-hop question with the EXSEARCH agent (mode=auto sends questions to the agent; stream=true
emits the agent's steps as server-sent events)."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from models.backend import Request
from service import agentic, metrics
from service.deps import AgentDep, CacheDep, CatalogDep, EngineDep, EventsDep, SettingsDep, user_history
from service.pipeline import MAX_QUERY_CHARS, check_k, clean_query, ranked
from service.schemas import MAX_K, AgenticResponse, RankedResponse

router = APIRouter(tags=["search"])


@router.get("/search", response_model=RankedResponse | AgenticResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "ranked items, an agent's answer, or (stream=true) its steps as SSE"}})
async def search(
    q: str = Query(..., description="the query text (not blank)", min_length=1, max_length=MAX_QUERY_CHARS),
    user_id: str | None = Query(None, max_length=128),
    k: int = Query(10, ge=1, le=MAX_K, description="results wanted (at most UNISR_MAX_K)"),
    latency_budget_ms: float | None = Query(None, gt=0, le=60_000),
    backend: str | None = Query(None, description="bm25 | dense (default from settings); ranked mode"),
    mode: Literal["ranked", "agentic", "auto"] = Query(
        "ranked", description="ranked: catalogue items; agentic: the EXSEARCH agent answers the question; "
                              "auto: agentic when q is a question"),
    stream: bool = Query(False, description="agentic: server-sent events, one per step, then the answer"),
    *, engine: EngineDep, catalog: CatalogDep, cache: CacheDep, settings: SettingsDep, events: EventsDep,
    agent: AgentDep,
):
    q = clean_query(q, settings)
    check_k(k, settings)
    if mode == "agentic" or (mode == "auto" and agentic.looks_like_question(q)):
        return await agentic_search(q, latency_budget_ms, stream, agent, catalog, settings, engine)
    if stream:
        raise HTTPException(422, "stream=true goes with mode=agentic (ranked results are not streamed)")
    request = Request("search", query=q, user_id=user_id, history=await user_history(catalog, events, user_id),
                      k=k)
    return await ranked("search", request, backend, latency_budget_ms, engine=engine, catalog=catalog, cache=cache,
                        settings=settings, cache_params={"q": q, "user_id": user_id, "k": k})


async def agentic_search(q: str, budget_ms: float | None, stream: bool, agent, catalog, settings, engine):
    budget = float(budget_ms or settings.agent_latency_budget_ms)
    start = time.monotonic()
    entries = catalog.entries("retrieve")
    if agent is None:  # degrade like every backend does: the cheapest retriever's passages, no answer, and why
        fallback = engine.cheapest("retrieve")
        answer = await engine.run("retrieve", fallback, Request("retrieve", query=q, k=3), None)
        body = AgenticResponse(**agentic.degraded(
            answer.hits, entries, budget, start, f"no agent model is loaded (UNISR_AGENT=false or it failed to "
            f"load: run `make agent` or `python -m indexing.lm prepare`); returned {fallback} passages"))
        if not stream:
            return body
        one = f"event: answer\ndata: {json.dumps(body.model_dump())}\n\n"
        return StreamingResponse(iter([one]), media_type="text/event-stream")
    if not stream:
        body = await asyncio.to_thread(agentic.response, agent, q, budget, start, entries)
        metrics.REQUESTS.labels("search-agentic", body["model"], "degraded" if body["degraded"] else "ok").inc()
        return AgenticResponse(**body)

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def on_step(step):
        loop.call_soon_threadsafe(queue.put_nowait, ("step", agentic.step_view(step)))

    async def run():
        try:
            body = await asyncio.to_thread(agentic.response, agent, q, budget, start, entries, on_step)
            await queue.put(("answer", AgenticResponse(**body).model_dump()))
        except Exception as e:  # the stream is already open: report the failure as an event
            await queue.put(("error", {"detail": f"agent failed: {type(e).__name__}"}))

    async def events():
        task = asyncio.create_task(run())
        try:
            while True:
                kind, data = await queue.get()
                yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
                if kind in ("answer", "error"):
                    break
        finally:
            await task

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
