"""Yes/no answers read from the language model's preference, calibrated on the training split (issue #14): can a
packaged LM answer StrategyQA better than the majority class, closed book, with BM25 facts, or with the gold facts?

For each question the prompt holds a balanced few-shot block (two "yes" and two "no" training questions, with their
gold facts when the context has facts), then the question; the score is log P(" yes") - log P(" no") of the next
token (both spellings, summed). The threshold that maximises accuracy on --calibrate training questions (never the
few-shot ones) turns scores into answers; accuracy (training.eval.metrics.exact_match) on the test split with a
95% interval, the AUC of the score, and the majority class beside it.

    python -m training.eval.yesno --lm artifacts/lm/smollm2-135m-instruct --contexts none,bm25,gold

Contexts `agent-retrieved` and `agent-recorded` read the facts a trained agent loop (--agent, training.train_exsearch)
found for the question: everything its searches retrieved (in order, at most 10) or what it recorded. A small LM
searches, the reader LM (--lm) answers. The loop runs on the calibration questions (training questions the trainer
did not draw) and on the test questions, unless --agent-traces gives training.eval.agent's JSON of the same agent
(its last loop row's per-question ids are the test split's; several files: the shards of one run).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from indexing.data import load_multihop
from models.causal_lm import fast_dtype, load_causal_lm
from models.registry import load_backend
from training.common import add_threads_arg, set_threads, trainer_draws
from training.eval.metrics import exact_match, proportion_ci

HEADER = "Answer each question with yes or no.\n\n"


AGENT_CONTEXTS = ("agent-retrieved", "agent-recorded")
AGENT_FACTS = 10  # at most this many retrieved facts (evidence recall@10 is what the loop is measured by)


def agent_fact_ids(agent_dir: Path, questions: list[dict], data, artifacts: Path, traces: list[Path] = ()
                   ) -> dict[str, dict[str, list[str]]]:
    """Per question id, the ids the trained agent's loop retrieved and recorded: read from training.eval.agent's
    JSON files (`traces`: the whole split or its shards) where they hold the question, else from running the loop
    (greedy, so the same ids)."""
    out: dict[str, dict[str, list[str]]] = {}
    for path in traces or ():
        rows = [r for r in json.loads(Path(path).read_text())["rows"] if r.get("per_question")]
        for item in rows[-1]["per_question"] if rows else []:
            out[item["id"]] = {"retrieved": item["retrieved"], "recorded": item["recorded"]}
    todo = [q for q in questions if q["id"] not in out]
    if todo:
        from models.exsearch.loop import SearchAgent, load_trained

        model, tok, config, _ = load_trained(agent_dir)
        agent = SearchAgent(model, tok, load_backend(artifacts, "retrieve", "bm25"), data, config)
        for q in tqdm(todo, desc="agent loop"):
            tr = agent.run(q["question"], answer=False)
            out[q["id"]] = {"retrieved": tr.retrieved_ids, "recorded": [e.doc_id for e in tr.evidence]}
    return out


def facts_for(q: dict, context: str, passages: dict[str, str], bm25, k: int,
              agent_ids: dict[str, dict[str, list[str]]] | None = None) -> list[str]:
    if context in AGENT_CONTEXTS:
        ids = agent_ids[q["id"]]["retrieved" if context == "agent-retrieved" else "recorded"]
        return [passages[d] for d in ids[:AGENT_FACTS] if d in passages]
    if context == "gold":
        return [passages[d] for d in q.get("supporting", []) if d in passages]
    if context == "bm25":
        from models.backend import Request

        hits = bm25.answer([Request("retrieve", query=q["question"], k=k)])[0].hits
        return [passages[h.id] for h in hits if h.id in passages]
    return []


def block(q: dict, facts: list[str], answer: str | None) -> str:
    text = "".join(f"Fact: {f}\n" for f in facts)
    return f"{text}Question: {q['question'].strip()}\nAnswer:" + (f" {answer}\n\n" if answer else "")


def answer_tokens(tok) -> tuple[list[int], list[int]]:
    def first(words):
        return sorted({tok(w, add_special_tokens=False)["input_ids"][0] for w in words})
    return first([" yes", " Yes"]), first([" no", " No"])


@torch.no_grad()
def scores(model, tok, prompts: list[str], desc: str) -> np.ndarray:
    yes, no = answer_tokens(tok)
    out = []
    for p in tqdm(prompts, desc=desc):
        ids = tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
        logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        out.append(float(torch.logsumexp(logp[yes], 0) - torch.logsumexp(logp[no], 0)))
    return np.array(out)


def auc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


def best_threshold(s: np.ndarray, y: np.ndarray) -> float:
    cands = np.concatenate([[-np.inf], np.sort(s)])
    accs = [np.mean((s > c) == y) for c in cands]
    return float(cands[int(np.argmax(accs))])


def run(lm: str | None, contexts: list[str], data_dir: Path, artifacts: Path, calibrate: int, limit: int | None,
        k: int = 3, seed: int = 0, agent: Path | None = None, agent_traces: list[Path] = ()) -> list[dict]:
    data = load_multihop(data_dir)
    passages = {pid: p["text"] for pid, p in data.passages.items()}
    train, test = data.split("train"), data.split("test")
    test = test[:limit] if limit else test
    rng = random.Random(seed)
    shots = rng.sample([q for q in train if q["answer"] == "yes"], 2) + rng.sample(
        [q for q in train if q["answer"] == "no"], 2)
    rng.shuffle(shots)
    shot_ids = {id(q) for q in shots}
    calib = [q for q in train if id(q) not in shot_ids]
    pool = calib
    calib = rng.sample(calib, min(calibrate, len(calib)))
    agent_ids, agent_calib = None, calib
    if any(c in AGENT_CONTEXTS for c in contexts):
        if agent is None:
            raise SystemExit(f"contexts {AGENT_CONTEXTS} need --agent <directory of a trained agent>")
        drawn = trainer_draws(train, agent)  # the agent trained on these: its retrieval there is not held out
        agent_pool = [q for q in pool if q["id"] not in drawn]
        agent_calib = random.Random(f"{seed}:agent").sample(agent_pool, min(calibrate, len(agent_pool)))
        agent_ids = agent_fact_ids(agent, agent_calib + test, data, artifacts, agent_traces)
    model, tok = load_causal_lm(lm, dtype=fast_dtype())
    bm25 = load_backend(artifacts, "retrieve", "bm25")
    majority = max(("yes", "no"), key=lambda a: sum(q["answer"] == a for q in train))
    rows = [{"lm": Path(lm).name if lm else "smollm2-135m-instruct", "context": "majority class", "n": len(test),
             "accuracy": float(np.mean([exact_match(majority, q["answer"]) for q in test])), "auc": 0.5}]
    for context in contexts:
        few = "".join(block(q, facts_for(q, "gold" if context != "none" else "none", passages, bm25, k), q["answer"])
                      for q in shots)
        t0 = time.perf_counter()
        def prompt(q, few=few, context=context):
            return HEADER + few + block(q, facts_for(q, context, passages, bm25, k, agent_ids), None)
        cal_q = agent_calib if context in AGENT_CONTEXTS else calib
        s_cal = scores(model, tok, [prompt(q) for q in cal_q], f"{context}: calibrate")
        y_cal = np.array([q["answer"] == "yes" for q in cal_q])
        thr = best_threshold(s_cal, y_cal)
        s_test = scores(model, tok, [prompt(q) for q in test], f"{context}: test")
        ms = (time.perf_counter() - t0) * 1000 / (len(cal_q) + len(test))
        preds = ["yes" if v > thr else "no" for v in s_test]
        acc = float(np.mean([exact_match(p, q["answer"]) for p, q in zip(preds, test)]))
        y = np.array([q["answer"] == "yes" for q in test])
        rows.append({"lm": rows[0]["lm"], "context": context, "n": len(test), "accuracy": acc,
                     "ci95": proportion_ci(acc, len(test)), "auc": auc(s_test, y),
                     "yes_rate": float(np.mean([p == "yes" for p in preds])), "threshold": thr,
                     "calibration_accuracy": float(np.mean((s_cal > thr) == y_cal)), "ms_per_question": ms})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", default=None, help="local HF causal-LM directory (default: the prepared SmolLM2)")
    p.add_argument("--contexts", default="none,bm25,gold")
    p.add_argument("--data", type=Path, default=Path("data/strategyqa"))
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--calibrate", type=int, default=200, help="training questions the threshold is fitted on")
    p.add_argument("--limit", type=int, default=None, help="first N test questions (default: all 466)")
    p.add_argument("--agent", type=Path, default=None, help="trained agent for the agent-* contexts")
    p.add_argument("--agent-traces", type=Path, nargs="*", default=[],
                   help="training.eval.agent's JSON of that agent on the test split, or its shards' (ids reused)")
    p.add_argument("--out", type=Path, default=Path("results"))
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    rows = run(a.lm, a.contexts.split(","), a.data, a.artifacts, a.calibrate, a.limit, agent=a.agent,
               agent_traces=a.agent_traces)
    a.out.mkdir(parents=True, exist_ok=True)
    name = f"yesno-{rows[0]['lm']}.json"
    (a.out / name).write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:
        print(f"{r['lm']:28s} {r['context']:15s} n={r['n']} acc {r['accuracy']:.3f}"
              + (f" +- {r['ci95']:.3f} AUC {r['auc']:.3f} yes {r['yes_rate']:.2f}" if "ci95" in r else ""))
    return rows


if __name__ == "__main__":
    main()
