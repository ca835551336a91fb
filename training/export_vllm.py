"""`python -m training.export_vllm --checkpoint artifacts/v1/gems`: the GEMS checkpoint in the form a vLLM server
loads: <checkpoint>/vllm-base (the base LM with the item tokens' embeddings and the item head as lm_head rows,
untied; models.gems.vllm.export_vllm_base) beside the task adapters in <checkpoint>/peft/<task>. The gems job of the
background runner runs it, so every published GEMS version can be served by

    vllm serve <version>/gems/vllm-base --enable-lora --max-lora-rank <vllm-base/meta.json max_lora_rank> \\
        --lora-modules search=<version>/gems/peft/search recommend=<version>/gems/peft/recommend \\
        --max-logprobs 256 --enable-prefix-caching
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from models.artifacts import write_meta
from models.gems.backend import GEMSModel, lora_rank
from models.gems.vllm import export_vllm_base
from training.common import add_threads_arg, set_threads


def export(checkpoint: Path) -> Path:
    model = GEMSModel(checkpoint, dtype=torch.float32)
    out = export_vllm_base(model.model, model.tok, model.vocab, model.item_head, checkpoint / "vllm-base")
    write_meta(out, kind="vllm-base", tasks=list(model.cfg.tasks), lora_rank=model.cfg.rank,
               max_lora_rank=lora_rank(checkpoint / "peft" / t for t in model.cfg.tasks),  # vllm --max-lora-rank
               item_tokens=model.vocab.length * model.vocab.vocab)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a GEMS checkpoint directory (<artifacts>/gems)")
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    print(f"wrote {export(a.checkpoint)}")


if __name__ == "__main__":
    main()
