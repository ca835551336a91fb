"""Faults with real processes: a private redis-server stopped and restarted under load, and the gateway
SIGKILLed in the middle of a burst of POST /events. Nothing acknowledged may be lost or stored twice."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis

from loadtest.run import stop_server

ROOT = Path(__file__).resolve().parents[2]


def free_port(preferred: int) -> int:
    for port in [preferred, 0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError("no free port")


def start_redis(port: int, directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=0.5)
    for _ in range(100):
        try:
            if client.ping():
                return proc
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def stop_redis(port: int, proc: subprocess.Popen) -> None:
    subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)
    proc.wait(timeout=10)


def start_gateway(port: int, artifacts: Path, events_log: Path, log_path: Path, **env) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k != "UNISR_REDIS_URL"}
    full_env.update({"UNISR_ARTIFACTS_DIR": str(artifacts), "UNISR_DATA_DIR": str(ROOT / "data"),
                     "UNISR_WARMUP": "false", "UNISR_EVENTS_LOG": str(events_log), "UNISR_LOG_LEVEL": "WARNING",
                     "UNISR_ENV_FILE": "/nonexistent", **env})
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("gateway not ready in 120 s")


def event(key: str, n: int) -> dict:
    return {"user_id": str(1 + n % 50), "item_id": str(1 + n % 1600), "event_type": "click", "idempotency_key": key}


def stream_keys(port: int) -> list[str]:
    r = redis.Redis(port=port)
    return [json.loads(f[b"event"])["key"] for _, f in r.xrange("unisr:events")]


def test_redis_stopped_and_restarted_under_load(artifacts, tmp_path):
    rport, gport = free_port(6391), free_port(8391)
    redis_proc = start_redis(rport, tmp_path)
    gateway = start_gateway(gport, artifacts, tmp_path / "events.log", tmp_path / "gateway.log",
                            UNISR_REDIS_URL=f"redis://127.0.0.1:{rport}/0", UNISR_REDIS_TIMEOUT_S="0.1",
                            UNISR_EVENTS_REPLAY_INTERVAL_S="0.2")
    base = f"http://127.0.0.1:{gport}"
    failures: list[str] = []
    acked: list[str] = []
    counts = {"requests": 0}
    stop_flag = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as c:
            n = 0
            while not stop_flag.is_set():
                n += 1
                try:
                    if n % 3 == 0:
                        key = f"fault-a-{worker}-{n}-{uuid.uuid4().hex[:6]}"
                        r = c.post("/events", json=event(key, n))
                        if r.status_code == 201:
                            acked.append(key)
                    elif n % 3 == 1:
                        r = c.get("/search", params={"q": f"comedy 199{n % 10}", "backend": "bm25", "k": 5})
                    else:
                        r = c.get("/recommend", params={"user_id": str(1 + n % 900), "backend": "cooc", "k": 5})
                    if r.status_code not in (200, 201):
                        failures.append(f"{r.request.url.path} {r.status_code} {r.text[:120]}")
                except httpx.HTTPError as e:
                    failures.append(f"{type(e).__name__}: {e}")
                counts["requests"] += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        before_outage = len(acked)
        stop_redis(rport, redis_proc)
        states = []
        for _ in range(50):
            states.append(httpx.get(f"{base}/readyz", timeout=5).json())
            if states[-1]["status"] == "degraded" and states[-1]["detail"]["events"]["pending_replay"] > 0:
                break
            time.sleep(0.1)
        down = states[-1]
        assert down["status"] == "degraded" and not down["detail"]["cache_ok"], down
        assert any("pending replay" in d for d in down["detail"]["degraded"]), down
        time.sleep(1.5)
        during_outage = len(acked) - before_outage
        redis_proc = start_redis(rport, tmp_path)
        for _ in range(100):
            ready = httpx.get(f"{base}/readyz", timeout=5).json()
            if ready["status"] == "ready":
                break
            time.sleep(0.1)
        assert ready["status"] == "ready", ready
        time.sleep(1.0)
    finally:
        stop_flag.set()
        for t in threads:
            t.join(timeout=30)
        stop_server(gateway)
    try:
        assert not failures, failures[:5]
        assert counts["requests"] > 50 and before_outage > 0 and during_outage > 0
        keys = stream_keys(rport)
        assert set(acked) <= set(keys), f"{len(set(acked) - set(keys))} acknowledged events missing"
        assert len(keys) == len(set(keys))  # exactly once, replay included
    finally:
        stop_redis(rport, redis_proc)


def test_gateway_killed_during_an_event_burst(artifacts, tmp_path):
    port, log = free_port(8392), tmp_path / "events.log"
    gateway = start_gateway(port, artifacts, log, tmp_path / "gateway.log")
    base = f"http://127.0.0.1:{port}"
    acked: list[str] = []
    lock = threading.Lock()

    def post(n: int) -> None:
        key = f"burst-{n}-{uuid.uuid4().hex[:8]}"
        try:
            r = httpx.post(f"{base}/events", json=event(key, n), timeout=10)
        except httpx.HTTPError:
            return
        if r.status_code == 201:
            with lock:
                acked.append(key)
                if len(acked) == 200:
                    os.kill(gateway.pid, signal.SIGKILL)  # mid-burst: other requests are in flight

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(post, range(400)))
    gateway.wait(timeout=10)
    assert gateway.returncode == -signal.SIGKILL and len(acked) >= 200

    gateway = start_gateway(port, artifacts, log, tmp_path / "gateway.log")
    try:
        stored = [json.loads(line)["key"] for line in log.read_text().splitlines()]
        assert len(stored) == len(set(stored)), "an event was stored twice"
        assert set(acked) <= set(stored), f"{len(set(acked) - set(stored))} acknowledged events lost"
        again = httpx.post(f"{base}/events", json=event(acked[0], 0), timeout=10)
        assert again.status_code == 200 and again.json()["duplicate"] is True
    finally:
        stop_server(gateway)
