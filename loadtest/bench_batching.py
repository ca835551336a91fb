"""Throughput of each model backend at batch 1 vs through the gateway's micro-batcher (service/batcher.py).

    python -m loadtest.bench_batching [--requests 256] [--concurrency 32] [--artifacts artifacts/v1]
                                      [--max-batch 16] [--max-wait-ms 2]

Both engines share the same loaded backends and answer the same real requests (StrategyQA questions for dense
retrieval and DiffuGR, MovieLens histories for SASRec and dense search) with `concurrency` requests in
flight: "batch 1" is the engine with batching off (one backend call per request in a worker thread, the
gateway before batching); "batched" is the default engine. Prints requests/s, mean batch size and p99.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import service  # noqa: F401  (first: sets OMP_WAIT_POLICY before faiss and torch load, as the gateway does)
from indexing.data import load_recsys, load_retrieval
from models.backend import Request
from models.registry import load_backend
from service.engine import Engine
from service.settings import Settings

MODEL_BACKENDS = [("recommend", "sasrec"), ("retrieve", "dense"), ("search", "dense"), ("retrieve", "diffugr")]
FALLBACK = {"recommend": "popularity", "retrieve": "bm25", "search": "bm25"}  # the engine needs its cheap one


def sample_requests(task: str, data_dir: Path, n: int, rng: random.Random) -> list[Request]:
    if task == "recommend":
        seqs = [s for s in load_recsys(data_dir / "ml100k").sequences.values() if len(s) >= 5]
        return [Request("recommend", history=rng.choice(seqs)[-50:], k=10) for _ in range(n)]
    if task == "search":
        items = list(load_recsys(data_dir / "ml100k").items.values())
        return [Request("search", query=rng.choice(items).get("text", "")[:100] or "comedy", k=10) for _ in range(n)]
    queries = list(load_retrieval(data_dir / "strategyqa-facts").queries.values())
    return [Request("retrieve", query=rng.choice(queries), k=10) for _ in range(n)]


async def drive(engine: Engine, backend: str, requests: list[Request], concurrency: int) -> tuple[float, list, int]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    degraded = 0

    async def one(r: Request) -> None:
        nonlocal degraded
        async with gate:
            t0 = time.perf_counter()
            out = await engine.answer(Request(r.task, r.query, r.user_id, list(r.history), r.k, dict(r.options)),
                                      backend, 60_000)
            latencies.append((time.perf_counter() - t0) * 1000)
            degraded += out.degraded

    t0 = time.perf_counter()
    await asyncio.gather(*(one(r) for r in requests))
    return time.perf_counter() - t0, sorted(latencies), degraded


def count_calls(backend) -> list[int]:
    sizes: list[int] = []
    original = backend.answer

    def answer(requests, deadline=None):
        sizes.append(len(requests))
        return original(requests, deadline)

    backend.answer = answer
    return sizes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    a = p.parse_args(argv)
    console = Console(width=110)
    rng = random.Random(0)
    table = Table(title=f"micro-batching: {a.requests} requests, {a.concurrency} in flight, "
                        f"max batch {a.max_batch}, max wait {a.max_wait_ms:g} ms")
    for col in ("task", "backend", "engine", "req/s", "mean batch", "p50 ms", "p99 ms", "degraded", "speed-up"):
        table.add_column(col, justify="left" if col in ("task", "backend", "engine") else "right")
    for task, name in MODEL_BACKENDS:
        if not (a.artifacts / task / name / "meta.json").exists():
            console.print(f"skipping {task}/{name}: no artifacts under {a.artifacts / task / name}")
            continue
        backend = load_backend(a.artifacts, task, name)
        fallback = load_backend(a.artifacts, task, FALLBACK[task])
        requests = sample_requests(task, a.data, a.requests, rng)
        backend.warm_up(requests[0])
        sizes = count_calls(backend)
        base = None
        for label, batch_backends in (("batch 1", []), ("batched", [name])):
            s = Settings(_env_file=None, artifacts_dir=a.artifacts, warmup=False, batch_backends=batch_backends,
                         batch_max_size=a.max_batch, batch_max_wait_ms=a.max_wait_ms)
            engine = Engine(s, {task: {name: backend, FALLBACK[task]: fallback}})
            asyncio.run(drive(engine, name, requests[:8], 4))  # warm the path (threads, first calls)
            sizes.clear()
            seconds, lat, degraded = asyncio.run(drive(engine, name, requests, a.concurrency))
            engine.close()
            rps = len(requests) / seconds
            base = base or rps
            table.add_row(task, name, label, f"{rps:.1f}", f"{sum(sizes) / max(1, len(sizes)):.1f}",
                          f"{lat[len(lat) // 2]:.1f}", f"{lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.1f}",
                          str(degraded), f"{rps / base:.2f}x")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
