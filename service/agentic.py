"""Agentic search behind the gateway: the EXSEARCH loop (models.exsearch.loop) as a service.

Which model: the EM-trained agent at <artifacts>/agent (meta.json names the round checkpoint; it runs without
the worked example), else the base LM (UNISR_LM or the prepared SmolLM2) with the few-shot prompt, reported as
"untrained". The search tool is the BM25 retriever over the multi-hop corpus (<artifacts>/retrieve/bm25).

Budget: one model step (a generated action) costs `step_ms`, measured at warm-up and then tracked as a moving
average. A hop is a Search and a Record (two steps); the answer is one. `plan` gives the hops a budget affords:
hops = min(max_hops, floor((budget - step_ms) / (2 step_ms))); the loop also stops searching when the budget's
time (less one answer step) is spent. A budget below one step cannot answer: the gateway returns BM25 passages
for the question, degraded, and says so. One generation runs at a time (the LM uses every core).

Model size (issue #18): with `UNISR_AGENT_STUDENT=true` the service also holds the Low-Rank Clone student of the
agent's LM (`python -m training.train_lrc --agent <artifacts>/agent` -> <artifacts>/agent/student, models/lrc.py),
with its own measured step cost. `plan` picks the largest model whose answer step fits the budget (teacher, then
student), then the most hops that model affords; the response's `model` says which answered.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from models.backend import Request
from models.exsearch.loop import AgentConfig, SearchAgent, Trace, load_served
from models.exsearch.loop import looks_like_question as looks_like_question  # the gateway's mode=auto rule

log = structlog.get_logger("unisr.agentic")


@dataclass
class Plan:
    hops: int
    stop_at: float | None  # time.monotonic() after which the loop stops searching and answers
    size: str = "teacher"  # the model that runs: "teacher" or "student"


@dataclass
class AgentModel:
    """One LM the agent can run (the teacher or its Low-Rank Clone student) and its measured cost per step."""

    size: str
    name: str
    agent: SearchAgent
    step_ms: float = 1500.0


class AgentService:
    def __init__(self, agent: SearchAgent, retriever, model_name: str, trained: bool, step_ms: float = 1500.0,
                 student: AgentModel | None = None):
        self.retriever, self.trained = retriever, trained
        self.models = {"teacher": AgentModel("teacher", model_name, agent, step_ms)}
        if student is not None:
            self.models["student"] = student
        self._lock = threading.Lock()

    # the teacher's figures, as before the student existed
    @property
    def agent(self) -> SearchAgent:
        return self.models["teacher"].agent

    @property
    def model_name(self) -> str:
        return self.models["teacher"].name

    @property
    def step_ms(self) -> float:
        return self.models["teacher"].step_ms

    @step_ms.setter
    def step_ms(self, value: float) -> None:
        self.models["teacher"].step_ms = value

    @property
    def cheapest_step_ms(self) -> float:
        return min(m.step_ms for m in self.models.values())

    @classmethod
    def load(cls, artifacts: Path, data_dir: Path, lm_path: str | None = None, retriever=None,
             student: bool = False) -> AgentService:
        """retriever: the engine's BM25 backend when it has one (else loaded from artifacts); student: also hold
        <artifacts>/agent/student when it is the clone of the LM loaded here."""

        from indexing.data import load_multihop
        from models.registry import load_backend

        retriever = retriever or load_backend(artifacts, "retrieve", "bm25")
        passages = load_multihop(data_dir / "strategyqa")
        agent_dir = artifacts / "agent"
        model, tok, config, teacher_id, meta = load_served(agent_dir, lm_path)
        trained = meta is not None
        name = (f"{agent_dir.name}/{meta['model']} (EM-trained)" if trained else
                f"{Path(lm_path).name if lm_path else 'smollm2-135m-instruct'} (untrained, few-shot)")
        clone = None
        if student:
            clone = load_student(agent_dir / "student", teacher_id, retriever, passages, config)
        return cls(SearchAgent(model, tok, retriever, passages, config), retriever, name, trained, student=clone)

    @property
    def max_hops(self) -> int:
        return self.agent.config.max_hops

    def warm_up(self) -> float:
        """Measure each model's cost per step on one question; the teacher's."""
        for m in self.models.values():
            trace = self.run("Is water wet?", Plan(hops=1, stop_at=None, size=m.size))
            steps = max(1, sum(1 for s in trace.steps if s.gen_ms > 0))
            m.step_ms = sum(s.gen_ms + s.retrieve_ms for s in trace.steps) / steps
            log.info("agent_warm_up", step_ms=round(m.step_ms, 1), model=m.name, size=m.size)
        return self.step_ms

    def plan(self, budget_ms: float, start: float) -> Plan | None:
        """The largest model whose answer step fits the budget, with the hops it affords; None when no model's
        does."""
        for m in self.models.values():  # teacher first
            if budget_ms >= m.step_ms:
                hops = min(self.max_hops, int((budget_ms - m.step_ms) // (2 * m.step_ms)))
                return Plan(hops, start + (budget_ms - m.step_ms) / 1000.0, m.size)
        return None

    def run(self, question: str, plan: Plan, on_step=None) -> Trace:
        m = self.models[plan.size]
        with self._lock:
            trace = m.agent.run(question, max_hops=plan.hops, on_step=on_step, stop_at=plan.stop_at)
        steps = [s for s in trace.steps if s.gen_ms > 0]
        if steps:  # keep the cost model current: a moving average of the time per step
            m.step_ms = 0.8 * m.step_ms + 0.2 * sum(s.gen_ms + s.retrieve_ms for s in steps) / len(steps)
        return trace

    def describe(self) -> dict:
        """/readyz's view: the teacher's model, cost and hop limit, and each model held."""
        return {"model": self.model_name, "trained": self.trained, "step_ms": round(self.step_ms, 1),
                "max_hops": self.max_hops,
                "models": [{"size": m.size, "model": m.name, "step_ms": round(m.step_ms, 1)}
                           for m in self.models.values()]}


def load_student(directory: Path, teacher_id: str, retriever, passages, config: AgentConfig) -> AgentModel | None:
    """The Low-Rank Clone student of the agent's LM (training.train_lrc --agent), or None (logged) when it is missing
    or was cloned from another LM than the one served (e.g. the agent was retrained since)."""
    from models.artifacts import read_meta
    from models.causal_lm import fast_dtype, load_causal_lm

    if not (directory / "meta.json").exists():
        log.warning("agent_student_missing", directory=str(directory),
                    hint="python -m training.train_lrc --agent " + str(directory.parent))
        return None
    meta = read_meta(directory)
    if meta.get("agent_teacher") != teacher_id:
        log.warning("agent_student_stale", directory=str(directory), cloned_from=meta.get("agent_teacher"),
                    serving=teacher_id)
        return None
    model, tok = load_causal_lm(directory / meta.get("lm", "model"), dtype=fast_dtype())
    name = f"{directory.parent.name}/{directory.name} (Low-Rank Clone of {teacher_id}, {meta['params'] / 1e6:.1f}M)"
    return AgentModel("student", name, SearchAgent(model, tok, retriever, passages, config))


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
                        f"the agent needs ~{service.cheapest_step_ms:.0f} ms for even one step (the answer), over the "
                        f"{budget_ms:g} ms budget; returned BM25 passages without an answer")
    trace = service.run(question, plan, on_step=on_step)
    evidence = [{"text": e.text, "doc_id": e.doc_id, **{k: v for k, v in _result(entries, e.doc_id, 0.0).items()
                                                      if k in ("title", "snippet")}} for e in trace.evidence]
    return {"answer": trace.answer, "evidence": evidence, "trace": [step_view(s) for s in trace.steps],
            "results": [_result(entries, d, 0.0) for d in trace.retrieved_ids], "hops": trace.hops,
            "max_hops": plan.hops, "stop_reason": trace.stop_reason, "model": service.models[plan.size].name,
            "took_ms": (time.monotonic() - start) * 1000, "latency_budget_ms": budget_ms, "degraded": False,
            "degraded_reason": None}


def load_agent(settings, retriever=None):
    """The agentic-search service for settings (service.settings.Settings), or None (mode=agentic then answers 503)
    when it is off or cannot load."""
    if not settings.agent:
        return None
    try:
        agent = AgentService.load(settings.artifacts_dir, settings.data_dir, settings.agent_lm, retriever,
                                  student=settings.agent_student)
    except (FileNotFoundError, OSError, ImportError) as e:
        log.warning("agent_unavailable", error=str(e))
        return None
    if settings.warmup:
        agent.warm_up()
    return agent
