"""BM25 over a text corpus with bm25s (English stop words, Snowball stemming)."""
from __future__ import annotations

import json
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from models.artifacts import write_meta
from models.backend import Backend, Hit, Request

_STEMMER = Stemmer.Stemmer("english")


def tokenize(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", stemmer=_STEMMER.stemWords, return_ids=False, show_progress=False)


class BM25Backend(Backend):
    name = "bm25"
    tasks = ("search", "retrieve")
    cost_rank = 0

    def __init__(self, retriever: bm25s.BM25, ids: list[str]):
        super().__init__()
        self.retriever, self.ids = retriever, ids

    @classmethod
    def in_memory(cls, corpus: dict[str, str], k1: float = 1.2, b: float = 0.75,
                  show_progress: bool = False) -> BM25Backend:
        """An index of corpus (doc id -> text) that is not written anywhere; build() saves one."""
        ids = list(corpus)
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(tokenize([corpus[i] for i in ids]), show_progress=show_progress)
        return cls(retriever, ids)

    @classmethod
    def build(cls, corpus: dict[str, str], directory: Path, k1: float = 1.2, b: float = 0.75) -> BM25Backend:
        backend = cls.in_memory(corpus, k1, b, show_progress=True)
        directory.mkdir(parents=True, exist_ok=True)
        backend.retriever.save(str(directory), show_progress=False)
        (directory / "ids.json").write_text(json.dumps(backend.ids))
        write_meta(directory, backend=cls.name, docs=len(backend.ids), k1=k1, b=b)
        return backend

    @classmethod
    def load(cls, directory: Path) -> BM25Backend:
        return cls(bm25s.BM25.load(str(directory)), json.loads((directory / "ids.json").read_text()))

    def config(self, request: Request) -> dict:
        return {"k1": float(self.retriever.k1), "b": float(self.retriever.b)}

    def _answer(self, requests: list[Request]) -> list[list[Hit]]:
        k = min(max(r.k for r in requests), len(self.ids))
        tokens = [t or ["<empty>"] for t in tokenize([r.query for r in requests])]
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        out = []
        for r, drow, srow in zip(requests, np.asarray(docs), np.asarray(scores)):
            out.append([Hit(self.ids[int(d)], float(s)) for d, s in zip(drow[: r.k], srow[: r.k]) if s > 0])
        return out
