"""Semantic DocIDs by residual k-means (residual quantisation) over document embeddings.

Level 1 clusters the MiniLM embeddings into `codes` centroids (faiss k-means); level 2 clusters the
residuals, and so on for `levels` levels; a final disambiguation token numbers the documents that share
a code path, so every document gets a unique ID of length levels + 1. Similar documents share prefixes,
which is what lets a decoder generalise from seen to unseen queries.

    python -m indexing.docids --artifacts artifacts/v1 [--levels 3 --codes 64 --scheme hierarchical]

writes <artifacts>/retrieve/docids/{codes.npy, ids.json, meta.json}.

Schemes: `residual` (residual k-means, global codebooks per level) and `hierarchical` (hierarchical k-means: each
level clusters the documents of one parent anew, on their embeddings, so a code means something only under its
parent, as in DSI/NCI). `python -m training.eval.docids` reports the quality of each scheme.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import faiss
import numpy as np

from models.docids import DocIDs


def _kmeans(x: np.ndarray, k: int, seed: int, niter: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """(assignments, centroids) of faiss k-means with k clusters (fewer when x has fewer rows)."""
    k = min(k, len(x))
    if k <= 1:
        return np.zeros(len(x), dtype=np.int64), x.mean(axis=0, keepdims=True)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64), km.centroids


def residual_kmeans(vectors: np.ndarray, levels: int = 3, codes: int = 32, seed: int = 0) -> np.ndarray:
    """(N, levels) code indices; each level is faiss k-means on the residuals of the previous levels."""
    residual = vectors.astype("float32").copy()
    out = np.zeros((len(vectors), levels), dtype=np.int64)
    for level in range(levels):
        assign, centroids = _kmeans(residual, codes, seed + level)
        out[:, level] = assign
        residual -= centroids[assign]
    return out


def hierarchical_kmeans(vectors: np.ndarray, levels: int = 3, codes: int = 32, seed: int = 0) -> np.ndarray:
    """(N, levels) codes; level l+1 clusters the members of each level-l cluster separately (codes local to the
    parent)."""
    x = vectors.astype("float32")
    out = np.zeros((len(x), levels), dtype=np.int64)
    groups = [np.arange(len(x))]
    for level in range(levels):
        nxt = []
        for g in groups:
            assign, _ = _kmeans(x[g], codes, seed + level)
            out[g, level] = assign
            nxt += [g[assign == c] for c in np.unique(assign)]
        groups = nxt
    return out


SCHEMES = {"residual": residual_kmeans, "hierarchical": hierarchical_kmeans}


def build_docids(vectors: np.ndarray, ids: list[str], levels: int = 3, codes: int = 32, seed: int = 0,
                 scheme: str = "residual") -> DocIDs:
    paths = SCHEMES[scheme](vectors, levels, codes, seed)
    disamb = np.zeros(len(ids), dtype=np.int64)
    seen: dict[tuple[int, ...], int] = {}
    for n, row in enumerate(map(tuple, paths)):
        disamb[n] = seen.get(row, 0)
        seen[row] = disamb[n] + 1
    full = np.concatenate([paths, disamb[:, None]], axis=1)
    vocab = max(codes, int(disamb.max()) + 1)
    return DocIDs(full, list(ids), vocab)


def atomic_ids(ids: list[str]) -> DocIDs:
    """One token per item (L = 1, V = N): collision-free by construction, no semantic sharing between IDs (the
    item tokens' embeddings carry the item's features instead). Suits catalogues small enough for a flat head."""
    return DocIDs(np.arange(len(ids), dtype=np.int64)[:, None], list(ids), len(ids))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--levels", type=int, default=3)
    # hierarchical 3 x 64: chosen on the valid split with `python -m training.eval.docids` (README, DiffuGR)
    p.add_argument("--codes", type=int, default=64)
    p.add_argument("--scheme", choices=list(SCHEMES), default="hierarchical")
    a = p.parse_args(argv)
    dense = a.artifacts / "retrieve" / "dense"  # reuse the corpus embeddings of the dense index
    vectors = np.load(dense / "vectors.npy")
    ids = json.loads((dense / "ids.json").read_text())
    d = build_docids(vectors, ids, a.levels, a.codes, scheme=a.scheme)
    d.save(a.artifacts / "retrieve" / "docids", levels=a.levels, codes=a.codes, scheme=a.scheme,
           index_version=a.artifacts.name, embeddings=str(dense))
    sizes = np.bincount(d.codes[:, -1])
    print(f"{len(ids)} DocIDs of length {d.length}, vocab {d.vocab}; disambiguation token histogram {sizes.tolist()}")


if __name__ == "__main__":
    main()
