"""The GEMS diagnostic's two measuring parts on hand-made data: the last-item transition baseline and the linear
probe."""
from __future__ import annotations

import pytest
import torch

from indexing.data.recsys import RecsysData
from training.eval.gems_probe import ProbeConfig, fit_probe, markov


def _data(sequences: dict[str, list[str]]) -> RecsysData:
    items = {i: {"title": i} for s in sequences.values() for i in s}
    return RecsysData("hand-made", items, sequences)


def test_the_transition_baseline_ranks_what_followed_the_last_item():
    # training parts (all but the last two items): a -> b twice, a -> c, a -> z; m is the most popular item (3)
    data = _data({"u1": ["a", "b", "a", "b", "p", "q"], "u2": ["a", "c", "p", "q"],
                  "u3": ["m", "c", "m", "c", "m", "p", "q"], "t": ["c", "a", "z", "a", "b"]})
    # t's test case: history c a z a -> b. After a: P(b) = 1/2, P(m) = 0: b is first (popularity alone would put m
    # first: nDCG 0.63). u1-u3 end in p, never followed in training, and their target q never occurs there: misses.
    assert markov(data, "test", last=1)["ndcg@10"] == pytest.approx(1 / 4)


def test_the_probe_learns_a_linear_transition_and_reports_the_valid_chosen_epoch():
    n = 20
    eye = torch.eye(n)
    x = eye.repeat(30, 1)  # the current item, one-hot
    y = (torch.arange(n).repeat(30) + 1) % n  # the next item is always the following one
    items = [str(i) for i in range(n)]
    evals = {split: (eye, [[] for _ in range(n)], [str((i + 1) % n) for i in range(n)]) for split in ("valid", "test")}
    out = fit_probe(x, y, evals, n, ProbeConfig(epochs=3, lr=0.05, batch=64), items, "one-hot")
    assert out["test"]["ndcg@10"] > 0.99 and out["test"]["hr@5"] == 1.0
    assert out["epoch"] == max(out["curve"], key=lambda p: p["valid"]["hr@10"])["epoch"]
    assert len(out["curve"]) == 3
    # the history is excluded: with every item but the target's successor seen, only that item can be ranked
    seen = [[j for j in range(n) if j != (i + 1) % n] for i in range(n)]
    out = fit_probe(x, y, {s: (eye, seen, evals[s][2]) for s in ("valid", "test")}, n,
                    ProbeConfig(epochs=1, lr=0.05, batch=64), items, "one-hot, history excluded")
    assert out["test"]["hr@5"] == 1.0
