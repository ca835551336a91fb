"""Every endpoint through the real app (ASGI, lifespan run), bad input, fallback, LRU cache."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def test_health_ready_openapi(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert set(ready["detail"]["backends"]["recommend"]) == {"popularity", "cooc", "sasrec"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/recommend", "/retrieve", "/healthz", "/readyz"} <= set(paths)


@pytest.mark.parametrize("backend", ["bm25", "dense"])
def test_search_returns_matching_items(client, backend):
    r = client.get("/search", params={"q": "animation children's comedy 1990s", "k": 5, "backend": backend,
                                      "latency_budget_ms": 10_000})
    body = r.json()
    assert r.status_code == 200 and body["backend"] == backend and not body["degraded"]
    assert len(body["results"]) == 5 and body["took_ms"] >= 0
    assert any("Animation" in x["snippet"] for x in body["results"])
    scores = [x["score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("backend", ["bm25", "dense"])
def test_retrieve_finds_the_evidence(client, backend):
    r = client.get("/retrieve", params={"q": "Would a pear sink in water?", "k": 10, "backend": backend,
                                        "latency_budget_ms": 10_000})
    texts = [x["snippet"] for x in r.json()["results"]]
    assert r.status_code == 200 and any("density of a raw pear" in t for t in texts)


def test_recommend_known_user_excludes_seen_items(client, settings):
    from indexing.data import load_recsys

    history = load_recsys(settings.data_dir / "ml100k").sequences["1"]
    r = client.get("/recommend", params={"user_id": "1", "k": 10, "backend": "sasrec", "latency_budget_ms": 10_000})
    body = r.json()
    assert r.status_code == 200 and body["backend"] == "sasrec" and not body["cold_start"]
    ids = [x["id"] for x in body["results"]]
    assert len(ids) == 10 and not set(ids) & set(history)


def test_recommend_post_history_and_cold_start(client):
    r = client.post("/recommend", json={"history": ["50", "172", "181"], "k": 5, "backend": "cooc"})
    assert r.status_code == 200 and r.json()["backend"] == "cooc"
    assert not {"50", "172", "181"} & {x["id"] for x in r.json()["results"]}
    cold = client.get("/recommend", params={"user_id": "no-such-user", "k": 5}).json()
    assert cold["cold_start"] and cold["backend"] == "popularity" and len(cold["results"]) == 5


@pytest.mark.parametrize("method,url,params,status,needle", [
    ("get", "/search", {"q": "   "}, 422, "must not be empty"),
    ("get", "/search", {}, 422, "q: Field required"),
    ("get", "/search", {"q": "x", "k": 0}, 422, "greater than or equal to 1"),
    ("get", "/search", {"q": "x", "k": 1000}, 422, "less than or equal to 100"),
    ("get", "/search", {"q": "x", "backend": "nope"}, 400, "unknown backend 'nope'"),
    ("get", "/retrieve", {"q": "x", "backend": "popularity"}, 400, "available: bm25, dense"),
    ("get", "/retrieve", {"q": "x", "latency_budget_ms": -5}, 422, "greater than 0"),
    ("get", "/recommend", {"user_id": "1", "backend": "bm25"}, 400, "unknown backend"),
    ("get", "/recommend", {}, 422, "user_id"),
    ("post", "/recommend", {"history": "50"}, 422, "history"),
    ("post", "/recommend", {"k": 3, "colour": "red"}, 422, "colour"),
])
def test_bad_input_is_a_clear_4xx(client, method, url, params, status, needle):
    r = client.get(url, params=params) if method == "get" else client.post(url, json=params)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_malformed_json_body(client):
    r = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]


def test_tiny_budget_falls_back_to_the_cheapest_backend(client):
    body = client.get("/retrieve", params={"q": "pear density", "backend": "dense", "latency_budget_ms": 0.01}).json()
    assert body["degraded"] and body["backend"] == "bm25" and body["requested_backend"] == "dense"
    assert "budget" in body["degraded_reason"] and body["results"]


def test_missed_deadline_falls_back(client):
    dense = client.app.state.engine.backends["retrieve"]["dense"]
    saved, dense.ms_per_request = dense.ms_per_request, 0.0  # estimate says it fits; the run will not
    try:
        body = client.get("/retrieve", params={"q": "deadline test about pears", "backend": "dense",
                                               "latency_budget_ms": 0.5}).json()
    finally:
        dense.ms_per_request = saved
    assert body["degraded"] and body["backend"] == "bm25" and "deadline" in body["degraded_reason"]


def test_lru_cache_serves_repeats(client):
    params = {"q": "film noir mystery 1940s", "k": 7, "backend": "bm25"}
    first, second = client.get("/search", params=params).json(), client.get("/search", params=params).json()
    assert not first["cached"] and second["cached"]
    assert first["results"] == second["results"]


def test_metrics_exposed(client):
    client.get("/search", params={"q": "war drama 1950s"})
    text = client.get("/metrics").text
    assert "unisr_requests_total" in text and "unisr_backend_cost_ms" in text and "unisr_cache_total" in text
