"""Locust user for the UniSR gateway: /search, /recommend (GET and POST), /retrieve and POST /events.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000            # web UI
    python -m loadtest.run --users 10 --spawn-rate 5 --run-time 30s          # headless, with a summary table

Every ranked response must be HTTP 200 with the ranked-response JSON shape; an event must be acknowledged
(201, or 200 with "duplicate": true for a deliberately repeated key); anything else is a failure.
Requests share one stats name per endpoint (the method tells GET and POST /recommend apart).
Each ranked response also counts as inside its budget (took_ms <= latency_budget_ms and not degraded),
degraded (a cheaper backend answered), late (took_ms over the budget) or refused (429 / 503 with Retry-After: the
gateway's documented answer when it cannot take the request in time; not a failure);
the counts are written to <csv prefix>_budget.json at the end (loadtest/run.py prints them).
"""
from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict

import gevent
from locust import HttpUser, between, events, task
from locust.stats import CSV_STATS_INTERVAL_SEC

SEARCH_QUERIES = [
    "animation comedy 1990s", "action thriller 1990s", "drama romance 1950s", "drama 1990s",
    "comedy romance 1990s", "documentary 1990s", "horror 1990s", "sci-fi action 1980s",
    "children's comedy 1990s", "western 1960s", "film-noir thriller 1940s", "musical romance 1950s",
    "war drama 1970s", "toy story", "star wars", "godfather",
]
RETRIEVE_QUERIES = [
    "Would a pear sink in water?", "Do hamsters provide food for any animals?",
    "Is it common to see frost during some college commencements?", "Are all limbs required for jujutsu?",
    "Does Linus Torvalds make money off of DirectX?", "Are hippos dangerous to humans?",
    "Can you swim to Miami from New York?", "Has every astronaut survived their space journey?",
    "Would Alexander Hamilton have known about koalas?", "Did Doctor Strange creators also make Batman?",
    "Hydrogen's atomic number squared exceeds number of Spice Girls?", "Is Menthol associated with Thanksgiving?",
]
SEARCH_BACKENDS = ["bm25", "dense"]
RECOMMEND_BACKENDS = ["popularity", "cooc", "sasrec"]
RETRIEVE_BACKENDS = ["bm25", "dense", "diffugr"]
KS = [5, 10, 20]
N_USERS = 943    # MovieLens-100k user ids "1".."943"
N_ITEMS = 1682   # MovieLens-100k item ids "1".."1682"

RESPONSE_KEYS = {"results", "backend", "requested_backend", "config", "took_ms", "latency_budget_ms",
                 "degraded", "degraded_reason", "cached", "cold_start"}
RESULT_KEYS = {"id", "title", "snippet", "score"}


def shape_error(body, k: int) -> str | None:
    """Why `body` is not a ranked response of at most k results; None when it is."""
    if not isinstance(body, dict):
        return f"body is {type(body).__name__}, not an object"
    missing = RESPONSE_KEYS - body.keys()
    if missing:
        return f"missing keys {sorted(missing)}"
    results = body["results"]
    if not isinstance(results, list):
        return "results is not a list"
    if len(results) > k:
        return f"{len(results)} results for k={k}"
    for r in results:
        if not isinstance(r, dict) or RESULT_KEYS - r.keys():
            return f"bad result item {str(r)[:80]}"
        if not isinstance(r["score"], (int, float)) or not isinstance(r["id"], str):
            return f"bad id/score types in {str(r)[:80]}"
    if not isinstance(body["degraded"], bool) or not isinstance(body["took_ms"], (int, float)):
        return "bad degraded/took_ms types"
    return None


def maybe_budget() -> float | None:
    """About a third of the requests carry a latency budget, some of them tight."""
    if random.random() < 0.35:
        return random.choice([20.0, 50.0, 100.0, 250.0, 1000.0])
    return None


def maybe_backend(choices: list[str]) -> str | None:
    """Half the requests name a backend, the others take the gateway's default."""
    return random.choice(choices) if random.random() < 0.5 else None


