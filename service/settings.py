"""Gateway settings: environment variables (UNISR_*), an optional env file (UNISR_ENV_FILE, default
unisr.env), defaults below."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNISR_", env_file=os.environ.get("UNISR_ENV_FILE", "unisr.env"),
                                      extra="ignore")

    artifacts_dir: Path = Path("artifacts/v1")
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    default_latency_budget_ms: int = Field(500, ge=1, le=60_000)
    max_k: int = Field(100, ge=1)
    max_query_chars: int = Field(512, ge=1)
    default_backends: dict[str, str] = {"search": "bm25", "recommend": "sasrec", "retrieve": "dense"}
    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0 ; unset: in-process LRU cache
    redis_timeout_s: float = 0.2
    cache_size: int = 10_000
    cache_ttl_s: int = 300
    warmup: bool = True
    log_level: str = "INFO"
    log_json: bool = True
