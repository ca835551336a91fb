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
    # the baselines always; gems too where `make gems` has run
    assert {"popularity", "cooc", "sasrec"} <= set(ready["detail"]["backends"]["recommend"]) <= {
        "popularity", "cooc", "sasrec", "gems"}
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


def test_recommend_explain_returns_each_results_collaborative_information(client, settings):
    """explain=true: every result carries CI(history, item) computed from the training co-occurrence counts, the same
    figure models/collab_info.py gives; co-occurrence recommendations have CI > 0, and a plain request has none."""
    from indexing.data import load_recsys
    from models.collab_info import CollabInfo

    rec = load_recsys(settings.data_dir / "ml100k")
    info = CollabInfo.from_sequences(rec.train_sequences())
    body = client.post("/recommend", json={"history": ["50", "172", "181"], "k": 5, "backend": "cooc",
                                           "explain": True}).json()
    ids = [x["id"] for x in body["results"]]
    got = [x["collab_info"] for x in body["results"]]
    assert got == pytest.approx(list(info.scores(["50", "172", "181"], ids)), abs=1e-6)
    assert all(c > 0 for c in got)  # cooc recommends items that co-occurred with the history
    r = client.get("/recommend", params={"user_id": "1", "k": 3, "explain": "true"}).json()
    assert len(r["results"]) == 3 and all(x["collab_info"] >= 0 for x in r["results"])
    plain = client.get("/recommend", params={"user_id": "1", "k": 3}).json()
    assert all(x["collab_info"] is None for x in plain["results"])


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
    ("get", "/recommend", {"user_id": "1", "explain": "maybe"}, 422, "explain"),
    ("post", "/recommend", {"history": ["50"], "explain": 0}, 422, "explain"),
    ("post", "/recommend", {"history": "50"}, 422, "history"),
    ("post", "/recommend", {"k": 3, "colour": "red"}, 422, "colour"),
])
def test_bad_input_is_a_clear_4xx(client, method, url, params, status, needle):
    r = client.get(url, params=params) if method == "get" else client.post(url, json=params)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def _ask(client, method: str, url: str, params: dict, k: int):
    if method == "get":
        return client.get(url, params={**params, "k": k})
    return client.post(url, json={**params, "k": k})


@pytest.mark.parametrize("method,url,params", [
    ("get", "/search", {"q": "war drama"}), ("get", "/retrieve", {"q": "pear"}),
    ("get", "/recommend", {"user_id": "1"}), ("post", "/recommend", {"history": ["50"]})])
def test_k_over_max_k_is_a_422_naming_the_limit(client, settings, method, url, params):
    from service.settings import Settings

    assert Settings.model_fields["max_k"].default == 100  # the schema's bound (le=100), tested above
    limited = Settings(**{**settings.model_dump(), "max_k": 5}, _env_file=None)
    saved, client.app.state.settings = client.app.state.settings, limited  # what get_settings hands the routers
    try:
        over, ok = _ask(client, method, url, params, 6), _ask(client, method, url, params, 5)
    finally:
        client.app.state.settings = saved
    assert over.status_code == 422, over.text
    assert "the limit is 5" in over.json()["detail"] and "UNISR_MAX_K" in over.json()["detail"]
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["results"]) == 5


def test_malformed_json_body(client):
    r = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]


def test_tiny_budget_falls_back_to_the_cheapest_backend(client):
    body = client.get("/retrieve", params={"q": "pear density", "backend": "dense", "latency_budget_ms": 0.01}).json()
    assert body["degraded"] and body["backend"] == "bm25" and body["requested_backend"] == "dense"
    assert "budget" in body["degraded_reason"] and body["results"]


def test_missed_deadline_falls_back(client):
    from models.backend import Request

    engine = client.app.state.engine
    dense = engine.backends["retrieve"]["dense"]
    q = "deadline test about pears"
    # the time the engine keeps for the fallback now (its cost x its measured slowdown: larger on a loaded machine),
    # with half again as slack, so dense is tried and left only a few ms
    kept = 1.5 * engine.reserve_ms("retrieve", "dense", Request("retrieve", query=q, k=10), 0.0)
    margin = client.app.state.settings.budget_margin  # and a share for its own work
    saved, dense.ms_per_request = dense.ms_per_request, 0.0  # estimate says it fits; the run will not
    try:
        body = client.get("/retrieve", params={"q": q, "backend": "dense",
                                               "latency_budget_ms": (kept + 0.5) / (1 - margin)}).json()
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


