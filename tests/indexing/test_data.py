"""The loaders: manifests, deterministic splits, the published layouts from any path."""
from __future__ import annotations

import csv
import json

from indexing.data import load_multihop, load_recsys, load_retrieval
from indexing.data.common import read_manifest, stable_split


def test_manifests_have_source_license_counts_checksum(data_dirs):
    for d in data_dirs.values():
        m = read_manifest(d)
        assert m["source"] and m["license"] and len(m["sha256"]) == 64
        assert all(v > 0 for v in m["counts"].values())


def test_recsys_leave_one_out_split(data_dirs):
    rec = load_recsys(data_dirs["recsys"])
    assert len(rec.items) == 1682 and len(rec.sequences) == 943
    test = {e.user_id: e for e in rec.examples("test")}
    valid = {e.user_id: e for e in rec.examples("valid")}
    for u, seq in list(rec.sequences.items())[:50]:
        assert test[u].target == seq[-1] and test[u].history == seq[:-1]
        assert valid[u].target == seq[-2] and valid[u].history == seq[:-2]
        assert rec.train_sequences()[u] == seq[:-2]
        assert test[u].query  # every example carries the query that leads to its item


def test_splits_are_deterministic_and_disjoint(data_dirs):
    a, b = load_retrieval(data_dirs["retrieval"]), load_retrieval(data_dirs["retrieval"])
    assert a.qrels == b.qrels
    splits = [set(a.qrels[s]) for s in ("train", "valid", "test")]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert all(d in a.corpus for rels in a.qrels["test"].values() for d in rels)
    assert stable_split("q0001") == stable_split("q0001")


def test_multihop_supporting_passages_exist(data_dirs):
    qa = load_multihop(data_dirs["multihop"])
    test = qa.split("test")
    assert len(test) > 300
    assert all(q["answer"] in ("yes", "no") and q["supporting"] for q in test)
    assert all(pid in qa.passages for q in test for pid in q["supporting"])
    # both tasks test on the same held-out questions
    assert {q["id"] for q in test} == set(load_retrieval(data_dirs["retrieval"]).qrels["test"])


def test_loaders_accept_a_user_directory(tmp_path):
    (tmp_path / "rec").mkdir()
    with open(tmp_path / "rec" / "items.jsonl", "w") as f:
        f.writelines(json.dumps({"item_id": i, "title": i.upper(), "text": f"item {i}"}) + "\n" for i in "abcd")
    with open(tmp_path / "rec" / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        w.writerows([["u1", "a", 1], ["u1", "b", 2], ["u1", "c", 3], ["u1", "d", 4], ["u2", "z", 1]])
    with open(tmp_path / "rec" / "queries.csv", "w", newline="") as f:
        csv.writer(f).writerows([["user_id", "item_id", "query"], ["u1", "d", "the d item"]])
    rec = load_recsys(tmp_path / "rec")
    (ex,) = rec.examples("test")
    assert (ex.user_id, ex.target, ex.history, ex.query) == ("u1", "d", ["a", "b", "c"], "the d item")
    assert "u2" not in rec.sequences  # unknown items are dropped

    r = tmp_path / "ret"
    (r / "qrels").mkdir(parents=True)
    (r / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "text": "x"}\n{"_id": "d2", "text": "y"}\n')
    (r / "queries.jsonl").write_text('{"_id": "q1", "text": "x?"}\n')
    (r / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n")
    ret = load_retrieval(r)
    assert sum(len(v) for v in ret.qrels.values()) == 1  # d9 is not in the corpus


def test_ml1m_loader_matches_the_published_counts(data_dirs):
    """MovieLens-1M through the same loader: GroupLens's README counts (6,040 users, 3,883 movies of which 3,706
    are rated, 1,000,209 ratings), and the same leave-one-out split by time."""
    from indexing.data.recsys import ML1M_COUNTS

    m = read_manifest(data_dirs["ml1m"])
    assert {k: m["counts"][k] for k in ML1M_COUNTS} == ML1M_COUNTS
    rec = load_recsys(data_dirs["ml1m"])
    assert len(rec.sequences) == 6040 and len(rec.items) == 3883
    assert sum(len(s) for s in rec.sequences.values()) == 1_000_209
    test = rec.examples("test")
    assert len(test) == 6040 and all(e.query for e in test[:100])
