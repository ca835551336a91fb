"""POST /events in both stores (local fsync'd log; real Redis stream), durability, /recommend, export."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.stores.event_log import EventLog

ROOT_ENV = {"UNISR_LOG_JSON": "false", "UNISR_LOG_LEVEL": "WARNING"}
REDIS_URL = "redis://127.0.0.1:6379/14"


def event(key: str, user: str = "1", item: str = "50", kind: str = "click", **kw) -> dict:
    return {"user_id": user, "item_id": item, "event_type": kind, "idempotency_key": key, **kw}


def log_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def log_settings(settings, tmp_path_factory):
    return settings.model_copy(update={"warmup": False, "events_log": tmp_path_factory.mktemp("ev") / "events.log"})


@pytest.fixture(scope="module")
def client(log_settings):
    with TestClient(create_app(log_settings)) as c:
        yield c


def test_log_mode_idempotent_and_durable(client, log_settings):
    key = f"k-{uuid.uuid4()}"
    first = client.post("/events", json=event(key, rating=4, kind="rate", timestamp=1_700_000_000))
    assert first.status_code == 201 and first.json()["duplicate"] is False and first.json()["store"] == "log"
    # acknowledged means on disk: read the file directly, no help from the process
    lines = [e for e in log_lines(log_settings.events_log) if e["key"] == key]
    assert len(lines) == 1 and lines[0]["rating"] == 4 and lines[0]["timestamp"] == 1_700_000_000
    again = client.post("/events", json=event(key, item="172"))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert sum(e["key"] == key for e in log_lines(log_settings.events_log)) == 1


@pytest.mark.parametrize("body,needle", [
    (event("bad-item", item="no-such-item"), "not in the catalogue"),
    (event("bad-kind", kind="teleport"), "event_type"),
    ({"user_id": "1", "item_id": "50", "event_type": "click"}, "idempotency_key"),
    (event("x", colour="red"), "colour"),
    (event("neg-ts", timestamp=-1), "timestamp"),
])
def test_bad_events_are_422(client, body, needle):
    r = client.post("/events", json=body)
    assert r.status_code == 422 and needle in r.json()["detail"]


def test_recommend_reflects_a_new_event(client):
    params = {"user_id": "7", "k": 10, "backend": "sasrec", "latency_budget_ms": 30_000}
    before = client.get("/recommend", params=params).json()
    top = before["results"][0]["id"]
    assert client.post("/events", json=event(f"k-{uuid.uuid4()}", user="7", item=top)).status_code == 201
    after = client.get("/recommend", params=params).json()
    assert not after["cached"] and after["backend"] == "sasrec"
    assert top not in [x["id"] for x in after["results"]]  # now part of the history: seen items are excluded
    # a user the catalogue has never seen is no longer a cold start after one event
    new_user = f"u-{uuid.uuid4().hex[:8]}"
    assert client.get("/recommend", params={"user_id": new_user}).json()["cold_start"]
    client.post("/events", json=event(f"k-{uuid.uuid4()}", user=new_user, item="50"))
    warm = client.get("/recommend", params={"user_id": new_user, "backend": "cooc"}).json()
    assert not warm["cold_start"] and warm["backend"] == "cooc" and "50" not in [x["id"] for x in warm["results"]]


def test_restart_rebuilds_keys_and_histories(log_settings):
    key, user = f"k-{uuid.uuid4()}", f"u-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(log_settings)) as c:
        assert c.post("/events", json=event(key, user=user, item="181")).status_code == 201
    with TestClient(create_app(log_settings)) as c:  # a new process would see the same file
        assert c.post("/events", json=event(key, user=user, item="181")).json()["duplicate"] is True
        assert c.app.state.events.recent(user) == ["181"]


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "events.log"
    path.write_bytes(b'{"key":"a","user_id":"1","item_id":"50","event_type":"view","timestamp":1}\n{"key":"b","us')
    log = EventLog(path)
    log.open()
    log.append({"key": "c", "user_id": "1", "item_id": "51", "event_type": "view", "timestamp": 2})
    log.close()
    assert [e["key"] for e in log_lines(path)] == ["a", "c"]


def test_export_command_writes_interactions_csv(client, log_settings, tmp_path):
    client.post("/events", json=event(f"k-{uuid.uuid4()}", user="9", item="100", kind="purchase"))
    out = tmp_path / "export.csv"
    r = subprocess.run([sys.executable, "-m", "service.export_events", "--out", str(out), "--source", "log",
                        "--log", str(log_settings.events_log)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **ROOT_ENV})
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert rows and list(rows[0]) == ["user_id", "item_id", "timestamp", "rating", "event_type"]
    keys = {e["key"] for e in log_lines(log_settings.events_log)}
    assert len(rows) == len(keys)
    assert any(r["user_id"] == "9" and r["item_id"] == "100" and r["event_type"] == "purchase" and r["rating"] == ""
               for r in rows)
    assert [int(r["timestamp"]) for r in rows] == sorted(int(r["timestamp"]) for r in rows)
    import pandas as pd  # the loaders' reader takes it as it takes MovieLens interactions.csv

    df = pd.read_csv(out, dtype={"user_id": str, "item_id": str})
    assert {"user_id", "item_id", "timestamp"} <= set(df.columns) and len(df) == len(rows)


# --- Redis stream (real Redis on 127.0.0.1:6379, database 14) -------------------------------------------------
@pytest.fixture(scope="module")
def redis_db():
    r = redis.Redis.from_url(REDIS_URL)
    r.ping()
    r.flushdb()
    yield r
    r.flushdb()


@pytest.fixture(scope="module")
def redis_client(settings, redis_db, tmp_path_factory):
    s = settings.model_copy(update={"warmup": False, "redis_url": REDIS_URL, "events_stream": "unisr:events",
                                    "events_log": tmp_path_factory.mktemp("evr") / "events.log"})
    with TestClient(create_app(s)) as c:
        yield c, s


def test_redis_mode_idempotent_and_in_the_stream(redis_client, redis_db):
    c, s = redis_client
    key = f"k-{uuid.uuid4()}"
    first = c.post("/events", json=event(key, user="3", item="99"))
    assert first.status_code == 201 and first.json()["store"] == "redis"
    sid = first.json()["event_id"]
    entries = redis_db.xrange("unisr:events", min=sid, max=sid)
    assert len(entries) == 1 and json.loads(entries[0][1][b"event"])["key"] == key
    assert redis_db.get(f"unisr:event-key:{key}").decode() == sid and redis_db.ttl(f"unisr:event-key:{key}") > 0
    again = c.post("/events", json=event(key, user="3", item="99"))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    stream_keys = [json.loads(f[b"event"])["key"] for _, f in redis_db.xrange("unisr:events")]
    assert stream_keys.count(key) == 1
    assert not s.events_log.read_text()  # nothing went to the fallback log
    assert c.get("/readyz").json()["status"] == "ready"


def test_redis_mode_export(redis_client, redis_db, tmp_path):
    c, s = redis_client
    c.post("/events", json=event(f"k-{uuid.uuid4()}", user="4", item="98", kind="view"))
    out = tmp_path / "export.csv"
    r = subprocess.run([sys.executable, "-m", "service.export_events", "--out", str(out), "--redis-url", REDIS_URL,
                        "--log", str(s.events_log)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **ROOT_ENV})
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == redis_db.xlen("unisr:events") and any(x["item_id"] == "98" for x in rows)


def test_redis_down_events_go_to_the_log_and_replay(settings, redis_db, tmp_path):
    """Redis unreachable at first (a port nobody listens on): the event is acked from the log; pointing the
    store at the real Redis then replays it exactly once, even when the replay runs twice."""
    s = settings.model_copy(update={"warmup": False, "redis_url": "redis://127.0.0.1:6390/14",
                                    "redis_timeout_s": 0.05, "events_stream": "unisr:events-replay",
                                    "events_log": tmp_path / "events.log", "events_replay_interval_s": 60})
    key = f"k-{uuid.uuid4()}"
    with TestClient(create_app(s)) as c:
        r = c.post("/events", json=event(key, user="5", item="97"))
        assert r.status_code == 201 and r.json()["store"] == "log"
        ready = c.get("/readyz").json()
        assert ready["status"] == "degraded" and ready["detail"]["events"]["pending_replay"] == 1
        assert any("pending replay" in d for d in ready["detail"]["degraded"])
        assert c.post("/events", json=event(key, user="5", item="97")).json()["duplicate"] is True
    s2 = s.model_copy(update={"redis_url": REDIS_URL})
    with TestClient(create_app(s2)) as c:
        store = c.app.state.events
        assert store.pending == 1
        assert c.portal.call(store.replay) == 1
        store.log.set_cursor(0)  # as if the process died before recording the cursor: replay again
        store.pending = 1
        c.portal.call(store.replay)
        assert c.get("/readyz").json()["status"] == "ready"
    keys = [json.loads(f[b"event"])["key"] for _, f in redis_db.xrange("unisr:events-replay")]
    assert keys == [key]


def test_two_replicas_share_a_users_recent_history(settings, redis_db, tmp_path):
    """Two gateways on one Redis: an event posted to one changes the other's answers for that user at once (the
    per-user recent items live in Redis, not in each replica's memory). A new user is a cold start on both until
    the event, then neither."""
    user = f"new-{uuid.uuid4().hex[:8]}"
    apps = []
    for n in range(2):
        s = settings.model_copy(update={"warmup": False, "redis_url": REDIS_URL, "events_stream": "unisr:events-2r",
                                        "events_log": tmp_path / f"events-{n}.log"})
        apps.append(TestClient(create_app(s)))
    with apps[0] as a, apps[1] as b:
        assert a.get(f"/recommend?user_id={user}&k=5").json()["cold_start"]
        assert b.get(f"/recommend?user_id={user}&k=5").json()["cold_start"]
        assert a.post("/events", json=event(f"k-{uuid.uuid4()}", user=user, item="50")).status_code == 201
        assert a.post("/events", json=event(f"k-{uuid.uuid4()}", user=user, item="172")).status_code == 201
        seen_by_b = b.get(f"/recommend?user_id={user}&k=5&backend=cooc").json()
        assert not seen_by_b["cold_start"]
        assert seen_by_b == {**a.get(f"/recommend?user_id={user}&k=5&backend=cooc").json(),
                             "took_ms": seen_by_b["took_ms"], "cached": seen_by_b["cached"]}
        assert redis_db.zcard(f"unisr:events-2r:recent:{user}") == 2
