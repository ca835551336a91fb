"""training.eval.metrics: the one EM/F1 and the ranx ranking metrics, on cases worked out by hand."""
from __future__ import annotations

import math

import pytest

from training.eval.metrics import exact_match, f1, normalize_answer, ranking, single_target


@pytest.mark.parametrize("pred,gold", [("Yes.", "yes"), (" NO ", "no"), ("The answer!", "answer"),
                                       ("a  b", "b")])
def test_exact_match_normalises_case_punctuation_articles_and_spaces(pred, gold):
    assert exact_match(pred, gold) == 1.0 and f1(pred, gold) == 1.0


def test_yes_no_answers_score_the_same_under_em_and_f1():
    for pred in ("yes", "no", "Yes.", "no,", "maybe"):
        for gold in ("yes", "no"):
            assert exact_match(pred, gold) == f1(pred, gold)


def test_f1_is_token_overlap():
    assert normalize_answer("The Eiffel-Tower, in Paris") == "eiffeltower in paris"
    assert math.isclose(f1("paris france", "paris"), 2 * 0.5 * 1 / 1.5)
    assert f1("", "") == 1.0 and f1("", "yes") == 0.0 and exact_match("yes", "no") == 0.0


def test_ranking_metrics_follow_the_given_order():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"d": 1}}
    ranked = {"q1": ["x", "a", "y", "b"], "q2": ["c"], "q3": []}  # q3: nothing retrieved
    m = ranking(qrels, ranked, ["recall@1", "recall@10", "mrr@10", "hit_rate@1", "ndcg@10"])
    assert math.isclose(m["recall@1"], (0 + 1 + 0) / 3)
    assert math.isclose(m["recall@10"], (1 + 1 + 0) / 3)
    assert math.isclose(m["mrr@10"], (1 / 2 + 1 + 0) / 3)
    assert math.isclose(m["hit_rate@1"], 1 / 3)
    idcg = 1 + 1 / math.log2(3)
    assert math.isclose(m["ndcg@10"], ((1 / math.log2(3) + 1 / math.log2(5)) / idcg + 1 + 0) / 3)


def test_single_target_hit_rate_and_ndcg():
    m = single_target([["a", "b", "c"], ["x", "y"], ["q", "a", "a"]], ["c", "z", "a"],
                      ["hit_rate@1", "hit_rate@5", "ndcg@10"])
    assert math.isclose(m["hit_rate@5"], 2 / 3) and math.isclose(m["hit_rate@1"], 0.0)
    assert math.isclose(m["ndcg@10"], (1 / math.log2(4) + 0 + 1 / math.log2(3)) / 3)  # a repeat counts once
    assert single_target([], [], ["hit_rate@10"]) == {"hit_rate@10": 0.0}


def test_evidence_recall_recorded_recall_and_precision_by_hand():
    from training.eval.metrics import evidence, proportion_ci

    supporting = [["a", "b"], ["c"], ["d", "e"]]
    retrieved = [["x", "a", "a", "b"], ["y"], ["e"]]  # 2/2, 0/1, 1/2 -> mean 0.5
    recorded = [["a", "x"], [], ["e"]]  # recall 1/2, 0, 1/2; precision 1/2 and 1 over the two that recorded
    out = evidence(supporting, retrieved, recorded, k=10)
    assert out["evidence_recall@10"] == pytest.approx(0.5)
    assert out["recorded_recall"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert out["record_precision"] == pytest.approx(0.75) and out["recorded_any"] == pytest.approx(2 / 3)
    # top 1: "b" (1/2), "y" (0), "e" (1/2)
    assert evidence(supporting, [["b", "x", "a"]] + retrieved[1:], k=1)["evidence_recall@1"] == pytest.approx(1 / 3)
    assert math.isnan(evidence(supporting, retrieved, [[], [], []])["record_precision"])
    assert proportion_ci(0.5, 100) == pytest.approx(1.96 * 0.05)
