"""Dense retrieval: MiniLM embeddings in a faiss inner-product index (exact; cosine on normalised vectors)."""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

from models.artifacts import read_meta, write_meta
from models.backend import Backend, Hit, Request
from models.encoders.sentence import encode


class DenseBackend(Backend):
    name = "dense"
    tasks = ("search", "retrieve")
    cost_rank = 1

    def __init__(self, index: faiss.Index, ids: list[str], encoder: str | None = None):
        super().__init__()
        self.index, self.ids, self.encoder = index, ids, encoder

    @classmethod
    def build(cls, corpus: dict[str, str], directory: Path, encoder: str | None = None) -> DenseBackend:
        """encoder: a local sentence-transformers path; None: the packaged MiniLM."""
        ids = list(corpus)
        vectors = encode([corpus[i] for i in ids], encoder, progress=True)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(directory / "index.faiss"))
        np.save(directory / "vectors.npy", vectors)
        (directory / "ids.json").write_text(json.dumps(ids))
        write_meta(directory, backend=cls.name, docs=len(ids), dim=int(vectors.shape[1]), encoder=encoder or "minilm")
        return cls(index, ids, encoder)

    @classmethod
    def load(cls, directory: Path) -> DenseBackend:
        encoder = read_meta(directory).get("encoder")
        return cls(faiss.read_index(str(directory / "index.faiss")), json.loads((directory / "ids.json").read_text()),
                   None if encoder == "minilm" else encoder)

    def config(self, request: Request) -> dict:
        return {"index": "IndexFlatIP", "encoder": self.encoder or "all-MiniLM-L6-v2"}

    def _answer(self, requests: list[Request]) -> list[list[Hit]]:
        k = min(max(r.k for r in requests), len(self.ids))
        scores, idx = self.index.search(encode([r.query for r in requests], self.encoder), k)
        return [[Hit(self.ids[int(i)], float(s)) for i, s in zip(irow[: r.k], srow[: r.k]) if i >= 0]
                for r, irow, srow in zip(requests, idx, scores)]
