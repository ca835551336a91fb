"""Teacher vs distilled students (training/train_lrc.py): parameters, held-out general-domain perplexity, and ms per
request at batch 1 and 16 (a prompt of general-domain text + 8 greedy tokens, KV cache on), all in one run so the
latency ratios compare like with like on a shared machine.

    python -m loadtest.bench_lrc [--students artifacts/v1/lrc artifacts/v1/lrc-scratch] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from indexing.data import general_texts  # noqa: E402
from models.causal_lm import load_causal_lm, perplexity  # noqa: E402
from models.lrc import parameter_count  # noqa: E402


@torch.no_grad()
def ms_per_request(model, tok, prompts: list[str], batch: int, new_tokens: int = 8, repeats: int = 3) -> float:
    tok.padding_side = "left"
    enc = tok(prompts[:batch], return_tensors="pt", padding=True, truncation=True, max_length=48)
    model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=tok.pad_token_id)
    return (time.perf_counter() - t0) * 1000 / repeats / batch


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=None, help="local HF directory (default: the served LM)")
    p.add_argument("--students", nargs="*", type=Path,
                   default=[Path("artifacts/v1/lrc"), Path("artifacts/v1/lrc-scratch")])
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--ppl-texts", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/bench_lrc.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    models = [("teacher", *load_causal_lm(a.teacher, dtype=torch.float32), {})]
    for d in a.students:
        meta = json.loads((d / "meta.json").read_text())
        models.append((meta["method"], *load_causal_lm(d / meta.get("lm", "model"), dtype=torch.float32), meta))
    # the texts the students were not distilled on
    texts = general_texts(a.data, models[-1][3].get("train_texts", 4000))[1][:a.ppl_texts]
    rows = []
    for name, model, tok, meta in models:
        rows.append({"model": name, "params_m": round(parameter_count(model) / 1e6, 1),
                     "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
                     "general_ppl": round(perplexity(model, tok, texts), 2),
                     "ms_batch1": round(ms_per_request(model, tok, texts, 1), 1),
                     "ms_batch16": round(ms_per_request(model, tok, texts, 16), 1),
                     "tokens": meta.get("distillation_tokens")})
    for r in rows:
        r["latency_ratio_batch1"] = round(r["ms_batch1"] / rows[0]["ms_batch1"], 3)
        r["latency_ratio_batch16"] = round(r["ms_batch16"] / rows[0]["ms_batch16"], 3)
    table = Table(title="Low-Rank Clone: teacher vs students (general domain)")
    for c in rows[0]:
        table.add_column(c)
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    Console().print(table)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
