"""Multi-hop question answering data (HotpotQA-style):

    questions.jsonl   {"id", "question", "answer", "supporting": [doc ids], "type"?}
    passages.jsonl    {"_id", "title", "text"}   every passage any question's context holds
    manifest.json

Split: the file's own "split" field when present, otherwise a stable hash of the question id.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from indexing.data.common import read_jsonl, stable_split


@dataclass
class MultihopData:
    name: str
    questions: list[dict]
    passages: dict[str, dict]

    def split(self, split: str) -> list[dict]:
        return [q for q in self.questions if q.get("split", stable_split(q["id"])) == split]

    def passage_text(self, pid: str) -> str:
        p = self.passages[pid]
        return f"{p.get('title', '')}. {p.get('text', '')}".strip(". ")


def load_multihop(path: str | Path) -> MultihopData:
    path = Path(path)
    passages = {str(r["_id"]): r for r in read_jsonl(path / "passages.jsonl")}
    questions = read_jsonl(path / "questions.jsonl")
    return MultihopData(name=path.name, questions=questions, passages=passages)
