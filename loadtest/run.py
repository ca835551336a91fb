"""Run the locust load test headless against a local gateway and print a per-endpoint summary.

    python -m loadtest.run --users 10 --spawn-rate 5 --run-time 30s [--host http://127.0.0.1:8000]
                           [--start-server] [--out results/loadtest]

--start-server starts `python -m service` on the host's port (UNISR_HOST=127.0.0.1, UNISR_PORT), waits for
/readyz, and always stops it afterwards. Only 127.0.0.1 / localhost targets are accepted.
Exit status: 0 when every request succeeded; 1 when any failed, none were made, or locust failed;
2 on a usage error or a server that never became ready.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.table import Table

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
# Wide enough for the table when stdout is not a terminal (rich would assume 80 columns).
console = Console(width=max(shutil.get_terminal_size((120, 24)).columns, 110))


def run_seconds(spec: str) -> int:
    """Locust's --run-time syntax (30s, 2m, 1h30m, or plain seconds) in seconds."""
    if spec.isdigit():
        return int(spec)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", spec)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"bad run time {spec!r} (use e.g. 30s, 2m, 1h30m)")
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def local_host(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOCAL_HOSTS:
        raise argparse.ArgumentTypeError(f"{url!r}: only http://127.0.0.1 or http://localhost targets are allowed")
    return url.rstrip("/")


def ready(host: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{host}/readyz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(host: str, deadline_s: float, proc: subprocess.Popen | None = None) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if ready(host):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(1.0)
    return False


def start_server(host: str, log_path: Path) -> subprocess.Popen:
    port = urlsplit(host).port or 80
    env = {**os.environ, "UNISR_HOST": "127.0.0.1", "UNISR_PORT": str(port)}
    if "UNISR_EVENTS_LOG" not in env:  # keep load-test events out of data/events
        events_log = log_path.with_name("events.log")
        for old in (events_log, events_log.with_name("events.log.cursor")):
            old.unlink(missing_ok=True)
        env["UNISR_EVENTS_LOG"] = str(events_log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"starting the gateway: {sys.executable} -m service on 127.0.0.1:{port} (log: {log_path})")
    with open(log_path, "wb") as log:   # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "service"], env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    console.print(f"stopped the gateway (pid {proc.pid}, exit {proc.returncode})")


def run_locust(a, prefix: Path) -> int:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(a.users),
           "-r", str(a.spawn_rate), "-t", a.run_time, "--host", a.host, "--csv", str(prefix), "--only-summary"]
    console.print("running: " + " ".join(cmd[2:]))
    try:
        return subprocess.run(cmd, timeout=run_seconds(a.run_time) + 120, check=False).returncode
    except subprocess.TimeoutExpired:
        console.print("[red]locust did not finish in time[/red]")
        return 124


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(row: dict, key: str) -> float:
    try:
        return float(row.get(key) or 0)
    except ValueError:   # locust writes "N/A" for percentiles of an empty series
        return 0.0


def summarise(prefix: Path) -> tuple[int, int]:
    """Print the stats (and failures) tables; return (requests, failures) of the Aggregated row."""
    rows = read_csv(Path(f"{prefix}_stats.csv"))
    if not rows:
        console.print(f"[red]no stats written at {prefix}_stats.csv[/red]")
        return 0, 0
    table = Table(title="gateway load test (response times in ms)")
    for col in ("Method", "Endpoint", "Requests", "Failures", "p50", "p95", "p99", "Avg", "Max", "req/s"):
        table.add_column(col, justify="left" if col in ("Method", "Endpoint") else "right")
    total = (0, 0)
    for r in rows:
        reqs, fails = int(num(r, "Request Count")), int(num(r, "Failure Count"))
        aggregated = r.get("Name") == "Aggregated"
        if aggregated:
            total = (reqs, fails)
        table.add_row(r.get("Type") or "", r.get("Name") or "", str(reqs),
                      f"[red]{fails}[/red]" if fails else "0",
                      *(f"{num(r, c):.0f}" for c in ("50%", "95%", "99%")),
                      f"{num(r, 'Average Response Time'):.1f}", f"{num(r, 'Max Response Time'):.0f}",
                      f"{num(r, 'Requests/s'):.1f}", end_section=aggregated or None,
                      style="bold" if aggregated else None)
    console.print(table)
    failures = read_csv(Path(f"{prefix}_failures.csv"))
    if failures:
        ft = Table(title="failures")
        for col in ("Method", "Name", "Occurrences", "Error"):
            ft.add_column(col)
        for f in failures:
            ft.add_row(f.get("Method", ""), f.get("Name", ""), f.get("Occurrences", ""), f.get("Error", "")[:160])
        console.print(ft)
    return total


def summarise_budget(prefix: Path) -> None:
    """Share of ranked responses inside their latency budget (took_ms <= budget and not degraded); the others
    were degraded (served by the cheaper backend: the budget was too small for the one asked for) or late."""
    path = Path(f"{prefix}_budget.json")
    if not path.exists():
        console.print(f"[yellow]no budget counts at {path}[/yellow]")
        return
    counts = json.loads(path.read_text())
    table = Table(title="latency budget (ranked responses)")
    cols = ("inside", "degraded", "late", "refused")
    for col in ("Endpoint", *cols, "share inside"):
        table.add_column(col, justify="left" if col == "Endpoint" else "right")
    totals = dict.fromkeys(cols, 0)
    for name, c in [*sorted(counts.items()), ("all", totals)]:
        if name != "all":
            for col in cols:
                totals[col] += c.get(col, 0)
        n = sum(c.get(col, 0) for col in cols)
        table.add_row(name, *(str(c.get(col, 0)) for col in cols), f"{c.get('inside', 0) / n:.1%}" if n else "-",
                      style="bold" if name == "all" else None)
    console.print(table)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", "-u", type=int, default=10)
    p.add_argument("--spawn-rate", "-r", type=float, default=5)
    p.add_argument("--run-time", "-t", default="30s", help="locust syntax: 30s, 2m, 1h30m")
    p.add_argument("--host", type=local_host, default="http://127.0.0.1:8000")
    p.add_argument("--start-server", action="store_true", help="start `python -m service` for the run")
    p.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for /readyz")
    p.add_argument("--out", type=Path, default=Path("results/loadtest"), help="where the CSV files go")
    a = p.parse_args(argv)
    run_seconds(a.run_time)   # validate before starting anything
    if a.users < 1 or a.spawn_rate <= 0:
        p.error("--users must be >= 1 and --spawn-rate > 0")

    a.out.mkdir(parents=True, exist_ok=True)
    prefix = a.out / "locust"
    for old in [*a.out.glob("locust_*.csv"), *a.out.glob("locust_budget.json")]:   # never report a previous run's
        old.unlink()

    proc = None
    try:
        if a.start_server:
            if ready(a.host):
                console.print(f"[red]something already answers on {a.host}; stop it or drop --start-server[/red]")
                return 2
            proc = start_server(a.host, a.out / "server.log")
            if not wait_ready(a.host, a.ready_timeout, proc):
                state = f"exited with {proc.returncode}" if proc.poll() is not None else "not ready"
                console.print(f"[red]gateway {state} after {a.ready_timeout:.0f}s; see {a.out / 'server.log'}[/red]")
                return 2
        elif not wait_ready(a.host, 10):
            console.print(f"[red]{a.host}/readyz does not answer 200; start the gateway or use --start-server[/red]")
            return 2
        console.print(f"{a.host} is ready")
        rc = run_locust(a, prefix)
    finally:
        if proc is not None:
            stop_server(proc)

    requests, failures = summarise(prefix)
    summarise_budget(prefix)
    if requests == 0:
        console.print("[red]no requests were made[/red]")
        return 1
    if failures or rc != 0:
        console.print(f"[red]{failures} of {requests} requests failed (locust exit {rc})[/red]")
        return 1
    console.print(f"[green]all {requests} requests succeeded[/green]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
