"""A small transformer that predicts DocID tokens from a query, in two modes of one network:

- diffusion (DiffuGR): the DocID positions attend to each other in both directions; masked positions
  carry a [MASK] token and all of them are predicted at once (a masked discrete-diffusion denoiser).
- autoregressive (the comparison baseline): position p sees the tokens before it only (causal), its input
  is the previous token ([BOS] first), and it predicts token p.

The query conditions the decoder through cross-attention: frozen MiniLM token states, projected once to
d_model, are the memory every block attends to; the DocID positions self-attend (bidirectionally or
causally). Only the L DocID positions are processed per layer, which keeps training and decoding cheap
on a CPU. Written nanoGPT-style: config dataclass, blocks, one forward.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


@dataclass
class DocIDDecoderConfig:
    length: int  # DocID tokens (levels + disambiguation)
    vocab: int  # codes per position
    causal: bool = False  # False: DiffuGR (bidirectional, [MASK]); True: autoregressive baseline
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_query: int = 384  # width of the frozen query encoder's states
    max_query_tokens: int = 48
    dropout: float = 0.1


def attend(q, k, v, mask, n_heads: int, dropout: float) -> torch.Tensor:
    """Multi-head scaled dot-product attention; q (B, S, D), k/v (B, T, D) -> (B, S, D)."""
    B, S, D = q.shape
    split = lambda t: t.view(B, t.shape[1], n_heads, D // n_heads).transpose(1, 2)
    a = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask, dropout_p=dropout)
    return a.transpose(1, 2).reshape(B, S, D)


class Block(nn.Module):
    """Self-attention over the DocID positions, cross-attention to the query memory, MLP (pre-norm).
    The memory's keys and values are projected once per forward pass and shared by all blocks, so a
    block costs O(L) projections, not O(query length)."""

    def __init__(self, cfg: DocIDDecoderConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.self_out = nn.Linear(cfg.d_model, cfg.d_model)
        self.cross_q = nn.Linear(cfg.d_model, cfg.d_model)
        self.cross_out = nn.Linear(cfg.d_model, cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout))

    def forward(self, x, mem_k, mem_v, self_mask, cross_mask):
        p = self.dropout if self.training else 0.0
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        x = x + self.self_out(attend(q, k, v, self_mask, self.n_heads, p))
        x = x + self.cross_out(attend(self.cross_q(self.ln2(x)), mem_k, mem_v, cross_mask, self.n_heads, p))
        return x + self.mlp(self.ln3(x))


class DocIDDecoder(nn.Module):
    def __init__(self, cfg: DocIDDecoderConfig):
        super().__init__()
        self.cfg = cfg
        L, V, D = cfg.length, cfg.vocab, cfg.d_model
        self.mask_id, self.bos_id = L * V, L * V + 1
        self.tok_emb = nn.Embedding(L * V + 2, D)  # position-specific codes, then [MASK], [BOS]
        self.pos_emb = nn.Embedding(L, D)
        self.query_proj = nn.Linear(cfg.d_query, D)
        self.query_pos = nn.Embedding(cfg.max_query_tokens, D)
        self.query_ln = nn.LayerNorm(D)
        self.memory_kv = nn.Linear(D, 2 * D)  # shared by every block
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Parameter(torch.randn(L, D, V) * 0.02)  # one output layer per DocID position
        self.head_bias = nn.Parameter(torch.zeros(L, V))

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) of codes or models.beam.MASKED (negative) -> embedding ids of the decoder inputs."""
        L, V = self.cfg.length, self.cfg.vocab
        offsets = torch.arange(L, device=tokens.device) * V
        if self.cfg.causal:  # input at p is token p-1 ([BOS] at 0); later tokens are never read
            prev = torch.cat([torch.full_like(tokens[:, :1], -2), tokens[:, :-1]], dim=1)
            prev_off = torch.cat([offsets[:1], offsets[:-1]])
            ids = torch.where(prev >= 0, prev + prev_off, torch.full_like(prev, self.mask_id))
            return torch.where(prev == -2, torch.full_like(prev, self.bos_id), ids)
        return torch.where(tokens >= 0, tokens + offsets, torch.full_like(tokens, self.mask_id))

    def forward(self, query_states: torch.Tensor, query_mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """query_states (B, Tq, d_query), query_mask (B, Tq) bool, tokens (B, L) -> logits (B, L, V)."""
        L, Tq = self.cfg.length, query_states.shape[1]
        memory = self.query_ln(self.query_proj(query_states) + self.query_pos(torch.arange(Tq, device=tokens.device)))
        cross_mask = query_mask[:, None, None, :]  # (B, 1, 1, Tq): padding is never attended
        self_mask = (torch.tril(torch.ones(L, L, dtype=torch.bool, device=tokens.device))
                     if self.cfg.causal else None)
        mem_k, mem_v = self.memory_kv(memory).chunk(2, dim=-1)
        x = self.tok_emb(self._inputs(tokens)) + self.pos_emb(torch.arange(L, device=tokens.device))
        for block in self.blocks:
            x = block(x, mem_k, mem_v, self_mask, cross_mask)
        return torch.einsum("bld,ldv->blv", self.ln_f(x), self.head) + self.head_bias

    def save(self, directory: Path, extra: dict | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        if extra is not None:
            (directory / "train_state.json").write_text(json.dumps(extra, indent=2))

    @classmethod
    def from_dir(cls, directory: Path) -> DocIDDecoder:
        model = cls(DocIDDecoderConfig(**json.loads((Path(directory) / "config.json").read_text())))
        model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
        return model.eval()
