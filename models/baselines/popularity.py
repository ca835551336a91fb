"""Most-popular items (train interactions), excluding what the user already has."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from models.artifacts import write_meta
from models.backend import Backend, Hit, Request


class PopularityBackend(Backend):
    name = "popularity"
    tasks = ("recommend",)
    cost_rank = 0

    def __init__(self, counts: dict[str, int]):
        super().__init__()
        self.ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))

    @classmethod
    def build(cls, sequences: dict[str, list[str]], directory: Path) -> PopularityBackend:
        counts = Counter(i for s in sequences.values() for i in s)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "counts.json").write_text(json.dumps(counts))
        write_meta(directory, backend=cls.name, items=len(counts), interactions=sum(counts.values()))
        return cls(counts)

    @classmethod
    def load(cls, directory: Path) -> PopularityBackend:
        return cls(json.loads((directory / "counts.json").read_text()))

    def top(self, k: int, exclude: set[str]) -> list[Hit]:
        out = []
        for item, c in self.ranked:
            if item not in exclude:
                out.append(Hit(item, float(c)))
                if len(out) == k:
                    break
        return out

    def _answer(self, requests: list[Request]) -> list[list[Hit]]:
        return [self.top(r.k, set(r.history)) for r in requests]