def params(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


_ENV: dict = {}
BUDGET: dict[str, dict[str, int]] = defaultdict(lambda: {"inside": 0, "degraded": 0, "late": 0, "refused": 0})
EVENT_TYPES = ["click", "view", "rate", "purchase"]


@events.init.add_listener
def _remember_environment(environment, **_kw) -> None:
    _ENV["env"] = environment


@events.quit.add_listener
def _final_csv_write(**_kw) -> None:
    """Locust's CSV writer rewrites the stats files every CSV_STATS_INTERVAL_SEC and does not write them once
    more at shutdown, so the files can miss the last second of requests. The quit event fires after the run
    has stopped; yielding here for one interval lets the writer record the final numbers."""
    opts = getattr(_ENV.get("env"), "parsed_options", None)
    if opts is not None and getattr(opts, "csv_prefix", None):
        with open(f"{opts.csv_prefix}_budget.json", "w") as f:
            json.dump(BUDGET, f, indent=1)
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.5)


class GatewayUser(HttpUser):
    wait_time = between(0.05, 0.5)

    def _check(self, resp, k: int) -> None:
        name = f"{resp.request.method} {resp.request.path_url.split('?')[0]}"
        if resp.status_code in (429, 503) and resp.headers.get("Retry-After"):
            # the gateway's documented refusal (over the in-flight limit, or even the fallback cannot fit the
            # budget): not a failure, counted apart; a client would retry after Retry-After
            resp.success()
            BUDGET[name]["refused"] += 1
            return
        if resp.status_code != 200:
            resp.failure(f"HTTP {resp.status_code}: {' '.join(resp.text[:300].split())[:160]}")
            return
        try:
            body = resp.json()
        except ValueError as e:
            resp.failure(f"not JSON: {e}")
            return
        err = shape_error(body, k)
        if err:
            resp.failure(err)
        else:
            resp.success()
            late = body["took_ms"] > body["latency_budget_ms"]
            BUDGET[name]["degraded" if body["degraded"] else "late" if late else "inside"] += 1

    @task(4)
    def search(self) -> None:
        k = random.choice(KS)
        user = str(random.randint(1, N_USERS)) if random.random() < 0.3 else None
        p = params(q=random.choice(SEARCH_QUERIES), user_id=user, k=k, latency_budget_ms=maybe_budget(),
                   backend=maybe_backend(SEARCH_BACKENDS))
        with self.client.get("/search", params=p, name="/search", catch_response=True) as resp:
            self._check(resp, k)

    @task(3)
    def recommend_get(self) -> None:
        k = random.choice(KS)
        p = params(user_id=str(random.randint(1, N_USERS)), k=k, latency_budget_ms=maybe_budget(),
                   backend=maybe_backend(RECOMMEND_BACKENDS))
        with self.client.get("/recommend", params=p, name="/recommend", catch_response=True) as resp:
            self._check(resp, k)

    @task(2)
    def recommend_post(self) -> None:
        k = random.choice(KS)
        history = [str(i) for i in random.sample(range(1, N_ITEMS + 1), random.randint(1, 20))]
        body = {"user_id": str(random.randint(1, N_USERS)) if random.random() < 0.5 else None,
                "history": history, "k": k, "latency_budget_ms": maybe_budget(),
                "backend": maybe_backend(RECOMMEND_BACKENDS)}
        with self.client.post("/recommend", json=body, name="/recommend", catch_response=True) as resp:
            self._check(resp, k)

    @task(3)
    def retrieve(self) -> None:
        k = random.choice(KS)
        backend = maybe_backend(RETRIEVE_BACKENDS)
        steps = random.choice([None, 1, 2, 4]) if backend == "diffugr" else None  # denoising steps, or by budget
        p = params(q=random.choice(RETRIEVE_QUERIES), k=k, latency_budget_ms=maybe_budget(), backend=backend,
                   steps=steps)
        with self.client.get("/retrieve", params=p, name="/retrieve", catch_response=True) as resp:
            self._check(resp, k)

    @task(2)
    def post_event(self) -> None:
        repeat = random.random() < 0.1 and getattr(self, "_last_key", None)
        key = self._last_key if repeat else f"lt-{uuid.uuid4().hex}"
        body = {"user_id": str(random.randint(1, N_USERS)), "item_id": str(random.randint(1, N_ITEMS)),
                "event_type": random.choice(EVENT_TYPES), "idempotency_key": key}
        if repeat:
            body.update(self._last_body)
        with self.client.post("/events", json=body, name="/events", catch_response=True) as resp:
            expected = 200 if repeat else 201
            if resp.status_code != expected:
                resp.failure(f"HTTP {resp.status_code} (expected {expected}): {resp.text[:160]}")
            elif resp.json().get("duplicate") is not bool(repeat):
                resp.failure(f"duplicate flag wrong for a {'repeated' if repeat else 'new'} key")
            else:
                resp.success()
                if not repeat:
                    self._last_key, self._last_body = key, body
