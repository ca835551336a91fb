"""GET /search?mode=agentic through the real app: the EXSEARCH loop with the real LM, trace, evidence, budget,
the mode=auto rule and the server-sent-events stream."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

QUESTION = "Would a pear sink in water?"


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings.model_copy(update={"agent": True}))) as c:
        yield c


def test_question_rule():
    from service.agentic import looks_like_question

    assert looks_like_question("Would a pear sink in water?")
    assert looks_like_question("who wrote hamlet")
    assert not looks_like_question("animation comedy 1990s")


def test_agentic_answer_with_trace_and_cited_evidence(client):
    r = client.get("/search", params={"q": QUESTION, "mode": "agentic", "latency_budget_ms": 60_000})
    body = r.json()
    assert r.status_code == 200, body
    assert body["mode"] == "agentic" and not body["degraded"]
    assert body["answer"] in ("yes", "no")
    assert body["trace"] and body["trace"][-1]["kind"] == "answer"
    assert 0 <= body["hops"] <= body["max_hops"]
    retrieved = {d for s in body["trace"] for d in s["retrieved"]}
    assert {e["doc_id"] for e in body["evidence"]} <= retrieved  # evidence cites a retrieved document
    assert {x["id"] for x in body["results"]} == retrieved
    assert all(e["snippet"] for e in body["evidence"])
    agent = client.get("/readyz").json()["detail"]["agent"]
    assert agent["step_ms"] > 0 and body["model"] == agent["model"]


def test_budget_bounds_hops_and_degrades_below_one_step(client):
    agent = client.app.state.agent
    step = agent.step_ms
    # room for the answer and less than one hop: no search at all
    body = client.get("/search", params={"q": QUESTION, "mode": "agentic",
                                         "latency_budget_ms": 1.5 * step}).json()
    assert body["max_hops"] == 0 and body["hops"] == 0 and body["answer"] in ("yes", "no")
    assert not any(s["retrieved"] for s in body["trace"])  # a Search the model still writes is refused
    assert all("hop limit" in s["error"] for s in body["trace"] if s["kind"] == "search")
    # too small for even the answer: BM25 passages, no answer, said so
    body = client.get("/search", params={"q": QUESTION, "mode": "agentic", "latency_budget_ms": 1}).json()
    assert body["degraded"] and body["answer"] is None and body["results"]
    assert "budget" in body["degraded_reason"]


def test_auto_mode_routes_questions_to_the_agent(client):
    ranked = client.get("/search", params={"q": "animation comedy 1990s", "mode": "auto"}).json()
    assert "results" in ranked and ranked.get("mode") != "agentic" and ranked["backend"] in ("bm25", "dense")
    agentic = client.get("/search", params={"q": QUESTION, "mode": "auto", "latency_budget_ms": 1}).json()
    assert agentic["mode"] == "agentic"


def test_stream_emits_each_step_then_the_answer(client):
    with client.stream("GET", "/search", params={"q": QUESTION, "mode": "agentic", "stream": "true",
                                                 "latency_budget_ms": 60_000}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = []
        for block in r.read().decode().strip().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            events.append((lines["event"], json.loads(lines["data"])))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "answer" and kinds[:-1] and set(kinds[:-1]) == {"step"}
    final = events[-1][1]
    assert len(final["trace"]) == len(events) - 1  # one event per step, as they happened
    assert [s for _, s in events[:-1]] == final["trace"]


def test_bad_agentic_input(client):
    assert client.get("/search", params={"q": "x", "mode": "nonsense"}).status_code == 422
    r = client.get("/search", params={"q": "comedy", "stream": "true"})
    assert r.status_code == 422 and "mode=agentic" in r.json()["detail"]
