"""Evaluation harness: standard metrics of a backend on a task's held-out test split, plus latency.

    python -m training.evaluate --task {search,recommend,retrieve,qa,all} --backend {NAME,all}
                                [--split test] [--limit N] [--out results/]
    python -m training.evaluate --task recommend --dataset ml1m [--backend NAME]   # artifacts/ml1m

Ranking metrics (ranx: Recall@1/10, MRR@10, NDCG@10, HR@5/10) and QA's EM/F1 (SQuAD normalisation) come
from training.eval.metrics. Latency is measured per request at batch 1 on a sample of queries (mean and p99), the
quality metrics on the whole split in batches. Each (task, backend) result goes to <out>/<task>-<backend>.json.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from indexing.data import load_multihop, load_recsys, load_retrieval
from indexing.data.recsys import RECSYS_SETS, recsys_artifacts
from models.backend import Backend, Hit, Request
from models.registry import backends_for, load_backend
from training.common import add_threads_arg, set_threads
from training.eval import metrics

METRICS = metrics.RANKING
LABELS = {"recall@1": "R@1", "recall@10": "R@10", "mrr@10": "MRR@10", "ndcg@10": "NDCG@10", "hit_rate@5": "HR@5",
          "hit_rate@10": "HR@10", "em": "EM", "f1": "F1"}
TASKS = ("search", "recommend", "retrieve", "qa")


class RandomFloor(Backend):
    """Uniformly random ranking over the candidates: the floor every backend must beat by a wide margin."""

    name = "random"
    tasks = ("search", "recommend", "retrieve")

    def __init__(self, ids: list[str], seed: int = 0):
        super().__init__()
        self.ids, self.rng = ids, random.Random(seed)

    @classmethod
    def load(cls, directory):  # pragma: no cover - never served
        raise NotImplementedError

    def _answer(self, requests):
        return [[Hit(i, 1.0 / (n + 1)) for n, i in enumerate(self.rng.sample(self.ids, r.k))] for r in requests]


# ---------------------------------------------------------------- task test sets: requests and qrels
def task_requests(task: str, split: str, data_dirs: dict[str, Path]) -> tuple[list[Request], dict, list[str]]:
    """Requests (one per test query, ids as options['qid']), qrels {qid: {id: grade}}, candidate ids."""
    if task in ("search", "recommend"):
        rec = load_recsys(data_dirs["recsys"])
        reqs, qrels = [], {}
        for n, e in enumerate(rec.examples(split)):
            qid = f"{e.user_id}:{n}"
            reqs.append(Request(task, query=e.query if task == "search" else "", user_id=e.user_id,
                                history=e.history, k=10, options={"qid": qid}))
            qrels[qid] = {e.target: 1}
        return reqs, qrels, rec.item_ids
    if task == "retrieve":
        ret = load_retrieval(data_dirs["retrieval"])
        qs = ret.split_queries(split)
        return ([Request(task, query=t, k=10, options={"qid": q}) for q, t in qs.items()],
                {q: ret.qrels[split][q] for q in qs}, ret.doc_ids)
    raise ValueError(task)


def rank_metrics(qrels: dict, answers: dict[str, list[Hit]]) -> dict[str, float]:
    return metrics.ranking(qrels, {q: [h.id for h in hits] for q, hits in answers.items()}, METRICS)


def latency(backend: Backend, requests: list[Request], sample: int = 100) -> dict[str, float]:
    times = []
    for r in requests[:sample]:
        t0 = time.perf_counter()
        backend.answer([r])
        times.append((time.perf_counter() - t0) * 1000)
    return {"latency_mean_ms": float(np.mean(times)), "latency_p99_ms": float(np.percentile(times, 99))}


def evaluate_ranking(task: str, backend: Backend, split: str, data_dirs: dict, limit: int | None = None,
                     batch_size: int = 64, options: dict | None = None, timed: bool = True) -> dict:
    """Quality on the whole split; with `timed`, also latency at batch 1 on a sample (latency())."""
    reqs, qrels, _ = task_requests(task, split, data_dirs)
    reqs = reqs[:limit] if limit else reqs
    for r in reqs:
        r.options.update(options or {})
    answers = {}
    for b in range(0, len(reqs), batch_size):
        batch = reqs[b:b + batch_size]
        for r, a in zip(batch, backend.answer(batch)):
            answers[r.options["qid"]] = a.hits
    scores = rank_metrics({q: qrels[q] for q in answers}, answers)
    name = ("geometry" if options and options.get("decoder_weight") == 0 else backend.name) + (
        f"@{options['steps']}" if options and "steps" in options else "")
    return {"task": task, "backend": name, "split": split, "queries": len(reqs), **scores,
            **(latency(backend, reqs) if timed else {}), "config": backend.config(reqs[0]) if reqs else {}}


# ---------------------------------------------------------------- question answering
def evaluate_qa(answerer: str, split: str, data_dirs: dict, limit: int | None = None) -> dict:
    """QA baselines without a language model: the majority answer of the train split. The agentic
    backends (EXSEARCH) plug in here with the same metrics."""
    data = load_multihop(data_dirs["multihop"])
    questions = data.split(split)[:limit] if limit else data.split(split)
    if answerer != "majority":
        raise ValueError(f"unknown QA backend {answerer!r}; available: majority")
    majority = Counter(q["answer"] for q in data.split("train")).most_common(1)[0][0]
    t0 = time.perf_counter()
    preds = [majority for _ in questions]
    ms = (time.perf_counter() - t0) * 1000 / max(1, len(questions))
    return {"task": "qa", "backend": answerer, "split": split, "queries": len(questions),
            "em": float(np.mean([metrics.exact_match(p, q["answer"]) for p, q in zip(preds, questions)])),
            "f1": float(np.mean([metrics.f1(p, q["answer"]) for p, q in zip(preds, questions)])),
            "latency_mean_ms": ms, "latency_p99_ms": ms}


# ---------------------------------------------------------------- driver
def run(task: str, backend: str, artifacts: Path, data_dirs: dict, split: str = "test",
        limit: int | None = None, options: dict | None = None) -> dict:
    if task == "qa":
        return evaluate_qa(backend, split, data_dirs, limit)
    if backend == "random":
        _, _, ids = task_requests(task, split, data_dirs)
        return evaluate_ranking(task, RandomFloor(ids), split, data_dirs, limit)
    return evaluate_ranking(task, load_backend(artifacts, task, backend), split, data_dirs, limit,
                            options=options)


def plot_steps(rows: list[dict], reference: list[dict], path: Path) -> None:
    """Recall@10 and mean latency against denoising steps, with the other backends as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({r["config"]["steps"] for r in rows})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["backend"].split("@")[0] for r in rows):  # served, then the decoder alone
        line = [r for r in rows if r["backend"].split("@")[0] == name]
        label = "DiffuGR" if name == "diffugr" else name.replace("diffugr", "DiffuGR")
        a1.plot([r["config"]["steps"] for r in line], [r["recall@10"] for r in line], "o-", label=label)
        a2.plot([r["config"]["steps"] for r in line], [r["latency_mean_ms"] for r in line], "o-", label=label)
    for ref, style in zip(reference, ["--", ":", "-.", (0, (1, 1))]):
        a1.axhline(ref["recall@10"], linestyle=style, color="gray", label=ref["backend"])
        a2.axhline(ref["latency_mean_ms"], linestyle=style, color="gray", label=ref["backend"])
    a1.set(xlabel="denoising steps T", ylabel="Recall@10", title="quality", xticks=steps)
    a2.set(xlabel="denoising steps T", ylabel="mean ms / query (batch 1)", title="latency", xticks=steps)
    a1.legend(fontsize=8), a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: list[dict], console: Console | None = None) -> None:
    cols = [m for m in [*METRICS, "em", "f1"] if any(m in r for r in results)]
    table = Table(title="unisr evaluation (test split)")
    for c in ["task", "backend", "queries", *[LABELS[m] for m in cols], "mean ms", "p99 ms"]:
        table.add_column(c, justify="left" if c in ("task", "backend") else "right")
    for r in results:
        table.add_row(r["task"], r["backend"], str(r["queries"]),
                      *[f"{r[m]:.4f}" if m in r else "-" for m in cols],
                      f"{r['latency_mean_ms']:.2f}", f"{r['latency_p99_ms']:.2f}")
    (console or Console(width=160)).print(table)


