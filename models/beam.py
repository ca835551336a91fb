"""Constrained beam decoding of DocIDs, for the diffusion decoder, the autoregressive baseline and GEMS.

Both share one loop. A hypothesis is a partial DocID (some positions fixed, the rest masked) with a
cumulative log-probability. At each of T steps the model scores every position of every hypothesis in
one batched forward pass; then, per hypothesis:

1. only tokens that some valid DocID agrees with are allowed (the documents consistent with the fixed
   positions define the allowed tokens, so every answer is a real document);
2. the positions to fill are picked: the n_t most confident masked positions (DiffuGR,
   confidence-first unmasking; the other predictions are discarded, i.e. remasked) or the next position
   (left to right, autoregressive). With `disambiguation_last`, the last position (the DocID's
   disambiguation token, an arbitrary index among the documents sharing a semantic code) is only filled
   once the semantic positions are: its distribution is peaked (most leaves hold one document, token 0)
   without saying anything about the query, so confidence alone would commit it first;
3. the candidate fillings are the distinct projections of the consistent documents onto those positions,
   scored by the sum of their tokens' log-probabilities (a token of log-probability -inf is impossible); the
   best `beam` survive.

After the last step every hypothesis is a complete, valid DocID.

GEMS decodes its item IDs with the same loop (left to right, `renormalise`: a position's log-probabilities are
renormalised over its allowed tokens, so each level's scores are a distribution over the trie's children). A
`deadline` (time.monotonic()) is checked before each step: past it, DeadlineExceeded.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from models.backend import check_deadline

MASKED = -1  # a position not decided yet, in the (H, L) token tensors given to a logprobs_fn


def schedule(length: int, steps: int, level_order: bool = False) -> list[int]:
    """How many positions to unmask at each step, summing to length: as even as possible; in level order the coarse
    levels one per step and every remaining position in the last step (a finer position's tokens mean something
    only under their parent's, so a parent is never guessed together with its children while steps remain)."""
    steps = max(1, min(steps, length))
    if level_order:
        return [1] * (steps - 1) + [length - steps + 1]
    return [length // steps + (1 if i < length % steps else 0) for i in range(steps)]


@dataclass
class Hyp:
    query: int
    tokens: np.ndarray  # (L,) codes, MASKED where not yet decided
    consistent: np.ndarray  # indices of the documents that agree with the fixed positions
    logp: float = 0.0


def beam_decode(logprobs_fn: Callable[[np.ndarray, torch.Tensor], torch.Tensor], codes: np.ndarray,
                n_queries: int, steps: int, beam: int, left_to_right: bool = False,
                disambiguation_last: bool = True, renormalise: bool = False,
                deadline: float | None = None, level_order: bool = False,
                prior_fn: Callable[[int, np.ndarray, list[int]], np.ndarray] | None = None,
                model_weight: float = 1.0) -> list[list[tuple[int, float]]]:
    """logprobs_fn(query_index (H,), tokens (H, L)) -> (H, L, V) log-probabilities (with `renormalise`, any
    scores: only their log-softmax over each position's allowed tokens is used).

    Hypotheses are passed in a fixed order: query by query, best first; each step's hypothesis of query q
    with tokens t extends the previous step's hypothesis of q whose tokens are t with the new positions masked
    (a closure keeping per-row state, e.g. a KV cache, can find its parent row that way).
    codes: (N, L) the valid DocIDs. Returns per query up to `beam` (document row, log-probability), best first.

    level_order: fill positions in ID order (coarse level first) on the `steps` schedule instead of by confidence.
    prior_fn(query, consistent rows, positions) -> (L, V) scores of the positions this step may fill, added, for
    that hypothesis, to the model's log-probabilities (after `renormalise`) times model_weight, e.g. the geometry
    prior of models.diffugr.geometry.
    """
    N, L = codes.shape
    every = np.arange(N)
    hyps = [Hyp(q, np.full(L, MASKED, dtype=np.int64), every) for q in range(n_queries)]
    plan = [1] * L if left_to_right else schedule(L, steps, level_order)
    in_order = left_to_right or level_order  # fill the next masked positions, not the most confident ones
    for n_fill in plan:
        check_deadline(deadline)
        if not hyps:  # every candidate was impossible
            break
        qidx = np.array([h.query for h in hyps])
        lp = logprobs_fn(qidx, torch.from_numpy(np.stack([h.tokens for h in hyps]))).float().numpy()
        if renormalise:
            lp = lp.copy()  # renormalised in place below
        new: dict[int, list[tuple]] = {}  # query -> (logp, parent, positions, tokens, inverse, u)
        for h, lph in zip(hyps, lp):
            cand = codes[h.consistent]  # (n, L)
            masked = np.flatnonzero(h.tokens == MASKED)
            allowed = {p: np.unique(cand[:, p]) for p in (masked[:n_fill] if in_order else masked)}
            if renormalise:
                for p, ok in allowed.items():
                    lph[p, ok] = torch.log_softmax(torch.from_numpy(lph[p, ok]), dim=-1).numpy()
            if prior_fn is not None:
                lph = model_weight * lph + prior_fn(h.query, h.consistent, list(allowed))
            if in_order:
                fill = masked[:n_fill]
            else:  # confidence of a position: its best allowed token's probability
                conf = np.array([lph[p, allowed[p]].max() for p in masked])
                if disambiguation_last and len(masked) > 1 and masked[-1] == L - 1:
                    conf[-1] = -np.inf
                fill = masked[np.argsort(-conf, kind="stable")[:n_fill]]
            if len(fill) == 1:  # the same sorted projections as the row-wise unique below, faster
                proj = allowed[fill[0]][:, None]
                inverse = np.searchsorted(allowed[fill[0]], cand[:, fill[0]])
            else:
                # return_index: numpy then sorts the rows stably (mergesort), much faster here than its quicksort
                proj, _, inverse = np.unique(cand[:, fill], axis=0, return_index=True, return_inverse=True)
                inverse = inverse.ravel()
            scores = lph[fill[None, :], proj].sum(axis=1)  # (n_unique,)
            order = np.argsort(-scores, kind="stable")
            top = order[scores[order] > -np.inf][:beam]
            logps = (h.logp + scores[top].astype(np.float64)).tolist()  # = h.logp + float(score), each
            new.setdefault(h.query, []).extend((logp, h, fill, proj[u], inverse, u) for logp, u in zip(logps, top))
        hyps = []  # the survivors of each query, built only now: most candidates are cut
        for q in range(n_queries):
            for logp, h, fill, filling, inverse, u in sorted(new.get(q, []), key=lambda x: -x[0])[:beam]:
                tokens = h.tokens.copy()
                tokens[fill] = filling
                hyps.append(Hyp(q, tokens, h.consistent[inverse == u], logp))
    out: list[list[tuple[int, float]]] = [[] for _ in range(n_queries)]
    for h in hyps:  # complete: exactly one consistent document each
        out[h.query].extend((int(d), h.logp) for d in h.consistent[:1])
    return out
