"""DSI-QG pseudo-questions (indexing.pseudo_queries): the shipped generation covers the corpus and matches its
manifest, shares no text with the real questions, the filter keeps exactly the questions BM25 ties back to their
document, and the generator writes questions with the real LM."""
from __future__ import annotations

import json
import random

import pytest

from indexing import pseudo_queries as pq
from indexing.data import load_retrieval


@pytest.fixture(scope="module")
def corpus(data_dirs):
    return load_retrieval(data_dirs["retrieval"])


@pytest.fixture(scope="module")
def shipped():
    return pq.read_questions(pq.SHIPPED)


def test_clean_keeps_one_question_or_none():
    assert pq.clean(" Where is the Eiffel Tower?\n\nFact: x") == "Where is the Eiffel Tower?"
    assert pq.clean('"Question: How do sharks breathe? They use gills."') == "How do sharks breathe?"
    assert pq.clean("The Spice Girls have five members.") is None  # no question
    assert pq.clean("Why?") is None  # too short to say anything about a document


def test_the_shipped_generation_covers_the_corpus_and_matches_its_manifest(corpus, shipped):
    manifest = json.loads(pq.SHIPPED.with_name(pq.SHIPPED.name.replace(".jsonl.gz", ".manifest.json")).read_text())
    assert set(shipped) == set(corpus.doc_ids)
    assert sum(map(len, shipped.values())) == manifest["questions"] == 103_134
    assert manifest["prompt"] == pq.PROMPT and manifest["per_doc"] == 20
    assert all(len(qs) <= 20 and len({q.lower() for q in qs}) == len(qs) for qs in shipped.values())
    # written from the documents only: no generated question is one of the real (train/valid/test) questions
    real = {t.strip().lower() for t in corpus.queries.values()}
    assert not any(q.strip().lower() in real for qs in shipped.values() for q in qs)


def test_the_filter_keeps_the_questions_bm25_ties_to_their_document(data_dirs, corpus, shipped, tmp_path):
    from models.backend import Request
    from models.baselines.bm25 import BM25Backend

    rng = random.Random(0)
    docs = rng.sample(sorted(shipped), 40)
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"doc_id": d, "questions": shipped[d]}) + "\n" for d in docs))
    kept, stats = pq.filter_questions(data_dirs["retrieval"], raw, keep_rank=10)
    assert stats["generated"] == sum(len(shipped[d]) for d in docs) > stats["kept"] > 0
    bm25 = BM25Backend.build({i: corpus.doc_text(i) for i in corpus.doc_ids}, tmp_path / "bm25")
    for d in docs[:10]:
        for q in shipped[d]:
            top = {h.id for h in bm25.answer([Request("retrieve", query=q, k=10)])[0].hits}
            assert (q in kept[d]) == (d in top), (d, q)


def test_the_generator_writes_questions_about_the_document(corpus):
    from models.causal_lm import load_causal_lm

    model, tok = load_causal_lm(None, dtype="float32")
    texts = [corpus.doc_text(d) for d in corpus.doc_ids[:3]]
    questions = pq.generate_questions(model, tok, texts, per_doc=4, batch_docs=3, progress=False)
    assert len(questions) == 3 and sum(map(len, questions)) >= 3
    assert all(q.endswith("?") for qs in questions for q in qs)
