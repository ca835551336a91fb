"""The optimiser of the self-evolving loop (issue #17): served interactions train the recommender continually.

It consumes the gateway's event stream (POST /events -> the Redis stream `unisr:events`) through a Redis consumer
group, and every `--every` events (or once the oldest waited `--max-wait-s`) fine-tunes the served SASRec on them
(training.evolve.update: naive, replay or flashback), validates the candidate against the served checkpoint, and
publishes it as a new artifacts version (models.artifacts.publish_version) that the gateway swaps in (it follows
artifacts/CURRENT). A worse candidate is kept out and logged with its figures (artifacts/jobs/optimiser.jsonl).

Exactly once, across crashes: entries are acknowledged (XACK) only after their round was published or rejected;
entries delivered but not acknowledged (a crash mid-round) are read again first on the next start; and each
published checkpoint records the last stream id it learned (`events_through` in recommend/sasrec/meta.json), so
entries of a round that was published just before a crash (not yet acknowledged) are acknowledged, not learned
again.

    python -m training.optimiser --redis-url redis://127.0.0.1:6379/0 --artifacts artifacts/v1 --every 500

Validation: the candidate must not be worse than the served model on the round's held-out slice (each user's
last event of the round, not trained on: the newest period) and must keep the old period (the leave-one-out test
split's HR@10 on --old-users users) within --tolerance.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path

import redis
import torch

from indexing.data import load_recsys
from models.artifacts import publish_version, read_meta, served_version, write_meta
from models.sasrec.model import SASRec
from training.common import add_threads_arg, set_threads
from training.evolve import Case, EvolveConfig, evaluate, update

GROUP = "unisr-optimiser"


class Optimiser:
    def __init__(self, r: redis.Redis, stream: str, base: Path, data_dir: Path, every: int, method: str = "replay",
                 consumer: str = "optimiser-1", tolerance: float = 0.01, old_users: int = 943,
                 cfg: EvolveConfig | None = None, min_gain: float = 0.0):
        self.r, self.stream, self.base, self.every, self.method = r, stream, Path(base), every, method
        self.consumer, self.tolerance, self.min_gain = consumer, tolerance, min_gain
        self.cfg = cfg or EvolveConfig()
        self.data = load_recsys(data_dir)
        self.old = self.data.examples("test")[:old_users]
        self.root = self.base.parent / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # ------------------------------------------------------------ the stream
    def read(self, block_ms: int = 1000) -> list[tuple[str, dict]]:
        """Up to `every` entries: first those delivered to this consumer and never acknowledged (a crash mid-round,
        or a round still filling up), then new ones (waiting up to block_ms for them)."""
        got = self.r.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=self.every)
        out = [(i.decode(), json.loads(f[b"event"])) for i, f in (got[0][1] if got else []) if f]
        if len(out) < self.every:
            got = self.r.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=self.every - len(out),
                                    block=block_ms)
            out += [(i.decode(), json.loads(f[b"event"])) for i, f in (got[0][1] if got else []) if f]
        return out

    def served_dir(self) -> Path:
        return served_version(self.base) / "recommend" / "sasrec"

    def learned_through(self) -> str:
        return read_meta(self.served_dir()).get("events_through", "0-0")

    # ------------------------------------------------------------ one round
    def round(self, entries: list[tuple[str, dict]]) -> dict:
        """Learn from the entries (those not yet learned), validate, publish or reject; then acknowledge them all."""
        through = self.learned_through()
        fresh = [(i, e) for i, e in entries if _id(i) > _id(through)]
        result = {"events": len(entries), "already_learned": len(entries) - len(fresh)}
        if fresh:
            result.update(self.learn(fresh))
        if entries:
            self.r.xack(self.stream, GROUP, *[i for i, _ in entries])
        with open(self.root / "optimiser.jsonl", "a") as f:
            f.write(json.dumps({**result, "at": time.time()}) + "\n")
        return result

    def learn(self, fresh: list[tuple[str, dict]]) -> dict:
        current_dir = self.served_dir()
        model, ids = SASRec.from_dir(current_dir)
        index = {i: n + 1 for n, i in enumerate(ids)}
        # each user's history before the round: the catalogue's sequence, then their events already in the stream
        users = {e["user_id"] for _, e in fresh}
        before: dict[str, list[int]] = {u: [index[i] for i in self.data.sequences.get(u, []) if i in index]
                                        for u in users}
        first = fresh[0][0]
        for _, fields in self.r.xrange(self.stream, max="(" + first):
            e = json.loads(fields[b"event"])
            if e["user_id"] in before and e["item_id"] in index:
                before[e["user_id"]].append(index[e["item_id"]])
        inside: dict[str, list[int]] = {}
        for _, e in fresh:
            if e["item_id"] in index:
                inside.setdefault(e["user_id"], []).append(index[e["item_id"]])
        # held out: each user's last event of the round (the newest period), predicted from everything before it
        held = [Case((before[u] + s[:-1])[-200:], s[-1]) for u, s in inside.items() if len(before[u]) + len(s) > 1]
        window = {u: (before[u], s[:-1]) for u, s in inside.items() if len(s) > 1}
        past = [s for s in (before[u] for u in before) if len(s) >= 2] + [
            [index[i] for i in seq if i in index] for seq in random.sample(list(self.data.train_sequences().values()),
                                                                            min(512, len(self.data.sequences)))]
        candidate = update(model, self.method, window, past, self.cfg)
        new_old = evaluate(model, ids, held)["hit_rate@10"] if held else 0.0
        new_new = evaluate(candidate, ids, held)["hit_rate@10"] if held else 0.0
        old_cases = [Case([index[i] for i in e.history if i in index][-200:], index[e.target]) for e in self.old
                     if e.target in index]
        old_old, old_new = (evaluate(m, ids, old_cases)["hit_rate@10"] for m in (model, candidate))
        verdict = {"method": self.method, "learned": len(fresh), "first_id": first, "last_id": fresh[-1][0],
                   "held_out": len(held), "newest_hr10": {"served": round(new_old, 4), "candidate": round(new_new, 4)},
                   "old_hr10": {"served": round(old_old, 4), "candidate": round(old_new, 4)}}
        accepted = new_new >= new_old + self.min_gain and old_new >= old_old - self.tolerance
        verdict["accepted"] = accepted
        if not accepted:
            verdict["served"] = str(served_version(self.base).name)
            return verdict
        stage = self.root / "optimiser" / "stage"
        shutil.rmtree(stage, ignore_errors=True)
        out = stage / "recommend" / "sasrec"
        candidate.save(out, ids)
        meta = {k: v for k, v in read_meta(current_dir).items() if k != "built_at"}
        learned = meta.get("learned_events", 0) + len(fresh)
        write_meta(out, **{**meta, "events_through": fresh[-1][0], "events_from": first, "learned_events": learned,
                           "update": verdict})
        new = publish_version(self.base, stage, ["recommend/sasrec"])
        shutil.rmtree(stage.parent, ignore_errors=True)
        verdict["served"] = new.name
        return verdict

    def run(self, rounds: int | None = None, idle_exit_s: float | None = None,
            max_wait_s: float | None = None) -> list[dict]:
        """Rounds of `every` events until `rounds` were run (None: forever); a partial round is learned once its
        first event waited max_wait_s. With idle_exit_s, a partial round is learned once no event arrived for that
        long, and the loop ends when nothing is left."""
        results, seen, last_change, first_seen = [], 0, time.monotonic(), None
        while rounds is None or len(results) < rounds:
            if not (self.served_dir() / "meta.json").exists():  # SASRec not trained/published yet: wait for it
                time.sleep(5)
                continue
            entries = self.read()
            if len(entries) != seen:
                seen, last_change = len(entries), time.monotonic()
            first_seen = (first_seen or time.monotonic()) if entries else None
            quiet = (idle_exit_s is not None and time.monotonic() - last_change >= idle_exit_s) or (
                max_wait_s is not None and first_seen is not None and time.monotonic() - first_seen >= max_wait_s)
            if not entries:
                if quiet:
                    break
                continue
            if len(entries) < self.every and not quiet:
                time.sleep(0.2)  # the round is still filling up: its entries stay pending and are read again
                continue
            results.append(self.round(entries))
            seen, last_change, first_seen = 0, time.monotonic(), None
            print(json.dumps(results[-1]), flush=True)
        return results


def _id(stream_id: str) -> tuple[int, int]:
    ms, seq = stream_id.split("-")
    return int(ms), int(seq)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--stream", default="unisr:events")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"), help="the served artifacts (its parent "
                   "holds the versions and CURRENT)")
    p.add_argument("--data", type=Path, default=Path("data/ml100k"))
    p.add_argument("--every", type=int, default=500, help="events per update round")
    p.add_argument("--method", default="replay", choices=["naive", "replay", "flashback"],
                   help="replay: the best next-period gain measured by python -m training.evolve (README)")
    p.add_argument("--tolerance", type=float, default=0.01, help="old-period HR@10 drop allowed")
    p.add_argument("--min-gain", type=float, default=0.0, help="newest-period HR@10 gain required")
    p.add_argument("--old-users", type=int, default=943, help="test-split users of the old-period check")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--max-wait-s", type=float, default=600.0, help="learn a partial round once its first event "
                   "waited this long (the 'every M minutes' of the loop)")
    p.add_argument("--idle-exit-s", type=float, default=None, help="stop after this long without a new event")
    p.add_argument("--update-epochs", type=int, default=EvolveConfig.update_epochs)
    add_threads_arg(p, default=1)
    a = p.parse_args(argv)
    set_threads(a.threads)
    torch.manual_seed(0), random.seed(0)
    opt = Optimiser(redis.Redis.from_url(a.redis_url), a.stream, a.artifacts, a.data, a.every, a.method,
                    tolerance=a.tolerance, min_gain=a.min_gain, old_users=a.old_users,
                    cfg=replace(EvolveConfig(), update_epochs=a.update_epochs))
    opt.run(a.rounds, a.idle_exit_s, a.max_wait_s)


if __name__ == "__main__":
    main()
