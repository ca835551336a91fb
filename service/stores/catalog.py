"""What the gateway shows with an id (title, snippet) and what it knows of users (their histories)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from indexing.data import load_recsys, load_retrieval


@dataclass
class Entry:
    title: str
    snippet: str


class Catalog:
    def __init__(self, items: dict[str, Entry], docs: dict[str, Entry], histories: dict[str, list[str]]):
        self.items, self.docs, self.histories = items, docs, histories

    @classmethod
    def load(cls, recsys_dir: Path, retrieval_dir: Path) -> Catalog:
        rec = load_recsys(recsys_dir)
        ret = load_retrieval(retrieval_dir)
        items = {i: Entry(d.get("title", i), d.get("text", "")[:200]) for i, d in rec.items.items()}
        docs = {i: Entry(d.get("title") or d["text"][:60], d["text"][:300]) for i, d in ret.corpus.items()}
        return cls(items, docs, rec.sequences)

    def entries(self, task: str) -> dict[str, Entry]:
        return self.docs if task == "retrieve" else self.items

    def history(self, user_id: str | None) -> list[str]:
        return list(self.histories.get(user_id or "", []))
