"""GPU path of the GEMS backend: vLLM serves the base LM with each task's exported peft adapter (--enable-lora).

`export_vllm_base` writes a standalone HF checkpoint of the base LM with the item tokens: their input embeddings
and, as rows of an untied lm_head, the trained item head, so vLLM's own head scores items. `VLLMItemGenerator`
runs the same constrained beam search as the CPU path (`models.beam.beam_decode`, left to right, renormalised
over each prefix's children) with a scoring closure that issues the vLLM requests: each live beam is one vLLM
request for one token with `allowed_token_ids` = the codes some item continues its prefix with, with the task's
LoRA. vLLM's prefix cache shares the prompt across a query's beams.

    UNISR_GEMS_ENGINE=vllm python -m service      # needs `pip install -e '.[gpu]'` and a GPU

`VLLMServerItemGenerator` runs the same beam against a separate vLLM OpenAI-compatible server (UNISR_GEMS_ENGINE=
vllm-server, UNISR_VLLM_URL; compose's gpu profile): the gateway needs no GPU and no vllm package. Its wire format
is tested against a small local server; the GPU runs themselves are not exercised in CI (no GPU there); the CPU path
(transformers) is the one tested for quality.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models.beam import MASKED
from models.gems.item_ids import ItemVocab, decode_items


def export_vllm_base(model, tokenizer, vocab: ItemVocab, item_head: torch.Tensor, directory: Path) -> Path:
    """The base LM (no adapters) with item-token embeddings and the item head as lm_head rows, untied (the text rows
    are the model's own output head: the input embedding for a tied teacher, a Low-Rank Clone student's own head)."""
    import copy

    from models.gems import subspaces as gems

    base = copy.deepcopy(model)
    for name, m in gems.modules(base).items():  # unwrap adapted layers: the adapters go to vLLM as LoRAs
        parent, attr = name.rsplit(".", 1)
        setattr(base.get_submodule(parent), attr, m.base)
    n = vocab.length * vocab.vocab
    head = torch.nn.Linear(base.config.hidden_size, base.get_input_embeddings().weight.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(base.get_output_embeddings().weight)
        head.weight[vocab.first_token:vocab.first_token + n] = item_head.to(head.weight.dtype)
    base.lm_head = head
    base.config.tie_word_embeddings = False
    base.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def beam_requests(vocab: ItemVocab, base_ids: list[list[int]], qidx: np.ndarray,
                  tokens: torch.Tensor) -> tuple[int, list[tuple[list[int], list[int]]]]:
    """The level being decoded and, per live beam, (prompt token ids: the query's prompt + the item tokens of its
    prefix, allowed token ids: the codes some item continues that prefix with)."""
    V, first = vocab.vocab, vocab.first_token
    level = int((tokens[0] != MASKED).sum())
    out = []
    for q, t in zip(qidx, tokens.tolist()):
        prefix = tuple(t[:level])
        allowed = [first + level * V + int(c) for c in vocab.children[prefix]]
        out.append((base_ids[q] + [first + lv * V + c for lv, c in enumerate(prefix)], allowed))
    return level, out


def level_scores(vocab: ItemVocab, level: int, per_beam: list[dict[int, float]]) -> torch.Tensor:
    """(beams, L, V) log-probabilities for beam_decode: each beam's allowed tokens at `level`, the rest -inf
    (beam_decode renormalises over the allowed ones)."""
    V, lo = vocab.vocab, vocab.first_token + level * vocab.vocab
    scores = torch.full((len(per_beam), vocab.length, V), -math.inf)
    for r, lps in enumerate(per_beam):
        for t, lp in lps.items():
            if lo <= t < lo + V:
                scores[r, level, t - lo] = lp
    return scores


class VLLMItemGenerator:
    def __init__(self, base_dir: Path, adapters: dict[str, Path], vocab: ItemVocab, max_lora_rank: int = 32):
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        self.llm = LLM(model=str(base_dir), enable_lora=True, max_lora_rank=max_lora_rank, enable_prefix_caching=True)
        self.loras = {t: LoRARequest(t, n + 1, str(p)) for n, (t, p) in enumerate(sorted(adapters.items()))}
        self.vocab = vocab
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, task: str, prompts: list[str], beam: int, k: int, exclude=None, deadline: float | None = None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        base_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

        def logprobs(qidx: np.ndarray, tokens: torch.Tensor) -> torch.Tensor:
            """One vLLM request per live beam: one token, its level's allowed item tokens' log-probabilities."""
            level, beams = beam_requests(self.vocab, base_ids, qidx, tokens)
            reqs = [TokensPrompt(prompt_token_ids=ids) for ids, _ in beams]
            params = [SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=allowed, logprobs=len(allowed))
                      for _, allowed in beams]
            outs = self.llm.generate(reqs, params, lora_request=self.loras[task], use_tqdm=False)
            return level_scores(self.vocab, level, [{t: lp.logprob for t, lp in o.outputs[0].logprobs[0].items()}
                                                    for o in outs])

        return decode_items(self.vocab, logprobs, len(prompts), beam, k, exclude, deadline)


class VLLMServerItemGenerator:
    """The same constrained beam against vLLM's OpenAI-compatible server (`vllm serve <vllm-base> --enable-lora
    --lora-modules search=<peft/search> recommend=<peft/recommend> --max-logprobs 256`): each level is one
    /v1/completions request per group of live beams that share their allowed tokens (`prompt`: a list of token-id
    prompts; `model`: the task's LoRA by name; `max_tokens` 1; `allowed_token_ids`, `logprobs` = how many are
    allowed, and `return_tokens_as_token_ids`, vLLM's extensions, so the answer names token ids)."""

    def __init__(self, url: str, tokenizer, vocab: ItemVocab, timeout_s: float = 30.0, client=None):
        import httpx

        self.url, self.tokenizer, self.vocab = url.rstrip("/"), tokenizer, vocab
        self.client = client or httpx.Client(base_url=self.url, timeout=timeout_s)

    def complete(self, task: str, prompts: list[list[int]], allowed: list[int]) -> list[dict[int, float]]:
        body = {"model": task, "prompt": prompts, "max_tokens": 1, "temperature": 0.0, "logprobs": len(allowed),
                "allowed_token_ids": allowed, "return_tokens_as_token_ids": True}
        r = self.client.post("/v1/completions", json=body)
        r.raise_for_status()
        out: list[dict[int, float]] = [{} for _ in prompts]
        for choice in r.json()["choices"]:
            top = choice["logprobs"]["top_logprobs"][0]
            out[choice["index"]] = {int(t.split(":", 1)[1]): float(lp) for t, lp in top.items()}
        return out

    def generate(self, task: str, prompts: list[str], beam: int, k: int, exclude=None, deadline: float | None = None):
        base_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

        def logprobs(qidx: np.ndarray, tokens: torch.Tensor) -> torch.Tensor:
            level, beams = beam_requests(self.vocab, base_ids, qidx, tokens)
            groups: dict[tuple[int, ...], list[int]] = {}
            for n, (_, allowed) in enumerate(beams):
                groups.setdefault(tuple(allowed), []).append(n)
            per_beam: list[dict[int, float]] = [{} for _ in beams]
            for allowed, members in groups.items():
                for n, lps in zip(members, self.complete(task, [beams[n][0] for n in members], list(allowed))):
                    per_beam[n] = lps
            return level_scores(self.vocab, level, per_beam)

        return decode_items(self.vocab, logprobs, len(prompts), beam, k, exclude, deadline)
