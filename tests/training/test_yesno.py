"""training.eval.yesno's parts on hand-made data: the threshold, the AUC, and the facts an agent loop found."""
from __future__ import annotations

import json

import numpy as np
import pytest


def test_best_threshold_maximises_accuracy_and_auc_counts_ties_half():
    from training.eval.yesno import auc, best_threshold

    s, y = np.array([-2.0, -1.0, 0.5, 1.0, 3.0]), np.array([0, 0, 1, 0, 1])
    thr = best_threshold(s, y)
    assert np.mean((s > thr) == y) == pytest.approx(0.8)  # > -1.0: one error (1.0 says yes)
    assert auc(s, y) == pytest.approx(5 / 6)  # 5 of the 6 (yes, no) pairs ranked right
    assert auc(np.array([1.0, 1.0]), np.array([1, 0])) == 0.5


def test_agent_contexts_read_the_loops_retrieved_or_recorded_facts(tmp_path):
    from training.eval.yesno import AGENT_FACTS, agent_fact_ids, facts_for

    retrieved = [f"d{n}" for n in range(12)]
    traces = tmp_path / "agent-test.json"
    traces.write_text(json.dumps({"rows": [
        {"system": "BM25 top-10 of the question"},
        {"system": "loop after EM round-0", "per_question": [{"id": "q1", "retrieved": retrieved,
                                                              "recorded": ["d3"], "answer": "no"}]}]}))
    ids = agent_fact_ids(tmp_path, [{"id": "q1"}], data=None, artifacts=tmp_path, traces=[traces])  # no loop runs
    passages = {d: f"fact {d}" for d in retrieved}
    q = {"id": "q1", "question": "Is it?"}
    got = facts_for(q, "agent-retrieved", passages, None, 3, ids)
    assert got == [f"fact d{n}" for n in range(AGENT_FACTS)]  # in retrieval order, at most 10
    assert facts_for(q, "agent-recorded", passages, None, 3, ids) == ["fact d3"]
