"""Collaborative information of a recommendation case, measured from item co-occurrence in user-item interactions.

A case is a user's history H (items, oldest first) and the item t that came next. Two items co-occur when one user
interacted with both in the training interactions. With c(i) the number of training users who have item i and
c(h, t) the number who have both h and t:

    P(t | h)  = c(h, t) / c(h)                         how often a user who has h also has t
    CI(H, t)  = 1/|H'| * sum_{h in H'} P(t | h)        H' = the history items seen in training
    lift(H, t) = CI(H, t) / P(t),  P(t) = c(t) / n_users

CI is the probability that t co-occurs with an item of the history, averaged over the history: what an item-based
collaborative filter can see of the target. CI = 0 means no history item ever co-occurred with t: no co-occurrence
path leads from the history to the target, and only popularity or content can find it. Lift divides out the
target's own popularity (lift 1 = the history says no more than popularity does).

Counting a user's own training interactions would make every training case look collaborative; `leave_out`
subtracts the user's own contribution (used for cases taken from the training sequences). Test and validation
targets are never in the training interactions, so their cases need no correction.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.artifacts import read_meta, write_meta


class CollabInfo:
    """The co-occurrence counts of a training log, and CI / lift of cases against them."""

    name = "collab"

    def __init__(self, counts: sp.csr_matrix, ids: list[str], n_users: int):
        self.counts = counts.tocsr()  # items x items, c(i, j); the diagonal is c(i)
        self.ids = ids
        self.index = {i: n for n, i in enumerate(ids)}
        self.n_users = n_users
        self.users_per_item = np.asarray(self.counts.diagonal(), dtype=np.float64)

    # ------------------------------------------------------------------ build, save, load
    @classmethod
    def from_sequences(cls, sequences: dict[str, list[str]], ids: list[str] | None = None) -> CollabInfo:
        ids = ids or sorted({i for s in sequences.values() for i in s}, key=lambda x: (len(x), x))
        index = {i: n for n, i in enumerate(ids)}
        rows, cols = [], []
        for u, (_, s) in enumerate(sequences.items()):
            items = sorted({index[i] for i in s if i in index})
            rows += [u] * len(items)
            cols += items
        x = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(sequences), len(ids)))
        return cls((x.T @ x).tocsr(), ids, len(sequences))

    @classmethod
    def build(cls, sequences: dict[str, list[str]], directory: Path) -> CollabInfo:
        info = cls.from_sequences(sequences)
        info.save(directory)
        return info

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        sp.save_npz(directory / "counts.npz", self.counts.astype(np.float32))
        (directory / "ids.json").write_text(json.dumps(self.ids))
        write_meta(directory, backend=self.name, items=len(self.ids), users=self.n_users, nnz=int(self.counts.nnz),
                   definition="CI(H,t) = mean over history items h seen in training of c(h,t)/c(h)")

    @classmethod
    def load(cls, directory: Path) -> CollabInfo:
        directory = Path(directory)
        return cls(sp.load_npz(directory / "counts.npz"), json.loads((directory / "ids.json").read_text()),
                   int(read_meta(directory)["users"]))

    # ------------------------------------------------------------------ the measure
    def _history(self, history: list[str]) -> np.ndarray:
        known = [self.index[h] for h in dict.fromkeys(history) if h in self.index]
        return np.array([h for h in known if self.users_per_item[h] > 0], dtype=np.int64)

    def scores(self, history: list[str], items: list[str], leave_out: bool = False) -> np.ndarray:
        """CI(history, t) for each t of items (0 for an item never seen in training or an empty history).
        leave_out: the history and each t are one training user's own items; their co-occurrence is not counted."""
        h = self._history(history)
        out = np.zeros(len(items))
        cols = [(n, self.index[t]) for n, t in enumerate(items) if t in self.index]
        if not len(h) or not cols:
            return out
        pos, idx = zip(*cols)
        c_ht = np.asarray(self.counts[h][:, list(idx)].todense(), dtype=np.float64)  # |H| x |items|
        c_h = self.users_per_item[h][:, None].copy()
        if leave_out:
            c_ht, c_h = c_ht - 1.0, c_h - 1.0
            keep = c_h[:, 0] > 0
            c_ht, c_h = c_ht[keep], c_h[keep]
            if not len(c_h):
                return out
        out[list(pos)] = (np.maximum(c_ht, 0.0) / c_h).mean(axis=0)
        return out

    def score(self, history: list[str], target: str, leave_out: bool = False) -> float:
        return float(self.scores(history, [target], leave_out)[0])

    def prior(self, target: str, leave_out: bool = False) -> float:
        """P(t) = c(t) / #users (0 for an item never seen in training)."""
        if target not in self.index:
            return 0.0
        c_t = self.users_per_item[self.index[target]] - (1.0 if leave_out else 0.0)
        return max(c_t, 0.0) / (self.n_users - (1 if leave_out else 0))

    def lift(self, history: list[str], target: str, leave_out: bool = False, ci: float | None = None) -> float:
        """CI / P(t): how much more likely the history makes t than its popularity alone (0 when t is unseen); ci:
        the case's CI when already computed."""
        p = self.prior(target, leave_out)
        if p <= 0:
            return 0.0
        return (self.score(history, target, leave_out) if ci is None else ci) / p

    def sequence_scores(self, sequence: list[str]) -> np.ndarray:
        """CI of every prefix case (sequence[:i], sequence[i]) for i >= 1 of one user's training sequence (distinct
        items, all seen in training), leaving the user out: one |s| x |s| block instead of |s| separate lookups."""
        idx = np.array([self.index[i] for i in sequence if i in self.index], dtype=np.int64)
        if len(idx) < 2:
            return np.zeros(max(0, len(idx) - 1))
        block = np.asarray(self.counts[idx][:, idx].todense(), dtype=np.float64) - 1.0  # leave the user out
        c_h = self.users_per_item[idx] - 1.0
        valid = c_h > 0
        ratio = np.where(valid[:, None], np.maximum(block, 0.0) / np.where(valid, c_h, 1.0)[:, None], 0.0)
        upper = np.triu(ratio, k=1)  # row j (history item) < column i (target)
        n_hist = np.cumsum(valid)[:-1]  # history items with c(h) > 0 before each position
        return np.where(n_hist > 0, upper.sum(axis=0)[1:] / np.maximum(n_hist, 1), 0.0)
