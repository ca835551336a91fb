"""GPU path of the GEMS backend: vLLM serves the base LM with each task's exported peft adapter (--enable-lora).

`export_vllm_base` writes a standalone HF checkpoint of the base LM with the item tokens: their input embeddings
and, as rows of an untied lm_head, the trained item head, so vLLM's own head scores items. `VLLMItemGenerator`
runs the same constrained beam search as the CPU path (`models.beam.beam_decode`, left to right, renormalised
over each prefix's children) with a scoring closure that issues the vLLM requests: each live beam is one vLLM
request for one token with `allowed_token_ids` = the codes some item continues its prefix with, with the task's
LoRA. vLLM's prefix cache shares the prompt across a query's beams.

    UNISR_GEMS_ENGINE=vllm python -m service      # needs `pip install -e '.[gpu]'` and a GPU

Not exercised in CI (no GPU there); the CPU path (transformers) is the one tested.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models.beam import MASKED
from models.gems.item_ids import ItemVocab, decode_items


def export_vllm_base(model, tokenizer, vocab: ItemVocab, item_head: torch.Tensor, directory: Path) -> Path:
    """The base LM (no adapters) with item-token embeddings and the item head as lm_head rows, untied."""
    import copy

    from models.gems import subspaces as gems

    base = copy.deepcopy(model)
    for name, m in gems.modules(base).items():  # unwrap adapted layers: the adapters go to vLLM as LoRAs
        parent, attr = name.rsplit(".", 1)
        setattr(base.get_submodule(parent), attr, m.base)
    n = vocab.length * vocab.vocab
    head = torch.nn.Linear(base.config.hidden_size, base.get_input_embeddings().weight.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(base.get_input_embeddings().weight)
        head.weight[vocab.first_token:vocab.first_token + n] = item_head.to(head.weight.dtype)
    base.lm_head = head
    base.config.tie_word_embeddings = False
    base.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


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

        V, first = self.vocab.vocab, self.vocab.first_token
        base_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

        def logprobs(qidx: np.ndarray, tokens: torch.Tensor) -> torch.Tensor:
            """One vLLM request per live beam: its level's allowed item tokens' log-probabilities (the rest -inf;
            beam_decode renormalises over the allowed ones)."""
            level = int((tokens[0] != MASKED).sum())
            reqs, params = [], []
            for q, t in zip(qidx, tokens.tolist()):
                prefix = tuple(t[:level])
                toks = [first + level * V + int(c) for c in self.vocab.children[prefix]]
                prev = [first + lv * V + c for lv, c in enumerate(prefix)]
                reqs.append(TokensPrompt(prompt_token_ids=base_ids[q] + prev))
                params.append(SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=toks,
                                             logprobs=len(toks)))
            outs = self.llm.generate(reqs, params, lora_request=self.loras[task], use_tqdm=False)
            scores = torch.full((len(qidx), self.vocab.length, V), -math.inf)
            lo = first + level * V
            for r, out in enumerate(outs):
                for t, lp in out.outputs[0].logprobs[0].items():
                    if lo <= t < lo + V:
                        scores[r, level, t - lo] = lp.logprob
            return scores

        return decode_items(self.vocab, logprobs, len(prompts), beam, k, exclude, deadline)
