"""Prometheus metrics of the gateway (exposed at /metrics)."""
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("unisr_requests_total", "Requests answered", ["endpoint", "backend", "status"])
LATENCY = Histogram("unisr_request_latency_seconds", "End-to-end request latency", ["endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CACHE = Counter("unisr_cache_total", "Response cache lookups", ["result"])  # hit / miss / error
BUDGET = Counter("unisr_budget_total", "Requests inside (hit) or over (miss) their latency budget", ["task", "result"])
REFUSED = Counter("unisr_refused_total", "Requests refused at once: 429 over the in-flight limit, 503 when even the "
                  "fallback cannot fit the budget", ["task", "reason"])
FALLBACKS = Counter("unisr_fallbacks_total", "Requests served by a cheaper backend", ["task", "requested", "served"])
BACKEND_COST = Gauge("unisr_backend_cost_ms", "Warm-up cost estimate per request", ["task", "backend"])
BATCH_SIZE = Histogram("unisr_batch_size", "Requests per backend call of the micro-batcher", ["task", "backend"],
                       buckets=(1, 2, 4, 8, 16, 32, 64))
EVENTS = Counter("unisr_events_total", "Interaction events acknowledged", ["store", "result"])  # new / duplicate
EVENTS_PENDING = Gauge("unisr_events_pending_replay", "Events in the local log waiting for Redis")
RELOADS = Counter("unisr_reloads_total", "Hot reloads of the engine", ["result"])
