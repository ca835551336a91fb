"""POST /admin/reload: load a new engine beside the serving one and swap it in (bearer token required).

Requests already running keep the engine they started with (each takes `app.state.engine` once, in
service/deps.py); the old engine is dropped when the last of them finishes.
"""
from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service import metrics
from service.engine import Engine
from service.schemas import ErrorResponse, ReloadBody, ReloadResult

log = structlog.get_logger("unisr.admin")
router = APIRouter(prefix="/admin", tags=["admin"])
bearer = HTTPBearer(auto_error=False)
_reload_lock = asyncio.Lock()


def require_admin(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    token = request.app.state.settings.admin_token
    if not token:
        raise HTTPException(403, "admin disabled: set UNISR_ADMIN_TOKEN to enable the admin endpoints")
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})


@router.post("/reload", response_model=ReloadResult, dependencies=[Depends(require_admin)],
             responses={400: {"model": ErrorResponse, "description": "the directory holds no loadable artifacts"},
                        401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
                        403: {"model": ErrorResponse, "description": "admin disabled (no UNISR_ADMIN_TOKEN)"},
                        409: {"model": ErrorResponse, "description": "another reload is running"}})
async def reload(request: Request, body: ReloadBody | None = None) -> ReloadResult:
    state = request.app.state
    old: Engine = state.engine
    directory = Path(body.artifacts_dir) if body and body.artifacts_dir else old.settings.artifacts_dir
    if not directory.is_dir():
        raise HTTPException(400, f"artifacts_dir {str(directory)!r} is not a directory")
    if _reload_lock.locked():
        raise HTTPException(409, "a reload is already running")
    async with _reload_lock:
        t0 = time.perf_counter()
        settings = old.settings.model_copy(update={"artifacts_dir": directory})
        try:
            engine = await asyncio.to_thread(Engine.start, settings, state.catalog)
        except Exception as e:  # noqa: BLE001 - the serving engine stays; the caller gets the reason
            metrics.RELOADS.labels("failed").inc()
            log.warning("reload_failed", artifacts=str(directory), error=repr(e))
            raise HTTPException(400, f"could not load {directory}: {e}") from None
        state.engine = engine  # one assignment: each request sees the old or the new engine, whole
        seconds = time.perf_counter() - t0
    metrics.RELOADS.labels("ok").inc()
    log.info("reloaded", artifacts=str(directory), previous=str(old.settings.artifacts_dir), seconds=round(seconds, 2))
    return ReloadResult(version=directory.resolve().name, artifacts_dir=str(directory),
                        previous_artifacts_dir=str(old.settings.artifacts_dir),
                        backends={t: engine.available(t) for t in engine.backends}, seconds=round(seconds, 3))
