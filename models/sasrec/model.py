"""SASRec (Kang & McAuley, 2018): a causal self-attention model over the user's item sequence that
predicts the next item. Written nanoGPT-style: config dataclass, one module, readable top to bottom."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from models.backend import Backend, Hit, Request


@dataclass
class SASRecConfig:
    n_items: int  # item vocabulary; index 0 is padding
    max_len: int = 50
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, 4 * cfg.d_model, cfg.dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (B, T) item indices, left-padded with 0 -> hidden states (B, T, d)."""
        T = seq.shape[1]
        pos = torch.arange(T, device=seq.device)
        keep = (seq > 0).unsqueeze(-1).float()  # padding positions carry zeros (as in SASRec)
        x = self.drop(self.item_emb(seq) + self.pos_emb(pos)) * keep
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=seq.device), 1)
        return self.norm(self.blocks(x, mask=causal, is_causal=True))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item_emb.weight.T  # tied output embedding; column 0 is padding

    def loss(self, seq: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Full-softmax next-item cross entropy over every non-padding position."""
        h = self(seq)[target > 0]  # only positions with a next item
        logits = self.logits(h)[:, 1:]  # column 0 is padding
        return F.cross_entropy(logits, target[target > 0] - 1)

    @torch.no_grad()
    def score_last(self, seq: torch.Tensor) -> torch.Tensor:
        return self.logits(self(seq)[:, -1])

    def save(self, directory: Path, item_ids: list[str], extra: dict | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        (directory / "ids.json").write_text(json.dumps(item_ids))
        if extra:
            (directory / "train_state.json").write_text(json.dumps(extra, indent=2))

    @classmethod
    def from_dir(cls, directory: Path) -> tuple[SASRec, list[str]]:
        model = cls(SASRecConfig(**json.loads((directory / "config.json").read_text())))
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return model.eval(), json.loads((directory / "ids.json").read_text())


def training_windows(seq: list[int], max_len: int, end: int | None = None,
                     first_target: int = 1) -> list[tuple[list[int], list[int]]]:
    """(input, next-item target) windows of up to max_len positions tiling seq[:end] backwards from `end` (default
    its length); targets of positions before `first_target` are masked with 0 (padding: not learned)."""
    out, end = [], len(seq) if end is None else end
    while end >= 2 and end - 1 >= first_target:
        start = max(0, end - max_len - 1)
        chunk = seq[start:end]
        out.append((chunk[:-1], [t if start + 1 + n >= first_target else 0 for n, t in enumerate(chunk[1:])]))
        end -= max_len
    return out


def pad_left(seqs: list[list[int]], max_len: int) -> torch.Tensor:
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for n, s in enumerate(seqs):
        s = s[-max_len:]
        if s:
            out[n, -len(s):] = s
    return torch.from_numpy(out)


class SASRecBackend(Backend):
    name = "sasrec"
    tasks = ("recommend",)
    cost_rank = 2

    def __init__(self, model: SASRec, ids: list[str]):
        super().__init__()
        self.model, self.ids = model, ids
        self.index = {i: n + 1 for n, i in enumerate(ids)}

    @classmethod
    def load(cls, directory: Path) -> SASRecBackend:
        return cls(*SASRec.from_dir(directory))

    def config(self, request: Request) -> dict:
        c = self.model.cfg
        return {"d_model": c.d_model, "n_layers": c.n_layers, "max_len": c.max_len}

    @torch.no_grad()
    def scores(self, history: list[str]) -> dict[str, float]:
        """Every item's score as the next item after `history` (empty when no item of it is known): what a
        re-ranker of another backend's candidates reads."""
        seq = [self.index[i] for i in history if i in self.index]
        if not seq:
            return {}
        row = self.model.score_last(pad_left([seq], self.model.cfg.max_len))[0]
        return {i: float(row[n + 1]) for n, i in enumerate(self.ids)}

    def _answer(self, requests: list[Request]) -> list[list[Hit]]:
        seqs = [[self.index[i] for i in r.history if i in self.index] for r in requests]
        out: list[list[Hit]] = [[] for _ in requests]  # no known history: nothing to say (gateway cold-starts)
        known = [n for n, s in enumerate(seqs) if s]
        if not known:
            return out
        scores = self.model.score_last(pad_left([seqs[n] for n in known], self.model.cfg.max_len))
        scores[:, 0] = -float("inf")
        for n, row in zip(known, scores):
            r, s = requests[n], seqs[n]
            row[s] = -float("inf")
            vals, idx = torch.topk(row, min(r.k, len(self.ids)))
            out[n] = [Hit(self.ids[int(j) - 1], float(v)) for v, j in zip(vals, idx) if torch.isfinite(v)]
        return out
