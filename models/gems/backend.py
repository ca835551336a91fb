"""The GEMS backend: one causal LM (with the GEMS adapters of training.train_gems) answers /search and
/recommend by generating item IDs with constrained beam search, so every result is a real item. /search is
personalised: with a user (user_id, or the history the gateway knows) the prompt carries their last items.

Layout: <artifacts>/gems/ holds the checkpoint (adapters.safetensors with the item head and item-token
embeddings, gems_config.json, itemids/, peft/<task>/ exports, meta.json naming the base LM);
<artifacts>/search/gems and <artifacts>/recommend/gems point at it, and both tasks share one loaded model.

Budget: the model size, then the beam width, are the knobs. A Low-Rank Clone student of the model
(training.train_lrc --gems: <artifacts>/gems/student/, an HF checkpoint with the item tokens + the item head) is
loaded beside the teacher when it exists. Warm-up measures the cost of beams k, 2k, 4k (k = the request's k) for
each model; `plan` picks the largest model with a beam that fits, then the widest such beam; the response's config
says which model answered. A budget below the cheapest model's beam = k degrades to the task's cheapest backend.
CPU path: transformers (bf16 where the CPU has it natively, else float32). GPU path: engine="vllm"
(UNISR_GEMS_ENGINE=vllm) serves the base model with the exported peft adapters through vLLM (models.gems.vllm;
`pip install -e '.[gpu]'`, not exercised in CI); same interface.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import torch

from models.artifacts import read_meta
from models.backend import Backend, Hit, Request, group_requests
from models.causal_lm import fast_dtype, load_causal_lm
from models.docids import DocIDs
from models.gems import subspaces as gems
from models.gems.item_ids import ItemVocab, beam_search, recommend_prompt, search_prompt

_SHARED: dict[tuple[Path, str, str | None, bool], GEMSModel] = {}
_LOCK = threading.Lock()


def lora_rank(adapters) -> int:
    """The smallest max_lora_rank vLLM accepts (8, 16, ..., 512) that holds every exported adapter's rank (the grad
    form's rank is whatever its updates needed, up to rank x refreshes x 2)."""
    need = max(json.loads((Path(a) / "adapter_config.json").read_text())["r"] for a in adapters)
    return next(r for r in (8, 16, 32, 64, 128, 256, 512) if r >= need)


