"""Tune one causal LM for search and recommendation with GEMS, and compare it with the alternatives.

    python -m training.train_gems --out artifacts/v1/gems            # all variants, the table, the plot
    python -m training.train_gems --variants gems --out ...          # one variant

Data: MovieLens-100K (the foundation's data). Items are atomic IDs (one token per item, collision-free;
`--ids semantic` for 2 x 32 residual k-means codes + disambiguation) whose embeddings are the item's collaborative
(trained SASRec) + content (MiniLM) features through a fixed orthonormal map (`--item-init titles`: the mean title
embedding, near-identical tokens). Recommendation learns the next item at every position of each user's training
sequence, in windows of `history` items, one causal pass each (as SASRec); search learns `search_examples` sampled
(user history, query, item) cases of the training period with personalised prompts (the user's last items + the
query). The held-out test split is the foundation's (each user's last item, and for search its query); every user
(943) is scored unless `--eval-users`.

Only the top `top_layers` blocks are adapted, so the frozen lower blocks' outputs are computed once per
sequence and cached (bf16); every training step runs the adapted blocks only. That is what makes five
variants trainable on a CPU.

Variants (the comparison table; row (a) is the non-LLM baselines on the same test examples, incl. the category
lookup and BM25 re-ranked by SASRec for personalised search):
  joint        (b) one LoRA trained on both tasks (summed loss)
  single       (c) a separate LoRA per task
  gems-nonull  (d) GEMS (projected-gradient shared + task subspaces) without the null-space projection
  gems         (e) GEMS with the null-space projection (the served checkpoint)
  gems-lora    (f) the first GEMS: LoRA factors per subspace, conflicting shared gradients re-routed, null space
Every variant seeds its own start, so `--variants` run apart (`--no-baselines`) give the same rows.
General-domain perplexity (held-out StrategyQA evidence sentences, not the fine-tuning data) before/after;
the null-space directions come from a disjoint half of that corpus. Outputs: <out>/ (served checkpoint:
adapters + item head + item IDs + peft exports), results/gems-table.{md,json}, results/gems-grad-cosine.png.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from indexing.data import general_texts, load_recsys
from indexing.docids import atomic_ids, build_docids
from models.artifacts import read_meta, write_meta
from models.backend import Request
from models.causal_lm import fast_dtype, load_causal_lm, perplexity
from models.docids import DocIDs
from models.gems import subspaces as gems
from models.gems.item_ids import (
    RECOMMEND_TEMPLATE,
    ItemVocab,
    add_item_tokens,
    beam_search,
    mean_pairwise_cosine,
    recommend_prompt,
    search_prompt,
    search_query,
)
from models.registry import load_backend
from models.sasrec.model import SASRec, training_windows
from training.common import add_config_args, add_threads_arg, config_from_args, config_values, set_threads
from training.eval.metrics import single_target

TASKS = ("search", "recommend")
BF16 = fast_dtype() == torch.bfloat16  # autocast the blocks only where the CPU has native bf16 (8x slower without)
VARIANTS = {"joint": dict(variant="joint", null_space=False), "single": dict(variant="single", null_space=False),
            "gems-nonull": dict(variant="gems", form="grad", null_space=False),
            "gems": dict(variant="gems", form="grad", null_space=True),
            "gems-lora": dict(variant="gems", form="lora", null_space=True)}
LABELS = {"joint": "(b) one LoRA, both tasks", "single": "(c) one LoRA per task",
          "gems-nonull": "(d) GEMS, no null space", "gems": "(e) GEMS",
          "gems-lora": "(f) GEMS as LoRA subspaces + gradient split"}
ADAPTER_OPTIONS = ("top_layers", "rank", "null_energy", "refresh")  # GEMSConfig fields the CLI sets


@dataclass
class TrainConfig:
    ids: str = "atomic"  # item IDs: atomic (one token per item) | semantic (2 x 32 residual k-means + disambiguation)
    item_init: str = "features"  # item tokens from collaborative + content features | titles (mean title embedding)
    search_examples: int | None = 6000  # distinct (history, query, item) training cases sampled (None: all)
    recommend_users: int | None = None  # users whose training sequences are learned (None: all)
    epochs: int = 8
    batch_size: int = 32  # recommendation windows per step (search: as many steps, its cases spread over them)
    lr: float = 2e-3  # LoRA-form adapters (AdamW)
    head_lr: float = 2e-3
    grad_lr: float = 1e-3  # grad-form GEMS (Adam in the projected gradient subspaces)
    history: int = 50  # items in a recommendation prompt and training window (SASRec's max_len)
    search_history: int = 10  # the user's last items in a personalised search prompt
    eval_users: int | None = None  # test examples per task (None: every user, 943)
    valid_examples: int = 100  # per task, scored after every epoch (validation HR@10)
    beam: int = 20
    general_texts: int = 600  # general-domain sentences for the null space (and as many for perplexity)
    seed: int = 0


# ------------------------------------------------------------------ data
def item_ids(artifacts: Path, out: Path, scheme: str = "semantic") -> DocIDs:
    """The catalogue's item IDs (cached in out/itemids): atomic, or semantic IDs from the search index's MiniLM
    vectors."""
    d = out / "itemids"
    if (d / "meta.json").exists() and read_meta(d).get("scheme", "semantic") == scheme:
        return DocIDs.load(d)
    dense = artifacts / "search" / "dense"
    catalogue = json.loads((dense / "ids.json").read_text())
    if scheme == "atomic":
        ids = atomic_ids(catalogue)
        ids.save(d, levels=1, codes=len(catalogue), scheme="atomic")
        return ids
    ids = build_docids(np.load(dense / "vectors.npy"), catalogue, 2, 32)
    ids.save(d, levels=2, codes=32, embeddings=str(dense), scheme="semantic")
    return ids


def item_features(artifacts: Path, item_list: list[str], dim: int, scale: float, seed: int = 0,
                  sasrec: Path | None = None) -> torch.Tensor:
    """One row per item (N x dim): its collaborative embedding (the trained SASRec's item embedding) and its content
    embedding (MiniLM of the item text, the dense search index), each centred and L2-normalised, concatenated, and
    mapped to the LM's width by a fixed random orthonormal map (inner products kept), rows scaled to `scale` (the
    mean norm of the LM's token embeddings). Items are as distinct as their features: not the mean of titles.
    `sasrec`: the SASRec checkpoint whose item embedding is the collaborative part (default: the served one)."""
    model, sas_ids = SASRec.from_dir(sasrec or artifacts / "recommend" / "sasrec")
    collab_all = model.item_emb.weight.detach()[1:].float()
    sas_row = {i: n for n, i in enumerate(sas_ids)}
    dense = artifacts / "search" / "dense"
    content_all = torch.from_numpy(np.load(dense / "vectors.npy")).float()
    dense_row = {i: n for n, i in enumerate(json.loads((dense / "ids.json").read_text()))}

    def block(table: torch.Tensor, rows: dict[str, int]) -> torch.Tensor:
        x = torch.stack([table[rows[i]] if i in rows else torch.zeros(table.shape[1]) for i in item_list])
        return F.normalize(x - x.mean(0), dim=-1)

    feats = torch.cat([block(collab_all, sas_row), block(content_all, dense_row)], dim=1) / math.sqrt(2)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, feats.shape[1], generator=g))  # dim x F, orthonormal columns
    return feats @ q.T * scale


def examples(data, vocab: ItemVocab, split: str, n: int | None, cfg: TrainConfig, seed: int) -> dict[str, list]:
    """task -> [(prompt, target item, user history)]: the served prompts (personalised search)."""
    ex = [e for e in data.examples(split) if e.target in vocab.row]
    if n is not None and len(ex) > n:
        ex = random.Random(seed).sample(ex, n)
    return {"search": [(search_prompt(e.query, vocab, e.history, cfg.search_history), e.target, e.history)
                       for e in ex],
            "recommend": [(recommend_prompt(vocab, e.history, cfg.history), e.target, e.history) for e in ex]}


def recommend_windows(data, vocab: ItemVocab, max_len: int, users: int | None = None) -> list[list[str]]:
    """Every (or the first `users`) training sequence tiled into windows of up to max_len + 1 items
    (models.sasrec.training_windows): one causal pass learns the next item at every position, as SASRec does."""
    out = []
    for seq in list(data.train_sequences().values())[:users]:
        rows = [vocab.row[i] for i in seq if i in vocab.row]
        out += [[vocab.ids.ids[r] for r in inp + [tgt[-1]]] for inp, tgt in training_windows(rows, max_len)]
    return out


class Encoded:
    """Token ids (teacher forcing), the positions that predict an item token with its level and code, cached
    states. Built from prompts (one target item after the prompt) or from item sequences (every item after the
    first is a target, predicted from the items before it)."""

    def __init__(self, tok, vocab: ItemVocab, rows: list[tuple[str, str, list[str]]] | None = None,
                 sequences: list[list[str]] | None = None, first_targets: list[int] | None = None):
        """first_targets: per sequence, the index of its first item that is a target (default 1: all after the
        first; the continual loop learns only a window's new items, the earlier ones are context)."""
        self.ids, self.pred_pos, self.levels, self.targets = [], [], [], []
        for prompt, target, _ in rows or []:
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            t = vocab.token_ids(vocab.row[target])
            self.ids.append(p + t[:-1])
            self.pred_pos.append([len(p) - 1 + i for i in range(len(t))])
            self.levels.append(list(range(len(t))))
            self.targets.append([int(c) for c in vocab.ids.codes[vocab.row[target]]])
        for j, seq in enumerate(sequences or []):
            p = tok(RECOMMEND_TEMPLATE.format(history=""), add_special_tokens=False)["input_ids"]
            toks = [t for i in seq for t in vocab.token_ids(vocab.row[i])]
            L = vocab.length
            learned = range(max(1, first_targets[j] if first_targets else 1), len(seq))
            self.ids.append(p + toks[:-1])
            self.pred_pos.append([len(p) + n * L + lv - 1 for n in learned for lv in range(L)])
            self.levels.append([lv for _ in learned for lv in range(L)])
            self.targets.append([int(vocab.ids.codes[vocab.row[seq[n]]][lv]) for n in learned for lv in range(L)])
        self.states: list[torch.Tensor] = []

    @torch.no_grad()
    def cache_lower(self, model, n_lower: int, batch: int = 64, desc: str = "") -> None:
        """Outputs of the frozen blocks 0..n_lower-1 (right padding, causal: exact for the real positions)."""
        lm = model.model
        self.states = [None] * len(self.ids)
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        for b in tqdm(range(0, len(order), batch), desc=f"caching frozen blocks {desc}"):
            idx = order[b:b + batch]
            width = max(len(self.ids[i]) for i in idx)
            ids = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, :len(self.ids[i])] = torch.tensor(self.ids[i])
            pos = torch.arange(width)[None].expand(len(idx), -1)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
                h = lm.embed_tokens(ids)
                pe = lm.rotary_emb(h, position_ids=pos)
                for layer in lm.layers[:n_lower]:
                    h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
            for r, i in enumerate(idx):
                self.states[i] = h[r, :len(self.ids[i])].to(torch.bfloat16).clone()


def top_states(model, enc: Encoded, idx: list[int], n_lower: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The final hidden states at every predicting position of the sequences idx (n x d), with each position's
    item-token level and target code, running only the adapted blocks on the cached lower states."""
    lm = model.model
    width = max(len(enc.ids[i]) for i in idx)
    h = torch.zeros(len(idx), width, lm.config.hidden_size)
    for r, i in enumerate(idx):
        h[r, :len(enc.ids[i])] = enc.states[i].float()
    pos = torch.arange(width)[None].expand(len(idx), -1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
        pe = lm.rotary_emb(h, position_ids=pos)
        for layer in lm.layers[n_lower:]:
            h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
        h = lm.norm(h)
    rows = torch.tensor([r for r, i in enumerate(idx) for _ in enc.pred_pos[i]])
    cols = torch.tensor([p for i in idx for p in enc.pred_pos[i]])
    levels = torch.tensor([lv for i in idx for lv in enc.levels[i]])
    targets = torch.tensor([t for i in idx for t in enc.targets[i]])
    return h[rows, cols].float(), levels, targets


def item_logits(hs: torch.Tensor, levels: torch.Tensor, item_head: torch.Tensor, vocab: ItemVocab) -> torch.Tensor:
    if vocab.length == 1:
        return hs @ item_head.T
    head = item_head.view(vocab.length, vocab.vocab, -1)[levels]  # (n, V, d)
    return torch.einsum("nd,nvd->nv", hs, head)


def top_loss(model, enc: Encoded, idx: list[int], n_lower: int, item_head: torch.Tensor, vocab: ItemVocab
             ) -> torch.Tensor:
    """Cross-entropy of the target item tokens (every predicting position), running only the adapted blocks."""
    hs, levels, targets = top_states(model, enc, idx, n_lower)
    return F.cross_entropy(item_logits(hs, levels, item_head, vocab), targets)


@torch.no_grad()
def calibrated_head(base, enc: Encoded, n_lower: int, head: torch.Tensor, vocab: ItemVocab, n: int = 32
                    ) -> torch.Tensor:
    """The item head rescaled so the untrained model's item logits have unit standard deviation on training
    sequences: token-norm rows against the LM's final states give logits of std ~5 (initial loss ~19 against
    log 1682 = 7.4), and the first epoch would go to shrinking them."""
    hs, levels, _ = top_states(base, enc, list(range(min(n, len(enc.ids)))), n_lower)
    return head / item_logits(hs, levels, head, vocab).std().clamp(min=1e-6)


# ------------------------------------------------------------------ evaluation
REPORTED = {"hr@5": "hit_rate@5", "hr@10": "hit_rate@10", "ndcg@10": "ndcg@10"}  # report key -> ranx metric


def rank_metrics(ranked: list[list[str]], targets: list[str]) -> dict[str, float]:
    """HR@5, HR@10, NDCG@10 (training.eval.metrics) of ranked item lists, one target item each."""
    scores = single_target(ranked, targets, list(REPORTED.values()))
    return {key: scores[m] for key, m in REPORTED.items()}


def evaluate_llm(model, tok, vocab, item_head, test: dict[str, list], beam: int, batch: int = 16) -> dict:
    out = {}
    for task in TASKS:
        gems.set_task(model, task)
        ranked = []
        for b in tqdm(range(0, len(test[task]), batch), desc=f"eval {task}"):
            rows = test[task][b:b + batch]
            excl = [set(h) for _, _, h in rows] if task == "recommend" else None
            res = beam_search(model, tok, vocab, item_head, [p for p, _, _ in rows], beam, 10, excl)
            ranked += [[i for i, _ in r] for r in res]
        out[task] = rank_metrics(ranked, [t for _, t, _ in test[task]])
    gems.set_task(model, None)
    return out


def evaluate_baselines(artifacts: Path, test: dict[str, list], data) -> dict[str, dict]:
    """The non-LLM rows on the same test examples: the gateway's backends, plus two personalised-search baselines:
    the category lookup (items whose category query is exactly the query, by training popularity) and BM25's top
    100 re-ranked by SASRec on the user's history."""
    rows = {}
    queries = [search_query(prompt) for prompt, _, _ in test["search"]]
    for task, names in (("search", ["bm25", "dense"]), ("recommend", ["popularity", "cooc", "sasrec"])):
        for name in names:
            backend = load_backend(artifacts, task, name)
            ranked = []
            for n, (_, _, hist) in enumerate(test[task]):
                q = queries[n] if task == "search" else ""
                ans = backend.answer([Request(task, query=q, history=hist, k=10)])[0]
                ranked.append([h.id for h in ans.hits])
            rows[f"{name} ({task})"] = {task: rank_metrics(ranked, [t for _, t, _ in test[task]])}
    targets = [t for _, t, _ in test["search"]]
    popular = {}
    for seq in data.train_sequences().values():
        for i in seq:
            popular[i] = popular.get(i, 0) + 1
    by_query: dict[str, list[str]] = {}
    for i, d in data.items.items():
        by_query.setdefault(d.get("category_query", ""), []).append(i)
    ranked = [sorted(by_query.get(q, []), key=lambda i: -popular.get(i, 0))[:10] for q in queries]
    rows["category lookup (search)"] = {"search": rank_metrics(ranked, targets)}
    bm25 = load_backend(artifacts, "search", "bm25")
    sasrec = load_backend(artifacts, "recommend", "sasrec")
    ranked = []
    for q, (_, _, hist) in zip(queries, test["search"]):
        cands = [h.id for h in bm25.answer([Request("search", query=q, k=100)])[0].hits]
        scores = sasrec.scores(hist)
        ranked.append(sorted(cands, key=lambda i: -scores.get(i, -math.inf))[:10] if scores else cands[:10])
    rows["bm25 + sasrec re-rank (search)"] = {"search": rank_metrics(ranked, targets)}
    return rows


def general_ppl(model, tok, texts: list[str], vocab: ItemVocab) -> dict[str, float]:
    """General-domain perplexity with each task's adapter, over the text vocabulary: the item tokens (whose rows the
    tied input/output embedding shares) are not part of general-domain text."""
    out = {}
    for task in TASKS:
        gems.set_task(model, task)
        out[task] = perplexity(model, tok, texts, max_len=64, batch_size=16, vocab=vocab.first_token)
    gems.set_task(model, None)
    return out


# ------------------------------------------------------------------ training one variant
def train_variant(name: str, base, tok, vocab: ItemVocab, head0: torch.Tensor, enc: dict[str, Encoded],
                  cfg: TrainConfig, general: list[str], gcfg_over: dict | None = None, valid: dict | None = None,
                  state_dir: Path | None = None) -> tuple:
    """Train one variant; after every epoch its validation HR@10 per task (on `valid`) is logged and, with
    state_dir, the epoch's state (adapters, item head, optimiser, schedule, history) saved: a rerun resumes."""
    model = copy.deepcopy(base)
    torch.manual_seed(cfg.seed)  # each variant's adapters start the same whatever ran before it (or beside it)
    gcfg = gems.GEMSConfig(**{**VARIANTS[name], **(gcfg_over or {})})
    gems.attach(model, gcfg)
    n_lower = gems.adapted_layers(model, gcfg)[0]
    ranks = {}
    if gcfg.null_space:
        batches = [tok(general[i:i + 16], return_tensors="pt", padding=True, truncation=True, max_length=64)
                   for i in range(0, len(general), 16)]
        dirs = gems.protected_directions(model, [(b["input_ids"], b["attention_mask"]) for b in batches],
                                         gcfg.null_energy)
        ranks = gems.protect(model, dirs)
    item_head = torch.nn.Parameter(head0.clone())
    grad_form = gcfg.form == "grad"  # the paper's GEMS: its own optimiser moves the layers; AdamW the item head
    params = [] if grad_form else [p for s in gcfg.subspaces for p in gems.parameters(model, s)]
    groups = ([{"params": params, "lr": cfg.lr}] if params else []) + [{"params": [item_head], "lr": cfg.head_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    gopt = gems.GradientSubspaceOptimizer(model, gcfg, cfg.grad_lr) if grad_form else None
    steps_per_epoch = math.ceil(len(enc["recommend"].ids) / cfg.batch_size)
    per_step = {t: math.ceil(len(enc[t].ids) / steps_per_epoch) for t in TASKS}  # every case once an epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], pct_start=0.1,
                                                total_steps=cfg.epochs * steps_per_epoch)
    history = {"cos": [], "loss": {t: [] for t in TASKS}, "valid_hr10": []}
    rng = random.Random(cfg.seed)
    start = 0
    last = state_dir / "last.pt" if state_dir else None
    if last is not None and last.exists():
        state = torch.load(last)
        with torch.no_grad():
            for key, t in gems.adapter_state(model).items():
                t.copy_(state["adapters"][key])
            item_head.copy_(state["head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        if gopt is not None:
            gopt.load_state_dict(state["gopt"])
        history, start = state["history"], state["epoch"]
        print(f"{name}: resumed after epoch {start}")
    for epoch in range(cfg.epochs):
        orders = {t: rng.sample(range(len(enc[t].ids)), len(enc[t].ids)) for t in TASKS}  # drawn when skipped too
        if epoch < start:
            continue
        model.train()
        bar = tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{cfg.epochs}")
        for s in bar:
            grads = {}
            for t in TASKS:
                gems.set_task(model, t)
                idx = orders[t][s * per_step[t]:(s + 1) * per_step[t]]
                if not idx:
                    continue
                loss = top_loss(model, enc[t], idx, n_lower, item_head, vocab)
                loss.backward()
                grads[t] = gems.layer_gradients(model) if grad_form else gems.task_gradients(model, gcfg)
                history["loss"][t].append(loss.item())
            if grad_form:
                cos = gems.gradient_cosine(grads)
                torch.nn.utils.clip_grad_norm_([item_head], 1.0)
                gopt.step(grads, cfg.grad_lr * opt.param_groups[-1]["lr"] / cfg.head_lr)  # the same schedule
                opt.step()
            else:
                cos = gems.split_gradients(model, grads, gcfg)
                before = gems.snapshot_A(model)
                torch.nn.utils.clip_grad_norm_(params + [item_head], 1.0)
                opt.step()
                gems.project_updates(model, before)
            history["cos"].append(cos)
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.set_postfix(search=f"{history['loss']['search'][-1]:.3f}",
                            rec=f"{history['loss']['recommend'][-1]:.3f}", cos=f"{cos:.2f}")
        model.eval()
        if valid:
            hr = {t: m["hr@10"] for t, m in evaluate_llm(model, tok, vocab, item_head.detach(), valid, 10).items()}
            history["valid_hr10"].append(hr)
            print(f"{name} epoch {epoch + 1}: valid HR@10 " + ", ".join(f"{t} {v:.3f}" for t, v in hr.items()),
                  flush=True)
        if last is not None:
            last.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"adapters": gems.adapter_state(model), "head": item_head.detach(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "history": history, "epoch": epoch + 1,
                        "gopt": gopt.state_dict() if gopt is not None else None}, last)
    model.eval()
    gems.set_task(model, None)
    return model, gcfg, item_head.detach(), history, ranks


# ------------------------------------------------------------------ the pipeline
def run(out: Path, artifacts: Path, data_dir: Path, variants: list[str], cfg: TrainConfig, lm: str | None,
        results: Path, gcfg_over: dict | None = None, baselines: bool = True) -> dict:
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
    t0 = time.time()
    data = load_recsys(data_dir / "ml100k")
    base, tok = load_causal_lm(lm, dtype=torch.float32)
    ids = item_ids(artifacts, out, cfg.ids)
    features = None
    if cfg.item_init == "features":
        scale = float(base.get_input_embeddings().weight.detach().norm(dim=-1).mean())
        features = item_features(artifacts, ids.ids, base.config.hidden_size, scale, cfg.seed)
    vocab, head0 = add_item_tokens(base, tok, ids, {i: d.get("title", i) for i, d in data.items.items()}, features)
    train = examples(data, vocab, "train", cfg.search_examples, cfg, cfg.seed)
    test = examples(data, vocab, "test", cfg.eval_users, cfg, cfg.seed + 1)
    valid = examples(data, vocab, "valid", cfg.valid_examples, cfg, cfg.seed + 2)
    null_texts, ppl_texts = general_texts(data_dir, cfg.general_texts)
    n_lower = len(base.model.layers) - gems.GEMSConfig(**(gcfg_over or {})).top_layers
    enc = {"search": Encoded(tok, vocab, train["search"]),
           "recommend": Encoded(tok, vocab, sequences=recommend_windows(data, vocab, cfg.history, cfg.recommend_users))}
    for t in TASKS:
        enc[t].cache_lower(base, n_lower, desc=t)
    if cfg.item_init == "features":
        head0 = calibrated_head(base, enc["recommend"], n_lower, head0, vocab)
    report = {"config": asdict(cfg), "test_examples": len(test["search"]), "rows": {}, "curves": {},
              "item_ids": {"scheme": cfg.ids, "init": cfg.item_init, "items": len(ids.ids),
                           "leaves": len({tuple(r[:-1]) for r in ids.codes}) if ids.length > 1 else len(ids.ids),
                           "collisions": int(len(ids.ids) - len({tuple(r[:-1]) for r in ids.codes}))
                           if ids.length > 1 else 0,
                           "token_mean_cosine": mean_pairwise_cosine(head0),
                           "train_cases": {t: sum(len(p) for p in enc[t].pred_pos) for t in TASKS}}}
    print(f"item IDs: {json.dumps(report['item_ids'])}", flush=True)
    if baselines:
        report["rows"].update({f"(a) {k}": v for k, v in evaluate_baselines(artifacts, test, data).items()})
    gems.attach(probe := copy.deepcopy(base), gems.GEMSConfig(variant="joint"))
    report["general_ppl_base"] = general_ppl(probe, tok, ppl_texts, vocab)["search"]
    del probe
    labels = LABELS
    for name in variants:
        t1 = time.time()
        model, gcfg, head, hist, ranks = train_variant(name, base, tok, vocab, head0, enc, cfg, null_texts, gcfg_over,
                                                       valid, out / "variants" / name)
        metrics = evaluate_llm(model, tok, vocab, head, test, cfg.beam)
        metrics["general_ppl"] = general_ppl(model, tok, ppl_texts, vocab)
        metrics["train_s"] = time.time() - t1
        metrics["final_loss"] = {t: float(np.mean(hist["loss"][t][-10:])) for t in TASKS}
        metrics["valid_hr10_per_epoch"] = hist["valid_hr10"]
        if ranks:
            metrics["protected_rank_mean"] = float(np.mean(list(ranks.values())))
        report["rows"][labels[name]] = metrics
        report["curves"][name] = hist["cos"]
        print(f"{labels[name]}: {json.dumps({t: metrics[t] for t in TASKS})} ppl {metrics['general_ppl']}",
              flush=True)
        if name == "gems":
            save_checkpoint(out, model, gcfg, head, tok, vocab, base, lm, cfg)
        report["seconds"] = time.time() - t0
        write_report(report, results)  # after every variant: an interrupted run keeps the rows it finished
    if not variants:
        write_report(report, results)
    return report


def save_checkpoint(out: Path, model, gcfg, head, tok, vocab: ItemVocab, base, lm, cfg: TrainConfig) -> None:
    emb = base.get_input_embeddings().weight[vocab.first_token:vocab.first_token + len(vocab.tokens())]
    gems.save_adapters(model, gcfg, out, {"item_head": head, "item_embeddings": emb.detach().clone()},
                       lm=str(lm) if lm else None, history=cfg.history, search_history=cfg.search_history,
                       general_texts=cfg.general_texts)  # the null space's sentences (the continual update's too)
    for t in TASKS:
        gems.export_peft(model, gcfg, t, out / "peft" / t)
    write_meta(out, backend="gems", lm=str(lm) if lm else None, variant=gcfg.variant, itemids="itemids",
               history=cfg.history, search_history=cfg.search_history, beam=cfg.beam, ids=cfg.ids)
    for t in TASKS:  # the registry's layout: <artifacts>/<task>/gems -> this checkpoint
        write_meta(out.parent / t / "gems", backend="gems", checkpoint=str(Path("..") / ".." / out.name))


def write_report(report: dict, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "gems-table.json").write_text(json.dumps(report, indent=2) + "\n")
    head = ("| system | search HR@5 | HR@10 | NDCG@10 | rec HR@5 | HR@10 | NDCG@10 | general ppl (search / rec "
            "adapter) |")
    lines = [f"GEMS comparison on {report['test_examples']} held-out test examples per task (ML-100K; "
             f"base general-domain perplexity {report['general_ppl_base']:.2f})", "", head,
             "|" + "---|" * 8]
    for name, row in report["rows"].items():
        cells = []
        for t in TASKS:
            m = row.get(t)
            cells += [f"{m['hr@5']:.3f}", f"{m['hr@10']:.3f}", f"{m['ndcg@10']:.3f}"] if m else ["", "", ""]
        ppl = row.get("general_ppl")
        cells.append(f"{ppl['search']:.2f} / {ppl['recommend']:.2f}" if ppl else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (results / "gems-table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, cos in report["curves"].items():
        c = np.array(cos, dtype=float)
        if np.isnan(c).all():
            continue
        w = max(1, len(c) // 30)
        ax.plot(np.convolve(c, np.ones(w) / w, mode="valid"), label=name)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="training step", ylabel="cos(g_search, g_recommend)", title="shared-subspace gradient cosine")
    ax.legend()
    fig.tight_layout()
    fig.savefig(results / "gems-grad-cosine.png", dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("artifacts/v1/gems"))
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--lm", default=None)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--no-baselines", action="store_true", help="skip the (a) rows (when variants run apart)")
    add_config_args(p, gems.GEMSConfig, ADAPTER_OPTIONS)
    add_config_args(p, TrainConfig)
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    run(a.out, a.artifacts, a.data, a.variants.split(","), config_from_args(TrainConfig, a), a.lm, a.results,
        config_values(gems.GEMSConfig, a, ADAPTER_OPTIONS), baselines=not a.no_baselines)


if __name__ == "__main__":
    main()
