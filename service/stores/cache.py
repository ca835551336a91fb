"""Response cache: an in-process LRU (default) or Redis (redis-py asyncio) when UNISR_REDIS_URL is set.

Redis errors never fail a request: the cache is bypassed (and counted), the answer is computed as usual.
"""
from __future__ import annotations

import hashlib
import json

import structlog
from cachetools import TTLCache

from service import metrics

log = structlog.get_logger("unisr.cache")


def make_redis(url: str, timeout_s: float):
    """A redis-py asyncio client whose every call is bounded: connect and socket timeouts, and one immediate
    retry (a pooled connection broken by a Redis restart) instead of the default back-off of seconds."""
    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                          retry=Retry(NoBackoff(), 1), health_check_interval=0)


def cache_key(endpoint: str, params: dict) -> str:
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return f"unisr:v1:{endpoint}:{hashlib.sha1(blob.encode()).hexdigest()}"


class LRUCache:
    kind = "lru"

    def __init__(self, size: int, ttl_s: int):
        self._data: TTLCache = TTLCache(maxsize=size, ttl=ttl_s)

    async def get(self, key: str) -> dict | None:
        value = self._data.get(key)
        metrics.CACHE.labels("hit" if value is not None else "miss").inc()
        return value

    async def set(self, key: str, value: dict) -> None:
        self._data[key] = value

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class RedisCache:
    kind = "redis"

    def __init__(self, url: str, ttl_s: int, timeout_s: float):
        self.ttl_s = ttl_s
        self.client = make_redis(url, timeout_s)

    async def get(self, key: str) -> dict | None:
        try:
            raw = await self.client.get(key)
        except Exception as e:  # redis down or slow: bypass
            metrics.CACHE.labels("error").inc()
            log.warning("cache_get_failed", error=str(e))
            return None
        metrics.CACHE.labels("hit" if raw is not None else "miss").inc()
        return json.loads(raw) if raw is not None else None

    async def set(self, key: str, value: dict) -> None:
        try:
            await self.client.set(key, json.dumps(value), ex=self.ttl_s)
        except Exception as e:
            metrics.CACHE.labels("error").inc()
            log.warning("cache_set_failed", error=str(e))

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.aclose()


def make_cache(redis_url: str | None, size: int, ttl_s: int, timeout_s: float) -> LRUCache | RedisCache:
    return RedisCache(redis_url, ttl_s, timeout_s) if redis_url else LRUCache(size, ttl_s)
