"""The optimiser of the self-evolving loop (issue #17): served interactions train the recommender continually.

It consumes the gateway's event stream (POST /events -> the Redis stream `unisr:events`) through a Redis consumer
group, and every `--every` events (or once the oldest waited `--max-wait-s`) fine-tunes the served recommenders
(`--models`) on them: SASRec (training.evolve.update: naive, replay or flashback) and GEMS's recommendation subspace
(training.evolve_gems.GEMSUpdater: naive, replay or Joint Flashback Adaptation). Each candidate is validated against
the served checkpoint, and the accepted ones are published together as a new artifacts version
(models.artifacts.publish_version) that the gateway swaps in (it follows artifacts/CURRENT). A worse candidate is
kept out and logged with its figures (artifacts/jobs/optimiser.jsonl).

Exactly once, across crashes: entries are acknowledged (XACK) only after their round was published or rejected;
entries delivered but not acknowledged (a crash mid-round) are read again first on the next start; and each
published checkpoint records the last stream id it learned (`events_through` in recommend/sasrec/meta.json and
gems/meta.json), so entries of a round that was published just before a crash (not yet acknowledged) are
acknowledged, not learned again by that model.

    python -m training.optimiser --redis-url redis://127.0.0.1:6379/0 --artifacts artifacts/v1 --every 500
    python -m training.optimiser ... --models sasrec,gems       # GEMS too (needs artifacts/v1/gems: make gems)

Validation: the candidate must not be worse than the served model on the round's held-out slice (each user's
last event of the round, not trained on: the newest period) and must keep the old tasks within --tolerance: the
old period (the leave-one-out test split's HR@10 on --old-users users) and, for GEMS, personalised search on the
same users' queries.
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
MODEL_DIRS = {"sasrec": "recommend/sasrec", "gems": "gems"}  # what each recommender's version holds


class Optimiser:
    def __init__(self, r: redis.Redis, stream: str, base: Path, data_dir: Path, every: int, method: str = "replay",
                 consumer: str = "optimiser-1", tolerance: float = 0.01, old_users: int = 943,
                 cfg: EvolveConfig | None = None, min_gain: float = 0.0, models: tuple[str, ...] = ("sasrec",),
                 gems_method: str = "jfa", gems_cfg=None):
        unknown = set(models) - set(MODEL_DIRS)
        if unknown or not models:
            raise ValueError(f"models must be some of {list(MODEL_DIRS)}, got {list(models)}")
        self.r, self.stream, self.base, self.every, self.method = r, stream, Path(base), every, method
        self.consumer, self.tolerance, self.min_gain = consumer, tolerance, min_gain
        self.models, self.gems_method, self.gems_cfg, self.gems = tuple(models), gems_method, gems_cfg, None
        self._gems_candidate = None
        self.cfg = cfg or EvolveConfig()
        self.data = load_recsys(data_dir)
        self.data_root = Path(data_dir).parent  # general-domain text for GEMS's null space lives beside ml100k
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

    def served_dir(self, model: str = "sasrec") -> Path:
        return served_version(self.base) / MODEL_DIRS[model]

    def served(self) -> list[str]:
        """The models of --models that have a served checkpoint (one trained later joins from its next round)."""
        return [m for m in self.models if (self.served_dir(m) / "meta.json").exists()]

    def learned_through(self, model: str = "sasrec") -> str:
        return read_meta(self.served_dir(model)).get("events_through", "0-0")

    # ------------------------------------------------------------ one round
    def round(self, entries: list[tuple[str, dict]]) -> dict:
        """Learn from the entries (per model, those it has not learned yet), validate, publish or reject; then
        acknowledge them all."""
        fresh = {m: [(i, e) for i, e in entries if _id(i) > _id(self.learned_through(m))] for m in self.served()}
        result = {"events": len(entries), "already_learned": len(entries) - max(len(f) for f in fresh.values())}
        if any(fresh.values()):
            result.update(self.learn(fresh))
        if entries:
            self.r.xack(self.stream, GROUP, *[i for i, _ in entries])
        with open(self.root / "optimiser.jsonl", "a") as f:
            f.write(json.dumps({**result, "at": time.time()}) + "\n")
        return result

    def histories(self, fresh: list[tuple[str, dict]]) -> tuple[dict, dict]:
        """(user -> items before the round: the catalogue's sequence, then their events already in the stream,
        user -> the round's items), in item ids."""
        users = {e["user_id"] for _, e in fresh}
        before: dict[str, list[str]] = {u: list(self.data.sequences.get(u, [])) for u in users}
        for _, fields in self.r.xrange(self.stream, max="(" + fresh[0][0]):
            e = json.loads(fields[b"event"])
            if e["user_id"] in before:
                before[e["user_id"]].append(e["item_id"])
        inside: dict[str, list[str]] = {}
        for _, e in fresh:
            inside.setdefault(e["user_id"], []).append(e["item_id"])
        return before, inside

    def learn(self, fresh: dict[str, list[tuple[str, dict]]] | list[tuple[str, dict]]) -> dict:
        """One round for each model with entries it has not learned (a list: the same entries for every model):
        a candidate each, validated against the served one; the accepted ones are published together as one new
        version, each with the last stream id it learned. Held out: each user's last event of the round (the newest
        period), predicted from everything before it."""
        if isinstance(fresh, list):
            fresh = {m: fresh for m in self.models}
        verdict: dict = {"models": {}, "accepted": []}
        stage = self.root / "optimiser" / "stage"
        shutil.rmtree(stage, ignore_errors=True)
        histories: dict[tuple[str, str], tuple[dict, dict]] = {}  # read the stream once for models sharing entries
        for name, entries in fresh.items():
            if not entries:
                continue
            key = (entries[0][0], entries[-1][0])
            if key not in histories:
                histories[key] = self.histories(entries)
            before, inside = histories[key]
            figures, save = (self.learn_sasrec if name == "sasrec" else self.learn_gems)(before, inside)
            first, last = entries[0][0], entries[-1][0]
            figures.update(learned=len(entries), first_id=first, last_id=last)
            ok = (figures["newest_hr10"]["candidate"] >= figures["newest_hr10"]["served"] + self.min_gain
                  and all(figures[k]["candidate"] >= figures[k]["served"] - self.tolerance
                          for k in ("old_hr10", "search_hr10") if k in figures))  # the old tasks kept
            figures["accepted"] = ok
            verdict["models"][name] = figures
            if ok:
                out = stage / MODEL_DIRS[name]
                meta = read_meta(self.served_dir(name))
                save(out, events_through=last, events_from=first,
                     learned_events=meta.get("learned_events", 0) + len(entries),
                     update={k: v for k, v in figures.items() if k != "losses"})
                verdict["accepted"].append(name)
        if not verdict["accepted"]:
            verdict["served"] = str(served_version(self.base).name)
            return verdict
        new = publish_version(self.base, stage, [MODEL_DIRS[m] for m in verdict["accepted"]])
        if "gems" in verdict["accepted"]:  # the next round continues from it, without reloading it from disk
            self.gems.accept(self._gems_candidate, new / MODEL_DIRS["gems"])
        shutil.rmtree(stage.parent, ignore_errors=True)
        verdict["served"] = new.name
        return verdict

    def learn_sasrec(self, before: dict, inside: dict) -> tuple[dict, callable]:
        current_dir = self.served_dir("sasrec")
        model, ids = SASRec.from_dir(current_dir)
        index = {i: n + 1 for n, i in enumerate(ids)}
        before = {u: [index[i] for i in s if i in index] for u, s in before.items()}
        inside = {u: [index[i] for i in s if i in index] for u, s in inside.items()}
        inside = {u: s for u, s in inside.items() if s}
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
        figures = {"method": self.method, "held_out": len(held),
                   "newest_hr10": {"served": round(new_old, 4), "candidate": round(new_new, 4)},
                   "old_hr10": {"served": round(old_old, 4), "candidate": round(old_new, 4)}}

        def save(out: Path, **meta) -> None:
            candidate.save(out, ids)
            write_meta(out, **{**{k: v for k, v in read_meta(current_dir).items() if k != "built_at"}, **meta})

        return figures, save

    def learn_gems(self, before: dict, inside: dict) -> tuple[dict, callable]:
        """The served GEMS's recommendation subspace (training.evolve_gems.GEMSUpdater, --gems-method)."""
        served = self.served_dir("gems").resolve()
        if self.gems is None or self.gems.directory != served:  # first round, or a version published elsewhere
            from training.evolve_gems import GEMSUpdater

            old = [(e.history, e.target, e.query) for e in self.old]
            self.gems = GEMSUpdater(served, self.data_root, self.gems_cfg, self.gems_method, old)
        window = {u: (before[u], s[:-1]) for u, s in inside.items() if len(s) > 1}
        held = [((before[u] + s[:-1])[-200:], s[-1], self.data.query_for(u, s[-1])) for u, s in inside.items()
                if len(before[u]) + len(s) > 1]
        candidate, figures = self.gems.learn(window, held)
        self._gems_candidate = candidate
        return figures, lambda out, **meta: self.gems.save(candidate, out, **meta)

    def run(self, rounds: int | None = None, idle_exit_s: float | None = None,
            max_wait_s: float | None = None) -> list[dict]:
        """Rounds of `every` events until `rounds` were run (None: forever); a partial round is learned once its
        first event waited max_wait_s. With idle_exit_s, a partial round is learned once no event arrived for that
        long, and the loop ends when nothing is left."""
        results, seen, last_change, first_seen = [], 0, time.monotonic(), None
        while rounds is None or len(results) < rounds:
            if not self.served():  # none trained/published yet: wait for one
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
    p.add_argument("--models", default="sasrec", help="comma-separated recommenders to update: sasrec, gems (the "
                   "served GEMS's recommendation subspace, training.evolve_gems)")
    p.add_argument("--gems-method", default="jfa", choices=["naive", "replay", "jfa"])
    add_threads_arg(p, default=1)
    a = p.parse_args(argv)
    set_threads(a.threads)
    torch.manual_seed(0), random.seed(0)
    opt = Optimiser(redis.Redis.from_url(a.redis_url), a.stream, a.artifacts, a.data, a.every, a.method,
                    tolerance=a.tolerance, min_gain=a.min_gain, old_users=a.old_users,
                    cfg=replace(EvolveConfig(), update_epochs=a.update_epochs), models=tuple(a.models.split(",")),
                    gems_method=a.gems_method)
    opt.run(a.rounds, a.idle_exit_s, a.max_wait_s)


if __name__ == "__main__":
    main()
