"""The project's metrics, each defined once: ranking metrics (ranx) and answer exact match / F1 (SQuAD).

Every evaluation and every trainer's validation score comes from here: training.eval.ranking (the harness),
training.eval.agent, and the validation of train_sasrec (HR@10), train_diffugr (Recall@10), train_gems
(HR@5/10, NDCG@10) and train_exsearch (dev EM).

Ranking: ranx scores of ranked id lists, in exactly the order given (the run gets rank-based scores, so ties and
the backend's own scores cannot reorder it; an id repeated in a list counts at its first rank). Metric names are
ranx's: "recall@10", "mrr@10", "ndcg@10", "hit_rate@10" (1 when any relevant id is in the top k), ...

Answers: SQuAD's normalisation (lower case, punctuation removed, the articles a/an/the dropped, whitespace
collapsed), then EM = equality of the normalised strings and F1 = token-overlap F1 (an empty side scores 1 only
when both are empty). "Yes." == "yes"; on yes/no answers EM and F1 agree.
"""
from __future__ import annotations

import re
import string
from collections import Counter

RANKING = ["recall@1", "recall@10", "mrr@10", "ndcg@10", "hit_rate@5", "hit_rate@10"]


# ---------------------------------------------------------------- ranking (ranx)
def ranking(qrels: dict[str, dict[str, int]], ranked: dict[str, list[str]],
            metrics: list[str] | None = None) -> dict[str, float]:
    """ranx metrics (mean over qrels' queries) of ranked id lists {qid: [id, ...]} against qrels
    {qid: {id: grade}}. A query of qrels with no list, or an empty one, scores 0; lists of queries outside qrels
    are ignored."""
    metrics = list(metrics or RANKING)
    if not qrels:
        return {m: 0.0 for m in metrics}
    from ranx import Qrels, Run, evaluate

    run = {}
    for q, ids in ranked.items():
        scores: dict[str, float] = {}
        for n, i in enumerate(ids):
            scores.setdefault(i, float(len(ids) - n))
        run[q] = scores or {"__none__": 0.0}
    scores = evaluate(Qrels.from_dict(qrels), Run.from_dict(run or {"__none__": {"__none__": 0.0}}), metrics,
                      make_comparable=True)
    scores = scores if isinstance(scores, dict) else {metrics[0]: scores}
    return {m: float(scores[m]) for m in metrics}


def single_target(ranked: list[list[str]], targets: list[str], metrics: list[str] | None = None) -> dict[str, float]:
    """ranking() when each example has exactly one relevant id (the next item, the item a query leads to)."""
    return ranking({str(n): {t: 1} for n, t in enumerate(targets)}, {str(n): r for n, r in enumerate(ranked)},
                   metrics)


def evidence(supporting: list[list[str]], retrieved: list[list[str]], recorded: list[list[str]] | None = None,
             k: int = 10) -> dict[str, float]:
    """How much of each question's gold supporting evidence a system found: recall@k of the ids it retrieved (in
    the order retrieved, deduplicated), and with `recorded` (the ids it kept as evidence) their recall (all of them)
    and precision (the share of recorded ids that are gold, over the questions that recorded any; nan if none)."""
    qrels = {str(n): {d: 1 for d in s} for n, s in enumerate(supporting) if s}
    out = {f"evidence_recall@{k}": ranking(qrels, {str(n): r for n, r in enumerate(retrieved)}, [f"recall@{k}"])[
        f"recall@{k}"]}
    if recorded is not None:
        out["recorded_recall"] = ranking(qrels, {str(n): r for n, r in enumerate(recorded)}, ["recall@1000"])[
            "recall@1000"]
        kept = [(set(r), set(s)) for r, s in zip(recorded, supporting) if r]
        out["record_precision"] = (sum(len(r & s) / len(r) for r, s in kept) / len(kept)) if kept else float("nan")
        out["recorded_any"] = len(kept) / max(1, len(recorded))
    return out


def gold_recall(retrieved: list[str], supporting: list[str]) -> float:
    """One question's share of gold supporting facts among the ids it retrieved (all of them; 0 without gold): the
    evidence part of the agent trainers' rewards and weights."""
    gold = set(supporting)
    return len(gold & set(retrieved)) / len(gold) if gold else 0.0


def proportion_ci(p: float, n: int, z: float = 1.96) -> float:
    """Half-width of the normal-approximation 95% interval of a proportion p over n cases."""
    return z * (p * (1 - p) / n) ** 0.5 if n else float("nan")


# ---------------------------------------------------------------- answers (SQuAD)
_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)
