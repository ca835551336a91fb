"""Swapping the serving engine: on POST /admin/reload and /admin/rollback (service/routers/admin.py), and when a
new artifacts version is published (the job runner, service/jobs.py, replaces <root>/CURRENT; `follow_versions`
polls it).

The new engine (and agent) is loaded beside the serving one, then swapped in with one assignment: requests already
running keep the engine they started with (each takes `app.state.engine` once, in service/deps.py); the old engine
is dropped when the last of them finishes. Each successful swap pushes the directory it replaced onto
`app.state.previous_artifacts` (this process only); a rollback pops it. A swap that fails leaves the serving engine.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import structlog

from models.artifacts import POINTER, point_to, served_version
from service import metrics
from service.agentic import load_agent
from service.engine import Engine
from service.jobs import describe, read_state
from service.schemas import ReloadResult

log = structlog.get_logger("unisr.reload")
_lock = asyncio.Lock()


class ReloadBusy(RuntimeError):
    pass


class ReloadFailed(RuntimeError):
    pass


def attach(engine: Engine, settings) -> Engine:
    """Tell the engine how to explain a backend that is not loaded yet: the job runner's progress while it is queued,
    training or validating; "published as vN, being swapped in" between its publication and the swap."""
    def pending(backend: str) -> str | None:
        job = read_state(settings.artifacts_dir)["jobs"].get(backend)
        if not job or job["state"] not in ("queued", "training", "validating", "served"):
            return None
        if job["state"] == "served":  # published; unless an admin rolled back since, the swap is on its way
            current = served_version(settings.artifacts_dir).name == job.get("version")
            return f"published as {job.get('version')}, being swapped in" if current else None
        return describe(job)
    engine.pending = pending
    return engine


async def swap(state, directory: Path, rollback: bool = False) -> ReloadResult:
    """Load `directory` and swap it in (see the module's docstring); raises ReloadBusy, ReloadFailed."""
    old: Engine = state.engine
    if not directory.is_dir():
        raise ReloadFailed(f"artifacts_dir {str(directory)!r} is not a directory")
    if _lock.locked():
        raise ReloadBusy("a reload is already running")
    async with _lock:
        t0 = time.perf_counter()
        settings = old.settings.model_copy(update={"artifacts_dir": directory})
        try:
            engine = await asyncio.to_thread(Engine.start, settings, state.catalog, old.remote)
            agent = await asyncio.to_thread(load_agent, settings, engine.backends["retrieve"].get("bm25"))
        except Exception as e:  # noqa: BLE001 - the serving engine stays; the caller gets the reason
            metrics.RELOADS.labels("failed").inc()
            log.warning("reload_failed", artifacts=str(directory), error=repr(e))
            raise ReloadFailed(f"could not load {directory}: {e}") from None
        attach(engine, state.settings)
        state.engine, state.agent = engine, agent  # each request sees the old or the new engine, whole
        if state.settings.follow_versions and Path(directory).parent == Path(state.settings.artifacts_dir).parent:
            point_to(directory)  # a reload or rollback to a version survives a restart (the watcher ignores it)
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


async def follow_versions(state, poll_s: float) -> None:
    """Swap in each version the job runner publishes: when <root>/CURRENT names a new version, load it. A version
    that fails to load is logged and not retried until CURRENT changes again."""
    base = state.settings.artifacts_dir
    pointer = Path(base).parent / POINTER
    seen = pointer.read_text().strip() if pointer.exists() else None
    while True:
        await asyncio.sleep(poll_s)
        try:
            name = pointer.read_text().strip() if pointer.exists() else None
        except OSError:
            continue
        if name == seen:
            continue
        seen = name
        target = served_version(base)
        if target.resolve() == Path(state.engine.settings.artifacts_dir).resolve():
            continue
        try:
            await swap(state, target)
        except (ReloadBusy, ReloadFailed) as e:
            log.warning("version_not_served", version=name, error=str(e))
            if isinstance(e, ReloadBusy):
                seen = None  # try again on the next poll
