"""DiffuGR: DocIDs, constrained decoding, training, and the served endpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from indexing.docids import build_docids
from models.backend import Request
from models.beam import beam_decode, schedule
from models.docids import DocIDs


@pytest.fixture(scope="module")
def docids(artifacts):
    return DocIDs.load(artifacts / "retrieve" / "docids")


def test_docids_unique_and_round_trip(docids, artifacts, tmp_path):
    rows = {tuple(r) for r in docids.codes.tolist()}
    assert len(rows) == len(docids.ids) == len(set(docids.ids))  # every document one unique ID
    assert docids.codes.min() >= 0 and docids.codes.max() < docids.vocab
    lookup = docids.lookup()
    assert all(lookup[tuple(r)] == d for r, d in zip(docids.codes.tolist()[:500], docids.ids[:500]))
    docids.save(tmp_path / "d", levels=3)
    again = DocIDs.load(tmp_path / "d")
    assert (again.codes == docids.codes).all() and again.ids == docids.ids
    # semantic: documents that share the first code are closer than random pairs
    vec = np.load(artifacts / "retrieve" / "dense" / "vectors.npy")
    same = docids.codes[:, 0] == docids.codes[0, 0]
    assert (vec[same] @ vec[0]).mean() > (vec @ vec[0]).mean() + 0.05


@pytest.mark.parametrize("scheme", ["residual", "hierarchical"])
def test_build_docids_disambiguates_collisions(scheme):
    rng = np.random.default_rng(0)
    vectors = np.repeat(rng.normal(size=(5, 8)).astype("float32"), 4, axis=0)  # 4 identical copies each
    d = build_docids(vectors, [f"d{i}" for i in range(20)], levels=2, codes=4, scheme=scheme)
    assert len({tuple(r) for r in d.codes.tolist()}) == 20 and d.codes[:, -1].max() == 3
    # identical vectors share their semantic path; distinct ones do not
    paths = {tuple(r[:-1]) for r in d.codes.tolist()}
    assert len(paths) == 5


def test_hierarchical_codes_are_local_to_their_parent():
    """Level 2 of hierarchical k-means splits each level-1 cluster on its own: two well-separated blobs, each made of
    two sub-blobs, give each blob its own level-1 code and split both into two level-2 codes."""
    rng = np.random.default_rng(1)
    centres = np.array([[10, 0, 0], [10, 1, 0], [-10, 0, 0], [-10, 0, 1]], dtype="float32")
    vectors = np.concatenate([c + 0.01 * rng.normal(size=(6, 3)).astype("float32") for c in centres])
    d = build_docids(vectors, [f"d{i}" for i in range(24)], levels=2, codes=2, scheme="hierarchical")
    blob = np.repeat([0, 0, 1, 1], 6)
    sub = np.repeat([0, 1, 2, 3], 6)
    assert len(set(zip(blob, d.codes[:, 0]))) == 2  # level 1 = the blob
    assert len(set(zip(sub, map(tuple, d.codes[:, :2])))) == 4  # level 1+2 = the sub-blob


@hsettings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 6), beam=st.integers(1, 8),
       length=st.integers(2, 5), vocab=st.integers(2, 6), ltr=st.booleans())
def test_constrained_decoding_only_returns_valid_ids(seed, steps, beam, length, vocab, ltr):
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, vocab, (rng.integers(1, 40), length)), axis=0)
    gen = torch.Generator().manual_seed(seed)

    def logprobs(qidx, tokens):  # an adversarial model: random, often preferring invalid tokens
        return torch.log_softmax(torch.randn(len(qidx), length, vocab, generator=gen) * 5, dim=-1)

    out = beam_decode(logprobs, codes, 3, steps, beam, ltr)
    valid = {tuple(r) for r in codes.tolist()}
    for rows in out:
        assert 1 <= len(rows) <= beam and len({r for r, _ in rows}) == len(rows)
        assert all(0 <= r < len(codes) and tuple(codes[r].tolist()) in valid for r, _ in rows)
        scores = [s for _, s in rows]
        assert scores == sorted(scores, reverse=True)
    assert sum(schedule(length, steps)) == length
    levels = schedule(length, steps, level_order=True)
    assert sum(levels) == length and len(levels) == min(steps, length) and all(n == 1 for n in levels[:-1])


def test_tiny_training_lowers_the_loss(tmp_path, data_dirs, artifacts):
    from training.train_diffugr import train

    torch.set_num_threads(1)
    state = train(data_dirs["retrieval"], artifacts / "retrieve" / "docids", tmp_path / "dg", "diffusion",
                  epochs=3, batch_size=64, d_model=64, n_layers=1, eval_every=3, max_docs=300, max_valid=20)
    losses = [h["loss"] for h in state["history"]]
    assert losses[-1] < losses[0]
    assert (tmp_path / "dg" / "model.safetensors").exists() and (tmp_path / "dg" / "docids" / "codes.npy").exists()


def test_pseudo_questions_add_one_example_each_and_the_decoder_serves_alone(tmp_path, data_dirs, artifacts):
    """DSI-QG (--pseudo-queries): every kept question of a trained document is one more question -> DocID example;
    decoder_only() is the same checkpoint without the geometry prior (the tables' decoder-only rows)."""
    import json

    from indexing.pseudo_queries import SHIPPED, read_questions
    from models.artifacts import read_meta
    from models.backend import Request
    from models.diffugr.backend import DiffuGRBackend
    from models.docids import DocIDs
    from training.train_diffugr import train

    torch.set_num_threads(1)
    docids = DocIDs.load(artifacts / "retrieve" / "docids")
    shipped = read_questions(SHIPPED)
    qfile = tmp_path / "kept.jsonl"
    qfile.write_text("".join(json.dumps({"doc_id": d, "questions": shipped[d][:3]}) + "\n" for d in docids.ids[:200]))
    kw = dict(epochs=1, batch_size=64, d_model=64, n_layers=1, eval_every=1, max_docs=100, max_valid=10, prior="none")
    train(data_dirs["retrieval"], artifacts / "retrieve" / "docids", tmp_path / "plain", "diffusion", **kw)
    train(data_dirs["retrieval"], artifacts / "retrieve" / "docids", tmp_path / "qg", "diffusion",
          pseudo_queries=str(qfile), **kw)
    extra = sum(len(shipped[d][:3]) for d in docids.ids[:100])  # only the trained documents' questions
    assert read_meta(tmp_path / "qg")["examples"] == read_meta(tmp_path / "plain")["examples"] + extra
    served = DiffuGRBackend.load(artifacts / "retrieve" / "diffugr")
    alone = served.decoder_only()
    req = Request("retrieve", query="Would a pear sink in water?", k=10, options={"steps": 4})
    assert "prior" in served.config(req) and "prior" not in alone.config(req)
    hits = alone.answer([req])[0].hits
    assert len(hits) == 10 and all(h.id in set(docids.ids) for h in hits)


def test_trained_diffugr_beats_random_and_steps_help(artifacts, data_dirs):
    """Floors from training/eval/expected.yaml (the last measured figures minus noise): DiffuGR with the geometry
    prior at T=4, and more steps buying quality by more than the floor's margin."""
    from training.eval.expected import row
    from training.eval.ranking import run

    rows = {t: run("retrieve", "diffugr", artifacts, data_dirs, "test", options={"steps": t}) for t in (1, 4)}
    rnd = run("retrieve", "random", artifacts, data_dirs, "test")
    e = row("diffugr", "diffugr T=4")
    assert rows[4]["recall@10"] > 20 * max(rnd["recall@10"], 1e-3)
    assert rows[4]["recall@10"] > e["floor"]["recall@10"] and rows[4]["mrr@10"] > e["floor"]["mrr@10"]
    assert rows[4]["recall@10"] > e["beats"]["diffugr T=1"]["recall@10"] * rows[1]["recall@10"]  # steps buy quality


@pytest.fixture(scope="module")
def client(settings):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_endpoint_honours_steps(client, steps):
    r = client.get("/retrieve", params={"q": "Would a pear sink in water?", "k": 5, "backend": "diffugr",
                                        "steps": steps, "latency_budget_ms": 60_000})
    body = r.json()
    assert r.status_code == 200 and body["backend"] == "diffugr" and not body["degraded"]
    assert body["config"]["steps"] == steps and len(body["results"]) == 5
    corpus = client.app.state.settings.data_dir / "strategyqa-facts" / "corpus.jsonl"
    corpus_ids = {json.loads(line)["_id"] for line in corpus.read_text().splitlines()}
    assert {x["id"] for x in body["results"]} <= corpus_ids


def test_budget_picks_steps_and_degrades_below_one_step(client):
    cost = client.app.state.engine.backends["retrieve"]["diffugr"].cost_ms  # measured at start-up
    assert sorted(cost) == [1, 2, 3, 4] and all(ms > 0 for ms in cost.values())
    generous = client.get("/retrieve", params={"q": "pear density", "backend": "diffugr",
                                               "latency_budget_ms": max(cost.values()) * 20}).json()
    assert generous["config"]["steps"] == 4 and not generous["degraded"]  # all the refinement fits
    engine = client.app.state.engine
    for budget in sorted(cost.values()):  # budgets around the measured costs: the most steps the plan affords
        budget = budget * 2.0
        # the engine plans with what the budget leaves after the time it keeps for the fallback and itself
        planned = engine.planning_ms("retrieve", "diffugr", Request("retrieve", query="x"), budget)
        fits = [s for s, ms in cost.items() if ms <= planned]
        body = client.get("/retrieve", params={"q": f"pear density {budget}", "backend": "diffugr",
                                               "latency_budget_ms": budget}).json()
        if not fits:
            assert body["degraded"] and body["backend"] == "bm25"
        else:  # (a slow run may still miss)
            assert body["degraded"] or body["config"]["steps"] == max(fits), (budget, planned, cost, body["config"])
    tiny = client.get("/retrieve", params={"q": "pear density", "backend": "diffugr",
                                           "latency_budget_ms": min(cost.values()) / 10}).json()
    assert tiny["degraded"] and tiny["backend"] == "bm25" and "budget" in tiny["degraded_reason"]


def test_geometry_prior_by_hand():
    from models.diffugr.geometry import geometry_prior

    codes = np.array([[0, 0], [0, 1], [1, 0]])
    prior = geometry_prior(np.array([[0.9, 0.5, 0.1]]), codes, vocab=3, tau=1.0)
    g = prior(0, np.arange(3), [0, 1])  # base: the mean score 0.5
    assert np.allclose(g[0, :2], [0.7 - 0.5, 0.1 - 0.5]) and np.allclose(g[1, :2], [0.5 - 0.5, 0.5 - 0.5])
    assert np.isneginf(g[:, 2]).all()  # no document has token 2
    g = prior(0, np.array([0, 1]), [1])  # after fixing position 0 to token 0: base 0.7
    assert np.allclose(g[1, :2], [0.9 - 0.7, 0.5 - 0.7])


def test_geometry_prior_level_by_level_is_a_tree_pruned_dense_search():
    """Filled one level at a time with no pruning and the decoder off, the prior's increments telescope to each
    document's own score: the ranking is exactly the dense one."""
    from models.diffugr.geometry import geometry_prior

    rng = np.random.default_rng(0)
    codes = np.array([(a, b, c) for a in range(3) for b in range(3) for c in range(3)])  # 27 distinct IDs
    vectors = rng.normal(size=(len(codes), 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    query = rng.normal(size=(1, 8))
    scores = query @ vectors.T
    zero = lambda qidx, tokens: torch.zeros(len(qidx), 3, 3)
    codes = codes[:-2]  # uneven branching: the last prefix has 1 child, not 3
    scores = scores[:, :-2]
    out = beam_decode(zero, codes, 1, 3, len(codes), level_order=True, renormalise=True, model_weight=0.0,
                      prior_fn=geometry_prior(scores, codes, 3, tau=0.05))
    assert [r for r, _ in out[0]] == list(np.argsort(-scores[0], kind="stable"))


def test_geometry_teacher_is_the_softmax_of_the_prior():
    """The distillation targets (training.train_diffugr.GeometryTeacher) are, at every masked position after a fixed
    prefix, the softmax of the geometry prior's scores for that decoding state; fixed positions get no target."""
    from models.diffugr.geometry import geometry_prior
    from training.train_diffugr import GeometryTeacher

    rng = np.random.default_rng(3)
    codes = np.unique(rng.integers(0, 4, (60, 3)), axis=0)
    vectors = rng.normal(size=(len(codes), 5)).astype("float32")
    q = rng.normal(size=(2, 5)).astype("float32")
    teacher = GeometryTeacher(codes, vectors, 4, tau=0.1)
    rows, fixed = np.array([7, 20]), np.array([1, 0])
    got = teacher.targets(q, rows, fixed).numpy()
    prior = geometry_prior(q @ vectors.T, codes, 4, 0.1)
    for i in range(2):
        consistent = np.flatnonzero((codes[:, :fixed[i]] == codes[rows[i], :fixed[i]]).all(axis=1))
        want = prior(i, consistent, list(range(fixed[i], 3)))
        for p in range(3):
            if p < fixed[i]:
                assert not got[i, p].any()
            else:
                e = np.exp(want[p] - want[p][np.isfinite(want[p])].max())
                np.testing.assert_allclose(got[i, p], e / e.sum(), rtol=1e-5, atol=1e-7)


def test_budget_planner_never_picks_fewer_steps_than_match_the_fallback(artifacts):
    """Training measured on the valid split the fewest steps whose Recall@10 reaches BM25's (min_steps); the budget
    planner never chooses fewer (a budget under their cost goes to BM25, cheaper and better), while a request that
    names its steps still gets them."""
    from models.artifacts import read_meta
    from models.backend import Request
    from models.registry import load_backend

    meta = read_meta(artifacts / "retrieve" / "diffugr")
    by_steps = {int(t): r for t, r in meta["valid_recall10_by_steps"].items()}
    b = load_backend(artifacts, "retrieve", "diffugr")
    assert b.min_steps == meta["min_steps"] and by_steps[b.min_steps] >= meta["valid_recall10_fallback"]
    assert all(r < meta["valid_recall10_fallback"] for t, r in by_steps.items() if t < b.min_steps)
    b.cost_ms = {t: 10.0 * t for t in range(1, b.length + 1)}
    b.ms_per_request = b.cost_ms[b.min_steps]
    for budget in (5.0, 15.0, 25.0, 35.0, 45.0):
        r = Request("retrieve", query="Would a pear sink in water?", k=5)
        fits = [t for t in b.cost_ms if 10.0 * t <= budget and t >= b.min_steps]
        assert b.plan(r, budget) == bool(fits)
        assert r.options.get("steps") == (max(fits) if fits else None)
    explicit = Request("retrieve", query="x", k=5, options={"steps": 1})
    assert b.plan(explicit, 15.0) and b.steps_for(explicit) == 1
