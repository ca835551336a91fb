"""POST /admin/reload: load a new engine beside the serving one and swap it in; POST /admin/rollback: go back to the
artifacts directory served before the last successful reload (bearer token required for both).

Requests already running keep the engine they started with (each takes `app.state.engine` once, in
service/deps.py); the old engine is dropped when the last of them finishes. Each successful reload pushes the
directory it replaced onto `app.state.previous_artifacts` (this process only; a restart starts from the settings'
directory); a rollback pops it.
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
    current = request.app.state.engine.settings.artifacts_dir
    directory = Path(body.artifacts_dir) if body and body.artifacts_dir else current
    return await _swap(request, directory, rollback=False)


@router.post("/rollback", response_model=ReloadResult, dependencies=[Depends(require_admin)],
             responses={400: {"model": ErrorResponse, "description": "the previous directory no longer loads"},
                        401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
                        403: {"model": ErrorResponse, "description": "admin disabled (no UNISR_ADMIN_TOKEN)"},
                        409: {"model": ErrorResponse, "description": "no previous version, or a reload is running"}})
async def rollback(request: Request) -> ReloadResult:
    history: list[Path] = getattr(request.app.state, "previous_artifacts", [])
    if not history:
        raise HTTPException(409, "no previous version to roll back to: this process has not reloaded since it "
                                 "started (POST /admin/reload first)")
    return await _swap(request, history[-1], rollback=True)


async def _swap(request: Request, directory: Path, rollback: bool) -> ReloadResult:
    state = request.app.state
    old: Engine = state.engine
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
        history = getattr(state, "previous_artifacts", None)
        if history is None:
            history = state.previous_artifacts = []
        if rollback:
            history.pop()
        else:
            history.append(old.settings.artifacts_dir)
        seconds = time.perf_counter() - t0
    metrics.RELOADS.labels("ok").inc()
    log.info("rolled_back" if rollback else "reloaded", artifacts=str(directory),
             previous=str(old.settings.artifacts_dir), seconds=round(seconds, 2))
    return ReloadResult(version=directory.resolve().name, artifacts_dir=str(directory),
                        previous_artifacts_dir=str(old.settings.artifacts_dir),
                        backends={t: engine.available(t) for t in engine.backends}, seconds=round(seconds, 3))
