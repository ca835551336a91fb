"""ROSE's parts on hand-made cases, against values worked out by hand: the branch point chooser, semantic entropy,
segment advantages on a small rollout tree, the length term, and the clipped objective."""
from __future__ import annotations

import math
import random

import pytest
import torch

from training.rose import (
    Rollout,
    choose_branch,
    clipped_objective,
    length_terms,
    segment_advantages,
    segment_values,
    semantic_entropy,
    token_advantages,
)

YES_NO = [(" Yes", 0.4), ("yes", 0.1), (" No", 0.5)]  # two meanings, 0.5 each -> ln 2
SURE = [(" Search", 0.9), (" Answer", 0.1)]
SAME = [("Yes", 0.5), (" yes.", 0.5)]  # two tokens, one meaning -> 0


def test_semantic_entropy_merges_tokens_that_mean_the_same():
    assert semantic_entropy(YES_NO) == pytest.approx(math.log(2))
    assert semantic_entropy(SURE) == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    assert semantic_entropy(SAME) == pytest.approx(0.0)
    assert semantic_entropy([("a", 0.2), ("b", 0.2)]) == pytest.approx(math.log(2))  # renormalised over the top


def test_the_branch_point_is_the_position_of_highest_semantic_divergence():
    a = Rollout([0], [4], 1.0, entropies=[semantic_entropy(d) for d in (SURE, SAME, SURE, SAME)])
    b = Rollout([1], [4], 0.0, entropies=[semantic_entropy(d) for d in (YES_NO, SURE, YES_NO, SAME)])
    rng = random.Random(0)
    assert choose_branch([a, b], epsilon=0.0, rng=rng) == (1, 2)  # position 0 is below min_position
    b.branched_at.add(2)
    assert choose_branch([a, b], epsilon=0.0, rng=rng) == (0, 2)  # next highest: SURE (SAME merges to 0)
    assert choose_branch([a, b], epsilon=0.0, rng=rng, min_position=0) == (1, 0)
    assert choose_branch([a, b], epsilon=1.0, rng=rng) is None  # exploration: restart from the root


def tree() -> list[Rollout]:
    """Segments 0 -> {1 -> {3, 4}, 2}, and 5 (a restart from the root); rewards 1, 0, 1, 0."""
    return [Rollout([0, 1, 3], [2, 3, 4], 1.0, correct=True),
            Rollout([0, 1, 4], [2, 3, 1], 0.0),
            Rollout([0, 2], [2, 2], 1.0, correct=True),
            Rollout([5], [3], 0.0)]


def test_segment_advantages_on_a_hand_made_tree():
    r = tree()
    assert segment_values(r) == pytest.approx({0: 2 / 3, 1: 0.5, 2: 1.0, 3: 1.0, 4: 0.0, 5: 0.0})
    # value minus the parent's value; the first segments' parent is the group mean, 0.5
    raw = segment_advantages(r, scale=False)
    assert raw == pytest.approx({0: 1 / 6, 1: -1 / 6, 2: 1 / 3, 3: 0.5, 4: -0.5, 5: -0.5})
    # scaled by the rewards' standard deviation, 0.5
    assert segment_advantages(r) == pytest.approx({0: 1 / 3, 1: -1 / 3, 2: 2 / 3, 3: 1.0, 4: -1.0, 5: -1.0}, abs=1e-5)
    with pytest.raises(ValueError, match="two parents"):
        segment_advantages([Rollout([0, 1], [1, 1], 1.0), Rollout([2, 1], [1, 1], 0.0)])


def test_the_length_term_only_lowers_longer_correct_rollouts():
    r = tree()  # correct lengths: 9 and 4
    assert length_terms(r, 0.1) == pytest.approx([-0.1, 0.0, 0.0, 0.0])
    with_term, without = token_advantages(r, 0.1), token_advantages(r, 0.0)
    assert [len(t) for t in with_term] == [9, 6, 4, 3]
    assert with_term[0] == pytest.approx([1 / 3 - 0.1] * 2 + [-1 / 3 - 0.1] * 3 + [1.0 - 0.1] * 4, abs=1e-5)
    for i, (w, wo) in enumerate(zip(with_term, without)):
        if i == 0:
            assert all(x < y for x, y in zip(w, wo))  # the longer correct rollout: every token lowered
        else:
            assert w == pytest.approx(wo)  # the shortest correct and the incorrect ones: unchanged


def test_the_clipped_objective():
    adv = torch.tensor([1.0, -1.0, 2.0, 5.0])
    mask = torch.tensor([1, 1, 1, 0])
    zero = torch.zeros(4)
    # on-policy, at the reference: minus the mean advantage of the real tokens
    assert clipped_objective(zero, zero, zero, adv, mask).item() == pytest.approx(-(1 - 1 + 2) / 3)
    # a ratio past 1 + clip on a positive advantage gives no gradient (the clip); on a negative one it does
    logp = torch.log(torch.tensor([1.5, 1.5, 1.0, 1.0])).requires_grad_()
    clipped_objective(logp, zero, zero, adv, mask, kl_weight=0.0).backward()
    assert logp.grad[0] == 0 and logp.grad[1] != 0 and logp.grad[3] == 0
    # the KL term is zero at the reference and positive away from it
    far = torch.full((4,), -0.5)
    assert clipped_objective(far, far, zero, torch.zeros(4), mask, kl_weight=1.0).item() > 0
