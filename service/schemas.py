"""Request and response schemas of the gateway."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from service.settings import Settings

MAX_K = Settings.model_fields["max_k"].default  # the documented bound of k; UNISR_MAX_K may lower it


class ResultItem(BaseModel):
    id: str
    title: str
    snippet: str
    score: float
    collab_info: float | None = Field(None, description="with explain=true (/recommend): the collaborative "
                                      "information CI(history, item), the mean over the user's history items h of "
                                      "P(item | h) from training co-occurrence; 0 = no history item ever "
                                      "co-occurred with it")


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
    k: int = Field(10, ge=1, le=MAX_K)
    latency_budget_ms: float | None = Field(None, gt=0, le=60_000)
    backend: str | None = None
    explain: StrictBool = Field(False, description="add each result's collaborative information (collab_info)")


class Health(BaseModel):
    status: str
    detail: dict = {}


class EventBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(..., min_length=1, max_length=128)
    item_id: str = Field(..., min_length=1, max_length=128, description="a catalogue item id")
    event_type: Literal["click", "view", "rate", "purchase"]
    timestamp: float | None = Field(None, ge=0, le=32_503_680_000,
                                    description="unix seconds; default: when the gateway receives it")
    rating: float | None = Field(None, ge=0, le=10, description="for event_type=rate")
    idempotency_key: str = Field(..., min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$",
                                 description="a client-chosen unique key: a repeat is acknowledged, not stored")


class EventAck(BaseModel):
    status: str = "stored"
    duplicate: bool
    store: str = Field(description="redis | log (the local log; replayed to Redis later when Redis is set)")
    event_id: str = Field("", description="the Redis stream id or log:<offset>; empty for a duplicate")


class ReloadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artifacts_dir: str | None = Field(None, max_length=4096, description="default: the current directory")


class ReloadResult(BaseModel):
    version: str
    artifacts_dir: str
    previous_artifacts_dir: str
    backends: dict[str, list[str]]
    seconds: float


class Job(BaseModel):
    name: str
    state: str
    summary: str
    progress: dict | None = None
    validation: dict | None = None
    version: str | None = None
    error: str | None = None
    log: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    seconds: float | None = None


class JobsStatus(BaseModel):
    serving: str  # the artifacts version the engine serves now
    jobs: list[Job]


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong, in words")
    errors: list[FieldError] | None = Field(None, description="one entry per invalid field (422 only)")


ERRORS = {code: {"model": ErrorResponse, "description": text} for code, text in [
    (400, "a semantic error, e.g. an unknown backend (the message lists the available ones)"),
    (413, "request body over the configured limit (UNISR_MAX_BODY_BYTES)"),
    (422, "invalid input: the message names the field"),
    (429, "over the process's in-flight limit and queue (UNISR_MAX_IN_FLIGHT, UNISR_MAX_QUEUED): retry after "
          "Retry-After seconds"),
    (503, "overloaded: even the fallback cannot answer within the budget (Retry-After), or the process is starting")]}


class AgentStep(BaseModel):
    kind: str | None = Field(description="think | search | record | answer; null for a step that did not parse")
    text: str = Field(description="the action's payload, or the model's raw text for a malformed step")
    doc_id: str | None = Field(None, description="the cited document (record)")
    retrieved: list[str] = Field(default_factory=list, description="document ids a search returned")
    error: str | None = Field(None, description="why the step was rejected (parse error, hop limit)")
    forced: bool = Field(False, description="the answer was forced (hop limit, budget or step limit)")
    ms: float


class EvidenceItem(BaseModel):
    text: str = Field(description="the evidence the agent recorded")
    doc_id: str
    title: str
    snippet: str = Field(description="the source document's text")


class AgenticResponse(BaseModel):
    mode: Literal["agentic"] = "agentic"
    answer: str | None = Field(description="null when the budget was too small to run the agent")
    evidence: list[EvidenceItem]
    trace: list[AgentStep]
    results: list[ResultItem] = Field(default_factory=list, description="the documents the agent retrieved, or "
                                      "the fallback's passages when degraded")
    hops: int
    max_hops: int = Field(description="the hops the latency budget afforded")
    stop_reason: str = Field(description="answer | hop_limit | step_limit | parse_error | budget | degraded")
    model: str
    took_ms: float
    latency_budget_ms: float
    degraded: bool
    degraded_reason: str | None = None
