"""POST /admin/reload: load a new engine beside the serving one and swap it in; POST /admin/rollback: go back to the
artifacts directory served before the last successful swap; GET /admin/jobs: the background training jobs
(service/jobs.py). A bearer token (UNISR_ADMIN_TOKEN) is required for all three: without it, or with a wrong one,
they answer 401 with WWW-Authenticate: Bearer (HTTP's answer to missing credentials); with no token configured the
admin endpoints are off and answer 403. How the swap works: service/reload.py.
"""
from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.jobs import describe, read_state
from service.reload import ReloadBusy, ReloadFailed, swap
from service.schemas import ErrorResponse, JobsStatus, ReloadBody, ReloadResult

router = APIRouter(prefix="/admin", tags=["admin"])
bearer = HTTPBearer(auto_error=False)
REFUSED = {401: {"model": ErrorResponse, "description": "missing or wrong bearer token"},
           403: {"model": ErrorResponse, "description": "admin disabled (no UNISR_ADMIN_TOKEN)"}}


def require_admin(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    token = request.app.state.settings.admin_token
    if not token:
        raise HTTPException(403, "admin disabled: set UNISR_ADMIN_TOKEN to enable the admin endpoints")
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(401, "a valid bearer token is required (Authorization: Bearer <UNISR_ADMIN_TOKEN>)",
                            headers={"WWW-Authenticate": "Bearer"})


@router.post("/reload", response_model=ReloadResult, dependencies=[Depends(require_admin)],
             responses={400: {"model": ErrorResponse, "description": "the directory holds no loadable artifacts"},
                        **REFUSED,
                        409: {"model": ErrorResponse, "description": "another reload is running"}})
async def reload(request: Request, body: ReloadBody | None = None) -> ReloadResult:
    current = request.app.state.engine.settings.artifacts_dir
    directory = Path(body.artifacts_dir) if body and body.artifacts_dir else current
    return await _swap(request, directory, rollback=False)


@router.post("/rollback", response_model=ReloadResult, dependencies=[Depends(require_admin)],
             responses={400: {"model": ErrorResponse, "description": "the previous directory no longer loads"},
                        **REFUSED,
                        409: {"model": ErrorResponse, "description": "no previous version, or a reload is running"}})
async def rollback(request: Request) -> ReloadResult:
    history: list[Path] = getattr(request.app.state, "previous_artifacts", [])
    if not history:
        raise HTTPException(409, "no previous version to roll back to: this process has not reloaded since it "
                                 "started (POST /admin/reload first)")
    return await _swap(request, history[-1], rollback=True)


async def _swap(request: Request, directory: Path, rollback: bool) -> ReloadResult:
    try:
        return await swap(request.app.state, directory, rollback)
    except ReloadBusy as e:
        raise HTTPException(409, str(e)) from None
    except ReloadFailed as e:
        raise HTTPException(400, str(e)) from None


@router.get("/jobs", response_model=JobsStatus, dependencies=[Depends(require_admin)], responses=REFUSED)
async def jobs(request: Request) -> JobsStatus:
    """The background training jobs: state (queued, training, validating, served, rejected, failed, interrupted),
    progress of the running stage (step of total, ETA), the last validation and the version each one made."""
    state = read_state(request.app.state.settings.artifacts_dir)
    engine = request.app.state.engine
    return JobsStatus(serving=Path(engine.settings.artifacts_dir).name, jobs=[
        {**{k: v for k, v in j.items() if k != "pid"}, "summary": describe(j)} for j in state["jobs"].values()])
