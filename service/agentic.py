"""Agentic search behind the gateway: the EXSEARCH loop (models.exsearch.loop) as a service.

Which model: the EM-trained agent at <artifacts>/agent (meta.json names the round checkpoint; it runs without
the worked example), else the base LM (UNISR_LM or the prepared SmolLM2) with the few-shot prompt, reported as
"untrained". The search tool is the BM25 retriever over the multi-hop corpus (<artifacts>/retrieve/bm25).

Budget: one model step (a generated action) costs `step_ms`, measured at warm-up and then tracked as a moving
average. A hop is a Search and a Record (two steps); the answer is one. `plan` gives the hops a budget affords:
hops = min(max_hops, floor((budget - step_ms) / (2 step_ms))); the loop also stops searching when the budget's
time (less one answer step) is spent. A budget below one step cannot answer: the gateway returns BM25 passages
for the question, degraded, and says so. One generation runs at a time (the LM uses every core).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from models.backend import Request
from models.exsearch.loop import AgentConfig, SearchAgent, Trace, load_trained
from models.exsearch.loop import looks_like_question as looks_like_question  # the gateway's mode=auto rule

log = structlog.get_logger("unisr.agentic")


@dataclass
class Plan:
    hops: int
    stop_at: float | None  # time.monotonic() after which the loop stops searching and answers


class AgentService:
    def __init__(self, agent: SearchAgent, retriever, model_name: str, trained: bool, step_ms: float = 1500.0):
        self.agent, self.retriever, self.model_name, self.trained = agent, retriever, model_name, trained
        self.step_ms = step_ms
        self._lock = threading.Lock()

    @classmethod
    def load(cls, artifacts: Path, data_dir: Path, lm_path: str | None = None, retriever=None) -> AgentService:
        """retriever: the engine's BM25 backend when it has one (else loaded from artifacts)."""

        from indexing.data import load_multihop
        from models.causal_lm import fast_dtype, load_causal_lm
        from models.registry import load_backend

        retriever = retriever or load_backend(artifacts, "retrieve", "bm25")
        passages = load_multihop(data_dir / "strategyqa")
        agent_dir = artifacts / "agent"
        if lm_path is None and (agent_dir / "meta.json").exists():
            model, tok, config, meta = load_trained(agent_dir)
            name, trained = f"{agent_dir.name}/{meta['model']} (EM-trained)", True
        else:
            model, tok = load_causal_lm(lm_path, dtype=fast_dtype())
            config = AgentConfig(few_shot=True)
            name, trained = f"{Path(lm_path).name if lm_path else 'smollm2-135m-instruct'} (untrained, few-shot)", False
        return cls(SearchAgent(model, tok, retriever, passages, config), retriever, name, trained)

    @property
    def max_hops(self) -> int:
        return self.agent.config.max_hops

    def warm_up(self) -> float:
        trace = self.run("Is water wet?", Plan(hops=1, stop_at=None))
        steps = max(1, sum(1 for s in trace.steps if s.gen_ms > 0))
        self.step_ms = sum(s.gen_ms + s.retrieve_ms for s in trace.steps) / steps
        log.info("agent_warm_up", step_ms=round(self.step_ms, 1), model=self.model_name)
        return self.step_ms

    def plan(self, budget_ms: float, start: float) -> Plan | None:
        """None when the budget cannot pay for even the answer step."""
        if budget_ms < self.step_ms:
            return None
        hops = min(self.max_hops, int((budget_ms - self.step_ms) // (2 * self.step_ms)))
        return Plan(hops, start + (budget_ms - self.step_ms) / 1000.0)

    def run(self, question: str, plan: Plan, on_step=None) -> Trace:
        with self._lock:
            trace = self.agent.run(question, max_hops=plan.hops, on_step=on_step, stop_at=plan.stop_at)
        steps = [s for s in trace.steps if s.gen_ms > 0]
        if steps:  # keep the cost model current: a moving average of the time per step
            self.step_ms = 0.8 * self.step_ms + 0.2 * sum(s.gen_ms + s.retrieve_ms for s in steps) / len(steps)
        return trace


# ------------------------------------------------------------------ responses (JSON and server-sent events)
def step_view(step) -> dict:
    a = step.action
    return {"kind": a.kind if a else None, "text": a.text if a else step.raw.strip(), "doc_id": a.doc_id if a else None,
            "retrieved": list(step.retrieved), "error": step.error, "forced": step.forced,
            "ms": round(step.gen_ms + step.retrieve_ms, 2)}


def _result(catalog_entries: dict, doc_id: str, score: float) -> dict:
    e = catalog_entries.get(doc_id)
    return {"id": doc_id, "title": e.title if e else doc_id, "snippet": e.snippet if e else "", "score": score}


def degraded(hits, entries: dict, budget_ms: float, start: float, reason: str) -> dict:
    """No answer: the cheapest retriever's passages for the question, and why."""
    return {"answer": None, "evidence": [], "trace": [], "hops": 0, "max_hops": 0, "stop_reason": "degraded",
            "results": [_result(entries, h.id, h.score) for h in hits], "model": "none",
            "took_ms": (time.monotonic() - start) * 1000, "latency_budget_ms": budget_ms, "degraded": True,
            "degraded_reason": reason}


def response(service: AgentService, question: str, budget_ms: float, start: float, entries: dict,
             on_step=None) -> dict:
    """Run the agent for one question within the budget; the AgenticResponse as a dict."""
    plan = service.plan(budget_ms, start)
    if plan is None:
        hits = service.retriever.answer([Request("retrieve", query=question, k=service.agent.config.k)])[0].hits
        return degraded(hits, entries, budget_ms, start,
                        f"the agent needs ~{service.step_ms:.0f} ms for even one step (the answer), over the "
                        f"{budget_ms:g} ms budget; returned BM25 passages without an answer")
    trace = service.run(question, plan, on_step=on_step)
    evidence = [{"text": e.text, "doc_id": e.doc_id, **{k: v for k, v in _result(entries, e.doc_id, 0.0).items()
                                                      if k in ("title", "snippet")}} for e in trace.evidence]
    return {"answer": trace.answer, "evidence": evidence, "trace": [step_view(s) for s in trace.steps],
            "results": [_result(entries, d, 0.0) for d in trace.retrieved_ids], "hops": trace.hops,
            "max_hops": plan.hops, "stop_reason": trace.stop_reason, "model": service.model_name,
            "took_ms": (time.monotonic() - start) * 1000, "latency_budget_ms": budget_ms, "degraded": False,
            "degraded_reason": None}


def load_agent(settings, retriever=None):
    """The agentic-search service for settings (service.settings.Settings), or None (mode=agentic then answers 503)
    when it is off or cannot load."""
    if not settings.agent:
        return None
    try:
        agent = AgentService.load(settings.artifacts_dir, settings.data_dir, settings.agent_lm, retriever)
    except (FileNotFoundError, OSError, ImportError) as e:
        log.warning("agent_unavailable", error=str(e))
        return None
    if settings.warmup:
        agent.warm_up()
    return agent
