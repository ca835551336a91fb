"""Pseudo-questions for every document of the retrieval corpus (DSI-QG: Zhuang et al., 2022, "Bridging the Gap
Between Indexing and Retrieval for Differentiable Search Index with Query Generation").

A generative retriever trained on document text -> DocID learns to map documents, not questions, to IDs; the
questions it meets at test time are about documents no training question targets (StrategyQA's facts are written
per question). DSI-QG indexes each document through questions a query generator writes for it. Here the generator
is the local causal LM (SmolLM2-135M-Instruct by default, any local HF causal-LM directory or GGUF file), prompted
with three hand-written fact -> question examples, sampled top-k (k=10, as DSI-QG) several times per document. The
questions are then filtered: a question is kept only if BM25 over the whole corpus ranks its own document in the
top `keep_rank` (a question the corpus cannot tie back to its document teaches the decoder noise).

Only the corpus is read: no training, valid or test question enters the prompts.

    python -m indexing.pseudo_queries generate --data data/strategyqa-facts --per-doc 20 --device cuda
    python -m indexing.pseudo_queries filter --data data/strategyqa-facts

Generation is a GPU job: on the 2-core CPU here it writes about two questions per second (~17 h for the corpus at
20 per document); on one H200 the 6,138 documents x 20 samples took 118 s (103,134 distinct questions). That run
ships with the code: indexing/generated/strategyqa-facts.pseudo-queries.jsonl.gz, with its manifest (generator,
prompt, sampling, seed, device, sha256). `generate` writes `<data>/pseudo-queries/raw.jsonl` (one {"doc_id",
"questions"} per document) with a manifest; `filter` reads that file, or the shipped one when there is none, and
writes `kept.jsonl` beside it (deterministic, ~30 s on the CPU).
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from pathlib import Path

import torch
from tqdm import tqdm

# a few-shot completion prompt (hand-written examples, none from the data): the 135M instruct model's chat-format
# answers to "write a question this fact answers" were mostly off-topic; completing "Fact: ...\nQuestion:" after three
# examples stays on the fact far more often (sampled at temperature 0.7)
FEW_SHOT = ("Fact: The Eiffel Tower is located in Paris, France\nQuestion: Where is the Eiffel Tower?\n\n"
            "Fact: Sharks are fish that breathe through their gills\nQuestion: How do sharks breathe?\n\n"
            "Fact: The Great Depression began in 1929 with a stock market crash\n"
            "Question: When did the Great Depression begin?\n\n")
PROMPT = FEW_SHOT + "Fact: {text}\nQuestion:"
TEMPERATURE = 0.7
TOP_K = 10  # as DSI-QG
DEFAULT_DIR = "pseudo-queries"
SHIPPED = Path(__file__).parent / "generated" / "strategyqa-facts.pseudo-queries.jsonl.gz"


def prompts(texts: list[str]) -> list[str]:
    """The doc2query prompt for each document text."""
    return [PROMPT.format(text=t) for t in texts]


def clean(text: str) -> str | None:
    """The first question in a generation, or None when there is none (no '?', too short or too long)."""
    text = text.strip().split("\n")[0].strip().strip('"').strip()
    text = re.sub(r"^(question|q)\s*[:.]\s*", "", text, flags=re.IGNORECASE)
    if "?" not in text:
        return None
    text = text[:text.index("?") + 1].strip()
    words = text.split()
    return text if 3 <= len(words) <= 40 else None


@torch.no_grad()
def generate_questions(model, tokenizer, texts: list[str], per_doc: int = 10, batch_docs: int = 64,
                       max_new_tokens: int = 32, top_k: int = TOP_K, seed: int = 0, progress: bool = True
                       ) -> list[list[str]]:
    """per_doc sampled questions for each text (cleaned, de-duplicated, possibly fewer than per_doc)."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out: list[list[str]] = []
    for b in tqdm(range(0, len(texts), batch_docs), desc="doc2query", unit="batch", disable=not progress):
        enc = tokenizer(prompts(texts[b:b + batch_docs]), return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        gen = model.generate(**enc, do_sample=True, top_k=top_k, temperature=TEMPERATURE, max_new_tokens=max_new_tokens,
                             num_return_sequences=per_doc, pad_token_id=tokenizer.pad_token_id)
        decoded = tokenizer.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
        for d in range(len(decoded) // per_doc):
            seen: dict[str, None] = {}
            for q in decoded[d * per_doc:(d + 1) * per_doc]:
                q = clean(q)
                if q and q.lower() not in {s.lower() for s in seen}:
                    seen[q] = None
            out.append(list(seen))
    return out


def load_generator(lm: str | None, gguf: str | None, device: str):
    """(model, tokenizer) from a local HF directory (default: the prepared LM) or a GGUF file, in bf16 on a GPU and
    float32 on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if gguf:
        path = Path(gguf)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    else:
        from models.causal_lm import load_causal_lm

        model, tok = load_causal_lm(lm, dtype=dtype)
    return model.to(device).eval(), tok


def read_docs(data: Path | None, docs: Path | None) -> list[tuple[str, str]]:
    """(doc_id, text) of every corpus document: from a retrieval data directory or a JSONL of {"doc_id", "text"}."""
    if docs is not None:
        with open(docs) as f:
            return [(r["doc_id"], r["text"]) for r in map(json.loads, f)]
    from indexing.data import load_retrieval

    d = load_retrieval(data)
    return [(i, d.doc_text(i)) for i in d.doc_ids]


def read_questions(path: Path) -> dict[str, list[str]]:
    """{doc_id: questions} from a JSONL (or .jsonl.gz) of {"doc_id", "questions"}."""
    with (gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)) as f:
        return {r["doc_id"]: r["questions"] for r in map(json.loads, f)}


def filter_questions(data: Path, raw: Path, keep_rank: int = 10) -> tuple[dict[str, list[str]], dict]:
    """Keep a question only if the corpus's BM25 index (the served scorer, models.baselines.bm25) ranks its own
    document in the top keep_rank."""
    from indexing.data import load_retrieval
    from models.backend import Request
    from models.baselines.bm25 import BM25Backend

    corpus = load_retrieval(data)
    questions = read_questions(raw)
    bm25 = BM25Backend.in_memory({i: corpus.doc_text(i) for i in corpus.doc_ids})
    flat = [(d, q) for d, qs in questions.items() for q in qs]
    answers = bm25.answer([Request("retrieve", query=q, k=keep_rank) for _, q in flat])
    kept: dict[str, list[str]] = {d: [] for d in questions}
    for (d, q), a in zip(flat, answers):
        if d in {h.id for h in a.hits}:
            kept[d].append(q)
    stats = {"documents": len(questions), "generated": len(flat), "kept": sum(map(len, kept.values())),
             "documents_with_a_question": sum(1 for v in kept.values() if v), "keep_rank": keep_rank}
    return kept, stats


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write <out>/raw.jsonl")
    g.add_argument("--data", type=Path, default=Path("data/strategyqa-facts"))
    g.add_argument("--docs", type=Path, default=None, help="a JSONL of {doc_id, text} instead of --data")
    g.add_argument("--out", type=Path, default=None, help="default <data>/pseudo-queries")
    g.add_argument("--lm", default=None, help="local HF causal-LM directory (default: the prepared LM)")
    g.add_argument("--gguf", default=None, help="a GGUF file instead of --lm")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--per-doc", type=int, default=10)
    g.add_argument("--batch-docs", type=int, default=64)
    g.add_argument("--max-docs", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=2)
    f = sub.add_parser("filter", help="write <out>/kept.jsonl from <out>/raw.jsonl")
    f.add_argument("--data", type=Path, default=Path("data/strategyqa-facts"))
    f.add_argument("--out", type=Path, default=None)
    f.add_argument("--raw", type=Path, default=None,
                   help="default <out>/raw.jsonl when it exists, else the shipped generation (" + SHIPPED.name + ")")
    f.add_argument("--keep-rank", type=int, default=10)
    a = p.parse_args(argv)
    out = a.out or a.data / DEFAULT_DIR
    out.mkdir(parents=True, exist_ok=True)
    if a.cmd == "generate":
        torch.set_num_threads(a.threads)
        docs = read_docs(None if a.docs else a.data, a.docs)[:a.max_docs]
        t0 = time.time()
        model, tok = load_generator(a.lm, a.gguf, a.device)
        load_s = time.time() - t0
        t0 = time.time()
        qs = generate_questions(model, tok, [t for _, t in docs], a.per_doc, a.batch_docs, seed=a.seed)
        gen_s = time.time() - t0
        with open(out / "raw.jsonl", "w") as fh:
            for (d, _), q in zip(docs, qs):
                fh.write(json.dumps({"doc_id": d, "questions": q}) + "\n")
        manifest = {"generator": a.gguf or a.lm or "prepared LM", "prompt": PROMPT, "per_doc": a.per_doc,
                    "sampling": f"top_k={TOP_K}, temperature {TEMPERATURE}, max_new_tokens 32", "seed": a.seed,
                    "device": a.device,
                    "device_name": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
                    "documents": len(docs), "questions": sum(map(len, qs)), "load_s": round(load_s, 1),
                    "generate_s": round(gen_s, 1)}
        (out / "raw.manifest.json").write_text(json.dumps(manifest, indent=1))
        print(json.dumps(manifest, indent=1))
    else:
        raw = a.raw or (out / "raw.jsonl" if (out / "raw.jsonl").exists() else SHIPPED)
        kept, stats = filter_questions(a.data, raw, a.keep_rank)
        stats["raw"] = str(raw)
        with open(out / "kept.jsonl", "w") as fh:
            for d, q in kept.items():
                fh.write(json.dumps({"doc_id": d, "questions": q}) + "\n")
        (out / "kept.manifest.json").write_text(json.dumps(stats, indent=1))
        print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
