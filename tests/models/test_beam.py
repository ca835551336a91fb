"""The one constrained beam search (models.beam.beam_decode) behind DiffuGR and both GEMS paths: the GEMS CPU path
(KV cache, batched, left-padded) against a straightforward reference on a tiny random LM, the vLLM path's scoring
closure against the CPU path (with a stand-in for vLLM), and deadlines: only interruptible backends get one."""
from __future__ import annotations

import random
import sys
import threading
import time
import types

import numpy as np
import pytest
import torch

from models.backend import Backend, DeadlineExceeded, Hit, Request
from models.beam import beam_decode
from models.docids import DocIDs
from models.gems.item_ids import ItemVocab, beam_search

TEXT_VOCAB = 64  # the tiny LM's text tokens; the item tokens follow


class CharTokenizer:
    """Characters -> ids 1..63 (0 pads); left padding like the real one in beam_search."""

    padding_side = "left"

    def __call__(self, texts, return_tensors=None, padding=False, add_special_tokens=False):
        if isinstance(texts, str):
            return {"input_ids": [1 + ord(c) % (TEXT_VOCAB - 1) for c in texts]}
        rows = [self(t)["input_ids"] for t in texts]
        n = max(map(len, rows))
        return {"input_ids": torch.tensor([[0] * (n - len(r)) + r for r in rows]),
                "attention_mask": torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])}


def tiny_lm(seed: int, length: int, vocab: int, n_items: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, vocab, (n_items, length)), axis=0)
    ids = DocIDs(codes, [f"item{n}" for n in range(len(codes))], vocab)
    cfg = LlamaConfig(vocab_size=TEXT_VOCAB + length * vocab, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval(), CharTokenizer(), ItemVocab(ids, TEXT_VOCAB), torch.randn(length * vocab, 32)


PROMPTS = ["Search: animation comedy\nItem:", "History: a much longer prompt than the others\nNext item:", "x"]


@torch.no_grad()
def reference_search(model, tok, vocab, head, prompts, beam, k, exclude=None):
    """Level by level, one prompt and one beam at a time, the whole sequence re-run (no cache, no padding)."""
    L, V = vocab.length, vocab.vocab
    width = beam * 4 if exclude else beam
    lookup = vocab.ids.lookup()
    out = []
    for q, prompt in enumerate(prompts):
        ids = tok(prompt)["input_ids"]
        beams = [((), 0.0)]
        for level in range(L):
            cands = []
            for prefix, score in beams:
                seq = ids + [vocab.first_token + lv * V + c for lv, c in enumerate(prefix)]
                h = model.model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
                allowed = sorted({int(r[level]) for r in vocab.ids.codes if tuple(int(c) for c in r[:level]) == prefix})
                lp = torch.log_softmax(h @ head[level * V:(level + 1) * V][allowed].T, dim=-1)
                cands += [(prefix + (c,), score + float(v)) for c, v in zip(allowed, lp)]
            beams = sorted(cands, key=lambda x: -x[1])[:width]
        skip = exclude[q] if exclude else set()
        out.append([(lookup[p], s) for p, s in beams if lookup[p] not in skip][:k])
    return out


def assert_same(ours, theirs):
    assert [[i for i, _ in r] for r in ours] == [[i for i, _ in r] for r in theirs]
    assert np.allclose([s for r in ours for _, s in r], [s for r in theirs for _, s in r], atol=1e-4)


@pytest.mark.parametrize("seed,length,vocab,n_items", [(0, 3, 5, 40), (1, 2, 8, 60), (2, 4, 3, 30)])
def test_gems_cpu_beam_search_matches_a_straightforward_reference(seed, length, vocab, n_items):
    model, tok, items, head = tiny_lm(seed, length, vocab, n_items)
    rnd = random.Random(seed)
    for beam, k in [(1, 1), (3, 3), (5, 8)]:
        assert_same(beam_search(model, tok, items, head, PROMPTS, beam, k),
                    reference_search(model, tok, items, head, PROMPTS, beam, k))
        exclude = [set(rnd.sample(items.ids.ids, 3)) for _ in PROMPTS]
        res = beam_search(model, tok, items, head, PROMPTS, beam, k, exclude)
        assert_same(res, reference_search(model, tok, items, head, PROMPTS, beam, k, exclude))
        assert all(i not in ex for r, ex in zip(res, exclude) for i, _ in r)


@pytest.fixture()
def fake_vllm(monkeypatch):
    """Just enough of vllm's import surface for VLLMItemGenerator.generate."""
    vllm, inputs = types.ModuleType("vllm"), types.ModuleType("vllm.inputs")
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)