def default_data_dirs(data: Path) -> dict[str, Path]:
    return {"recsys": data / "ml100k", "retrieval": data / "strategyqa-facts", "multihop": data / "strategyqa",
            "ml1m": data / "ml1m"}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=[*TASKS, "all"], default="all")
    p.add_argument("--backend", default="all", help="a backend name, or all (includes the random floor)")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--artifacts", type=Path, default=None, help="default: artifacts/v1, or artifacts/<dataset>")
    p.add_argument("--dataset", default="ml100k", choices=list(RECSYS_SETS),
                   help="the recommendation set of --task recommend (ml1m: its baselines under artifacts/ml1m)")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N queries only")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--steps", default=None, help="with --task retrieve --backend diffugr: comma-separated step "
                   "counts, each a row (served, then the decoder without the geometry prior), next to the geometry "
                   "alone, bm25, dense and ar; a PNG plot is written beside the JSON")
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    data_dirs = default_data_dirs(a.data)
    if a.dataset != "ml100k":
        if a.task != "recommend":
            p.error(f"--dataset {a.dataset} goes with --task recommend")
        data_dirs["recsys"] = a.data / a.dataset
    a.artifacts = a.artifacts or recsys_artifacts(a.dataset)
    suffix = "" if a.dataset == "ml100k" else f"-{a.dataset}"
    results = []
    if a.steps:
        if a.task != "retrieve" or a.backend != "diffugr":
            p.error("--steps goes with --task retrieve --backend diffugr")
        rows = [run("retrieve", "diffugr", a.artifacts, data_dirs, a.split, a.limit, {"steps": int(t)})
                for t in a.steps.split(",")]
        reference = []
        if rows and rows[-1]["config"].get("prior"):  # the geometry prior alone (decoder weight 0): what the
            reference.append(run("retrieve", "diffugr", a.artifacts, data_dirs, a.split, a.limit,  # decoder adds
                                 {"steps": rows[-1]["config"]["steps"], "decoder_weight": 0}))
            alone = load_backend(a.artifacts, "retrieve", "diffugr").decoder_only()  # and the decoder by itself
            rows += [evaluate_ranking("retrieve", alone, a.split, data_dirs, a.limit, options={"steps": int(t)})
                     for t in a.steps.split(",")]
        for name in ("random", "bm25", "dense", "ar"):
            try:
                reference.append(run("retrieve", name, a.artifacts, data_dirs, a.split, a.limit))
            except FileNotFoundError as e:
                print(f"skipping {name}: {e}")
        results = reference + rows
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "retrieve-diffugr-steps.json").write_text(json.dumps(results, indent=2) + "\n")
        plot_steps(rows, [r for r in reference if r["backend"] != "random"], a.out / "retrieve-diffugr-steps.png")
        print_table(results)
        print(f"wrote {a.out / 'retrieve-diffugr-steps.json'} and {a.out / 'retrieve-diffugr-steps.png'}")
        return results
    for task in TASKS if a.task == "all" else [a.task]:
        names = (["majority"] if task == "qa" else ["random", *backends_for(task)]) if a.backend == "all" \
            else [a.backend]
        for name in names:
            if task != "qa" and name not in ("random", *backends_for(task)):
                p.error(f"backend {name!r} does not serve {task}; choose from {['random', *backends_for(task)]}")
            try:
                r = run(task, name, a.artifacts, data_dirs, a.split, a.limit)
            except FileNotFoundError as e:
                if a.backend != "all":
                    raise SystemExit(str(e)) from None
                print(f"skipping {task}/{name}: {e}")
                continue
            results.append(r)
            a.out.mkdir(parents=True, exist_ok=True)
            if task in ("search", "recommend"):
                r["dataset"] = a.dataset
            (a.out / f"{task}-{name}{suffix}.json").write_text(json.dumps(r, indent=2) + "\n")
    print_table(results)
    return results


if __name__ == "__main__":
    main()
