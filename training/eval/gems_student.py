"""The served GEMS model (teacher) against its Low-Rank Clone student and the same student trained from scratch
(training/train_lrc.py --gems), and the budget sweep of the GEMS backend that holds teacher and student.

    python -m training.eval.gems_student [--gems artifacts/v1/gems] [--threads 1]

Table (one run, so the latency ratios compare like with like on a shared machine): parameters, blocks, hidden size,
search and recommendation HR@5 / HR@10 / NDCG@10 on the full test split (every user's last item, 943 per task, the
prompts of training.train_gems), general-domain perplexity (held-out StrategyQA evidence sentences, text vocabulary;
the teacher with its recommendation adapter), ms per recommendation request at batch 1 and 16 (beam 20, top 10, in
the served dtype), and the distillation tokens. Sweep: for each latency budget, what the backend's `plan()` picks
(teacher, student, or nothing fits: the task's cheapest backend answers, as the gateway degrades), with that
choice's HR@10 on the first `--sweep-users` test cases and the measured ms per request (batch 1). Writes
results/gems-student.json and the plot docs/figures/gems-budget-sweep.png.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from tqdm import tqdm  # noqa: E402

from indexing.data import general_texts, load_recsys  # noqa: E402
from models.artifacts import read_meta  # noqa: E402
from models.backend import Request  # noqa: E402
from models.causal_lm import fast_dtype, perplexity  # noqa: E402
from models.gems import subspaces as gems  # noqa: E402
from models.gems.backend import GEMSBackend, GEMSModel  # noqa: E402
from models.gems.item_ids import beam_search, search_query  # noqa: E402
from models.lrc import parameter_count  # noqa: E402
from models.registry import load_backend  # noqa: E402
from training.common import set_threads  # noqa: E402
from training.train_gems import TASKS, TrainConfig, examples, rank_metrics  # noqa: E402

BEAM, K = 20, 10


class Ranker:
    """One model that ranks items for GEMS prompts: the teacher (task adapters) or a student (one model)."""

    def __init__(self, name: str, shared: GEMSModel, size: str | None = None, model=None, head=None):
        self.name, self.shared, self.size, self.model, self.head = name, shared, size, model, head

    def generate(self, task: str, prompts: list[str], exclude, beam: int = BEAM, k: int = K):
        if self.size is not None:
            return self.shared.generate(task, prompts, beam, k, exclude, size=self.size)
        return beam_search(self.model, self.shared.tok, self.shared.vocab, self.head, prompts, beam, k, exclude)

    @property
    def lm(self):
        return self.model if self.size is None else (self.shared.model if self.size == "teacher" else
                                                     self.shared.student)


def load_scratch(shared: GEMSModel, directory: Path) -> Ranker | None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    if not (directory / "meta.json").exists():
        return None
    model = AutoModelForCausalLM.from_pretrained(directory / "model", dtype=fast_dtype()).eval()
    return Ranker("from-scratch student (KD)", shared, model=model,
                  head=load_file(str(directory / "model" / "heads.safetensors"))["item"])


def rank_all(ranker: Ranker, test: dict, batch: int = 16) -> dict[str, dict[str, float]]:
    out = {}
    for task in TASKS:
        ranked = []
        for b in tqdm(range(0, len(test[task]), batch), desc=f"{ranker.name}: {task}"):
            rows = test[task][b:b + batch]
            excl = [set(h) for _, _, h in rows] if task == "recommend" else None
            ranked += [[i for i, _ in r] for r in ranker.generate(task, [p for p, _, _ in rows], excl)]
        out[task] = rank_metrics(ranked, [t for _, t, _ in test[task]])
    return out


def ms_per_request(ranker: Ranker, rows: list, batch: int, repeats: int = 3) -> float:
    """Median over `repeats` of the ms per recommendation request, at this batch size."""
    rows = rows[:max(batch, 8)]
    ranker.generate("recommend", [p for p, _, _ in rows[:batch]], [set(h) for _, _, h in rows[:batch]])  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in range(0, len(rows), batch):
            chunk = rows[b:b + batch]
            ranker.generate("recommend", [p for p, _, _ in chunk], [set(h) for _, _, h in chunk])
        runs.append((time.perf_counter() - t0) * 1000 / len(rows))
    return statistics.median(runs)


def general_ppl(lm, tok, texts: list[str], first_token: int) -> float:
    dtype = next(lm.parameters()).dtype
    lm.float()
    try:
        return perplexity(lm, tok, texts, max_len=64, batch_size=16, vocab=first_token)
    finally:
        lm.to(dtype)


def sweep(shared: GEMSModel, artifacts: Path, test: dict, users: int, budgets: list[float]) -> list[dict]:
    """Per task and budget: the backend's plan (model and beam, or the fallback), its HR@10 on the first `users`
    test cases, and the measured ms per request at batch 1 (the same path the gateway calls)."""
    out = []
    for task in TASKS:
        backend = GEMSBackend(shared, task)
        rows = test[task][:users]
        first = rows[0]
        query = search_query(first[0]) if task == "search" else ""
        backend.warm_up(Request(task, query=query, history=first[2], k=K))
        fallback_name = "bm25" if task == "search" else "popularity"  # the task's cheapest (the gateway's fallback)
        fallback = load_backend(artifacts, task, fallback_name)
        cache: dict[tuple, tuple[float, float]] = {}
        for budget in budgets:
            probe = Request(task, query=query, history=first[2], k=K)
            fits = backend.plan(probe, budget)
            key = (probe.options["model"], probe.options["beam"]) if fits else (fallback_name, 0)
            if key not in cache:
                ranked, ms = [], []
                for prompt, _, hist in tqdm(rows, desc=f"sweep {task} {key}"):
                    q = search_query(prompt) if task == "search" else ""
                    r = Request(task, query=q, history=hist, k=K, options=dict(probe.options) if fits else {})
                    t0 = time.perf_counter()
                    hits = (backend if fits else fallback).answer([r])[0].hits
                    ms.append((time.perf_counter() - t0) * 1000)
                    ranked.append([h.id for h in hits])
                cache[key] = (rank_metrics(ranked, [t for _, t, _ in rows])["hr@10"], statistics.mean(ms))
            hr, ms = cache[key]
            out.append({"task": task, "budget_ms": budget, "answered_by": key[0], "beam": key[1],
                        "hr@10": round(hr, 4), "ms": round(ms, 1), "n": len(rows)})
    return out


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"teacher": "tab:blue", "student": "tab:orange"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, task in zip(axes, TASKS):
        pts = [p for p in points if p["task"] == task]
        x = [p["budget_ms"] for p in pts]
        ax.step(x, [p["hr@10"] for p in pts], where="post", color="black", lw=1)
        for p in pts:
            ax.scatter(p["budget_ms"], p["hr@10"], color=colours.get(p["answered_by"], "tab:grey"), zorder=3)
        ax2 = ax.twinx()
        ax2.plot(x, [p["ms"] for p in pts], ls="--", color="tab:green")
        ax2.set_ylabel("ms per request (dashed)")
        ax.set(xscale="log", xlabel="latency budget (ms)", ylabel="HR@10", title=f"{task}: teacher / student / "
               f"{'bm25' if task == 'search' else 'popularity'}")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=n) for n, c in
               [("teacher", "tab:blue"), ("student", "tab:orange"), ("fallback", "tab:grey")]]
    fig.legend(handles=handles, loc="upper center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gems", type=Path, default=Path("artifacts/v1/gems"))
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--eval-users", type=int, default=None, help="test cases per task (default: all 943)")
    p.add_argument("--sweep-users", type=int, default=200)
    p.add_argument("--budgets", default="10,25,50,100,150,200,300,500,1000,3000")
    p.add_argument("--ppl-texts", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--figure", type=Path, default=Path("docs/figures/gems-budget-sweep.png"))
    a = p.parse_args(argv)
    set_threads(a.threads)
    shared = GEMSModel(a.gems)  # bf16, as served; loads <gems>/student when it exists
    if shared.student is None:
        raise SystemExit(f"no student under {a.gems / 'student'}: run python -m training.train_lrc --gems {a.gems}")
    data = load_recsys(a.data / "ml100k")
    cfg = TrainConfig(history=shared.history, search_history=shared.search_history)
    test = examples(data, shared.vocab, "test", a.eval_users, cfg, cfg.seed + 1)  # train_gems's test cases
    texts = general_texts(a.data, 4000)[1][:a.ppl_texts]  # held out from every distillation text
    rankers = [Ranker("teacher (GEMS)", shared, "teacher"), Ranker("LRC student", shared, "student")]
    scratch = load_scratch(shared, a.gems / "student-scratch")
    rankers += [scratch] if scratch else []
    metas = {"LRC student": shared.student_meta,
             "from-scratch student (KD)": read_meta(a.gems / "student-scratch") if scratch else {}}
    rows = []
    for r in rankers:  # latency first, all models back to back
        rows.append({"model": r.name, "ms_batch1": round(ms_per_request(r, test["recommend"], 1), 1),
                     "ms_batch16": round(ms_per_request(r, test["recommend"], 16), 1)})
    for r, row in zip(rankers, rows):
        gems.set_task(shared.model, "recommend")  # the teacher's perplexity: with its recommendation adapter
        head = r.head if r.size is None else (shared.item_head if r.size == "teacher" else shared.student_head)
        quality = rank_all(r, test)
        # the teacher as it would be served merged: its dense per-subspace updates are not parameters of its own
        adapters = sum(t.numel() for t in gems.adapter_state(r.lm).values()) if r.size == "teacher" else 0
        row.update({"params_m": round((parameter_count(r.lm) - adapters + head.numel()) / 1e6, 1),
                    "layers": r.lm.config.num_hidden_layers, "hidden": r.lm.config.hidden_size,
                    **{f"{t}_{m}": round(v, 4) for t in TASKS for m, v in quality[t].items()},
                    "general_ppl": round(general_ppl(r.lm, shared.tok, texts, shared.vocab.first_token), 2),
                    "latency_ratio_batch1": round(row["ms_batch1"] / rows[0]["ms_batch1"], 3),
                    "latency_ratio_batch16": round(row["ms_batch16"] / rows[0]["ms_batch16"], 3)})
        if r.name in metas:
            row["tokens"] = metas[r.name].get("distillation_tokens")
        for t in TASKS:
            row[f"{t}_hr@10_vs_teacher"] = round(row[f"{t}_hr@10"] / max(rows[0][f"{t}_hr@10"], 1e-9), 3)
        print(json.dumps(row), flush=True)
    gems.set_task(shared.model, None)
    points = sweep(shared, a.artifacts, test, a.sweep_users, [float(b) for b in a.budgets.split(",")])
    for pt in points:
        print(json.dumps(pt), flush=True)
    report = {"n": {t: len(test[t]) for t in TASKS}, "rows": rows, "sweep": points}
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / "gems-student.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(points, a.figure)
    table = Table(title=f"GEMS teacher vs students (n = {len(test['recommend'])} per task)")
    cols = ["model", "params_m", "search_hr@10", "search_ndcg@10", "recommend_hr@10", "recommend_ndcg@10",
            "general_ppl", "ms_batch1", "ms_batch16", "latency_ratio_batch1", "latency_ratio_batch16", "tokens"]
    for c in cols:
        table.add_column(c)
    for row in rows:
        table.add_row(*[str(row.get(c, "")) for c in cols])
    Console().print(table)
    return report


if __name__ == "__main__":
    main()