class FakeLLM:
    """Scores like vLLM on the exported base: the item head as lm_head rows, raw log-probabilities over the whole
    vocabulary, only the requested number of the allowed tokens returned."""

    def __init__(self, model, vocab, head):
        self.model, self.vocab, self.head, self.calls = model, vocab, head, []

    @torch.no_grad()
    def generate(self, reqs, params, lora_request=None, use_tqdm=False):
        self.calls.append(len(reqs))
        n = self.vocab.length * self.vocab.vocab
        outs = []
        for req, p in zip(reqs, params):
            h = self.model.model(input_ids=torch.tensor([req["prompt_token_ids"]])).last_hidden_state[0, -1]
            logits = self.model.lm_head(h)
            logits[self.vocab.first_token:self.vocab.first_token + n] = h @ self.head.T
            lp = torch.log_softmax(logits, dim=-1)
            best = sorted(p.allowed_token_ids, key=lambda t: -lp[t])[:p.logprobs]
            logprobs = {t: types.SimpleNamespace(logprob=float(lp[t])) for t in best}
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(logprobs=[logprobs])]))
        return outs


def test_vllm_scoring_closure_gives_the_cpu_path_results(fake_vllm):
    from models.gems.vllm import VLLMItemGenerator

    model, tok, items, head = tiny_lm(3, 3, 5, 40)
    gen = object.__new__(VLLMItemGenerator)  # no engine: the fake one scores
    gen.llm, gen.loras, gen.vocab, gen.tokenizer = FakeLLM(model, items, head), {"search": None}, items, tok
    exclude = [{"item1", "item2"}, set(), {"item5"}]
    for beam, k, ex in [(3, 3, None), (4, 6, exclude)]:
        gen.llm.calls.clear()
        assert_same(gen.generate("search", PROMPTS, beam, k, ex),
                    beam_search(model, tok, items, head, PROMPTS, beam, k, ex))
        assert len(gen.llm.calls) == items.length and gen.llm.calls[0] == len(PROMPTS)  # one call per level
    with pytest.raises(DeadlineExceeded):
        gen.generate("search", PROMPTS, 3, 3, deadline=time.monotonic() - 1)


def _diffugr_like(deadline=None, calls=None):
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 6, (50, 4)), axis=0)
    gen = torch.Generator().manual_seed(0)

    def logprobs(qidx, tokens):
        if calls is not None:
            calls.append(len(qidx))
        return torch.log_softmax(torch.randn(len(qidx), 4, 6, generator=gen), dim=-1)

    return beam_decode(logprobs, codes, 2, 4, 5, deadline=deadline)


def test_beam_decode_gives_up_at_a_passed_deadline():
    calls: list[int] = []
    with pytest.raises(DeadlineExceeded):
        _diffugr_like(deadline=time.monotonic() - 0.001, calls=calls)
    assert calls == []  # checked before the first step: the model never ran
    assert _diffugr_like(deadline=time.monotonic() + 600) == _diffugr_like()  # a later deadline changes nothing


class _Plain(Backend):
    name, tasks = "plain", ("search",)

    @classmethod
    def load(cls, directory):
        raise NotImplementedError

    def _answer(self, requests):  # no deadline parameter: never handed one
        return [[Hit("a", 1.0)] for _ in requests]


class _Interruptible(_Plain):
    name, interruptible = "steps", True

    def __init__(self):
        super().__init__()
        self.seen: list[float | None] = []

    def _answer(self, requests, deadline):
        self.seen.append(deadline)
        return super()._answer(requests)


def test_only_interruptible_backends_are_handed_the_deadline():
    past = time.monotonic() - 1
    assert [a.hits for a in _Plain().answer([Request("search", "q")], past)] == [[Hit("a", 1.0)]]
    steps = _Interruptible()
    steps.answer([Request("search", "q")], past)
    steps.answer([Request("search", "q")])
    steps.warm_up(Request("search", "q"), repeats=1)
    assert steps.seen == [past, None, None]


def test_gems_backend_gives_up_between_beam_levels():
    from models.gems.backend import GEMSBackend, GEMSModel

    model, tok, items, head = tiny_lm(4, 3, 5, 40)
    shared = object.__new__(GEMSModel)
    shared.model, shared.tok, shared.vocab, shared.item_head = model, tok, items, head
    shared.lock, shared.engine, shared.history, shared.search_history = threading.Lock(), None, 10, 10
    shared.cfg = types.SimpleNamespace(variant="gems", null_space=True)
    backend = GEMSBackend(shared, "search")
    assert backend.interruptible
    req = Request("search", query="animation comedy", k=3)
    hits = backend.answer([req], time.monotonic() + 600)[0].hits
    assert [(h.id, h.score) for h in hits] == beam_search(model, tok, items, head, [backend.prompt(req)], 6, 3)[0]
    with pytest.raises(DeadlineExceeded):
        backend.answer([req], time.monotonic() - 1)
