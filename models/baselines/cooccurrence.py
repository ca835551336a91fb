"""Item-to-item co-occurrence: items that followed the user's recent items in other users' sequences.

score(j) = sum over the last `recent` history items i (weighted by recency) of C[i, j] / sqrt(n_i n_j),
where C counts how often j came within `window` steps after i in the training sequences. Users with no
known history get the popular items.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.artifacts import read_meta, write_meta
from models.backend import Backend, Hit, Request


class CooccurrenceBackend(Backend):
    name = "cooc"
    tasks = ("recommend",)
    cost_rank = 1

    def __init__(self, sim: sp.csr_matrix, ids: list[str], popularity: np.ndarray, recent: int = 10):
        super().__init__()
        self.sim, self.ids, self.popularity, self.recent = sim, ids, popularity, recent
        self.index = {i: n for n, i in enumerate(ids)}

    @classmethod
    def build(cls, sequences: dict[str, list[str]], directory: Path, window: int = 5) -> CooccurrenceBackend:
        ids = sorted({i for s in sequences.values() for i in s}, key=lambda x: (len(x), x))
        index = {i: n for n, i in enumerate(ids)}
        rows, cols = [], []
        for s in sequences.values():
            idx = [index[i] for i in s]
            for a in range(len(idx)):
                for b in range(a + 1, min(len(idx), a + 1 + window)):
                    rows.append(idx[a])
                    cols.append(idx[b])
        n = len(ids)
        counts = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, n))
        counts.sum_duplicates()
        pop = np.bincount([index[i] for s in sequences.values() for i in s], minlength=n).astype(np.float32)
        norm = 1.0 / np.sqrt(np.maximum(pop, 1.0))
        sim = sp.diags(norm) @ counts @ sp.diags(norm)
        directory.mkdir(parents=True, exist_ok=True)
        sp.save_npz(directory / "sim.npz", sim.tocsr())
        np.save(directory / "popularity.npy", pop)
        (directory / "ids.json").write_text(json.dumps(ids))
        write_meta(directory, backend=cls.name, items=n, window=window, nnz=int(sim.nnz), recent=10)
        return cls(sim.tocsr(), ids, pop)

    @classmethod
    def load(cls, directory: Path) -> CooccurrenceBackend:
        return cls(sp.load_npz(directory / "sim.npz").tocsr(), json.loads((directory / "ids.json").read_text()),
                   np.load(directory / "popularity.npy"), read_meta(directory).get("recent", 10))

    def config(self, request: Request) -> dict:
        return {"recent": self.recent}

    def scores(self, history: list[str]) -> np.ndarray:
        known = [self.index[i] for i in history if i in self.index][-self.recent:]
        # tiny popularity prior breaks ties and answers cold-start users
        scores = self.popularity / (self.popularity.max() or 1.0) * 1e-3
        if known:
            weights = np.linspace(0.5, 1.0, len(known), dtype=np.float32)
            scores = scores + np.asarray(self.sim[known].T @ weights).ravel()
        scores[[self.index[i] for i in history if i in self.index]] = -np.inf
        return scores

    def _answer(self, requests: list[Request]) -> list[list[Hit]]:
        out = []
        for r in requests:
            s = self.scores(r.history)
            top = np.argsort(-s, kind="stable")[: r.k]
            out.append([Hit(self.ids[j], float(s[j])) for j in top if np.isfinite(s[j])])
        return out
