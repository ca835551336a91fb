"""`python -m loadtest.replay`: send MovieLens-100k's future (the interactions after the time split's cut,
indexing.data.recsys.time_split) to a running gateway's POST /events in time order, at a bounded rate, loopback
only. Each event carries an idempotency key made of user, item and timestamp, so a repeated replay stores nothing
twice. With the gateway's Redis stream and `python -m training.optimiser` consuming it, this drives the
self-evolving loop live.

    python -m loadtest.replay --url http://127.0.0.1:8000 --rate 50 --limit 2000
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from indexing.data.recsys import time_split


def replay(url: str, data: Path, cut: float = 0.8, rate: float = 50.0, limit: int | None = None,
           start: int = 0) -> dict:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"replay targets loopback only, not {host}")
    _, _, future = time_split(data, cut)
    rows = future.iloc[start:start + limit if limit else None]
    counts = {"sent": 0, "new": 0, "duplicate": 0, "failed": 0}
    t0 = time.monotonic()
    with httpx.Client(base_url=url, timeout=10) as client:
        for n, row in enumerate(rows.itertuples(index=False)):
            wait = t0 + n / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            body = {"user_id": row.user_id, "item_id": row.item_id, "event_type": "rate",
                    "timestamp": float(row.timestamp), "rating": float(row.rating),
                    "idempotency_key": f"ml100k-{row.user_id}-{row.item_id}-{row.timestamp}"}
            r = client.post("/events", json=body)
            counts["sent"] += 1
            if r.status_code in (200, 201):
                counts["duplicate" if r.json().get("duplicate") else "new"] += 1
            else:
                counts["failed"] += 1
    counts["seconds"] = round(time.monotonic() - t0, 2)
    return counts


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--data", type=Path, default=Path("data/ml100k"))
    p.add_argument("--cut", type=float, default=0.8, help="quantile of timestamps (training.evolve's EvolveConfig)")
    p.add_argument("--rate", type=float, default=50.0, help="events per second")
    p.add_argument("--limit", type=int, default=1000, help="events to send (0: all of the future)")
    p.add_argument("--start", type=int, default=0, help="skip this many future events first")
    a = p.parse_args(argv)
    counts = replay(a.url, a.data, a.cut, a.rate, a.limit or None, a.start)
    print(json.dumps(counts))
    return counts


if __name__ == "__main__":
    main()
