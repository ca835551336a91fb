"""Hierarchical IDs as an artifact: the (N, L) code table of documents or items, the ID trie, save/load.

Built by indexing.docids (residual k-means over embeddings); read by DiffuGR (document IDs) and GEMS (item IDs).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.artifacts import read_meta, write_meta


@dataclass
class DocIDs:
    codes: np.ndarray  # (N, L) int64, column L-1 is the disambiguation token
    ids: list[str]  # document id of each row
    vocab: int  # tokens per position (max over positions)

    @property
    def length(self) -> int:
        return int(self.codes.shape[1])

    def lookup(self) -> dict[tuple[int, ...], str]:
        return {tuple(int(c) for c in row): d for row, d in zip(self.codes, self.ids)}

    def consistent(self, fixed: dict[int, int]) -> np.ndarray:
        """Boolean mask of the documents whose ID agrees with every fixed (position -> token)."""
        mask = np.ones(len(self.ids), dtype=bool)
        for p, t in fixed.items():
            mask &= self.codes[:, p] == t
        return mask

    def save(self, directory: Path, **meta) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "codes.npy", self.codes)
        (directory / "ids.json").write_text(json.dumps(self.ids))
        write_meta(directory, kind="docids", docs=len(self.ids), length=self.length, vocab=self.vocab, **meta)

    @classmethod
    def load(cls, directory: Path) -> DocIDs:
        return cls(np.load(directory / "codes.npy"), json.loads((directory / "ids.json").read_text()),
                   int(read_meta(directory)["vocab"]))
