"""`python -m loadtest.budget`: is the latency budget kept under load? One command, loopback only, bounded in time.
The questions are StrategyQA's (2,290 distinct), so the response cache rarely answers.

It starts a gateway (uvicorn, 127.0.0.1, the artifacts of UNISR_ARTIFACTS_DIR or --artifacts, warm-up on), then
for each load level sends `--path` (default: DiffuGR at 4 steps with a 200 ms budget, the measurement of issue
#16) from N concurrent closed-loop clients for --seconds (joining over the first second; a refused client waits
the Retry-After it was given; --spin-levels: clients that resend at once), and last an open-loop overload at
--overload x the capacity measured at the first level (sent at that rate whatever the answers). Per level it
prints: answers, share within budget (+10 ms for the client), p50 / p99 of answers, refusals (429 / 503) and their
p99, the gateway's peak thread count, the client's own event-loop lag, and after the load how long until a single
request is back under its budget.

    python -m loadtest.budget                          # levels 20 and 200 clients, 30 s each, then 3x for 60 s
    python -m loadtest.budget --env UNISR_MAX_IN_FLIGHT=8 --env UNISR_MAX_QUEUED=16 --spin-levels 200
    python -m loadtest.budget --levels 20 --seconds 10 --overload 0

Latencies are measured by the client on the same machine (its own CPU time included): compare within one run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote_plus

import aiohttp
import httpx
import numpy as np

PATH = "/retrieve?q={q}&backend=diffugr&steps=4&latency_budget_ms=200&k=10"
QUERIES_FILE = Path("data/strategyqa-facts/queries.jsonl")  # real questions, distinct, so the cache rarely answers


def load_queries(path: Path = QUERIES_FILE) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


QUERIES: list[str] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def start_gateway(port: int, artifacts: Path | None, log: Path, env_extra: dict) -> subprocess.Popen:
    env = {**os.environ, "UNISR_PORT": str(port), "UNISR_AGENT": "false", "UNISR_LOG_LEVEL": "WARNING", **env_extra}
    env.pop("UNISR_REDIS_URL", None)
    if artifacts:
        env["UNISR_ARTIFACTS_DIR"] = str(artifacts)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # the served entry point, with its connection limit
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("gateway not ready in 300 s")


async def client_lag(stop: float, lags: list[float], interval_s: float = 0.005) -> None:
    """The client's own event-loop lag (ms late per 5 ms tick): the client shares the gateway's cores, and a
    latency it measures includes the time it was late itself."""
    while time.monotonic() < stop:
        due = time.monotonic() + interval_s
        await asyncio.sleep(interval_s)
        lags.append(max(0.0, (time.monotonic() - due) * 1000))


Record = tuple  # (status, client ms, server took_ms or None, answering backend + "*" when degraded, or None)


async def ask(http: aiohttp.ClientSession, path: str, i: int, records: list[Record]) -> float | None:
    """One request with the i-th question; a Record appended to records (status -1: no HTTP answer). Returns the
    refusal's Retry-After (seconds), if any."""
    t0 = time.perf_counter()
    took, backend, retry_after = None, None, None
    try:
        async with http.get(path.format(q=quote_plus(QUERIES[i % len(QUERIES)]))) as r:
            body = await r.read()
            status = r.status
            if status in (429, 503) and r.headers.get("Retry-After", "").isdigit():
                retry_after = float(r.headers["Retry-After"])
    except (aiohttp.ClientError, asyncio.TimeoutError):
        status = -1
    ms = (time.perf_counter() - t0) * 1000
    if status == 200:
        answer = json.loads(body)
        took, backend = answer["took_ms"], answer["backend"] + ("*" if answer["degraded"] else "")
    records.append((status, ms, took, backend))
    return retry_after


def session(url: str, connections: int) -> aiohttp.ClientSession:
    """aiohttp (a few times less client CPU per request than httpx: the client shares the gateway's cores)."""
    return aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=30),
                                 connector=aiohttp.TCPConnector(limit=connections))


def run(coro):
    """uvloop where installed (uvicorn[standard] brings it): the client's own event loop costs less."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def closed_loop(url: str, path: str, clients: int, seconds: float, pid: int, retry_after: bool = True,
                      ramp_s: float = 1.0) -> dict:
    """`clients` clients, each sending its next request when the last one is answered; a refused client waits the
    Retry-After it was given (what the header asks of a client; with jitter), or with retry_after=False resends at
    once."""
    records: list[Record] = []
    peak = [threads_of(pid)]
    stop = time.monotonic() + seconds

    async def client(n: int, http: aiohttp.ClientSession) -> None:
        i = n
        await asyncio.sleep(ramp_s * n / clients)  # clients join over ramp_s, as a load generator's spawn rate
        while time.monotonic() < stop:
            i += clients
            wait = await ask(http, path, i, records)
            if retry_after and wait:  # jittered (x 1-1.5), or the refused clients come back all at once
                await asyncio.sleep(min(wait * (1 + 0.5 * random.random()), max(0.0, stop - time.monotonic())))

    async def watch() -> None:
        while time.monotonic() < stop:
            peak.append(threads_of(pid))
            await asyncio.sleep(0.5)

    lags: list[float] = []
    async with session(url, clients) as http:
        await asyncio.gather(watch(), client_lag(stop, lags), *(client(n, http) for n in range(clients)))
    label = f"{clients} clients" + ("" if retry_after else ", resending at once")
    return summarise(label, records, seconds, max(peak), lags)


async def open_loop(url: str, path: str, rate: float, seconds: float, pid: int) -> dict:
    """Requests sent at a fixed rate whatever the answers' pace (offered load), each on its own task."""
    records: list[Record] = []
    peak = [threads_of(pid)]
    lags: list[float] = []
    async with session(url, 2000) as http:
        tasks, start, i = [asyncio.create_task(client_lag(time.monotonic() + seconds, lags))], time.monotonic(), 0
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate)
            while i < due:
                tasks.append(asyncio.create_task(ask(http, path, i, records)))
                i += 1
            if i % 50 == 0:
                peak.append(threads_of(pid))
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
    return summarise(f"open loop {rate:.0f}/s", records, seconds, max(peak), lags)