# --- limits, CORS, error hygiene ------------------------------------------------------------------------------
def test_body_over_the_limit_is_413(client, settings):
    big = b'{"history": [' + b'"1",' * (settings.max_body_bytes // 4) + b'"1"]}'
    r = client.post("/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit is 65536 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"history": ['
        for _ in range(settings.max_body_bytes // 1000 + 1):
            yield b'"1",' * 250
        yield b'"1"]}'

    r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit is 65536 bytes" in r.json()["detail"]
    assert client.post("/recommend", json={"history": ["50"], "k": 3}).status_code == 200


def test_cors_off_by_default_and_on_when_configured(client, settings, tmp_path):
    r = client.get("/healthz", headers={"Origin": "https://example.org"})
    assert "access-control-allow-origin" not in r.headers
    s = settings.model_copy(update={"warmup": False, "cors_origins": ["https://example.org"],
                                    "events_log": tmp_path / "events.log"})
    with TestClient(create_app(s)) as c:
        r = c.get("/healthz", headers={"Origin": "https://example.org"})
        assert r.headers["access-control-allow-origin"] == "https://example.org"
        assert "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": "https://evil.test"}).headers


def test_405_lists_every_method_of_the_path(client):
    r = client.put("/recommend")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"


def test_internal_errors_carry_no_stack_trace(settings, tmp_path):
    s = settings.model_copy(update={"warmup": False, "events_log": tmp_path / "events.log"})
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        bm25 = c.app.state.engine.backends["search"]["bm25"]
        bm25.answer = lambda requests, deadline=None: (_ for _ in ()).throw(RuntimeError("secret internals"))
        r = c.get("/search", params={"q": "boom", "backend": "bm25"})
    assert r.status_code == 500 and r.json() == {"detail": "internal error; see the server log"}
    assert "Traceback" not in r.text and "secret" not in r.text


# --- micro-batching -------------------------------------------------------------------------------------------
class _CountingBackend:
    """Stands in for a model backend: records the batches it is given, costs `ms` per call."""

    name, cost_rank = "fake", 5

    def __init__(self, ms: float = 20.0):
        self.ms, self.batches, self.ms_per_request = ms, [], ms

    def estimate_ms(self, request):
        return self.ms

    def answer(self, requests, deadline=None):
        import time

        from models.backend import Answer, Hit

        self.batches.append([dict(r.options) for r in requests])
        time.sleep(self.ms / 1000)
        return [Answer([Hit(r.query, 1.0)], self.name, dict(r.options), self.ms) for r in requests]


async def test_batcher_groups_concurrent_requests_by_options():
    import asyncio
    import time

    from models.backend import Request
    from service.batcher import Batcher

    backend = _CountingBackend()
    batcher = Batcher("retrieve", backend, max_size=4, max_wait_ms=5)
    deadline = time.monotonic() + 10
    reqs = [Request("retrieve", query=f"q{i}", options={"steps": 2 if i % 2 else 4}) for i in range(12)]
    answers = await asyncio.gather(*(batcher.submit(r, deadline) for r in reqs))
    assert [a.hits[0].id for a in answers] == [r.query for r in reqs]  # each caller gets its own answer
    assert all(len({o["steps"] for o in b}) == 1 for b in backend.batches)  # never mixed options
    assert max(len(b) for b in backend.batches) > 1 and all(len(b) <= 4 for b in backend.batches)
    assert sum(len(b) for b in backend.batches) == 12
    batcher.close()


async def test_batcher_refuses_a_deadline_it_cannot_meet():
    import time

    import pytest as _pytest

    from models.backend import Request
    from service.batcher import Batcher, WouldMissDeadline

    backend = _CountingBackend(ms=50)
    batcher = Batcher("retrieve", backend, max_size=8, max_wait_ms=1)
    with _pytest.raises(WouldMissDeadline):
        await batcher.submit(Request("retrieve", query="tight"), time.monotonic() + 0.01)
    assert backend.batches == []  # not run at all: the engine serves it from the fallback at once
    batcher.close()


def test_engine_falls_back_when_a_batched_request_would_miss(client):
    dense = client.app.state.engine.backends["retrieve"]["dense"]
    saved, dense.ms_per_request = dense.ms_per_request, 0.0
    try:
        body = client.get("/retrieve", params={"q": "batched pears deadline", "backend": "dense",
                                               "latency_budget_ms": 0.2}).json()
    finally:
        dense.ms_per_request = saved
    assert body["degraded"] and body["backend"] == "bm25" and body["results"]
    assert "unisr_batch_size_bucket" in client.get("/metrics").text


def test_agentic_without_an_agent_degrades_to_passages(client):
    """This app loads no agent (UNISR_AGENT=false): mode=agentic answers 200 with passages, degraded, and says why."""
    r = client.get("/search", params={"q": "Would a pear sink in water?", "mode": "agentic"})
    body = r.json()
    assert r.status_code == 200 and body["mode"] == "agentic" and body["degraded"] and body["answer"] is None
    assert body["results"] and "no agent model is loaded" in body["degraded_reason"]
    with client.stream("GET", "/search", params={"q": "Would a pear sink?", "mode": "agentic", "stream": "true"}) as s:
        text = s.read().decode()
    assert s.headers["content-type"].startswith("text/event-stream") and text.startswith("event: answer")


def test_recommend_explain_without_the_counts_is_a_clear_503(settings, tmp_path):
    """An artifacts directory built before recommend/collab existed: recommendations still work, explain=true says
    what to run."""
    art = tmp_path / "artifacts"
    for task in ("search", "retrieve"):
        (art / task).mkdir(parents=True)
        for d in (settings.artifacts_dir / task).iterdir():
            (art / task / d.name).symlink_to(d)
    (art / "recommend").mkdir()
    for name in ("popularity", "cooc", "sasrec"):
        (art / "recommend" / name).symlink_to(settings.artifacts_dir / "recommend" / name)
    with TestClient(create_app(settings.model_copy(update={"artifacts_dir": art, "warmup": False}))) as c:
        assert c.get("/recommend", params={"user_id": "1", "k": 3}).status_code == 200
        r = c.get("/recommend", params={"user_id": "1", "k": 3, "explain": "true"})
        assert r.status_code == 503 and "python -m indexing.build" in r.json()["detail"]
        r = c.post("/recommend", json={"history": ["50"], "explain": True})
        assert r.status_code == 503
