"""How good are the DocIDs, before any decoder is trained? For each ID scheme and size (indexing.docids):

    python -m training.eval.docids [--split valid] [--artifacts artifacts/v1]

- reconstruction: mean cosine between a document's embedding and the mean embedding of the documents that share
  its semantic path (the leaf vector the geometry scorer sees; the same definition for every scheme);
- collisions: documents that share their whole semantic path with another (told apart only by the
  disambiguation token, which says nothing about the query);
- query level-1 match: how often a question's nearest level-1 centroid is the level-1 code of a relevant document;
- geometry R@10 / MRR@10: the geometry scorer alone on those IDs (models.diffugr.geometry, level order, beam 50):
  a tree-pruned dense search, i.e. what a query can reach through the ID tree with no training at all.
Questions come from --split (valid by default: the choice of scheme must not look at the test split).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from indexing.data import load_retrieval
from indexing.docids import SCHEMES, build_docids
from models.beam import beam_decode
from models.diffugr.geometry import geometry_prior
from models.docids import DocIDs
from models.encoders.sentence import encode
from training.common import add_threads_arg, set_threads
from training.eval.metrics import ranking


def path_means(d: DocIDs, vectors: np.ndarray) -> np.ndarray:
    """Each document's reconstruction as the mean embedding of the documents sharing its semantic path."""
    sem = d.codes[:, :-1]
    _, inverse = np.unique(sem, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    sums = np.zeros((inverse.max() + 1, vectors.shape[1]))
    np.add.at(sums, inverse, vectors)
    return sums[inverse] / np.bincount(inverse)[inverse][:, None]


def quality(d: DocIDs, vectors: np.ndarray, qvecs: np.ndarray, qids: list[str], qrels: dict, beam: int = 50,
            tau: float = 0.05) -> dict:
    row = {i: n for n, i in enumerate(d.ids)}
    recon = path_means(d, vectors)
    cos = float(np.mean(np.sum(recon * vectors, 1) / np.linalg.norm(recon, axis=1)))
    sem = d.codes[:, :-1]
    _, inverse, counts = np.unique(sem, axis=0, return_inverse=True, return_counts=True)
    collisions = int((counts[inverse.ravel()] > 1).sum())
    level1 = np.stack([vectors[d.codes[:, 0] == c].mean(0) for c in range(d.codes[:, 0].max() + 1)])
    nearest = np.argmax(qvecs @ level1.T, axis=1)
    match = [nearest[n] == d.codes[row[doc], 0] for n, q in enumerate(qids) for doc in qrels[q] if doc in row]
    scores = qvecs @ vectors.T
    prior = geometry_prior(scores, d.codes, d.vocab, tau)
    zeros = lambda qidx, tokens: torch.zeros(len(qidx), d.length, d.vocab)
    t0 = time.perf_counter()
    decoded = beam_decode(zeros, d.codes, len(qids), d.length, beam, renormalise=True, level_order=True,
                          prior_fn=prior, model_weight=0.0)
    ms = (time.perf_counter() - t0) * 1000 / max(1, len(qids))
    ranked = {q: [d.ids[r] for r, _ in rows[:10]] for q, rows in zip(qids, decoded)}
    geo = ranking({q: qrels[q] for q in qids}, ranked, ["recall@10", "mrr@10"])
    return {"leaves": int(len(counts)), "reconstruction_cos": cos, "collisions": collisions,
            "query_level1_match": float(np.mean(match)), "geometry_recall@10": geo["recall@10"],
            "geometry_mrr@10": geo["mrr@10"], "geometry_ms_per_query": ms, "length": d.length, "vocab": d.vocab}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--data", type=Path, default=Path("data/strategyqa-facts"))
    p.add_argument("--split", default="valid", choices=["valid", "test"])
    p.add_argument("--configs", default="residual:3x32,residual:3x256,residual:2x128,hierarchical:3x16,"
                   "hierarchical:3x32,hierarchical:3x64,hierarchical:2x128",
                   help="comma-separated scheme:LEVELSxCODES")
    p.add_argument("--out", type=Path, default=Path("results"))
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    dense = a.artifacts / "retrieve" / "dense"
    vectors = np.load(dense / "vectors.npy").astype("float32")
    ids = json.loads((dense / "ids.json").read_text())
    data = load_retrieval(a.data)
    queries = data.split_queries(a.split)
    qids = list(queries)
    qvecs = encode([queries[q] for q in qids])
    rows = []
    for config in a.configs.split(","):
        scheme, size = config.split(":")
        levels, codes = (int(x) for x in size.split("x"))
        if scheme not in SCHEMES:
            p.error(f"unknown scheme {scheme!r}; choose from {list(SCHEMES)}")
        d = build_docids(vectors, ids, levels, codes, scheme=scheme)
        rows.append({"scheme": scheme, "levels": levels, "codes": codes,
                     **quality(d, vectors, qvecs, qids, data.qrels[a.split])})
    table = Table(title=f"DocID quality ({len(ids)} documents; questions: {a.split} split, {len(qids)})")
    cols = ["scheme", "levels x codes", "leaves", "recon. cos", "collisions", "q level-1 match", "geometry R@10",
            "geometry MRR@10", "ms/query"]
    for c in cols:
        table.add_column(c, justify="left" if c == "scheme" else "right")
    for r in rows:
        table.add_row(r["scheme"], f"{r['levels']}x{r['codes']}", str(r["leaves"]), f"{r['reconstruction_cos']:.3f}",
                      str(r["collisions"]), f"{r['query_level1_match']:.3f}", f"{r['geometry_recall@10']:.4f}",
                      f"{r['geometry_mrr@10']:.4f}", f"{r['geometry_ms_per_query']:.1f}")
    Console(width=160).print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"docid-quality-{a.split}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
