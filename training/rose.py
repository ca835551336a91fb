"""ROSE, the reinforcement-learning trainer of the EXSEARCH loop beside generalized EM (issue #14): the parts of the
method, as pure functions over a group of rollouts of one question. The rollout driver (sampling the agent with
the LM, rewards from the answer and the gold evidence, the LoRA update on CPU) builds on these.

- Rollouts form a tree. The first rollouts start at the root; each new one is branched from an already sampled
  rollout at the position of highest semantic divergence (`semantic_entropy` of the top next tokens there, tokens
  that mean the same merged), or, with probability epsilon, restarted from the root (`choose_branch`).
- A segment is the stretch of a rollout between two branch points. Its value is the mean reward of the rollouts
  through it (`segment_values`); its advantage is its value minus its parent segment's (the first segments' parent
  is the group: GRPO's group mean), scaled by the group's reward spread (`segment_advantages`): a token is credited
  for what the choices of its own segment changed, not for the whole trajectory.
- A length-aware term favours the shortest correct trajectory: a correct rollout longer than the group's shortest
  correct one has its advantages lowered in proportion to the extra length; nothing else changes (`length_terms`).
- The update is GRPO's clipped surrogate with a small KL to the reference policy (`clipped_objective`).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def _same_meaning(token: str) -> str:
    """Tokens that differ only in case, surrounding space or punctuation mean the same next step (" Yes", "yes")."""
    return token.strip().strip(".,:;!?\"'").lower()


def semantic_entropy(candidates: list[tuple[str, float]], cluster: Callable[[str], str] = _same_meaning) -> float:
    """Entropy (nats) of the next-step distribution over meanings: the top next tokens (text, probability) grouped
    by `cluster`, probabilities renormalised over the candidates given."""
    mass: dict[str, float] = {}
    for text, p in candidates:
        mass[cluster(text)] = mass.get(cluster(text), 0.0) + max(0.0, p)
    total = sum(mass.values())
    if total <= 0:
        return 0.0
    return -sum((p / total) * math.log(p / total) for p in mass.values() if p > 0)


@dataclass
class Rollout:
    """One sampled trajectory: the segments it passes through (root first), its tokens per segment, its reward,
    whether its answer was correct, and the entropy at each of its positions (for choosing where to branch)."""

    segments: list[int]
    lengths: list[int]
    reward: float
    correct: bool = False
    entropies: list[float] = field(default_factory=list)
    branched_at: set[int] = field(default_factory=set)  # positions already used as branch points

    @property
    def length(self) -> int:
        return sum(self.lengths)


def choose_branch(rollouts: list[Rollout], epsilon: float, rng: random.Random,
                  min_position: int = 1) -> tuple[int, int] | None:
    """(rollout index, position) with the highest semantic entropy over the group's positions not yet branched from
    (at least `min_position` tokens in), or None for a restart from the root: with probability epsilon, or when no
    position is left. Ties go to the earlier rollout, then the earlier position."""
    if rng.random() < epsilon:
        return None
    best, where = -1.0, None
    for i, r in enumerate(rollouts):
        for pos, h in enumerate(r.entropies):
            if pos >= min_position and pos not in r.branched_at and h > best:
                best, where = h, (i, pos)
    return where


def segment_values(rollouts: list[Rollout]) -> dict[int, float]:
    """Segment id -> mean reward of the rollouts through it."""
    through: dict[int, list[float]] = {}
    for r in rollouts:
        for s in r.segments:
            through.setdefault(s, []).append(r.reward)
    return {s: sum(v) / len(v) for s, v in through.items()}


def segment_advantages(rollouts: list[Rollout], scale: bool = True, eps: float = 1e-6) -> dict[int, float]:
    """Segment id -> its value minus its parent's (the segment before it on the rollouts through it; for the first
    segments, the group's mean reward), divided by the standard deviation of the group's rewards when `scale`."""
    values = segment_values(rollouts)
    rewards = [r.reward for r in rollouts]
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / len(rewards))
    parent: dict[int, int | None] = {}
    for r in rollouts:
        for k, s in enumerate(r.segments):
            p = r.segments[k - 1] if k else None
            if parent.setdefault(s, p) != p:
                raise ValueError(f"segment {s} has two parents ({parent[s]} and {p}): segments must form a tree")
    adv = {s: values[s] - (values[p] if p is not None else mean) for s, p in parent.items()}
    return {s: a / (std + eps) for s, a in adv.items()} if scale else adv


def length_terms(rollouts: list[Rollout], weight: float) -> list[float]:
    """Per rollout, <= 0: for a correct rollout, -weight x (its length - the shortest correct length) / (the longest
    correct length - the shortest); 0 for the shortest correct rollouts and for every incorrect one."""
    lengths = [r.length for r in rollouts if r.correct]
    if len(lengths) < 2 or max(lengths) == min(lengths):
        return [0.0] * len(rollouts)
    lo, hi = min(lengths), max(lengths)
    return [-weight * (r.length - lo) / (hi - lo) if r.correct else 0.0 for r in rollouts]


def token_advantages(rollouts: list[Rollout], length_weight: float = 0.1) -> list[list[float]]:
    """Per rollout, per token: its segment's advantage plus the rollout's length term."""
    adv = segment_advantages(rollouts)
    extra = length_terms(rollouts, length_weight)
    return [[adv[s] + x for s, n in zip(r.segments, r.lengths) for _ in range(n)] for r, x in zip(rollouts, extra)]


def clipped_objective(logp: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, clip: float = 0.2, kl_weight: float = 0.02) -> torch.Tensor:
    """GRPO's loss to minimise (per token, averaged over the real tokens of `mask`): -min(ratio x A, clip(ratio) x A)
    + kl_weight x KL(policy || reference) with the unbiased estimator exp(ref - logp) - (ref - logp) - 1."""
    ratio = torch.exp(logp - logp_old)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    d = logp_ref - logp
    kl = torch.exp(d) - d - 1
    per_token = -surrogate + kl_weight * kl
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1)
