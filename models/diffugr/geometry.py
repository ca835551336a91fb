"""The geometry prior of DiffuGR decoding: what the DocID tree already knows about a query.

A DocID prefix names a set of documents (the subtree under it). The prior scores filling position p with token t,
given a hypothesis' fixed positions, by how close the query is to the documents that stay consistent:

    g(p, t) = (mean_{d consistent, code_p(d) = t} <q, e_d>  -  mean_{d consistent} <q, e_d>) / tau

with q and e_d the normalised MiniLM embeddings of the query and the documents (the vectors the residual k-means
IDs were built from). Filled level by level the increments telescope: a complete ID scores (<q, e_d> - mean)/tau,
so with the decoder weight at 0 the beam is a tree-pruned dense search (evaluated as its own row, the "geometry"
row, so the tables show what the learned decoder adds on top). Filling several positions in one step scores each
from the same consistent set (a factorised estimate), which is why fewer steps cost quality.
"""
from __future__ import annotations

import numpy as np


def geometry_prior(scores: np.ndarray, codes: np.ndarray, vocab: int, tau: float):
    """scores: (Q, N) <query, document> for the batch; codes: (N, L). Returns prior_fn(query, consistent,
    positions) -> (L, V) for models.beam.beam_decode: the rows of `positions` scored (-inf where no consistent
    document has the token), the other rows -inf (the beam does not fill them this step)."""
    L = codes.shape[1]

    def prior(q: int, consistent: np.ndarray, positions: list[int]) -> np.ndarray:
        s = scores[q, consistent]
        cand = codes[consistent]
        out = np.full((L, vocab), -np.inf, dtype=np.float32)
        base = s.mean()
        for p in positions:
            count = np.bincount(cand[:, p], minlength=vocab)
            total = np.bincount(cand[:, p], weights=s, minlength=vocab)
            ok = count > 0
            out[p, ok] = (total[ok] / count[ok] - base) / tau
        return out

    return prior
