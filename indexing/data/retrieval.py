"""Document retrieval data in the BEIR layout, which most retrieval collections are published in:

    corpus.jsonl        {"_id", "title", "text"}
    queries.jsonl       {"_id", "text"}
    qrels/{train,valid,test}.tsv   query-id  corpus-id  score   (header line; BEIR calls valid "dev")
    manifest.json

When a collection ships one qrels file only, queries are split by a stable hash of their id.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from indexing.data.common import SPLITS, read_jsonl, stable_split


@dataclass
class RetrievalData:
    name: str
    corpus: dict[str, dict]  # doc id -> {"title", "text"}
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, dict[str, int]]]  # split -> qid -> {doc id: grade}

    @property
    def doc_ids(self) -> list[str]:
        return list(self.corpus)

    def doc_text(self, doc_id: str) -> str:
        d = self.corpus[doc_id]
        return f"{d.get('title', '')}. {d.get('text', '')}".strip(". ")

    def split_queries(self, split: str) -> dict[str, str]:
        return {q: self.queries[q] for q in self.qrels.get(split, {}) if q in self.queries}


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t")
        for row in rows:
            if not row or row[0] in ("query-id", "query_id", "qid"):
                continue
            qid, did, grade = row[0], row[1], int(float(row[2])) if len(row) > 2 else 1
            if grade > 0:
                out.setdefault(qid, {})[did] = grade
    return out


def load_retrieval(path: str | Path) -> RetrievalData:
    path = Path(path)
    corpus = {str(r["_id"]): {"title": r.get("title", ""), "text": r.get("text", "")}
              for r in read_jsonl(path / "corpus.jsonl")}
    queries = {str(r["_id"]): r["text"] for r in read_jsonl(path / "queries.jsonl")}
    files = {p.stem: p for p in (path / "qrels").glob("*.tsv")}
    if "dev" in files:
        files["valid"] = files.pop("dev")
    qrels: dict[str, dict[str, dict[str, int]]] = {s: {} for s in SPLITS}
    if "test" in files and len(files) > 1:
        for split in SPLITS:
            qrels[split] = _read_qrels(files[split]) if split in files else {}
    else:  # one qrels file: split the queries by a stable hash of their ids
        for f in files.values():
            for qid, rels in _read_qrels(f).items():
                qrels[stable_split(qid)][qid] = rels
    for split in SPLITS:
        qrels[split] = {q: {d: g for d, g in r.items() if d in corpus} for q, r in qrels[split].items()}
        qrels[split] = {q: r for q, r in qrels[split].items() if r and q in queries}
    return RetrievalData(name=path.name, corpus=corpus, queries=queries, qrels=qrels)


def general_texts(data_dir: Path, n: int) -> tuple[list[str], list[str]]:
    """General-domain text (StrategyQA's evidence sentences of 6+ words, in a fixed shuffled order): the first n and
    the next n, disjoint (GEMS: null-space estimation / perplexity; Low-Rank Clone: distillation / held out)."""
    import random

    corpus = load_retrieval(data_dir / "strategyqa-facts").corpus
    texts = sorted(d["text"] for d in corpus.values() if len(d["text"].split()) >= 6)
    random.Random(0).shuffle(texts)
    return texts[:n], texts[n:2 * n]
