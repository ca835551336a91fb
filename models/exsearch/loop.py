"""EXSEARCH, part one: an agentic search loop (think -> search -> record evidence -> answer) over a retriever.

The language model writes one action per step in the format of `models.exsearch.actions`; the agent parses it,
runs searches against a retrieval backend, shows the top-k passages (with their ids) to the model, keeps the
evidence it records (only citing documents retrieved in this trace) and stops at an Answer or at the hop
limit, where it forces an answer by prompting "Answer:". `rag_answer` (retrieve once, then answer) and
`closed_book_answer` (no retrieval) are baselines with the same model and prompt style.

    model, tok = load_causal_lm()
    retriever = load_backend(Path("artifacts/v1"), "retrieve", "bm25")
    agent = SearchAgent(model, tok, retriever, load_multihop(Path("data/strategyqa")), AgentConfig())
    trace = agent.run("Is it common to see frost during some college commencements?")
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.backend import Request
from models.exsearch.actions import ANSWER, RECORD, SEARCH, THINK, Action, ActionParseError, parse_step


@dataclass
class AgentConfig:
    max_hops: int = 3  # searches per question; a Search beyond it forces the answer
    k: int = 3  # passages shown per search
    max_new_tokens: int = 40  # per step (generation also stops at the end of the line)
    answer_tokens: int = 8  # for forced and baseline answers
    steps_after_limit: int = 2  # Think/Record steps still allowed once the hop limit is reached
    max_passage_chars: int = 300
    yes_no: bool = True  # normalise answers of yes/no questions to "yes"/"no"
    few_shot: bool = True  # show the worked example; an EM-trained model knows the format without it
    temperature: float = 0.0  # 0: greedy; > 0: sample each step (the EM E-step)
    # calibrated yes/no: a yes/no question's answer is read from the LM's preference after "Answer:", "yes" iff
    # log P(yes) - log P(no) > yes_threshold (fitted on training questions: training.eval.agent.calibrate); None:
    # the generated answer
    yes_threshold: float | None = None


@dataclass
class Step:
    action: Action | None  # None when the output did not parse (or was rejected)
    raw: str  # the model's text for this step
    retrieved: list[str] = field(default_factory=list)  # doc ids a Search returned
    gen_ms: float = 0.0
    retrieve_ms: float = 0.0
    error: str | None = None  # parse error or rejection reason
    forced: bool = False  # the forced "Answer:" step
    executed: bool = True  # False for a Search refused at the hop limit and for rejected steps


@dataclass
class Evidence:
    text: str
    doc_id: str


@dataclass
class Trace:
    question: str
    steps: list[Step] = field(default_factory=list)
    answer: str = ""
    raw_answer: str = ""
    evidence: list[Evidence] = field(default_factory=list)
    hops: int = 0
    stop_reason: str = ""  # answer | hop_limit | step_limit | parse_error | budget
    answer_score: float | None = None  # log P(yes) - log P(no) when the answer was read from the preference
    total_ms: float = 0.0
    prompt: str = ""  # the instructions and question the model started from
    # the transcript after the prompt up to the answer: (text, written by the model?) — executed actions are the
    # model's, result blocks the retriever's; what EM trains on
    segments: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def context(self) -> str:
        """Prompt plus transcript: what the model saw before answering."""
        return self.prompt + "".join(text for text, _ in self.segments)

    @property
    def retrieved_ids(self) -> list[str]:
        seen: dict[str, None] = {}
        for s in self.steps:
            for d in s.retrieved:
                seen.setdefault(d, None)
        return list(seen)

    @property
    def parse_errors(self) -> int:
        return sum(1 for s in self.steps if s.error is not None and s.action is None)

    @property
    def forced_answer(self) -> bool:
        return any(s.forced for s in self.steps)


INSTRUCTIONS = """You answer questions by searching a collection of facts. Write one action per line:
Think: <reasoning>
Search: <search query>
Record: <a fact from a result> [doc:<id of that result>]
Answer: <yes or no>
After each Search the results are shown with their ids. Record only facts from results, citing their id.
"""

EXAMPLE = """Question: Could a llama give birth twice during the War in Vietnam (1945-46)?
Think: I need the length of the war and the gestation period of a llama.
Search: War in Vietnam 1945-46 duration
Results:
[doc:e0a1c2d3f41] The War in Vietnam (1945-46) lasted around 6 months.
[doc:e0b7d9a1c52] Vietnam is a country in Southeast Asia.
Record: The War in Vietnam (1945-46) lasted about 6 months. [doc:e0a1c2d3f41]
Search: llama gestation period
Results:
[doc:e0c4f8b2a63] The gestation period of a llama lasts 11.5 months.
Record: A llama's gestation lasts 11.5 months. [doc:e0c4f8b2a63]
Think: Two births take at least 23 months, longer than 6 months.
Answer: no
"""

BASELINE_HEADER = "Answer the question with yes or no.\n\n"
# balanced: one "yes" and one "no" example
BASELINE_EXAMPLE = """Question: Is the Eiffel Tower taller than the Statue of Liberty?
Answer: yes

