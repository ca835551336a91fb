"""Evaluate agentic search on held-out multi-hop questions: EM, F1, mean hops and latency for

- no retrieval (closed book, the base LM),
- one-shot retrieve-then-answer (RAG: BM25 top-k for the question, the base LM answers),
- the untrained loop (the base LM with the worked example),
- the loop after each EM round (the round-N checkpoints of training.train_exsearch, without the example),

plus the majority-answer floor. One table on stdout, JSON in --out. EM and F1 are training.eval.metrics' (SQuAD
normalisation, the harness's definition).

    python -m training.eval.agent --split test --limit 50
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from indexing.data import load_multihop
from models.artifacts import read_meta
from models.causal_lm import load_causal_lm
from models.exsearch.loop import AgentConfig, SearchAgent
from models.registry import load_backend
from training.common import add_threads_arg, set_threads
from training.eval.metrics import exact_match, f1


def summarise(name: str, preds: list[str], golds: list[str], hops: list[int], ms: list[float]) -> dict:
    return {"system": name, "n": len(golds), "em": float(np.mean([exact_match(p, g) for p, g in zip(preds, golds)])),
            "f1": float(np.mean([f1(p, g) for p, g in zip(preds, golds)])), "mean_hops": float(np.mean(hops)),
            "latency_mean_ms": float(np.mean(ms)), "latency_p50_ms": float(np.percentile(ms, 50)),
            "yes_rate": float(np.mean([p == "yes" for p in preds]))}


def run_loop(name: str, agent: SearchAgent, questions: list[dict]) -> dict:
    preds, hops, ms, parse_errors = [], [], [], 0
    for q in tqdm(questions, desc=name):
        tr = agent.run(q["question"])
        preds.append(tr.answer), hops.append(tr.hops), ms.append(tr.total_ms)
        parse_errors += tr.parse_errors
    row = summarise(name, preds, [q["answer"] for q in questions], hops, ms)
    row["parse_errors_per_q"] = parse_errors / max(1, len(questions))
    return row


def evaluate(questions: list[dict], data, retriever, agent_dir: Path, lm: str | None, max_hops: int,
             k: int) -> list[dict]:
    golds = [q["answer"] for q in questions]
    majority = collections.Counter(q["answer"] for q in data.split("train")).most_common(1)[0][0]
    rows = [summarise(f"majority ('{majority}')", [majority] * len(golds), golds, [0] * len(golds),
                      [0.0] * len(golds))]
    model, tok = load_causal_lm(lm, dtype=torch.bfloat16)
    base = SearchAgent(model, tok, retriever, data, AgentConfig(max_hops=max_hops, k=k, few_shot=True))
    preds, ms = zip(*[base.closed_book_answer(q["question"]) for q in tqdm(questions, desc="no retrieval")])
    rows.append(summarise("no retrieval", list(preds), golds, [0] * len(golds), list(ms)))
    out = [base.rag_answer(q["question"]) for q in tqdm(questions, desc="RAG")]
    rows.append(summarise(f"RAG (BM25 top-{k})", [a for a, _, _ in out], golds, [1] * len(golds),
                          [m for _, _, m in out]))
    rows.append(run_loop("loop, untrained (few-shot)", base, questions))
    rounds = sorted(agent_dir.glob("round-*"), key=lambda p: int(p.name.split("-")[1])) if agent_dir.exists() else []
    meta = read_meta(agent_dir) if (agent_dir / "meta.json").exists() else {}
    for path in rounds:
        model, tok = load_causal_lm(path, dtype=torch.bfloat16)
        cfg = AgentConfig(max_hops=max_hops, k=meta.get("k", k), few_shot=False)
        rows.append(run_loop(f"loop after EM {path.name}", SearchAgent(model, tok, retriever, data, cfg), questions))
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'system':32s} {'n':>4s} {'EM':>6s} {'F1':>6s} {'hops':>5s} {'ms/q':>8s} {'p50 ms':>8s} {'yes%':>5s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['system']:32s} {r['n']:4d} {r['em']:6.3f} {r['f1']:6.3f} {r['mean_hops']:5.2f} "
                     f"{r['latency_mean_ms']:8.0f} {r['latency_p50_ms']:8.0f} {100 * r['yes_rate']:5.0f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/strategyqa"))
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--agent", type=Path, default=None, help="EM output directory (default: <artifacts>/agent)")
    p.add_argument("--lm", default=None, help="base LM directory (default: the prepared SmolLM2-135M)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=50, help="first N questions of the split (0: all)")
    p.add_argument("--max-hops", type=int, default=2)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("results"))
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    data = load_multihop(a.data)
    questions = data.split(a.split)[: a.limit or None]
    t0 = time.time()
    rows = evaluate(questions, data, load_backend(a.artifacts, "retrieve", "bm25"), a.agent or a.artifacts / "agent",
                    a.lm, a.max_hops, a.k)
    print(table(rows))
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"agent-{a.split}.json"
    path.write_text(json.dumps({"split": a.split, "questions": len(questions), "rows": rows,
                                "seconds": time.time() - t0}, indent=2) + "\n")
    print(f"wrote {path} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
