"""The gateway on Ray Serve (service/serve_app.py): a local Ray head, two replicas of the real app behind Ray's
HTTP proxy, Redis for what replicas share. Each user's history is the same whichever replica answers, and a
replica killed between requests costs no failed request (Serve routes to the other and replaces it). DiffuGR runs
as a deployment of its own (one replica, @serve.batch), composed with the gateways through a deployment handle."""
from __future__ import annotations

import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

ray = pytest.importorskip("ray", reason="Ray Serve is in the dev extra: pip install -e '.[dev]'")
serve = pytest.importorskip("ray.serve")

REDIS_URL = "redis://127.0.0.1:6379/11"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(settings):
    from service.serve_app import app_builder

    if not (settings.artifacts_dir / "retrieve" / "diffugr" / "meta.json").exists():
        pytest.fail("DiffuGR artifacts missing: run `make artifacts` (make test does)")
    redis.Redis.from_url(REDIS_URL).flushdb()
    port = _free_port()
    # a busy 2-core machine: Serve's proxy readiness check (5 s by default) would restart the proxy forever
    for key in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        os.environ.setdefault(key, "60")
    # logical CPUs for 2 gateway replicas + the DiffuGR deployment (the machine's 2 cores are shared)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        fields = {"artifacts_dir": settings.artifacts_dir, "data_dir": settings.data_dir, "warmup": False,
                  "agent": False, "redis_url": REDIS_URL, "events_stream": "unisr:events-ray", "_env_file": None}
        args = {"settings": fields, "num_replicas": 2, "backends": ["retrieve/diffugr"]}
        serve.run(app_builder(args), name="unisr", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _instances(base: str, n: int, params: dict, concurrency: int = 8) -> dict[str, set]:
    """Which process answered n requests sent `concurrency` at a time (with nothing queued Serve's router keeps
    choosing the same replica; concurrent requests spread by queue length), and what each answered."""
    def one(_):
        r = httpx.get(f"{base}/recommend", params=params, timeout=60)
        assert r.status_code == 200, r.text
        return r.headers["x-unisr-instance"], tuple(x["id"] for x in r.json()["results"])

    seen: dict[str, set] = {}
    with ThreadPoolExecutor(concurrency) as pool:
        for instance, answer in pool.map(one, range(n)):
            seen.setdefault(instance, set()).add(answer)
    return seen


def test_two_replicas_answer_a_user_from_one_history(gateway):
    user = f"ray-{uuid.uuid4().hex[:8]}"
    for n, item in enumerate(("50", "181", "100")):
        r = httpx.post(f"{gateway}/events", json={"user_id": user, "item_id": item, "event_type": "click",
                                                   "idempotency_key": f"{user}-{n}"}, timeout=30)
        assert r.status_code == 201, r.text
    params = {"user_id": user, "k": 10, "backend": "sasrec", "latency_budget_ms": 5000}
    seen = _instances(gateway, 48, params)
    assert len(seen) == 2, seen  # both replicas answered
    answers = set().union(*seen.values())
    assert len(answers) == 1, answers  # the same history whichever replica: one answer
    assert not {"50", "181", "100"} & set(answers.pop())  # the events are the history (seen items are skipped)


def test_a_killed_replica_costs_no_failed_request(gateway):

    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in a["name"] and "gateway" in a["name"]]
    assert len(replicas) == 2
    victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    params = {"user_id": "1", "k": 5, "backend": "sasrec", "latency_budget_ms": 5000}
    statuses, t_end, killed = [], time.time() + 20, False
    while time.time() < t_end:
        if not killed and len(statuses) >= 5:
            ray.kill(victim, no_restart=True)
            killed = True
        statuses.append(httpx.get(f"{gateway}/recommend", params=params, timeout=30).status_code)
    assert killed and len(statuses) > 10
    assert statuses.count(200) == len(statuses), statuses


def test_a_heavy_backend_answers_from_its_own_deployment(gateway, settings):
    """/retrieve?backend=diffugr is answered by the DiffuGR deployment (another process than the gateway replica),
    with the same documents as the in-process backend; a budget it cannot meet is the fallback's answer."""
    from models.backend import Request
    from models.registry import load_backend

    queries = [f"Would a {w} sink in water?" for w in ("pear", "stone", "cork", "coin", "apple", "brick", "leaf",
                                                       "key", "egg", "nail", "log", "ring")]

    def one(q):
        r = httpx.get(f"{gateway}/retrieve", params={"q": q, "backend": "diffugr", "steps": 2, "k": 5,
                                                      "latency_budget_ms": 20000}, timeout=120)
        assert r.status_code == 200, r.text
        return r

    with ThreadPoolExecutor(6) as pool:  # concurrent: the deployment's @serve.batch may gather them
        responses = list(pool.map(one, queries))
    local = load_backend(settings.artifacts_dir, "retrieve", "diffugr")
    expected = local.answer([Request("retrieve", query=q, k=5, options={"steps": 2}) for q in queries])
    for r, want in zip(responses, expected):
        body = r.json()
        assert body["backend"] == "diffugr" and not body["degraded"], body
        served_by = body["config"]["served_by"]
        assert served_by != r.headers["x-unisr-instance"]  # not the gateway replica's process
        assert [x["id"] for x in body["results"]] == [h.id for h in want.hits]
    assert len({r.json()["config"]["served_by"] for r in responses}) == 1  # one DiffuGR replica served them all

    r = httpx.get(f"{gateway}/retrieve", params={"q": "pear density", "backend": "diffugr", "latency_budget_ms": 1},
                  timeout=60)
    assert r.status_code == 200 and r.json()["degraded"] and r.json()["backend"] != "diffugr", r.text