Question: Could a llama give birth twice during the War in Vietnam (1945-46)?
Answer: no

"""
RAG_EXAMPLE = """Facts:
[doc:e0d2a7c9b14] The Eiffel Tower is 330 metres tall.
[doc:e0f3b8d0c25] The Statue of Liberty is 93 metres tall from the ground to the torch.
Question: Is the Eiffel Tower taller than the Statue of Liberty?
Answer: yes

Facts:
[doc:e0a1c2d3f41] The War in Vietnam (1945-46) lasted around 6 months.
[doc:e0c4f8b2a63] The gestation period of a llama lasts 11.5 months.
Question: Could a llama give birth twice during the War in Vietnam (1945-46)?
Answer: no

"""

# The one question vocabulary (the agent's yes/no rule here, the gateway's mode=auto routing in service.agentic):
# an auxiliary verb opens a yes/no question; with the wh-words, a question of any kind.
_AUXILIARIES = "is|are|was|were|do|does|did|can|could|would|will|should|has|have|had"
_YES_NO_START = re.compile(rf"^\s*({_AUXILIARIES}|shall|may|might|must|am)\b", re.I)
_QUESTION_START = re.compile(rf"^\s*({_AUXILIARIES}|who|what|when|where|which|why|how)\b", re.I)
_YES_NO_WORD = re.compile(r"\b(yes|no|true|false)\b", re.I)


def is_yes_no_question(question: str) -> bool:
    return bool(_YES_NO_START.match(question))


def looks_like_question(q: str) -> bool:
    """A question: ends with '?' or starts like one (the gateway sends these to the agent under mode=auto)."""
    return q.strip().endswith("?") or bool(_QUESTION_START.match(q))


def normalize_yes_no(answer: str) -> str | None:
    """'Yes, because ...' -> 'yes'; None when the text says neither."""
    m = _YES_NO_WORD.search(answer)
    if not m:
        return None
    return {"yes": "yes", "true": "yes", "no": "no", "false": "no"}[m.group(1).lower()]


class _StopAtLineEnd:
    """Stopping criterion: the new text holds a newline after some non-blank text (one action = one line)."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        new = input_ids[0, self.prompt_len:]
        if new.numel() == 0:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = self.tokenizer.decode(new[-1:], skip_special_tokens=True)
        done = "\n" in last and bool(self.tokenizer.decode(new, skip_special_tokens=True).strip())
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class SearchAgent:
    """The think/search/record/answer loop. retriever: a Backend with .answer([Request]) or a callable
    (query, k) -> list of doc ids; passages: an object with passage_text(id), a mapping id -> text, or a
    callable id -> text."""

    def __init__(self, lm, tokenizer, retriever, passages, config: AgentConfig | None = None):
        self.lm, self.tokenizer, self.retriever = lm, tokenizer, retriever
        self.config = config or AgentConfig()
        if hasattr(passages, "passage_text"):
            self._text: Callable[[str], str] = passages.passage_text
        elif callable(passages):
            self._text = passages
        else:
            self._text = passages.__getitem__
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._yes_no_ids = self._answer_token_ids()

    # ------------------------------------------------------------ model and retriever calls
    @torch.no_grad()
    def _generate(self, prompt: str, max_new_tokens: int) -> tuple[str, float]:
        from transformers import StoppingCriteriaList

        t0 = time.perf_counter()
        device = next(self.lm.parameters()).device
        enc = self.tokenizer(prompt, return_tensors="pt").to(device)
        n = enc["input_ids"].shape[1]
        sample = {"do_sample": True, "temperature": self.config.temperature, "top_k": 0, "top_p": 1.0} \
            if self.config.temperature > 0 else {"do_sample": False}
        out = self.lm.generate(**enc, max_new_tokens=max_new_tokens, num_beams=1, **sample,
                               pad_token_id=self.tokenizer.pad_token_id,
                               stopping_criteria=StoppingCriteriaList([_StopAtLineEnd(self.tokenizer, n)]))
        text = self.tokenizer.decode(out[0, n:], skip_special_tokens=True)
        return text, (time.perf_counter() - t0) * 1000

    def _answer_token_ids(self) -> tuple[list[int], list[int]]:
        def ids(words):
            out = []
            for w in words:
                toks = self.tokenizer.encode(w, add_special_tokens=False)
                if len(toks) == 1:
                    out.append(toks[0])
            return sorted(set(out))

        return ids([" yes", " Yes", "yes", "Yes"]), ids([" no", " No", "no", "No"])

    @torch.no_grad()
    def yes_no_score(self, prompt: str) -> float:
        """log P(yes) - log P(no) of the next token after prompt (the spellings of each summed)."""
        yes_ids, no_ids = self._yes_no_ids
        device = next(self.lm.parameters()).device
        enc = self.tokenizer(prompt, return_tensors="pt").to(device)
        logits = self.lm(**enc).logits[0, -1].float()
        yes = torch.logsumexp(logits[yes_ids], 0) if yes_ids else torch.tensor(float("-inf"))
        no = torch.logsumexp(logits[no_ids], 0) if no_ids else torch.tensor(float("-inf"))
        return float(yes - no)

    def _yes_no_by_score(self, prompt: str) -> str:
        """Fallback for a yes/no question whose generated answer says neither: compare next-token scores."""
        return "yes" if self.yes_no_score(prompt) >= 0 else "no"

    def by_preference(self, question: str) -> bool:
        """Whether this question's answer is read from the calibrated yes/no preference."""
        cfg = self.config
        return cfg.yes_threshold is not None and cfg.yes_no and is_yes_no_question(question)

    def _preferred(self, prompt: str) -> tuple[str, float]:
        score = self.yes_no_score(prompt)
        return ("yes" if score > self.config.yes_threshold else "no"), score

    def retrieve(self, query: str, k: int) -> list[str]:
        """The retriever's top-k doc ids for query (what a Search step and RAG see)."""
        return self._retrieve(query, k)

    def _retrieve(self, query: str, k: int) -> list[str]:
        if hasattr(self.retriever, "answer"):
            return [h.id for h in self.retriever.answer([Request("retrieve", query=query, k=k)])[0].hits]
        return list(self.retriever(query, k))[:k]

    def passage(self, doc_id: str) -> str:
        """A passage as the model is shown it: whitespace collapsed, clipped to max_passage_chars."""
        text = " ".join(self._text(doc_id).split())
        limit = self.config.max_passage_chars
        return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."

    def results_block(self, doc_ids: list[str]) -> str:
        """The block a Search shows the model: one '[doc:<id>] <passage>' line per result."""
        lines = [f"[doc:{d}] {self.passage(d)}" for d in doc_ids] or ["(no results)"]
        return "Results:\n" + "\n".join(lines) + "\n"

    def _final_answer(self, question: str, prompt: str) -> tuple[str, str, float, float | None]:
        """Generate after a prompt ending in 'Answer:' (or read the calibrated preference there); returns
        (normalised, raw, ms, the preference score when the answer was read from it, else None)."""
        if self.by_preference(question) and prompt.endswith("Answer:"):
            t0 = time.perf_counter()
            answer, score = self._preferred(prompt)
            return (answer, f"{answer} (log P(yes) - log P(no) = {score:+.3f})", (time.perf_counter() - t0) * 1000,
                    score)
        raw, ms = self._generate(prompt, self.config.answer_tokens)
        line = next((ln.strip() for ln in raw.splitlines() if ln.strip()), "")
        answer = line
        if self.config.yes_no and is_yes_no_question(question):
            yn = normalize_yes_no(line)
            if yn is None:
                t0 = time.perf_counter()
                yn = self._yes_no_by_score(prompt)
                ms += (time.perf_counter() - t0) * 1000
            answer = yn
        return answer, raw, ms, None

    def _normalise(self, question: str, answer: str) -> str:
        if self.config.yes_no and is_yes_no_question(question):
            return normalize_yes_no(answer) or answer
        return answer

    # ------------------------------------------------------------ the loop
    def prompt_prefix(self, question: str) -> str:
        example = f"{EXAMPLE}\n" if self.config.few_shot else ""
        return f"{INSTRUCTIONS}\n{example}Question: {question.strip()}\n"

    @staticmethod
    def _retry_seed(trace: Trace, max_hops: int) -> str:
        """The keyword that starts the re-prompt after a malformed step. A small model given a free line after a
        parse error mostly repeats the mistake (e.g. copies result lines or starts a new 'Question:'), so the
        retry is guided: Record after fresh results, Search while hops are left, else Answer. The payload is
        still the model's and is still parsed and checked."""
        done = [s for s in trace.steps if s.action is not None and s.executed]
        last = done[-1].action.kind if done else None
        if last == SEARCH and done[-1].retrieved:
            return "Record:"
        if trace.hops < max_hops and last != SEARCH:
            return "Search:"
        return "Answer:"

    def run(self, question: str, max_hops: int | None = None, on_step: Callable[[Step], None] | None = None,
            answer: bool = True, stop_at: float | None = None, replay: list[str] | None = None,
            partial: str = "") -> Trace:
        """Run the loop. on_step is called with every step as it completes (streaming). answer=False stops before
        the answer (the model's own Answer stays out of the transcript): the EM E-step scores the gold answer
        after the trajectory instead. stop_at (a time.monotonic() value): no new step starts after it; the
        answer is forced (stop_reason "budget").

        replay and partial branch a new trajectory off an earlier one (ROSE): the action lines in replay (the
        model-written segments of that trace, in order) are executed as if the model had written them (searches
        run again, so the transcript is the same), then the model continues from `partial`, the start of the
        next line (e.g. "Search: llama" or "Answer:"), which the new text extends."""
        cfg = self.config
        max_hops = cfg.max_hops if max_hops is None else max_hops
        t_start = time.perf_counter()
        trace = Trace(question=question)
        trace.prompt = self.prompt_prefix(question)
        emit = on_step or (lambda step: None)
        retrieved: set[str] = set()
        pending = list(replay or [])
        # the start of the next generated line: `partial` once the replay is done; after a malformed step, the
        # re-prompt's keyword (see _retry_seed)
        seed = "" if pending else partial
        retried = False
        after_limit = 0
        max_steps = 2 * max_hops + 2 + cfg.steps_after_limit  # a bound even for a model that only Thinks
        while True:
            if len([s for s in trace.steps if s.action is not None]) >= max_steps:
                trace.stop_reason = "step_limit"
                break
            if trace.hops >= max_hops and after_limit >= cfg.steps_after_limit:
                trace.stop_reason = "hop_limit"
                break
            if stop_at is not None and time.monotonic() >= stop_at:
                trace.stop_reason = "budget"
                break
            replayed = bool(pending)
            if replayed:
                raw, gen_ms = pending.pop(0), 0.0
            else:
                raw, gen_ms = self._generate(trace.context + seed, cfg.max_new_tokens)
                raw = seed + raw
            line = next((ln for ln in raw.splitlines() if ln.strip()), "")
            try:
                action = parse_step(line)
                if action.kind == RECORD and action.doc_id not in retrieved:
                    raise ActionParseError(f"Record cites doc:{action.doc_id}, which was not retrieved in this "
                                           "trace; cite a doc id shown in the results")
            except ActionParseError as e:
                trace.steps.append(Step(None, raw, gen_ms=gen_ms, error=str(e), executed=False))
                emit(trace.steps[-1])
                if retried:
                    trace.stop_reason = "parse_error"
                    break
                retried = True
                seed = self._retry_seed(trace, max_hops)
                continue
            retried, seed = False, partial if replayed and not pending else ""
            if trace.hops >= max_hops:
                after_limit += 1
            step = Step(action, raw, gen_ms=gen_ms)
            trace.steps.append(step)
            if action.kind == SEARCH:
                if trace.hops >= max_hops:
                    step.executed, step.error = False, f"hop limit ({max_hops}) reached"
                    trace.stop_reason = "hop_limit"
                    emit(step)
                    break
                t0 = time.perf_counter()
                ids = self._retrieve(action.text, cfg.k)
                step.retrieve_ms = (time.perf_counter() - t0) * 1000
                step.retrieved = ids
                retrieved.update(ids)
                trace.hops += 1
                results = self.results_block(ids)
                trace.segments += [(action.render() + "\n", True), (results, False)]
            elif action.kind == RECORD:
                if all((e.text, e.doc_id) != (action.text, action.doc_id) for e in trace.evidence):
                    trace.evidence.append(Evidence(action.text, action.doc_id))
                trace.segments.append((action.render() + "\n", True))
            elif action.kind == THINK:
                trace.segments.append((action.render() + "\n", True))
            if action.kind != ANSWER:
                emit(step)
            elif not answer:
                trace.steps.pop()
                trace.stop_reason = "answer"
                break
            else:
                trace.raw_answer = action.text
                trace.answer = self._normalise(question, action.text)
                if trace.answer not in ("yes", "no") and self.config.yes_no and is_yes_no_question(question):
                    trace.answer = self._yes_no_by_score(trace.context + "Answer:")
                trace.stop_reason = "answer"
                emit(step)
                break
        if trace.stop_reason != "answer" and answer:
            # a branch into the forced answer continues its given start ("Answer:" or "Answer: y")
            start = seed if seed.startswith("Answer:") and not pending else "Answer:"
            text, raw, ms, score = self._final_answer(question, trace.context + start)
            raw = start[len("Answer:"):] + raw
            if self.config.yes_no and is_yes_no_question(question) and start != "Answer:":
                text = normalize_yes_no(raw) or text
            trace.steps.append(Step(Action(ANSWER, text or "(none)"), raw, gen_ms=ms, forced=True))
            trace.answer, trace.raw_answer, trace.answer_score = text, raw.strip(), score
            emit(trace.steps[-1])
        if answer and self.by_preference(question) and trace.answer_score is None:
            # the calibrated preference decides, whoever wrote the line (a forced answer has already read it)
            t0 = time.perf_counter()
            trace.answer, trace.answer_score = self._preferred(trace.context + "Answer:")
            trace.steps[-1].gen_ms += (time.perf_counter() - t0) * 1000
        trace.total_ms = (time.perf_counter() - t_start) * 1000
        return trace

    # ------------------------------------------------------------ baselines
    def rag_answer(self, question: str, k: int | None = None) -> tuple[str, list[str], float]:
        """Retrieve top-k for the question once, then answer; returns (answer, doc ids, ms)."""
        t0 = time.perf_counter()
        ids = self._retrieve(question, k or self.config.k)
        answer, *_ = self._final_answer(question, self.rag_prompt(question, ids))
        return answer, ids, (time.perf_counter() - t0) * 1000

    def rag_prompt(self, question: str, ids: list[str]) -> str:
        facts = "Facts:\n" + "\n".join(f"[doc:{d}] {self.passage(d)}" for d in ids) + "\n"
        return f"{BASELINE_HEADER}{RAG_EXAMPLE}{facts}Question: {question.strip()}\nAnswer:"

    def closed_book_prompt(self, question: str) -> str:
        return f"{BASELINE_HEADER}{BASELINE_EXAMPLE}Question: {question.strip()}\nAnswer:"

    def closed_book_answer(self, question: str) -> tuple[str, float]:
        """Answer from the model's parameters alone; returns (answer, ms)."""
        t0 = time.perf_counter()
        answer, *_ = self._final_answer(question, self.closed_book_prompt(question))
        return answer, (time.perf_counter() - t0) * 1000


