"""Request and response schemas of the gateway."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ResultItem(BaseModel):
    id: str
    title: str
    snippet: str
    score: float


class RankedResponse(BaseModel):
    results: list[ResultItem]
    backend: str = Field(description="the backend that produced the results")
    requested_backend: str
    config: dict = Field(description="the configuration the backend used")
    took_ms: float = Field(description="gateway time for this request")
    latency_budget_ms: float
    degraded: bool = Field(description="true when a cheaper backend answered instead of the requested one")
    degraded_reason: str | None = None
    cached: bool = False
    cold_start: bool = Field(False, description="recommendation for a user with no known history")


class RecommendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(None, max_length=128)
    history: list[str] = Field(default_factory=list, max_length=1000,
                               description="item ids the user interacted with, oldest first")
    k: int = Field(10, ge=1, le=100)
    latency_budget_ms: float | None = Field(None, gt=0, le=60_000)
    backend: str | None = None


class Health(BaseModel):
    status: str
    detail: dict = {}
