"""Prometheus metrics of the gateway (exposed at /metrics)."""
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("unisr_requests_total", "Requests answered", ["endpoint", "backend", "status"])
LATENCY = Histogram("unisr_request_latency_seconds", "End-to-end request latency", ["endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CACHE = Counter("unisr_cache_total", "Response cache lookups", ["result"])  # hit / miss / error
BUDGET = Counter("unisr_budget_total", "Requests inside (hit) or over (miss) their latency budget", ["task", "result"])
FALLBACKS = Counter("unisr_fallbacks_total", "Requests served by a cheaper backend", ["task", "requested", "served"])
BACKEND_COST = Gauge("unisr_backend_cost_ms", "Warm-up cost estimate per request", ["task", "backend"])
