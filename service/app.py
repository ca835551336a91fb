"""The FastAPI application: `create_app()` wires settings, engine, catalog and cache into app.state."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from models.artifacts import served_version
from service.agentic import load_agent
from service.engine import Engine
from service.jobs import JobRunner
from service.logs import configure_logging
from service.middleware import AccessLogMiddleware, BodyLimitMiddleware, InFlightLimitMiddleware
from service.reload import attach, follow_versions
from service.routers import admin, events, health, recommend, retrieve, search
from service.schemas import ERRORS
from service.settings import Settings
from service.stores.cache import make_cache
from service.stores.catalog import Catalog
from service.stores.events import EventStore

log = structlog.get_logger("unisr.app")


def served_settings(settings: Settings) -> Settings:
    """With follow_versions, the settings of the version <artifacts root>/CURRENT names (the newest one a job runner
    published); else the settings as they are."""
    if settings.follow_versions:
        return settings.model_copy(update={"artifacts_dir": served_version(settings.artifacts_dir)})
    return settings


def load_state(app: FastAPI, settings: Settings, remote=None) -> None:
    """Catalogue, engine and agent of the served version (served_settings)."""
    catalog = Catalog.load(settings.data_dir / "ml100k", settings.data_dir / "strategyqa-facts")
    settings = served_settings(settings)
    engine = attach(Engine.start(settings, catalog, remote), app.state.settings)
    app.state.catalog, app.state.engine = catalog, engine
    app.state.agent = load_agent(settings, engine.backends["retrieve"].get("bm25"))


def create_app(settings: Settings | None = None, remote: Callable[[], dict] | None = None) -> FastAPI:
    """remote: called at start-up, (task, name) -> a backend another process serves (service.serve_app)."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        t0 = time.perf_counter()
        app.state.settings = settings
        app.state.cache = make_cache(settings.redis_url, settings.cache_size, settings.cache_ttl_s,
                                     settings.redis_timeout_s)
        app.state.events = EventStore(settings)
        await app.state.events.start()
        await asyncio.to_thread(load_state, app, settings, remote() if remote else None)
        log.info("ready", seconds=round(time.perf_counter() - t0, 2), cache=app.state.cache.kind,
                 events=app.state.events.kind, artifacts=str(app.state.engine.settings.artifacts_dir))
        runner = (JobRunner(settings.artifacts_dir, settings.data_dir, settings.jobs, settings.job_args,
                            settings.job_floors).start() if settings.run_jobs else None)
        watcher = (asyncio.create_task(follow_versions(app.state, settings.version_poll_s))
                   if settings.follow_versions else None)
        yield
        if watcher is not None:
            watcher.cancel()
        if runner is not None:  # the running job is interrupted; its stage stays and resumes on the next start
            await asyncio.to_thread(runner.stop)
        app.state.engine.close()
        await app.state.events.close()
        await app.state.cache.close()

    app = FastAPI(title="unisr", version="0.1.0", lifespan=lifespan, responses=ERRORS,
                  description="One API for search, recommendation, generative retrieval and agentic search. "
                              "Every request carries a latency budget (latency_budget_ms).")
    for router in (search.router, recommend.router, retrieve.router, events.router, admin.router, health.router):
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:  # off by default: no CORS headers unless origins are configured
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", [])), "msg": e.get("msg", "")} for e in exc.errors()]
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                            for e in errors) or "invalid request"
        return JSONResponse(status_code=422, content={"detail": message, "errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette lists the first matching route's methods only (GET, not POST)
            allowed = {m.upper() for path, ops in request.app.openapi()["paths"].items()
                       if compile_path(path)[0].match(request.url.path) for m in ops}
            if allowed:
                headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.error("unhandled", path=request.url.path, error=repr(exc))
        return JSONResponse(status_code=500, content={"detail": "internal error; see the server log"})

    app.add_middleware(AccessLogMiddleware, log=log)

    if settings.max_in_flight:  # outermost: a refusal costs no routing, validation, cache or logging
        app.add_middleware(InFlightLimitMiddleware, limit=settings.max_in_flight, max_queued=settings.max_queued)
    return app
