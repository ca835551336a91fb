"""Quality floors of the baselines on the held-out test splits, measured with the evaluation harness.

The floors (`floor`, `ceiling`, `beats` factors) are those of the rows of condition `baselines` in
training/eval/expected.yaml, beside the figures last measured (make eval): they sit well under those and far over
random, so a regression fails.
"""
from __future__ import annotations

import pytest

from training.eval.expected import row, rows
from training.eval.ranking import evaluate_qa, run


def floored(task: str) -> list[str]:
    """The backends of a task that have an absolute floor in expected.yaml."""
    return [r["row"][1] for r in rows("baselines") if r["row"][0] == task and "floor" in r]


@pytest.fixture(scope="module")
def results(artifacts, data_dirs):
    cache = {}

    def get(task, backend):
        if (task, backend) not in cache:
            cache[task, backend] = run(task, backend, artifacts, data_dirs, "test")
        return cache[task, backend]

    return get


@pytest.mark.parametrize("backend", floored("retrieve"))
def test_retrieval_beats_random_by_a_wide_margin(results, backend):
    e = row("baselines", "retrieve", backend)
    r, rnd = results("retrieve", backend), results("retrieve", "random")
    assert r["recall@10"] > e["floor"]["recall@10"]
    assert r["recall@10"] > e["beats"]["random"]["recall@10"] * max(rnd["recall@10"], 1e-3)
    assert r["mrr@10"] > e["floor"]["mrr@10"]


@pytest.mark.parametrize("backend", floored("search"))
def test_search_beats_random_by_a_wide_margin(results, backend):
    e = row("baselines", "search", backend)
    r, rnd = results("search", backend), results("search", "random")
    assert r["hit_rate@10"] > e["floor"]["hit_rate@10"] > e["beats"]["random"]["hit_rate@10"] * rnd["hit_rate@10"]


def test_sequential_recommender_beats_popularity(results):
    rnd, pop, cooc, sasrec = (results("recommend", b) for b in ("random", "popularity", "cooc", "sasrec"))
    beats = {b: row("baselines", "recommend", b)["beats"] for b in ("popularity", "cooc", "sasrec")}
    assert pop["hit_rate@10"] > beats["popularity"]["random"]["hit_rate@10"] * rnd["hit_rate@10"]
    assert sasrec["hit_rate@10"] > beats["sasrec"]["popularity"]["hit_rate@10"] * pop["hit_rate@10"]
    assert sasrec["ndcg@10"] > beats["sasrec"]["popularity"]["ndcg@10"] * pop["ndcg@10"]
    assert cooc["hit_rate@10"] > beats["cooc"]["popularity"]["hit_rate@10"] * pop["hit_rate@10"]


def test_qa_majority_baseline_is_near_the_class_prior(data_dirs):
    e = row("baselines", "qa", "majority")
    r = evaluate_qa("majority", "test", data_dirs)
    assert e["floor"]["em"] < r["em"] < e["ceiling"]["em"] and r["f1"] == r["em"]  # yes/no answers: EM and F1 agree


def test_ml1m_baselines_hold_their_ratios(artifacts, data_dirs):
    """MovieLens-1M (built by `make artifacts` under artifacts/ml1m): popularity far above random, co-occurrence far
    above popularity, the factors recorded in expected.yaml (condition baselines-ml1m)."""
    ml1m = artifacts.parent / "ml1m"
    dirs = {**data_dirs, "recsys": data_dirs["ml1m"]}
    got = {b: run("recommend", b, ml1m, dirs, "test") for b in ("random", "popularity", "cooc")}
    assert got["cooc"]["queries"] == 6040
    for b, other in (("popularity", "random"), ("cooc", "popularity")):
        factor = row("baselines-ml1m", b)["beats"][other]["hit_rate@10"]
        assert got[b]["hit_rate@10"] > factor * max(got[other]["hit_rate@10"], 1e-3), (b, other)
