"""The Redis response cache against the real Redis on 127.0.0.1:6379, and the gateway with Redis down."""
from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="module")
def redis_client():
    r = redis.Redis.from_url(REDIS_URL)
    r.ping()  # CI starts redis-server (deploy/ensure-redis.sh); a failure here is a real failure
    r.flushdb()
    yield r
    r.flushdb()


def test_redis_cache_round_trip(settings, redis_client):
    s = settings.model_copy(update={"redis_url": REDIS_URL, "warmup": False})
    with TestClient(create_app(s)) as c:
        assert c.get("/readyz").json()["detail"]["cache"] == "redis"
        params = {"q": "Would a pear sink in water?", "k": 3, "backend": "bm25"}
        first, second = c.get("/retrieve", params=params).json(), c.get("/retrieve", params=params).json()
    assert not first["cached"] and second["cached"] and first["results"] == second["results"]
    keys = redis_client.keys("unisr:v1:retrieve:*")
    assert len(keys) == 1 and 0 < redis_client.ttl(keys[0]) <= s.cache_ttl_s


def test_gateway_serves_when_redis_is_unreachable(settings):
    s = settings.model_copy(update={"redis_url": "redis://127.0.0.1:6390/0", "warmup": False,
                                    "redis_timeout_s": 0.05})
    with TestClient(create_app(s)) as c:
        r = c.get("/search", params={"q": "comedy 1990s", "backend": "bm25"})
        assert r.status_code == 200 and r.json()["results"] and not r.json()["cached"]
        ready = c.get("/readyz").json()
        assert ready["status"] == "degraded" and ready["detail"]["cache_ok"] is False
        assert 'unisr_cache_total{result="error"}' in c.get("/metrics").text