def agent_id(agent_dir: Path) -> str:
    """Which LM the gateway serves as the agent from agent_dir: "<round>@<built_at>" of the EM-trained agent (a
    retrained agent gets a new id), "base" when there is none (the base LM with the worked example)."""
    from models.artifacts import read_meta

    if not (Path(agent_dir) / "meta.json").exists():
        return "base"
    meta = read_meta(agent_dir)
    return f"{meta['model']}@{meta.get('built_at', '')}"


def load_served(agent_dir: Path, lm_path: str | None = None):
    """The LM the gateway serves as the agent: with lm_path that LM, untrained (the worked example in its prompt);
    else the EM-trained agent in agent_dir, else the base LM, untrained. (model, tokenizer, AgentConfig, its id:
    agent_id(agent_dir), "base" or lm_path, meta of the trained agent or None)."""
    from models.causal_lm import fast_dtype, load_causal_lm

    if lm_path is None and (Path(agent_dir) / "meta.json").exists():
        model, tok, config, meta = load_trained(agent_dir)
        return model, tok, config, agent_id(agent_dir), meta
    model, tok = load_causal_lm(lm_path, dtype=fast_dtype())
    return model, tok, AgentConfig(few_shot=True), "base" if lm_path is None else str(lm_path), None


def load_trained(agent_dir: Path):
    """The EM-trained agent that training.train_exsearch saved in agent_dir: (model, tokenizer, AgentConfig, meta),
    the LM of its last round (meta["model"]) and the loop settings it was trained with, without the worked example."""
    from models.artifacts import read_meta
    from models.causal_lm import fast_dtype, load_causal_lm

    meta = read_meta(agent_dir)
    model, tok = load_causal_lm(Path(agent_dir) / meta["model"], dtype=fast_dtype())
    return model, tok, AgentConfig(max_hops=meta.get("max_hops", 3), k=meta.get("k", 3), few_shot=False,
                                   max_new_tokens=meta.get("max_new_tokens", AgentConfig.max_new_tokens),
                                   yes_threshold=meta.get("yes_threshold")), meta
