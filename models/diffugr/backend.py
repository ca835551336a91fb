"""Generative retrieval backends: DiffuGR (masked discrete diffusion over DocIDs, T steps chosen per
request or by the latency budget) and the autoregressive DocID decoder it is compared with.

A checkpoint directory holds model.safetensors + config.json (models.diffugr.network) and docids/ (the
DocID table it was trained on, indexing.docids), so a checkpoint always answers with its own index.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.artifacts import read_meta
from models.backend import Backend, Hit, Request, group_requests
from models.beam import beam_decode
from models.diffugr.geometry import geometry_prior
from models.diffugr.network import DocIDDecoder
from models.docids import DocIDs
from models.encoders.sentence import encode_tokens, pooled


class GenerativeRetrievalBackend(Backend):
    tasks = ("retrieve",)
    left_to_right = False
    interruptible = True  # gives up between decoding steps once the deadline passed

    def __init__(self, model: DocIDDecoder, docids: DocIDs, beam: int = 10, encoder: str | None = None,
                 prior: dict | None = None, vectors: np.ndarray | None = None, level_order: bool = False,
                 min_steps: int = 1):
        """prior: {"kind": "geometry", "tau": ..., "decoder_weight": ...} with `vectors` (N, d) the documents'
        embeddings in DocID-row order (models.diffugr.geometry); None: the decoder alone. level_order: the decoder
        alone fills positions coarse level first (a decoder trained on suffix masks, training.train_diffugr's
        distillation) instead of by confidence; with the prior the order is always by level. min_steps: the fewest
        steps the budget planner may choose (training.train_diffugr measures on the valid split the fewest that match
        the task's fallback, BM25): a budget under their cost is answered by the fallback, which is then both cheaper
        and better; a request that names `steps` gets them."""
        super().__init__()
        self.model, self.docids, self.beam, self.encoder = model.eval(), docids, beam, encoder
        self.level_order = level_order
        self.min_steps = max(1, min(int(min_steps), self.docids.length))
        self.prior, self.vectors = (prior, vectors) if prior and vectors is not None else (None, None)
        self.cost_ms: dict[int, float] = {}  # steps -> measured ms per request (warm-up)

    @classmethod
    def load(cls, directory: Path) -> GenerativeRetrievalBackend:
        meta = read_meta(directory) if (directory / "meta.json").exists() else {}
        prior = meta.get("prior")
        vectors = np.load(directory / "geometry.npy") if prior and (directory / "geometry.npy").exists() else None
        return cls(DocIDDecoder.from_dir(directory), DocIDs.load(directory / "docids"), meta.get("beam", 10),
                   meta.get("encoder"), prior, vectors, bool(meta.get("level_order", False)),
                   int(meta.get("min_steps", 1)))

    @property
    def length(self) -> int:
        return self.docids.length

    def decoder_only(self) -> GenerativeRetrievalBackend:
        """The same decoder without the geometry prior (confidence-first, or level order if trained so): the tables'
        row of what the learned decoder does by itself."""
        alone = type(self)(self.model, self.docids, self.beam, self.encoder, None, None, self.level_order)
        alone.name = f"{self.name} decoder only"
        return alone

    def steps_for(self, request: Request) -> int:
        return self.length if self.left_to_right else max(1, min(int(request.options.get("steps") or self.length),
                                                                 self.length))

    def decoder_weight(self, request: Request) -> float:
        """The learned decoder's weight beside the geometry prior (request option `decoder_weight`; 0: the
        geometry alone, the tables' reference row)."""
        if not self.prior:
            return 1.0
        weight = request.options.get("decoder_weight")
        return float(self.prior.get("decoder_weight", 1.0) if weight is None else weight)

    def config(self, request: Request) -> dict:
        order = ("left-to-right" if self.left_to_right else "level order, geometry prior" if self.prior
                 else "level order" if self.level_order else "confidence-first")
        cfg = {"steps": self.steps_for(request), "beam": max(self.beam, request.k), "docid_length": self.length,
               "order": order, "constrained": True}
        if self.prior:
            cfg.update(prior=self.prior["kind"], tau=self.prior["tau"], decoder_weight=self.decoder_weight(request))
        if self.min_steps > 1:
            cfg["min_steps"] = self.min_steps
        return cfg

    @torch.no_grad()
    def decode(self, queries: list[str], steps: int, beam: int, deadline: float | None = None,
               decoder_weight: float = 1.0) -> list[list[tuple[int, float]]]:
        qs, qm = encode_tokens(queries, self.encoder, self.model.cfg.max_query_tokens)
        codes = self.docids.codes

        def logprobs(qidx, tokens):
            idx = torch.from_numpy(qidx)
            if self.prior and decoder_weight == 0:  # the geometry alone: the decoder is not run
                return torch.zeros(len(idx), self.length, self.docids.vocab)
            return torch.log_softmax(self.model(qs[idx], qm[idx], tokens), dim=-1)

        if not self.prior:
            return beam_decode(logprobs, codes, len(queries), steps, beam, self.left_to_right, deadline=deadline,
                               level_order=self.level_order, renormalise=self.level_order)
        scores = pooled(qs, qm) @ self.vectors.T  # (Q, N): the query embedding from the states already computed
        prior = geometry_prior(scores, codes, self.docids.vocab, float(self.prior["tau"]))
        return beam_decode(logprobs, codes, len(queries), steps, beam, self.left_to_right, renormalise=True,
                           deadline=deadline, level_order=True, prior_fn=prior, model_weight=decoder_weight)

    def _answer(self, requests: list[Request], deadline: float | None) -> list[list[Hit]]:
        out: list[list[Hit]] = [[] for _ in requests]
        key = lambda r: (self.steps_for(r), self.decoder_weight(r))
        for (steps, weight), members in group_requests(requests, key).items():
            beam = max(self.beam, max(requests[n].k for n in members))
            decoded = self.decode([requests[n].query for n in members], steps, beam, deadline, weight)
            for n, rows in zip(members, decoded):
                out[n] = [Hit(self.docids.ids[row], score) for row, score in rows[: requests[n].k]]
        return out

    def warm_up(self, request: Request, repeats: int = 3) -> float:
        """Measure the cost of every step count: the cost model that maps a budget to steps."""
        for steps in ([self.length] if self.left_to_right else range(1, self.length + 1)):
            r = Request(request.task, query=request.query, k=request.k, options={"steps": steps})
            self.cost_ms[steps] = super().warm_up(r, repeats)
        self.ms_per_request = self.cost_ms.get(self.min_steps, self.cost_ms[min(self.cost_ms)])
        return self.ms_per_request

    def estimate_ms(self, request: Request) -> float:
        """Cost of the requested steps; with none requested, of the cheapest configuration the planner may choose
        (min_steps)."""
        if not self.left_to_right and not request.options.get("steps"):
            return self.ms_per_request
        return self.cost_ms.get(self.steps_for(request), self.ms_per_request)

    def plan(self, request: Request, budget_ms: float) -> bool:
        if self.left_to_right or request.options.get("steps") or not self.cost_ms:
            return self.estimate_ms(request) <= budget_ms
        fits = [s for s, ms in self.cost_ms.items() if ms <= budget_ms and s >= self.min_steps]
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