def summarise(label: str, records: list[Record], seconds: float, threads: int, client_lags: list[float] = (),
              budget_ms: float = 200.0, slack_ms: float = 10.0) -> dict:
    ok = np.array([ms for s, ms, *_ in records if s == 200])
    server = np.array([took for s, _, took, _ in records if s == 200])
    refused = np.array([ms for s, ms, *_ in records if s in (429, 503)])
    other = [s for s, *_ in records if s not in (200, 429, 503)]
    late: dict[str, int] = {}  # answers over budget (+ slack) by who answered ("*": degraded)
    by: dict[str, int] = {}  # all answers by who answered
    for s, ms, _, backend in records:
        if s == 200:
            by[backend] = by.get(backend, 0) + 1
        if s == 200 and ms > budget_ms + slack_ms:
            late[backend] = late.get(backend, 0) + 1
    within = float(np.mean(ok <= budget_ms + slack_ms)) if len(ok) else 0.0
    pct = lambda a, q: round(float(np.percentile(a, q)), 1) if len(a) else None  # noqa: E731
    return {"load": label, "requests": len(records), "answers_per_s": round(len(ok) / seconds, 1),
            "within_budget": round(within, 4),
            "fast_or_within": round(float(np.mean([(s == 200 and ms <= budget_ms + slack_ms) or
                                                   (s in (429, 503) and ms <= 50) for s, ms, *_ in records])), 4)
            if records else 0.0,
            "p50_ms": pct(ok, 50), "p99_ms": pct(ok, 99), "server_p99_ms": pct(server, 99), "late_by": late,
            "answered_by": by,
            "refused": len(refused), "refused_p99_ms": pct(refused, 99),
            "errors": len(other), "peak_threads": threads, "client_lag_p99_ms": pct(np.array(client_lags), 99)}


def recovery_s(url: str, path: str, budget_ms: float = 200.0, limit_s: float = 30.0) -> float | None:
    """Seconds after the load until one request is answered within its budget again."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        t = time.perf_counter()
        r = httpx.get(url + path.format(q=quote_plus(QUERIES[int(time.monotonic() * 1000) % len(QUERIES)])),
                      timeout=30)
        if r.status_code == 200 and (time.perf_counter() - t) * 1000 <= budget_ms:
            return round(time.monotonic() - t0, 2)
        time.sleep(0.1)
    return None


def print_table(rows: list[dict]) -> None:
    cols = ["load", "requests", "answers_per_s", "within_budget", "fast_or_within", "p50_ms", "p99_ms", "server_p99_ms",
            "refused",
            "refused_p99_ms", "errors", "peak_threads", "client_lag_p99_ms"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c)) for c in cols) + " |")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=None)
    p.add_argument("--path", default=PATH, help="request path; {q} is replaced by a question")
    p.add_argument("--levels", default="20,200", help="concurrent closed-loop clients per level")
    p.add_argument("--spin-levels", default="", help="closed-loop levels whose clients ignore Retry-After and resend "
                                                     "a refused request at once")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--overload", type=float, default=3.0, help="open-loop rate as a multiple of the first level's "
                                                               "answers per second (0: skip)")
    p.add_argument("--overload-seconds", type=float, default=60.0)
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the gateway (e.g. UNISR_MAX_IN_FLIGHT=8)")
    p.add_argument("--out", type=Path, default=Path("results/budget.json"))
    a = p.parse_args(argv)
    QUERIES[:] = load_queries()
    port = free_port()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    gateway = start_gateway(port, a.artifacts, a.out.with_suffix(".gateway.log"),
                            dict(kv.split("=", 1) for kv in a.env))
    url = f"http://127.0.0.1:{port}"
    rows: list[dict] = []
    try:
        levels = [(int(c), True) for c in a.levels.split(",") if c] + \
                 [(int(c), False) for c in a.spin_levels.split(",") if c]
        for clients, retry_after in levels:
            rows.append(run(closed_loop(url, a.path, clients, a.seconds, gateway.pid, retry_after)))
            rows[-1]["recovery_s"] = recovery_s(url, a.path)
            print(json.dumps(rows[-1]), flush=True)
        if a.overload > 0 and rows:
            rate = a.overload * max(1.0, rows[0]["answers_per_s"])
            rows.append(run(open_loop(url, a.path, rate, a.overload_seconds, gateway.pid)))
            rows[-1]["recovery_s"] = recovery_s(url, a.path)
            print(json.dumps(rows[-1]), flush=True)
    finally:
        os.killpg(gateway.pid, signal.SIGINT)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(gateway.pid, signal.SIGKILL)
    a.out.write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
