"""Dependencies shared by the routers: the engine, catalog, cache and settings live on app.state."""
from __future__ import annotations

from fastapi import Request

from service.cache import LRUCache, RedisCache
from service.catalog import Catalog
from service.engine import Engine
from service.settings import Settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def get_cache(request: Request) -> LRUCache | RedisCache:
    return request.app.state.cache


def get_settings(request: Request) -> Settings:
    return request.app.state.settings
