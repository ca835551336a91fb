"""Liveness, readiness and Prometheus metrics."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.jobs import describe, read_state
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request):
    state = request.app.state
    engine = getattr(state, "engine", None)
    if engine is None:
        return JSONResponse(status_code=503, content={"status": "starting", "detail": {}})
    cache_ok = await state.cache.ping()
    events = await state.events.status()
    degraded = ([] if cache_ok else [f"cache: {state.cache.kind} unreachable, bypassed"])
    if events["pending_replay"]:
        degraded.append(f"events: {events['pending_replay']} in the local log pending replay to Redis")
    if events["redis_ok"] is False:
        degraded.append("events: Redis unreachable, new events go to the local log")
    detail = {"backends": {t: engine.available(t) for t in engine.backends}, "cache": state.cache.kind,
              "cache_ok": cache_ok, "events": events, "artifacts": str(engine.settings.artifacts_dir),
              "degraded": degraded, "agent": getattr(state, "agent", None) and state.agent.describe(),
              "jobs": {n: describe(j) for n, j in read_state(state.settings.artifacts_dir)["jobs"].items()}}
    return Health(status="degraded" if degraded else "ready", detail=detail)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
