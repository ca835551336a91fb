"""Gateway settings: environment variables (UNISR_*), an optional env file (UNISR_ENV_FILE, default
unisr.env), defaults below. Paths and model choices shared with the offline pipelines come from
models.settings.RuntimeSettings, which this extends: one settings object, the only reader of UNISR_*."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from models.settings import RuntimeSettings


class Settings(RuntimeSettings):
    host: str = "127.0.0.1"
    port: int = 8000
    default_latency_budget_ms: int = Field(500, ge=1, le=60_000)
    max_k: int = Field(100, ge=1, le=100)  # the API documents k <= 100 (service/schemas.py); lower is allowed
    max_query_chars: int = Field(512, ge=1, le=512)  # the API documents 512 (service/ranked.py); lower is allowed
    default_backends: dict[str, str] = {"search": "bm25", "recommend": "sasrec", "retrieve": "dense"}
    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0 ; unset: in-process LRU cache
    redis_timeout_s: float = 0.2
    cache_size: int = 10_000
    cache_ttl_s: int = 300
    warmup: bool = True
    log_level: str = "INFO"
    log_json: bool = True
    # interaction events (POST /events): Redis stream when redis_url is set, else this append-only log; with
    # Redis the log holds the events written while Redis was down, replayed when it is back
    events_log: Path | None = None  # default: <data_dir>/events/events.log
    events_stream: str = "unisr:events"
    events_key_ttl_s: int = Field(30 * 86_400, ge=60)  # how long an idempotency key is remembered in Redis
    events_replay_interval_s: float = Field(1.0, gt=0)
    events_recent_per_user: int = Field(200, ge=1)  # latest events per user appended to their history
    # hot reload (POST /admin/reload): unset token = admin endpoints answer 403
    admin_token: str | None = None
    # the backends a task falls back to, best first, when the one asked for is not loaded (e.g. still training)
    substitutes: dict[str, list[str]] = {"search": ["bm25", "dense"], "recommend": ["cooc", "popularity"],
                                         "retrieve": ["dense", "bm25"]}
    # background training (service/jobs.py): run_jobs starts the runner with the gateway (`make serve` does); jobs
    # are run cheapest first; job_args are appended to a job's training command (e.g. {"sasrec": ["--epochs", "3"]}),
    # job_floors override acceptance floors (training/eval/expected.yaml). follow_versions: serve what
    # <artifacts root>/CURRENT names and swap in each version a runner publishes (polled every version_poll_s).
    run_jobs: bool = False
    jobs: list[str] = ["sasrec", "diffugr", "agent", "gems"]
    job_args: dict[str, list[str]] = {}
    job_floors: dict[str, float] = {}
    follow_versions: bool = True
    version_poll_s: float = Field(2.0, gt=0)
    # limits; max_concurrency: connections + tasks uvicorn admits before it answers 503 at once (python -m service)
    max_concurrency: int | None = Field(None, ge=1)
    # ranked requests (/search, /recommend, /retrieve) one process works on at once; beyond it 429 + Retry-After at
    # once (service.middleware.InFlightLimitMiddleware); None: no limit
    max_in_flight: int | None = Field(None, ge=1)
    # ... and this many more wait for a slot in arrival order (their wait counts against their budget)
    max_queued: int = Field(0, ge=0)
    # share of a request's budget kept for the gateway's own work (parsing, routing, the event loop) when a model
    # backend is planned and given its deadline; the fallback's cost is kept besides
    budget_margin: float = Field(0.15, ge=0, lt=1)
    fallback_threads: int = Field(4, ge=1)  # threads of the fallback backends (BM25, popularity), apart from the rest
    max_body_bytes: int = Field(64 * 1024, ge=1)
    cors_origins: list[str] = []  # empty: no CORS headers at all
    # dynamic micro-batching in front of model backends (an empty list turns it off)
    batch_backends: list[str] = ["dense", "sasrec", "diffugr", "ar"]
    batch_max_size: int = Field(16, ge=1)
    batch_max_wait_ms: float = Field(2.0, ge=0)

    # agentic search (GET /search?mode=agentic): the EXSEARCH agent; UNISR_AGENT_LM: any local HF causal LM
    agent: bool = True  # load the agent at start-up (a few seconds, ~0.5 GB)
    agent_lm: str | None = None  # default: the EM-trained agent under <artifacts>/agent, else the base LM
    # also hold the agent LM's Low-Rank Clone student (<artifacts>/agent/student) for budgets the teacher does not fit
    agent_student: bool = False
    agent_latency_budget_ms: int = Field(20_000, ge=1, le=60_000)  # default budget of agentic requests

    @property
    def backend_options(self) -> dict[str, dict]:
        """What each backend's `load` is handed from the settings (backends never read the environment)."""
        return {"gems": {"engine": self.gems_engine, "server_url": self.vllm_url, "student": self.gems_student}}

    @property
    def events_log_path(self) -> Path:
        return self.events_log or self.data_dir / "events" / "events.log"