class GEMSModel:
    """The loaded LM + adapters + item vocabulary, shared by the search and recommend backends."""

    student = student_head = None  # the Low-Rank Clone student and its item head, when <checkpoint>/student exists

    def __init__(self, directory: Path, dtype: torch.dtype | None = None, engine: str = "transformers",
                 server_url: str | None = None, student: bool = True):

        meta = read_meta(directory)
        self.model, self.tok = load_causal_lm(meta.get("lm"), dtype=torch.float32)
        ids = DocIDs.load(directory / meta.get("itemids", "itemids"))
        n_new = ids.length * ids.vocab
        self.tok.add_tokens([f"<item_{lv}_{c}>" for lv in range(ids.length) for c in range(ids.vocab)])
        first = self.tok.convert_tokens_to_ids("<item_0_0>")
        self.model.resize_token_embeddings(len(self.tok), mean_resizing=False)
        self.cfg, extra = gems.load_adapters(self.model, directory)
        with torch.no_grad():
            self.model.get_input_embeddings().weight[first:first + n_new] = extra["item_embeddings"]
        self.item_head = extra["item_head"]
        self.vocab = ItemVocab(ids, first)
        self.history = int(meta.get("history", 10))  # items in a recommendation prompt
        self.search_history = int(meta.get("search_history", 10))  # the user's last items in a search prompt
        dtype = dtype or fast_dtype()  # bf16 where the CPU has it natively, else float32
        self.model = self.model.to(dtype).eval()
        self.lock = threading.Lock()  # one generation at a time: the model uses every core
        self.student, self.student_head, self.student_meta = None, None, {}
        if student and engine == "transformers" and (directory / "student" / "meta.json").exists():
            self.load_student(directory / "student", dtype)
        self.engine = None
        if engine in ("vllm", "vllm-server"):
            from models.gems.vllm import VLLMItemGenerator, VLLMServerItemGenerator, export_vllm_base

            base = directory / "vllm-base"  # what either vLLM serves: the base LM + item tokens, adapters apart
            if not (base / "config.json").exists():
                export_vllm_base(self.model, self.tok, self.vocab, self.item_head, base)
            if engine == "vllm-server":
                self.engine = VLLMServerItemGenerator(server_url, self.tok, self.vocab)
            else:
                adapters = {t: directory / "peft" / t for t in self.cfg.tasks}
                self.engine = VLLMItemGenerator(base, adapters, self.vocab, max_lora_rank=lora_rank(adapters.values()))

    def load_student(self, directory: Path, dtype: torch.dtype | None = None) -> None:
        """The Low-Rank Clone student (directory/model: an HF checkpoint whose vocabulary has the same item tokens,
        and heads.safetensors with its item head)."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        student = AutoModelForCausalLM.from_pretrained(directory / "model", dtype=torch.float32)
        if student.get_input_embeddings().weight.shape[0] != len(self.tok):
            raise ValueError(f"the student at {directory} has {student.get_input_embeddings().weight.shape[0]} tokens, "
                             f"the teacher's tokenizer {len(self.tok)}: distil it from this checkpoint again")
        self.student = student.to(dtype or fast_dtype()).eval()
        self.student_head = load_file(str(directory / "model" / "heads.safetensors"))["item"]
        self.student_meta = read_meta(directory)

    @property
    def sizes(self) -> tuple[str, ...]:
        """The models that can answer, largest first."""
        return ("teacher", "student") if self.student is not None else ("teacher",)

    @classmethod
    def shared(cls, directory: Path, engine: str = "transformers", server_url: str | None = None,
               student: bool = True) -> GEMSModel:
        key = (directory.resolve(), engine, server_url, student)
        with _LOCK:
            if key not in _SHARED:
                _SHARED[key] = cls(key[0], engine=engine, server_url=server_url, student=student)
            return _SHARED[key]

    def generate(self, task: str, prompts: list[str], beam: int, k: int, exclude=None,
                 deadline: float | None = None, size: str = "teacher"):
        """size: "teacher" (the GEMS model with the task's adapter) or "student" (its clone, one model for both)."""
        if size == "student":
            if self.student is None:
                raise ValueError("no student is loaded: distil one with `python -m training.train_lrc --gems DIR`")
            with self.lock:
                return beam_search(self.student, self.tok, self.vocab, self.student_head, prompts, beam, k, exclude,
                                   deadline)
        if self.engine is not None:
            return self.engine.generate(task, prompts, beam, k, exclude, deadline)
        with self.lock:
            gems.set_task(self.model, task)
            return beam_search(self.model, self.tok, self.vocab, self.item_head, prompts, beam, k, exclude,
                               deadline)


class GEMSBackend(Backend):
    name = "gems"
    tasks = ("search", "recommend")
    cost_rank = 5
    interruptible = True  # gives up between beam levels once the deadline passed

    def __init__(self, shared: GEMSModel, task: str):
        super().__init__()
        self.shared, self.task = shared, task
        self.cost_ms: dict[tuple[str, int], float] = {}  # (model, beam) -> ms per request

    @classmethod
    def load(cls, directory: Path, engine: str = "transformers", server_url: str | None = None,
             student: bool = True) -> GEMSBackend:
        """engine: "transformers" (CPU), "vllm" (in-process vLLM on a GPU) or "vllm-server" (a vLLM OpenAI server at
        server_url); student: also serve <checkpoint>/student when it exists; settings: UNISR_GEMS_ENGINE,
        UNISR_VLLM_URL, UNISR_GEMS_STUDENT (off by default)."""
        meta = read_meta(directory)
        checkpoint = (directory / meta["checkpoint"]) if "checkpoint" in meta else directory
        task = directory.parent.name
        return cls(GEMSModel.shared(checkpoint, engine, server_url, student), task if task in cls.tasks else "search")

    def beam_for(self, request: Request) -> int:
        return max(request.k, int(request.options.get("beam") or 2 * request.k))

    def size_for(self, request: Request) -> str:
        size = request.options.get("model") or "teacher"
        if size not in self.shared.sizes:
            raise ValueError(f"model must be one of {list(self.shared.sizes)}, got {size!r}")
        return size

    def config(self, request: Request) -> dict:
        size = self.size_for(request)
        return {"beam": self.beam_for(request), "model": size, "variant": self.shared.cfg.variant,
                "constrained": True, "null_space": self.shared.cfg.null_space}

    def prompt(self, request: Request) -> str:
        if self.task == "search":
            return search_prompt(request.query, self.shared.vocab, request.history, self.shared.search_history)
        return recommend_prompt(self.shared.vocab, request.history, self.shared.history)

    def _answer(self, requests: list[Request], deadline: float | None) -> list[list[Hit]]:
        out: list[list[Hit]] = [[] for _ in requests]
        groups = group_requests(requests, lambda r: (self.size_for(r), self.beam_for(r)))
        for (size, beam), members in groups.items():
            reqs = [requests[n] for n in members]
            exclude = [set(r.history) for r in reqs] if self.task == "recommend" else None
            res = self.shared.generate(self.task, [self.prompt(r) for r in reqs], beam, max(r.k for r in reqs),
                                       exclude, deadline, size)
            for n, r, items in zip(members, reqs, res):
                out[n] = [Hit(i, s) for i, s in items[:r.k]]
        return out

    def warm_up(self, request: Request, repeats: int = 3) -> float:
        for size in self.shared.sizes:
            for beam in (request.k, 2 * request.k, 4 * request.k):
                r = Request(request.task, query=request.query, history=request.history, k=request.k,
                            options={"beam": beam, "model": size})
                self.cost_ms[size, beam] = super().warm_up(r, repeats)
        self.ms_per_request = min(ms for (_, beam), ms in self.cost_ms.items() if beam == request.k)
        return self.ms_per_request

    def estimate_ms(self, request: Request) -> float:
        size, beam = self.size_for(request), self.beam_for(request)
        if (size, beam) in self.cost_ms:
            return self.cost_ms[size, beam]
        measured = {b: ms for (s, b), ms in self.cost_ms.items() if s == size}
        if not measured:
            return self.ms_per_request * beam / max(1, request.k)
        b0 = min(measured)
        return measured[b0] * beam / b0

    def plan(self, request: Request, budget_ms: float) -> bool:
        """The largest model with a beam whose cost fits the budget, then the widest such beam (an explicit beam or
        model in the request is kept and only checked). False: not even the cheapest model fits."""
        if request.options.get("beam") or request.options.get("model") or not self.cost_ms:
            return self.estimate_ms(request) <= budget_ms
        scale = request.k / min(b for _, b in self.cost_ms)  # costs were measured at the warm-up request's k
        for size in self.shared.sizes:
            fits = [b for (s, b), ms in self.cost_ms.items() if s == size and ms * max(1.0, scale) <= budget_ms]
            if fits:
                request.options["model"] = size
                request.options["beam"] = max(request.k, int(max(fits) * scale))
                return True
        return False
