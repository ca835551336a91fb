"""GPU path of the GEMS backend: vLLM serves the base LM with each task's exported peft adapter (--enable-lora).

`export_vllm_base` writes a standalone HF checkpoint of the base LM with the item tokens: their input embeddings
and, as rows of an untied lm_head, the trained item head, so vLLM's own head scores items. `VLLMItemGenerator`
runs the same level-by-level constrained beam search as `models.gems.item_ids.beam_search`: each live beam is
one vLLM request for one token with `allowed_token_ids` = the codes some item continues its prefix with, its
log-probabilities renormalised over that set (as the CPU path does), with the task's LoRA. vLLM's prefix cache
shares the prompt across a query's beams.

    UNISR_GEMS_ENGINE=vllm python -m service      # needs `pip install -e '.[gpu]'` and a GPU

Not exercised in CI (no GPU there); the CPU path (transformers) is the one tested.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from models.gems.item_ids import ItemVocab


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

    def generate(self, task: str, prompts: list[str], beam: int, k: int, exclude=None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        V = self.vocab.vocab
        lookup = self.vocab.ids.lookup()
        base_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        beams = [[((), 0.0)] for _ in prompts]
        width = beam * 4 if exclude else beam
        for level in range(self.vocab.length):
            reqs, params, owners = [], [], []
            for q, live in enumerate(beams):
                for prefix, score in live:
                    allowed = self.vocab.children[prefix]
                    toks = [self.vocab.first_token + level * V + int(c) for c in allowed]
                    prev = [self.vocab.first_token + lv * V + c for lv, c in enumerate(prefix)]
                    reqs.append(TokensPrompt(prompt_token_ids=base_ids[q] + prev))
                    params.append(SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=toks,
                                                 logprobs=len(toks)))
                    owners.append((q, prefix, score, dict(zip(toks, allowed))))
            outs = self.llm.generate(reqs, params, lora_request=self.loras[task], use_tqdm=False)
            cands: list[list] = [[] for _ in prompts]
            for (q, prefix, score, code_of), out in zip(owners, outs):
                lps = {t: lp.logprob for t, lp in out.outputs[0].logprobs[0].items() if t in code_of}
                norm = math.log(sum(math.exp(v) for v in lps.values())) if lps else 0.0
                cands[q] += [(prefix + (int(code_of[t]),), score + v - norm) for t, v in lps.items()]
            beams = [sorted(c, key=lambda x: -x[1])[:width] for c in cands]
        out = []
        for q, live in enumerate(beams):
            skip = exclude[q] if exclude else set()
            out.append([(lookup[p], s) for p, s in live if p in lookup and lookup[p] not in skip][:k])
        return out
