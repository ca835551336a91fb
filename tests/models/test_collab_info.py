"""The collaborative-information measure (models/collab_info.py) on a hand-made interaction log, against numbers
worked out by hand.

    u1: a b c     u2: a b     u3: b d     u4: c
    users per item: c(a)=2 c(b)=3 c(c)=2 c(d)=1;   pairs: c(a,b)=2 c(a,c)=1 c(b,c)=1 c(b,d)=1 c(a,d)=c(c,d)=0
"""
from __future__ import annotations

import numpy as np
import pytest

from models.collab_info import CollabInfo

LOG = {"u1": ["a", "b", "c"], "u2": ["a", "b"], "u3": ["b", "d"], "u4": ["c"]}


@pytest.fixture()
def info():
    return CollabInfo.from_sequences(LOG)


def test_counts(info):
    c = info.counts.toarray()
    i = info.index
    assert [c[i[x], i[x]] for x in "abcd"] == [2, 3, 2, 1]
    assert c[i["a"], i["b"]] == c[i["b"], i["a"]] == 2
    assert c[i["a"], i["d"]] == 0 and info.n_users == 4


def test_case_scores_by_hand(info):
    assert info.score(["a"], "b") == pytest.approx(2 / 2)  # c(a,b)/c(a)
    assert info.score(["b"], "a") == pytest.approx(2 / 3)  # c(a,b)/c(b): not symmetric
    assert info.score(["a", "d"], "c") == pytest.approx((1 / 2 + 0 / 1) / 2)
    assert info.score(["d"], "a") == 0.0  # no co-occurrence path: "none"
    assert info.score(["a", "unknown"], "b") == pytest.approx(1.0)  # items never seen in training are skipped
    assert info.score([], "b") == 0.0 and info.score(["a"], "unknown") == 0.0
    assert info.lift(["a", "d"], "c") == pytest.approx(0.25 / (2 / 4))  # CI / P(t)
    np.testing.assert_allclose(info.scores(["a", "d"], ["b", "c", "zzz"]), [(1.0 + 1.0) / 2, 0.25, 0.0])


def test_leave_the_user_out(info):
    # u1's own case ([a, b] -> c): without u1, a and b never co-occur with c
    assert info.score(["a", "b"], "c", leave_out=True) == 0.0
    assert info.score(["a"], "b", leave_out=True) == pytest.approx((2 - 1) / (2 - 1))  # u2 still has both
    assert info.lift(["a"], "b", leave_out=True) == pytest.approx(1.0 / ((3 - 1) / 3))
    np.testing.assert_allclose(info.sequence_scores(LOG["u1"]), [1.0, 0.0])
    np.testing.assert_allclose(info.sequence_scores(LOG["u3"]), [0.0])  # c(b,d) is u3's own
    for seq in LOG.values():  # the block form equals one case at a time
        want = [info.score(seq[:n], seq[n], leave_out=True) for n in range(1, len(seq))]
        np.testing.assert_allclose(info.sequence_scores(seq), want)


def test_save_load_round_trip(info, tmp_path):
    info.save(tmp_path / "collab")
    back = CollabInfo.load(tmp_path / "collab")
    assert back.ids == info.ids and back.n_users == 4
    assert back.score(["a", "d"], "c") == info.score(["a", "d"], "c")
