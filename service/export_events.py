"""Export the gateway's interaction events as training data in the interactions.csv layout.

    python -m service.export_events --out data/events/export.csv [--log PATH] [--redis-url URL] [--source auto]

Columns: user_id,item_id,timestamp,rating,event_type (timestamp in unix seconds; rating empty unless the event
was a rating) -- `indexing.data.load_recsys` reads it like the MovieLens interactions.csv. Sources: the Redis
stream (`UNISR_REDIS_URL`, stream `UNISR_EVENTS_STREAM`) and the local log (`UNISR_EVENTS_LOG`, default
<data_dir>/events/events.log), which holds every event when Redis is not used and the not-yet-replayed ones
when it is. Each idempotency key is exported once; rows are in time order.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from service.settings import Settings
from service.stores.event_log import EventLog

COLUMNS = ["user_id", "item_id", "timestamp", "rating", "event_type"]


def read_stream(url: str, stream: str, timeout_s: float = 5.0) -> list[dict]:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    events, start = [], "-"
    while True:
        page = client.xrange(stream, min=start, count=5000)
        events.extend(json.loads(fields[b"event"]) for _, fields in page)
        if len(page) < 5000:
            return events
        start = "(" + page[-1][0].decode()


def read_log(path: Path) -> list[dict]:
    log = EventLog(path)
    if not path.exists():
        return []
    log.size = path.stat().st_size
    return [event for _, event in log.read()]


def export(events: list[dict], out: Path) -> int:
    unique = {}
    for e in events:
        unique.setdefault(e["key"], e)
    rows = sorted(unique.values(), key=lambda e: (float(e["timestamp"]), e["key"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for e in rows:
            rating = e.get("rating")
            w.writerow([e["user_id"], e["item_id"], int(float(e["timestamp"])),
                        "" if rating is None else rating, e["event_type"]])
    return len(rows)


def main(argv=None) -> int:
    s = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log", type=Path, default=s.events_log_path)
    p.add_argument("--redis-url", default=s.redis_url)
    p.add_argument("--stream", default=s.events_stream)
    p.add_argument("--source", choices=["auto", "log", "redis"], default="auto",
                   help="auto: the stream when a Redis URL is set, plus the local log")
    a = p.parse_args(argv)
    events: list[dict] = []
    if a.source in ("auto", "redis") and a.redis_url:
        events += read_stream(a.redis_url, a.stream)
    elif a.source == "redis":
        p.error("--source redis needs --redis-url or UNISR_REDIS_URL")
    if a.source in ("auto", "log"):
        events += read_log(a.log)
    n = export(events, a.out)
    print(f"exported {n} events to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
