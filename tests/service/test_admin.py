"""POST /admin/reload: auth (403 disabled, 401 without / with a wrong token), swapping engines while serving."""
from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def small_artifacts(artifacts, tmp_path_factory):
    """A second artifacts directory holding only the cheap backends (links into the real one)."""
    root = tmp_path_factory.mktemp("artifacts") / "v2-small"
    for task, backend in [("search", "bm25"), ("retrieve", "bm25"), ("recommend", "popularity")]:
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / backend).symlink_to(artifacts / task / backend)
    return root


@pytest.fixture(scope="module")
def client(settings, tmp_path_factory):
    s = settings.model_copy(update={"warmup": False, "admin_token": TOKEN,
                                    "events_log": tmp_path_factory.mktemp("ev") / "events.log"})
    with TestClient(create_app(s)) as c:
        yield c


def test_admin_disabled_without_a_token(settings, tmp_path):
    s = settings.model_copy(update={"warmup": False, "admin_token": None, "events_log": tmp_path / "e.log"})
    with TestClient(create_app(s)) as c:
        r = c.post("/admin/reload", headers=AUTH)
        assert r.status_code == 403 and "admin disabled" in r.json()["detail"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": TOKEN}])
def test_admin_calls_need_the_token(client, headers):
    for method, path in (("POST", "/admin/reload"), ("POST", "/admin/rollback"), ("GET", "/admin/jobs")):
        r = client.request(method, path, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text)
        assert "bearer token is required" in r.json()["detail"]


def test_reload_rejects_a_bad_directory_and_keeps_serving(client, tmp_path):
    engine = client.app.state.engine
    r = client.post("/admin/reload", headers=AUTH, json={"artifacts_dir": str(tmp_path / "nope")})
    assert r.status_code == 400 and "not a directory" in r.json()["detail"]
    r = client.post("/admin/reload", headers=AUTH, json={"artifacts_dir": str(tmp_path)})  # empty: no backends
    assert r.status_code == 400 and "could not load" in r.json()["detail"]
    assert client.app.state.engine is engine
    assert client.get("/search", params={"q": "comedy"}).status_code == 200
    assert client.post("/admin/reload", headers=AUTH, json={"dir": "x"}).status_code == 422


def test_reload_swaps_engines_while_serving(client, small_artifacts, artifacts):
    statuses: list[int] = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            statuses.append(client.get("/search", params={"q": "war drama 1970s", "k": 5}).status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.2)
        r = client.post("/admin/reload", headers=AUTH, json={"artifacts_dir": str(small_artifacts)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["version"] == "v2-small" and body["backends"] == {
            "search": ["bm25"], "recommend": ["popularity"], "retrieve": ["bm25"]}
        assert body["seconds"] >= 0 and body["previous_artifacts_dir"] == str(artifacts)
        ready = client.get("/readyz").json()
        assert ready["detail"]["artifacts"] == str(small_artifacts)
        gone = client.get("/search", params={"q": "x", "backend": "dense"}).json()  # served degraded now
        assert gone["backend"] == "bm25" and gone["degraded_reason"] == "dense not loaded; answered by bm25"
        time.sleep(0.2)
        back = client.post("/admin/reload", headers=AUTH, json={"artifacts_dir": str(artifacts)})
        assert back.status_code == 200 and "dense" in back.json()["backends"]["retrieve"]
    finally:
        stop.set()
        worker.join(timeout=30)
    assert statuses and set(statuses) == {200}


def test_request_in_flight_during_reload_finishes_on_its_engine(client):
    old = client.app.state.engine
    bm25 = old.backends["retrieve"]["bm25"]
    original, started, used = bm25.answer, threading.Event(), []

    def slow_answer(requests, deadline=None):
        started.set()
        time.sleep(1.5)
        used.append(id(old))
        return original(requests, deadline)

    bm25.answer = slow_answer
    result = {}

    def in_flight():
        result["r"] = client.get("/retrieve", params={"q": "in flight pears", "backend": "bm25", "k": 3,
                                                      "latency_budget_ms": 30_000})

    t = threading.Thread(target=in_flight)
    t.start()
    try:
        assert started.wait(10)
        reload = client.post("/admin/reload", headers=AUTH, json={})
        assert reload.status_code == 200 and client.app.state.engine is not old
        # the new engine answers at once while the old one is still busy with the slow request
        t0 = time.perf_counter()
        fresh = client.get("/retrieve", params={"q": "after reload pears", "backend": "bm25", "k": 3})
        assert fresh.status_code == 200 and time.perf_counter() - t0 < 1.0
    finally:
        t.join(timeout=30)
        bm25.answer = original
    r = result["r"]
    assert r.status_code == 200 and r.json()["backend"] == "bm25" and len(r.json()["results"]) == 3
    assert used == [id(old)]


def test_rollback_returns_to_the_previous_directory_and_says_409_with_none(settings, small_artifacts, artifacts,
                                                                         tmp_path):
    s = settings.model_copy(update={"warmup": False, "admin_token": TOKEN, "events_log": tmp_path / "e.log"})
    with TestClient(create_app(s)) as c:
        assert c.post("/admin/rollback").status_code == 401  # the token first
        r = c.post("/admin/rollback", headers=AUTH)
        assert r.status_code == 409 and "no previous version" in r.json()["detail"]
        assert c.post("/admin/reload", headers=AUTH, json={"artifacts_dir": str(small_artifacts)}).status_code == 200
        assert c.get("/search", params={"q": "x", "backend": "dense"}).json()["degraded"]
        r = c.post("/admin/rollback", headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["artifacts_dir"] == str(artifacts) and body["previous_artifacts_dir"] == str(small_artifacts)
        again = c.get("/search", params={"q": "x", "backend": "dense", "latency_budget_ms": 30_000}).json()
        assert again["backend"] == "dense", again["degraded_reason"]
        assert c.post("/admin/rollback", headers=AUTH).status_code == 409  # one step back only
