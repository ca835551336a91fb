"""Generative retrieval backends: DiffuGR (masked discrete diffusion over DocIDs, T steps chosen per
request or by the latency budget) and the autoregressive DocID decoder it is compared with.

A checkpoint directory holds model.safetensors + config.json (models.diffugr.network) and docids/ (the
DocID table it was trained on, indexing.docids), so a checkpoint always answers with its own index.
"""
from __future__ import annotations

from pathlib import Path

import torch

from models.artifacts import read_meta
from models.backend import Backend, Hit, Request, group_requests
from models.beam import beam_decode
from models.diffugr.network import DocIDDecoder
from models.docids import DocIDs
from models.encoders.sentence import encode_tokens


class GenerativeRetrievalBackend(Backend):
    tasks = ("retrieve",)
    left_to_right = False
    interruptible = True  # gives up between decoding steps once the deadline passed

    def __init__(self, model: DocIDDecoder, docids: DocIDs, beam: int = 10, encoder: str | None = None):
        super().__init__()
        self.model, self.docids, self.beam, self.encoder = model.eval(), docids, beam, encoder
        self.cost_ms: dict[int, float] = {}  # steps -> measured ms per request (warm-up)

    @classmethod
    def load(cls, directory: Path) -> GenerativeRetrievalBackend:
        meta = read_meta(directory) if (directory / "meta.json").exists() else {}
        return cls(DocIDDecoder.from_dir(directory), DocIDs.load(directory / "docids"), meta.get("beam", 10),
                   meta.get("encoder"))

    @property
    def length(self) -> int:
        return self.docids.length

    def steps_for(self, request: Request) -> int:
        return self.length if self.left_to_right else max(1, min(int(request.options.get("steps") or self.length),
                                                                 self.length))

    def config(self, request: Request) -> dict:
        return {"steps": self.steps_for(request), "beam": max(self.beam, request.k), "docid_length": self.length,
                "order": "left-to-right" if self.left_to_right else "confidence-first", "constrained": True}

    @torch.no_grad()
    def decode(self, queries: list[str], steps: int, beam: int,
               deadline: float | None = None) -> list[list[tuple[int, float]]]:
        qs, qm = encode_tokens(queries, self.encoder, self.model.cfg.max_query_tokens)

        def logprobs(qidx, tokens):
            idx = torch.from_numpy(qidx)
            return torch.log_softmax(self.model(qs[idx], qm[idx], tokens), dim=-1)

        return beam_decode(logprobs, self.docids.codes, len(queries), steps, beam, self.left_to_right,
                           deadline=deadline)

    def _answer(self, requests: list[Request], deadline: float | None) -> list[list[Hit]]:
        out: list[list[Hit]] = [[] for _ in requests]
        for steps, members in group_requests(requests, self.steps_for).items():
            beam = max(self.beam, max(requests[n].k for n in members))
            decoded = self.decode([requests[n].query for n in members], steps, beam, deadline)
            for n, rows in zip(members, decoded):
                out[n] = [Hit(self.docids.ids[row], score) for row, score in rows[: requests[n].k]]
        return out

    def warm_up(self, request: Request, repeats: int = 3) -> float:
        """Measure the cost of every step count: the cost model that maps a budget to steps."""
        for steps in ([self.length] if self.left_to_right else range(1, self.length + 1)):
            r = Request(request.task, query=request.query, k=request.k, options={"steps": steps})
            self.cost_ms[steps] = super().warm_up(r, repeats)
        self.ms_per_request = self.cost_ms[min(self.cost_ms)]
        return self.ms_per_request

    def estimate_ms(self, request: Request) -> float:
        """Cost of the requested steps; with none requested, of the cheapest configuration (1 step)."""
        if not self.left_to_right and not request.options.get("steps"):
            return self.ms_per_request
        return self.cost_ms.get(self.steps_for(request), self.ms_per_request)

    def plan(self, request: Request, budget_ms: float) -> bool:
        if self.left_to_right or request.options.get("steps") or not self.cost_ms:
            return self.estimate_ms(request) <= budget_ms
        fits = [s for s, ms in self.cost_ms.items() if ms <= budget_ms]
        if not fits:
            return False
        request.options["steps"] = max(fits)  # the most refinement the budget affords
        return True


class DiffuGRBackend(GenerativeRetrievalBackend):
    name = "diffugr"
    cost_rank = 3


class ARDocIDBackend(GenerativeRetrievalBackend):
    name = "ar"
    cost_rank = 4
    left_to_right = True
