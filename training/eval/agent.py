"""Evaluate agentic search on held-out multi-hop questions: EM (with its 95% interval), F1, mean hops, latency, and
the gold supporting facts found (StrategyQA gives every question's): recall@10 of everything retrieved, and of what
the agent recorded as evidence with the records' precision, for

- single-shot retrieval of the question (BM25 and dense top-10: what the loop's searches must beat; no answer),
- no retrieval (closed book, the base LM),
- one-shot retrieve-then-answer (RAG: BM25 top-k for the question, the base LM answers),
- the untrained loop (the base LM with the worked example),
- the loop after each EM round (the round-N checkpoints of training.train_exsearch, without the example),
- the loop after each ROSE round (training.train_rose, same question budget; --rose, default <artifacts>/agent-rose),
- the loop run by the Low-Rank Clone student of the agent's LM and by the from-scratch student, where distilled
  (training.train_lrc --agent: <agent>/student, <agent>/student-scratch),

plus the majority-answer floor. One table on stdout, JSON in --out. EM and F1 are training.eval.metrics' (SQuAD
normalisation, the harness's definition). A second table (and results/agent-trainers.png) compares the two trainers
round by round on their own training rollouts: mean reward (answer correct + gold recall), gold recall, answer
accuracy and trajectory length.

    python -m training.eval.agent --split test                 # the full split (hours: the loops)
    python -m training.eval.agent --split test --no-loops      # the baselines only (minutes)
    python -m training.eval.agent --split test --last-round --no-untrained-loop   # each trainer's final round
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import random
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexing.data import load_multihop
from models.artifacts import read_meta
from models.backend import Request
from models.causal_lm import fast_dtype, load_causal_lm
from models.exsearch.loop import AgentConfig, SearchAgent
from models.registry import load_backend
from training.common import add_threads_arg, set_threads, trainer_draws
from training.eval.metrics import evidence, exact_match, f1, proportion_ci
from training.eval.yesno import best_threshold

K_EVIDENCE = 10  # evidence recall@10: the single-shot baselines retrieve 10


# ------------------------------------------------------------------ calibrated yes/no answers
def calibration_questions(train: list[dict], n: int, exclude: set[str] = frozenset(), seed: int = 0) -> list[dict]:
    """n training questions for fitting a yes/no threshold, none of `exclude` (e.g. what the trainers drew)."""
    pool = [q for q in train if q["id"] not in exclude]
    return random.Random(f"calibrate:{seed}").sample(pool, min(n, len(pool)))


def calibrate(score, questions: list[dict], desc: str = "calibrate") -> dict:
    """The threshold on a yes/no score (log P(yes) - log P(no)) that maximises accuracy on the given training
    questions: {"threshold", "calibration_accuracy", "calibration_n"}."""
    s = np.array([score(q) for q in tqdm(questions, desc=desc)])
    y = np.array([q["answer"] == "yes" for q in questions])
    thr = best_threshold(s, y)
    return {"threshold": thr, "calibration_accuracy": float(np.mean((s > thr) == y)), "calibration_n": len(y)}


def loop_score(agent: SearchAgent):
    """Score of the loop: its trajectory (without the answer), then the preference after "Answer:"."""
    return lambda q: agent.yes_no_score(agent.run(q["question"], answer=False).context + "Answer:")


def calibrated(agent: SearchAgent, score, questions: list[dict], desc: str) -> tuple[SearchAgent, dict]:
    """A copy of agent that answers yes/no questions by the preference, thresholded on `questions`."""
    import dataclasses

    fit = calibrate(score, questions, desc)
    agent = copy.copy(agent)
    agent.config = dataclasses.replace(agent.config, yes_threshold=fit["threshold"])
    return agent, fit


def summarise(name: str, preds: list[str], golds: list[str], hops: list[int], ms: list[float]) -> dict:
    em = float(np.mean([exact_match(p, g) for p, g in zip(preds, golds)]))
    return {"system": name, "n": len(golds), "em": em, "em_ci95": proportion_ci(em, len(golds)),
            "f1": float(np.mean([f1(p, g) for p, g in zip(preds, golds)])), "mean_hops": float(np.mean(hops)),
            "latency_mean_ms": float(np.mean(ms)), "latency_p50_ms": float(np.percentile(ms, 50)),
            "yes_rate": float(np.mean([p == "yes" for p in preds]))}


def single_shot(name: str, retriever, questions: list[dict], k: int = K_EVIDENCE) -> dict:
    """Retrieval of the question alone, top-k: evidence recall only (no answer)."""
    t0, ids = time.perf_counter(), []
    for q in questions:
        ids.append([h.id for h in retriever.answer([Request("retrieve", query=q["question"], k=k)])[0].hits])
    return {"system": name, "n": len(questions), "mean_hops": 1.0,
            "latency_mean_ms": (time.perf_counter() - t0) * 1000 / max(1, len(questions)),
            **evidence([q.get("supporting", []) for q in questions], ids, k=K_EVIDENCE)}


def run_loop(name: str, agent: SearchAgent, questions: list[dict]) -> dict:
    preds, hops, ms, parse_errors, retrieved, recorded, tokens = [], [], [], 0, [], [], []
    for q in tqdm(questions, desc=name):
        tr = agent.run(q["question"])
        preds.append(tr.answer), hops.append(tr.hops), ms.append(tr.total_ms)
        retrieved.append(tr.retrieved_ids), recorded.append([e.doc_id for e in tr.evidence])
        tokens.append(sum(len(agent.tokenizer(text, add_special_tokens=False).input_ids)
                          for text, by_model in tr.segments if by_model))
        parse_errors += tr.parse_errors
    row = summarise(name, preds, [q["answer"] for q in questions], hops, ms)
    row["parse_errors_per_q"] = parse_errors / max(1, len(questions))
    row["tokens_per_q"] = float(np.mean(tokens))
    row.update(evidence([q.get("supporting", []) for q in questions], retrieved, recorded, k=K_EVIDENCE))
    # per question, for readers downstream (training.eval.yesno --contexts agent reads the retrieved facts)
    row["per_question"] = [{"id": q["id"], "retrieved": r, "recorded": c, "answer": p}
                           for q, r, c, p in zip(questions, retrieved, recorded, preds)]
    return row


def trained_rounds(agent_dir: Path, last_only: bool = False) -> list[Path]:
    """The round-N checkpoints a trainer saved in agent_dir, in order (only the last with last_only)."""
    rounds = sorted(agent_dir.glob("round-*"), key=lambda p: int(p.name.split("-")[1])) if agent_dir.exists() else []
    return rounds[-1:] if last_only else rounds


def evaluate(questions: list[dict], data, retriever, agent_dir: Path, lm: str | None, max_hops: int,
             k: int, dense=None, loops: bool = True, untrained_loop: bool = True, rose_dir: Path | None = None,
             last_round: bool = False, baselines: bool = True, calibrate_n: int = 100) -> list[dict]:
    """The table's rows. With calibrate_n > 0 every LM system answers yes/no questions by its calibrated preference
    (threshold fitted on calibrate_n training questions the trainers did not draw; the row says which), else by
    the text it generates."""
    golds = [q["answer"] for q in questions]
    supporting = [q.get("supporting", []) for q in questions]
    train = data.split("train")
    majority = collections.Counter(q["answer"] for q in train).most_common(1)[0][0]
    cal_q = calibration_questions(train, calibrate_n, trainer_draws(train, agent_dir) | trainer_draws(train, rose_dir))

    def fit(agent: SearchAgent, score, name: str) -> tuple[SearchAgent, dict]:
        return calibrated(agent, score, cal_q, f"{name}: calibrate") if calibrate_n else (agent, {})

    rows = [summarise(f"majority ('{majority}')", [majority] * len(golds), golds, [0] * len(golds),
                      [0.0] * len(golds))]
    for n in dict.fromkeys((K_EVIDENCE, max_hops * k, k)):  # the loop's whole budget (max_hops x k) and one search
        rows.append(single_shot(f"BM25 top-{n} of the question", retriever, questions, k=n))
    if dense is not None:
        rows.append(single_shot(f"dense top-{K_EVIDENCE} of the question", dense, questions))
    model, tok = load_causal_lm(lm, dtype=fast_dtype())
    base = SearchAgent(model, tok, retriever, data, AgentConfig(max_hops=max_hops, k=k, few_shot=True))
    if baselines:
        agent, cal = fit(base, lambda q: base.yes_no_score(base.closed_book_prompt(q["question"])), "no retrieval")
        preds, ms = zip(*[agent.closed_book_answer(q["question"]) for q in tqdm(questions, desc="no retrieval")])
        rows.append({**summarise("no retrieval", list(preds), golds, [0] * len(golds), list(ms)), **cal})
        agent, cal = fit(base, lambda q: base.yes_no_score(base.rag_prompt(q["question"], base.retrieve(
            q["question"], k))), "RAG")
        out = [agent.rag_answer(q["question"]) for q in tqdm(questions, desc="RAG")]
        rows.append({**summarise(f"RAG (BM25 top-{k})", [a for a, _, _ in out], golds, [1] * len(golds),
                                 [m for _, _, m in out]),
                     **evidence(supporting, [ids for _, ids, _ in out], k=K_EVIDENCE), **cal})
    if not loops:
        return rows

    def loop_row(name: str, agent: SearchAgent) -> dict:
        agent, cal = fit(agent, loop_score(agent), name)
        return {**run_loop(name, agent, questions), **cal}

    if untrained_loop:
        rows.append(loop_row("loop, untrained (few-shot)", base))
    meta = {}
    for trainer, tdir in (("EM", agent_dir), ("ROSE", rose_dir)):
        if tdir is None:
            continue
        tmeta = read_meta(tdir) if (tdir / "meta.json").exists() else {}
        meta = meta or tmeta
        for path in trained_rounds(tdir, last_round):
            model, tok = load_causal_lm(path, dtype=fast_dtype())
            cfg = AgentConfig(max_hops=max_hops, k=tmeta.get("k", k), few_shot=False,
                              max_new_tokens=tmeta.get("max_new_tokens", AgentConfig.max_new_tokens))
            rows.append(loop_row(f"loop after {trainer} {path.name}", SearchAgent(model, tok, retriever, data, cfg)))
    for name in ("student", "student-scratch"):  # training.train_lrc --agent: clones of the served agent's LM
        sdir = agent_dir / name
        if (sdir / "meta.json").exists():
            smeta = read_meta(sdir)
            model, tok = load_causal_lm(sdir / smeta.get("lm", "model"), dtype=fast_dtype())
            cfg = AgentConfig(max_hops=max_hops, k=meta.get("k", k), few_shot=smeta.get("agent_teacher") == "base")
            label = "LRC student" if name == "student" else "from-scratch student"
            rows.append(loop_row(f"loop, {label} ({smeta['params'] / 1e6:.0f}M)",
                                 SearchAgent(model, tok, retriever, data, cfg)))
    return rows


COLUMNS = [("EM", "em", ".3f"), ("+-95%", "em_ci95", ".3f"), ("F1", "f1", ".3f"),
           (f"R@{K_EVIDENCE}", f"evidence_recall@{K_EVIDENCE}", ".3f"), ("rec.R", "recorded_recall", ".3f"),
           ("rec.P", "record_precision", ".3f"), ("hops", "mean_hops", ".2f"), ("tok/q", "tokens_per_q", ".0f"),
           ("ms/q", "latency_mean_ms", ".0f"), ("yes", "yes_rate", ".0%"), ("thr", "threshold", "+.2f")]


def table(rows: list[dict]) -> str:
    """One line per system; a blank cell where the figure does not apply (no answer, no records)."""
    def cell(r, key, fmt):
        v = r.get(key)
        return format(v, fmt) if v is not None and v == v else ""

    lines = [f"{'system':36s} {'n':>4s} " + " ".join(f"{name:>7s}" for name, _, _ in COLUMNS)]
    lines.append("-" * len(lines[0]))
    for r in rows:
        figures = " ".join(f"{cell(r, key, fmt):>7s}" for _, key, fmt in COLUMNS)
        lines.append(f"{r['system']:36s} {r['n']:4d} {figures}")
    return "\n".join(lines)


TRAINER_COLUMNS = [("reward", "mean_reward"), ("gold recall", "mean_recall"), ("accuracy", "accuracy"),
                   ("tokens", "mean_tokens"), ("hops", "mean_hops")]


def trainer_rounds(em_dir: Path, rose_dir: Path) -> list[dict]:
    """Per trainer and round, the statistics of its own training rollouts (meta.json's log), on the same questions
    (training.common.round_questions)."""
    rows = []
    for trainer, tdir in (("EM", em_dir), ("ROSE", rose_dir)):
        if not (tdir / "meta.json").exists():
            continue
        for log in read_meta(tdir)["log"]:
            stats = log.get("extra", log)  # EM keeps them under "extra"
            if "mean_reward" in stats:
                rows.append({"trainer": trainer, "round": log["round"], "questions": log["questions"],
                             "trajectories": log["trajectories"], **{k: stats[k] for _, k in TRAINER_COLUMNS}})
    return rows


def trainer_table(rows: list[dict]) -> str:
    lines = [f"{'trainer':8s} {'round':>5s} {'q':>4s} {'traj':>5s} " + " ".join(f"{n:>11s}" for n, _ in
                                                                             TRAINER_COLUMNS)]
    for r in rows:
        lines.append(f"{r['trainer']:8s} {r['round']:5d} {r['questions']:4d} {r['trajectories']:5d} "
                     + " ".join(f"{r[k]:11.3f}" for _, k in TRAINER_COLUMNS))
    return "\n".join(lines)


def plot_trainers(rows: list[dict], path: Path) -> None:
    """The ROSE-vs-EM curve: reward, gold recall and trajectory length per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (name, key) in zip(axes, [TRAINER_COLUMNS[0], TRAINER_COLUMNS[1], TRAINER_COLUMNS[3]]):
        for trainer in ("EM", "ROSE"):
            pts = [(r["round"], r[key]) for r in rows if r["trainer"] == trainer]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=trainer)
        ax.set_xlabel("round"), ax.set_title(name), ax.legend()
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/strategyqa"))
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--agent", type=Path, default=None, help="EM output directory (default: <artifacts>/agent)")
    p.add_argument("--lm", default=None, help="base LM directory (default: the prepared SmolLM2-135M)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=0, help="first N questions of the split (0: all)")
    p.add_argument("--offset", type=int, default=0,
                   help="skip the split's first N questions (shards side by side: --offset 0 --limit 233, "
                        "--offset 233; greedy loops, so the shards' per-question figures are the full run's)")
    p.add_argument("--no-loops", action="store_true", help="only the baselines (single-shot retrieval, closed book, "
                                                          "RAG): minutes on the full split, the loops take hours")
    p.add_argument("--no-untrained-loop", action="store_true",
                   help="skip the untrained loop (the worked example in every prompt: ~10x the trained loop's time)")
    p.add_argument("--rose", type=Path, default=None, help="ROSE output directory (default: <artifacts>/agent-rose)")
    p.add_argument("--last-round", action="store_true", help="only each trainer's final round")
    p.add_argument("--no-baselines", action="store_true", help="skip closed book and RAG (the LM baselines)")
    p.add_argument("--trainers-only", action="store_true",
                   help="only the per-round comparison of the trainers' own rollouts (table, plot, JSON; seconds)")
    p.add_argument("--calibrate", type=int, default=100,
                   help="training questions each system's yes/no threshold is fitted on (0: generated answers)")
    p.add_argument("--max-hops", type=int, default=2)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("results"))
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    agent_dir, rose_dir = a.agent or a.artifacts / "agent", a.rose or a.artifacts / "agent-rose"
    if a.trainers_only:
        trainers = trainer_rounds(agent_dir, rose_dir)
        print(trainer_table(trainers))
        a.out.mkdir(parents=True, exist_ok=True)
        plot_trainers(trainers, a.out / "agent-trainers.png")
        (a.out / "agent-trainers.json").write_text(json.dumps(trainers, indent=2) + "\n")
        return
    data = load_multihop(a.data)
    questions = data.split(a.split)[a.offset:][: a.limit or None]
    t0 = time.time()
    rows = evaluate(questions, data, load_backend(a.artifacts, "retrieve", "bm25"), agent_dir,
                    a.lm, a.max_hops, a.k, dense=load_backend(a.artifacts, "retrieve", "dense"), loops=not a.no_loops,
                    untrained_loop=not a.no_untrained_loop, rose_dir=rose_dir, last_round=a.last_round,
                    baselines=not a.no_baselines, calibrate_n=a.calibrate)
    print(table(rows))
    trainers = trainer_rounds(agent_dir, rose_dir)
    a.out.mkdir(parents=True, exist_ok=True)
    if trainers:
        print("\ntraining rollouts per round (same questions for both trainers):")
        print(trainer_table(trainers))
        plot_trainers(trainers, a.out / "agent-trainers.png")
    path = a.out / (f"agent-{a.split}.json" if not (a.offset or a.limit) else
                    f"agent-{a.split}-{a.offset}-{a.offset + len(questions)}.json")
    path.write_text(json.dumps({"split": a.split, "questions": len(questions), "rows": rows, "trainers": trainers,
                                "seconds": time.time() - t0}, indent=2) + "\n")
    print(f"wrote {path} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
