"""Benchmark generative retrieval on this CPU: DiffuGR at each step count T (and its decoder alone at T=1, without
the geometry prior) vs the autoregressive DocID decoder, latency per query at batch 1 and batch 16 (and BM25/dense
for scale). Prints a table.

    python -m loadtest.bench_docid [--artifacts artifacts/v1] [--queries 64] [--repeats 3]

Timings are wall-clock medians over repeats on a shared machine: compare ratios within one run.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from indexing.data import load_retrieval
from models.backend import Request
from models.registry import load_backend


def per_query_ms(backend, queries: list[str], batch: int, repeats: int, options: dict) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in range(0, len(queries), batch):
            backend.answer([Request("retrieve", query=q, k=10, options=dict(options)) for q in queries[b:b + batch]])
        runs.append((time.perf_counter() - t0) * 1000 / len(queries))
    return statistics.median(runs)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--data", type=Path, default=Path("data/strategyqa-facts"))
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    queries = list(load_retrieval(a.data).split_queries("test").values())[: a.queries]
    diffugr = load_backend(a.artifacts, "retrieve", "diffugr")
    configs = [("diffugr", diffugr, {"steps": t}) for t in range(1, diffugr.length + 1)]
    if diffugr.prior:  # the learned decoder by itself (no geometry prior) at one step: the fastest generative answer
        configs.append(("diffugr decoder only", diffugr.decoder_only(), {"steps": 1}))
    for name in ("ar", "bm25", "dense"):
        configs.append((name, load_backend(a.artifacts, "retrieve", name), {}))
    table = Table(title=f"generative retrieval latency, {len(queries)} test queries, "
                        f"{torch.get_num_threads()} torch threads (ms per query, median of {a.repeats})")
    for col in ("backend", "steps", "batch 1", "batch 16", "speed-up b16"):
        table.add_column(col, justify="right")
    base = None
    for name, backend, options in configs:
        backend.answer([Request("retrieve", query=queries[0], k=10, options=dict(options))])  # warm
        b1 = per_query_ms(backend, queries, 1, a.repeats, options)
        b16 = per_query_ms(backend, queries, 16, a.repeats, options)
        steps = str(options.get("steps", diffugr.length if name == "ar" else "-"))
        base = base or b1
        table.add_row(name, steps, f"{b1:.2f}", f"{b16:.2f}", f"{b1 / b16:.1f}x")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
