"""Backends: build/save/load round trips and a tiny real training run."""
from __future__ import annotations

import torch

from indexing.data import load_recsys, load_retrieval
from models.backend import Request
from models.baselines.bm25 import BM25Backend
from models.baselines.cooccurrence import CooccurrenceBackend
from models.baselines.dense import DenseBackend
from models.baselines.popularity import PopularityBackend
from models.sasrec.model import SASRec, SASRecBackend
from training.train_sasrec import train


def _subset(data_dirs, n=300):
    ret = load_retrieval(data_dirs["retrieval"])
    qid, rels = next(iter(ret.qrels["test"].items()))
    ids = list(rels) + [d for d in ret.corpus if d not in rels][:n]
    return {i: ret.doc_text(i) for i in ids}, ret.queries[qid], set(rels)


def test_bm25_and_dense_build_load_round_trip(tmp_path, data_dirs):
    corpus, query, relevant = _subset(data_dirs)
    for cls in (BM25Backend, DenseBackend):
        built = cls.build(corpus, tmp_path / cls.name)
        loaded = cls.load(tmp_path / cls.name)
        req = Request("retrieve", query=query, k=5)
        a, b = built.answer([req])[0], loaded.answer([req])[0]
        assert [h.id for h in a.hits] == [h.id for h in b.hits] and a.backend == cls.name
        assert relevant & {h.id for h in a.hits}, f"{cls.name} misses the evidence of its own query"


def test_recommenders_exclude_history_and_answer_cold_start(tmp_path, data_dirs):
    rec = load_recsys(data_dirs["recsys"])
    seqs = rec.train_sequences()
    for cls in (PopularityBackend, CooccurrenceBackend):
        b = cls.build(seqs, tmp_path / cls.name)
        hist = seqs["1"][-20:]
        hits = b.answer([Request("recommend", history=hist, k=10)])[0].hits
        assert len(hits) == 10 and not {h.id for h in hits} & set(hist)
        assert len(b.answer([Request("recommend", history=[], k=10)])[0].hits) == 10


def test_sasrec_tiny_training_lowers_loss_and_round_trips(tmp_path, data_dirs):
    torch.set_num_threads(1)
    state = train(data_dirs["recsys"], tmp_path / "sasrec", epochs=4, eval_every=2, d_model=32, n_layers=1,
                  max_len=20, max_users=200, batch_size=64)
    losses = [h["loss"] for h in state["history"]]
    assert losses[-1] < losses[0]
    model, ids = SASRec.from_dir(tmp_path / "sasrec")
    again, _ = SASRec.from_dir(tmp_path / "sasrec")
    b1, b2 = SASRecBackend(model, ids), SASRecBackend(again, ids)
    req = Request("recommend", history=["50", "172", "181", "1"], k=10)
    h1, h2 = b1.answer([req])[0].hits, b2.answer([req])[0].hits
    assert [h.id for h in h1] == [h.id for h in h2] and [h.score for h in h1] == [h.score for h in h2]
    assert b1.answer([Request("recommend", history=[], k=5)])[0].hits == []  # gateway cold-starts these
    # resume: training again to more epochs continues from the saved state
    state2 = train(data_dirs["recsys"], tmp_path / "sasrec", epochs=6, eval_every=2, d_model=32, n_layers=1,
                   max_len=20, max_users=200, batch_size=64)
    assert state2["epoch"] == 6 and len(state2["history"]) == 6
