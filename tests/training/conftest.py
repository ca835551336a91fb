"""Fixtures of the agent trainers' tests (EM and ROSE): the real 135M LM in float32, BM25, StrategyQA."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def agent_lm_parts(artifacts):
    """(model, tokenizer, BM25 retriever, multi-hop data); a test that trains the model trains a copy."""
    from indexing.data import load_multihop
    from models.causal_lm import load_causal_lm
    from models.registry import load_backend

    model, tok = load_causal_lm(dtype=torch.float32)
    return model, tok, load_backend(artifacts, "retrieve", "bm25"), load_multihop(ROOT / "data" / "strategyqa")
