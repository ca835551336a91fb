"""The agent holds its LM and that LM's Low-Rank Clone student (issue #18): `training.train_lrc --agent` distils the
student on the teacher's own traces, the service loads it only when it is the clone of the LM it serves, and the
budget picks the largest model whose step fits, then the hops; the response says which model answered."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from models.lrc import LRCConfig
from service.agentic import AgentService, response
from training.train_lrc import DistilConfig, distil_agent

QUESTION = "Would a pear sink in water?"


@pytest.fixture(scope="module")
def tiny_agent_artifacts(artifacts, data_dirs, tmp_path_factory) -> Path:
    """An artifacts tree with the real retrievers, the untrained agent (the base LM, as CI serves it) and a student
    distilled for a few steps on one teacher trace."""
    root = tmp_path_factory.mktemp("agent-art")
    (root / "retrieve").symlink_to(artifacts / "retrieve")
    run = DistilConfig(steps=4, batch_size=2, agent_questions=1, agent_max_len=192, basis_texts=16, train_texts=64,
                       ppl_texts=8, save_every=4)
    meta = distil_agent(root / "agent", LRCConfig(), run, data_dirs["multihop"].parent, from_scratch=False)
    assert meta["agent_teacher"] == "base" and meta["agent_traces"] == 1
    assert meta["params"] < meta["teacher_params"] / 3
    return root


def test_the_student_is_distilled_on_the_teachers_traces(tiny_agent_artifacts):
    saved = json.loads((tiny_agent_artifacts / "agent" / "student" / "traces.json").read_text())
    assert saved["agent_teacher"] == "base" and len(saved["texts"]) == 1
    assert "Answer:" in saved["texts"][0]  # a whole trace: prompt, actions, the forced or written answer
    assert (tiny_agent_artifacts / "agent" / "student" / "model" / "config.json").exists()


def test_plan_picks_the_student_under_a_budget_between_the_two_costs(tiny_agent_artifacts, data_dirs):
    service = AgentService.load(tiny_agent_artifacts, data_dirs["multihop"].parent, student=True)
    assert list(service.models) == ["teacher", "student"]
    service.models["teacher"].step_ms, service.models["student"].step_ms = 1000.0, 100.0
    now = time.monotonic()
    assert service.plan(5000, now).size == "teacher" and service.plan(5000, now).hops == 2
    small = service.plan(500, now)  # under the teacher's answer step, over the student's
    assert small.size == "student" and small.hops == 2
    assert service.plan(50, now) is None  # under both: the gateway degrades to BM25 passages
    body = response(service, QUESTION, 350, time.monotonic(), {})
    assert not body["degraded"] and "Low-Rank Clone" in body["model"] and body["answer"] in ("yes", "no")
    assert service.describe()["models"][1]["size"] == "student"
    assert service.models["teacher"].step_ms == 1000.0  # the run updated the student's cost only
    degraded = response(service, QUESTION, 50, time.monotonic(), {})
    assert degraded["degraded"] and degraded["answer"] is None
    assert f"~{service.models['student'].step_ms:.0f} ms" in degraded["degraded_reason"]  # the cheapest model's


def test_a_student_of_another_teacher_is_not_served(tiny_agent_artifacts, data_dirs, tmp_path):
    root = tmp_path / "art"
    (root / "agent").mkdir(parents=True)
    (root / "retrieve").symlink_to(tiny_agent_artifacts / "retrieve")
    (root / "agent" / "student").symlink_to(tiny_agent_artifacts / "agent" / "student")
    meta = json.loads((tiny_agent_artifacts / "agent" / "student" / "meta.json").read_text())
    assert meta["agent_teacher"] == "base"
    # the same student beside a served LM given by path is another teacher's clone: the service leaves it out
    from models.causal_lm import default_lm_dir

    service = AgentService.load(root, data_dirs["multihop"].parent, lm_path=str(default_lm_dir()), student=True)
    assert list(service.models) == ["teacher"]
