"""Dependencies shared by the routers: the engine, catalog, cache, event store and settings live on app.state.

A request takes the engine once (here) and uses that object throughout, so a hot reload that swaps
app.state.engine never changes the engine under a running request.

Routers take them as typed dependencies (`engine: EngineDep`), as FastAPI's full-stack template's api/deps.py does."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.agentic import AgentService
from service.engine import Engine
from service.settings import Settings
from service.stores.cache import LRUCache, RedisCache
from service.stores.catalog import Catalog
from service.stores.events import EventStore


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def get_cache(request: Request) -> LRUCache | RedisCache:
    return request.app.state.cache


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_events(request: Request) -> EventStore:
    return request.app.state.events


def get_agent(request: Request) -> AgentService | None:
    """The agentic-search service, or None when no agent model could be loaded."""
    return getattr(request.app.state, "agent", None)


EngineDep = Annotated[Engine, Depends(get_engine)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
CacheDep = Annotated[LRUCache | RedisCache, Depends(get_cache)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
EventsDep = Annotated[EventStore, Depends(get_events)]
AgentDep = Annotated[AgentService | None, Depends(get_agent)]


async def user_history(catalog: Catalog, events: EventStore, user_id: str | None) -> list[str]:
    """A user's items, oldest first: the catalogue's interaction log, then the latest events posted (to any replica
    when the events live in Redis: EventStore.recent_shared)."""
    return catalog.history(user_id) + await events.recent_shared(user_id)
