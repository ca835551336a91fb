"""Continual learning of the GEMS model (the self-evolving loop's second recommender, issue #17), with Joint
Flashback Adaptation (Zhao et al., 2025, "Joint Flashback Adaptation for Forgetting-Resistant Instruction Tuning").

    python -m training.evolve_gems --threads 1     # table + plot: results/evolve-gems-ml100k.{json,png}

The time split is training.evolve's (MovieLens-100k at the 80% timestamp quantile; the future in rounds + 1
windows, round r learns window r and is tested on window r + 1). The base model is GEMS (the paper's gradient
subspaces with the general-domain null space, training.train_gems) trained on the past only: its item tokens are
built from the past-only SASRec of training.evolve (collaborative) and MiniLM (content), and it learns the past's
recommendation windows and personalised search cases. Each round then updates the recommendation task's gradient
subspace(s) (`subspaces`; default the recommendation subspace alone, so search reads nothing that moves) on the
window's new interactions, with the item head and everything else frozen:

  none       no update
  naive      fine-tune on the new interactions (loss on the targets inside the window, the earlier items context)
  replay     naive + a stored sample of past recommendation windows learned beside them
  jfa        Joint Flashback Adaptation: naive + flashbacks, prompts of the old tasks without labels (past users'
             recommendation prompts, past search prompts, general-domain sentences), on which the symmetric KL to
             the frozen pre-update model is added (the flashback divergence), + latent tasks between the old and the
             new task in the adapter increment space: with the round's increment Delta = D - D_before, the model at
             D_before + a Delta (a ~ U(0, 1)) learns a * (new-task loss) + (1 - a) * (flashback divergence), so every
             model on the path from the old to the new one is trained for a mix of both
Measured after every round on fixed samples (the same cases for every method): next-window HR@10 / NDCG@10 (gain),
old-period recommendation HR@10 (each past user's last past item), old-period personalised search HR@10 (the same
cases' queries) and general-domain perplexity with each task's adapter (forgetting). Scoring runs the adapted top
blocks on cached frozen-block states (the atomic IDs' one-level beam is the item head's arg-sort: the served
answer, seen items excluded for recommendation). Hyperparameters: EvolveGEMSConfig. OMP_WAIT_POLICY=PASSIVE, --threads.
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
from indexing.docids import atomic_ids
from models.causal_lm import load_causal_lm
from models.gems import subspaces as gems
from models.gems.item_ids import ItemVocab, add_item_tokens, recommend_prompt, search_prompt
from models.sasrec.model import training_windows
from training import evolve
from training import train_gems as tg
from training.common import add_config_args, add_threads_arg, config_from_args, set_threads
from training.eval.metrics import single_target

METHODS = ("none", "naive", "replay", "jfa")


@dataclass
class EvolveGEMSConfig:
    """The GEMS continual-learning experiment: the one place these defaults live."""
    cut: float = 0.8  # the past / future boundary (quantile of timestamps), as training.evolve
    rounds: int = 4
    sasrec_epochs: int = 60  # the past-only SASRec whose item embedding builds the item tokens (training.evolve's)
    base_epochs: int = 3  # GEMS on the past
    search_examples: int = 3000  # past (history, query, item) search cases the base learns
    history: int = 20  # items in a recommendation prompt / training window
    search_history: int = 10
    subspaces: str = "recommend"  # what an update moves: "recommend" or "shared,recommend"
    update_epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3  # the update's Adam step in the projected subspace
    replay_windows: int = 256  # past recommendation windows replayed per round (replay)
    flashbacks: int = 128  # prompts drawn per old task (rec, search) per round, and general sentences (jfa)
    flashback_batch: int = 16  # flashbacks of each kind per step
    flashback_weight: float = 1.0
    latent_weight: float = 0.5
    eval_cases: int = 2000  # sampled test cases per window / old period / search (the same for every method)
    general_texts: int = 200  # general-domain sentences: the null space, and as many for perplexity
    max_windows: int | None = None  # cap on the training windows of the base and of each round (smoke tests)
    seed: int = 0


# ------------------------------------------------------------------ data
def item_rows(split: dict) -> list[str | None]:
    """SASRec index (1-based, training.evolve) -> catalogue item id."""
    return [None] + list(split["items"])


def new_windows(window: dict, ids: list[str] | None, L: int) -> tuple[list[list[str]], list[int]]:
    """A future window's training sequences: each user's items up to the window's end, tiled into windows of L + 1
    items, with the index of the first item inside the window (the targets learned; the earlier ones are context).
    window: user -> (items before, items inside), as indices into `ids` (or item ids themselves with ids=None)."""
    seqs, firsts = [], []
    for before, inside in window.values():
        full = before + inside
        for inp, tgt in training_windows(full, L, first_target=len(before)):
            seq = inp + [tgt[-1]]
            seqs.append([ids[i] for i in seq] if ids is not None else seq)
            firsts.append(next(n + 1 for n, t in enumerate(tgt) if t))
    return seqs, firsts


def past_search_cases(base: dict, ids: list[str], data, n: int, rng: random.Random) -> list[tuple]:
    """n past (prompt history, query, item) cases: an item of a user's past sequence after at least one other."""
    cases = [(u, s[:i], s[i]) for u, s in base.items() for i in range(1, len(s))]
    picked = rng.sample(cases, min(n, len(cases)))
    return [([ids[i] for i in h], data.query_for(u, ids[t]), ids[t]) for u, h, t in picked]


class TextStates:
    """General-domain sentences with cached frozen-block states (train_gems.Encoded's cache, every position)."""

    def __init__(self, tok, texts: list[str], max_len: int = 64):
        self.enc = tg.Encoded.__new__(tg.Encoded)
        self.enc.ids = [tok(t, add_special_tokens=False)["input_ids"][:max_len] for t in texts]
        self.enc.ids = [i for i in self.enc.ids if len(i) >= 2]
        self.enc.pred_pos = [list(range(len(i) - 1)) for i in self.enc.ids]
        self.enc.levels = [[0] * (len(i) - 1) for i in self.enc.ids]
        self.enc.targets = [i[1:] for i in self.enc.ids]
        self.enc.states = []


def text_logits(model, ts: TextStates, idx: list[int], n_lower: int, vocab: ItemVocab) -> tuple:
    hs, _, targets = tg.top_states(model, ts.enc, idx, n_lower)
    return model.lm_head(hs)[:, :vocab.first_token].float(), targets


@torch.no_grad()
def cached_ppl(model, ts: TextStates, n_lower: int, vocab: ItemVocab, task: str) -> float:
    gems.set_task(model, task)
    nll, n = 0.0, 0
    for b in range(0, len(ts.enc.ids), 16):
        logits, targets = text_logits(model, ts, list(range(b, min(b + 16, len(ts.enc.ids)))), n_lower, vocab)
        nll += float(F.cross_entropy(logits, targets, reduction="sum"))
        n += len(targets)
    return math.exp(nll / n)


@torch.no_grad()
def cached_rank(model, enc: tg.Encoded, rows: list[tuple], head: torch.Tensor, n_lower: int, task: str,
                vocab: ItemVocab) -> dict:
    """HR@10 / NDCG@10 of the model's top 10 at each row's item position (seen items excluded for recommend), and
    the per-case hits for paired comparisons."""
    gems.set_task(model, task)
    ranked = []
    for b in range(0, len(rows), 64):
        idx = list(range(b, min(b + 64, len(rows))))
        hs, levels, _ = tg.top_states(model, enc, idx, n_lower)
        scores = tg.item_logits(hs, levels, head, vocab)
        for r, i in enumerate(idx):
            if task == "recommend":
                seen = [vocab.row[h] for h in rows[i][2] if h in vocab.row]
                scores[r, seen] = -math.inf
        top = scores.topk(10, dim=-1).indices
        ranked += [[vocab.ids.ids[int(c)] for c in row] for row in top]
    gems.set_task(model, None)
    targets = [t for _, t, _ in rows]
    out = single_target(ranked, targets, ["hit_rate@10", "ndcg@10"])
    out["hits"] = "".join("1" if t in r else "0" for r, t in zip(ranked, targets))
    return out


# ------------------------------------------------------------------ the update
def moving_deltas(model, subspaces: tuple[str, ...]) -> list[torch.nn.Parameter]:
    return [m.D[s] for m in gems.modules(model).values() for s in subspaces if s in m.D]


def flashback_divergence(model, reference, flash: dict, n_lower: int, head: torch.Tensor, vocab: ItemVocab,
                         task: str, rng: random.Random, k: int) -> torch.Tensor | None:
    """The symmetric KL between the model's and the frozen pre-update model's outputs on k flashbacks of each old
    task this adapter answers (task "recommend": recommendation prompts and general sentences; "search": search
    prompts and general sentences): item distributions at the item position, token distributions on text."""
    terms = []
    for kind, enc in (("recommend", flash.get("recommend")), ("search", flash.get("search"))):
        if enc is None or kind != task:
            continue
        idx = rng.sample(range(len(enc.ids)), min(k, len(enc.ids)))
        gems.set_task(reference, task)
        with torch.no_grad():
            hr, lv, _ = tg.top_states(reference, enc, idx, n_lower)
            ref = tg.item_logits(hr, lv, head, vocab)
        hs, lv, _ = tg.top_states(model, enc, idx, n_lower)
        terms.append(evolve.symmetric_kl(tg.item_logits(hs, lv, head, vocab), ref))
    ts = flash.get("text")
    if ts is not None:
        idx = rng.sample(range(len(ts.enc.ids)), min(k // 2 or 1, len(ts.enc.ids)))
        gems.set_task(reference, task)
        with torch.no_grad():
            ref, _ = text_logits(reference, ts, idx, n_lower, vocab)
        mine, _ = text_logits(model, ts, idx, n_lower, vocab)
        terms.append(evolve.symmetric_kl(mine, ref))
    return sum(terms) if terms else None


def backward_grads(model, loss: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
    loss.backward()
    return {n: g * scale for n, g in gems.layer_gradients(model).items()}


def add_into(total: dict, grads: dict) -> None:
    for n, g in grads.items():
        total[n] = total[n] + g if n in total else g


def update(model, method: str, head: torch.Tensor, new: tg.Encoded, replay: tg.Encoded | None, flash: dict,
           n_lower: int, vocab: ItemVocab, cfg: EvolveGEMSConfig, rng: random.Random,
           gcfg: gems.GEMSConfig | None = None) -> tuple:
    """One round of `method`; returns (the updated copy, mean losses). Only the D of cfg.subspaces move (the
    gradient subspaces' rank and refresh from gcfg, the model's GEMS config)."""
    if method == "none":
        return model, {}
    only = tuple(cfg.subspaces.split(","))
    reference = model
    model = copy.deepcopy(model)
    gcfg = gcfg or gems.GEMSConfig(variant="gems", form="grad")
    gopt = gems.GradientSubspaceOptimizer(model, gcfg, cfg.lr, only=only)
    for p in moving_deltas(model, only):
        p.requires_grad_(True)
    before = {id(p): p.detach().clone() for p in moving_deltas(model, only)}
    tasks = ("recommend", "search") if "shared" in only else ("recommend",)  # which adapters the update reaches
    logs: dict[str, list[float]] = {"new": [], "flashback": [], "latent": []}
    steps = math.ceil(len(new.ids) / cfg.batch_size)
    for _ in range(cfg.update_epochs):
        order = rng.sample(range(len(new.ids)), len(new.ids))
        for s in tqdm(range(steps), desc=f"{method} update", leave=False):
            grads: dict[str, dict] = {t: {} for t in tasks}
            gems.set_task(model, "recommend")
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            loss = tg.top_loss(model, new, idx, n_lower, head, vocab)
            logs["new"].append(loss.item())
            if method == "replay" and replay is not None:
                loss = loss + tg.top_loss(model, replay, rng.sample(range(len(replay.ids)),
                                                                    min(cfg.batch_size, len(replay.ids))),
                                          n_lower, head, vocab)
            add_into(grads["recommend"], backward_grads(model, loss))
            if method == "jfa":
                for t in tasks:
                    gems.set_task(model, t)
                    div = flashback_divergence(model, reference, flash, n_lower, head, vocab, t, rng,
                                               cfg.flashback_batch)
                    if div is not None:
                        logs["flashback"].append(div.item())
                        add_into(grads[t], backward_grads(model, cfg.flashback_weight * div))
                if cfg.latent_weight > 0:
                    a = rng.random()
                    add_into(grads["recommend"], latent_task_grads(model, before, only, a, new, idx, reference, flash,
                                                                   n_lower, head, vocab, cfg, rng, logs))
            gopt.step({t: g for t, g in grads.items() if g})
            for p in moving_deltas(model, only):
                p.grad = None
    gems.set_task(model, None)
    for p in moving_deltas(model, only):
        p.requires_grad_(False)
    return model.eval(), {k: round(float(np.mean(v)), 4) for k, v in logs.items() if v}


def latent_task_grads(model, before: dict, only: tuple[str, ...], a: float, new: tg.Encoded, idx: list[int],
                      reference, flash: dict, n_lower: int, head: torch.Tensor, vocab: ItemVocab,
                      cfg: EvolveGEMSConfig, rng: random.Random, logs: dict) -> dict[str, torch.Tensor]:
    """A latent task between the old and the new task, in the adapter increment space: the moving D are set to
    D_before + a (D - D_before), the loss there is a * (new-task loss) + (1 - a) * (flashback divergence), and its
    gradient with respect to D is a times the gradient at that point (chain rule); the D are restored."""
    params = moving_deltas(model, only)
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.copy_(before[id(p)] + a * (p - before[id(p)]))
    try:
        gems.set_task(model, "recommend")
        loss = a * tg.top_loss(model, new, idx, n_lower, head, vocab)
        div = flashback_divergence(model, reference, flash, n_lower, head, vocab, "recommend", rng,
                                   cfg.flashback_batch)
        if div is not None:
            loss = loss + (1 - a) * div
        logs["latent"].append(loss.item())
        return backward_grads(model, cfg.latent_weight * loss, scale=a)
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)


# ------------------------------------------------------------------ the live loop's GEMS side (training.optimiser)
class GEMSUpdater:
    """The served GEMS checkpoint, updated by rounds of served events (training.optimiser --models gems): each round
    moves the recommendation subspace (cfg.subspaces) with `method` on the round's new interactions, with the old
    tasks' flashbacks drawn from the training split (recommendation and search prompts, general text); the null
    space of the training run is recomputed from the same general-domain sentences, so updates keep it."""

    def __init__(self, directory: Path, data_dir: Path, cfg: EvolveGEMSConfig | None = None, method: str = "jfa",
                 old: list | None = None):
        from models.gems.backend import GEMSModel

        self.cfg, self.method = cfg or EvolveGEMSConfig(), method
        if method not in METHODS[1:]:
            raise ValueError(f"unknown GEMS update {method!r}; known: {', '.join(METHODS[1:])}")
        self.directory = Path(directory)
        served = GEMSModel(self.directory, dtype=torch.float32, student=False)
        self.model, self.tok, self.vocab, self.head = served.model, served.tok, served.vocab, served.item_head
        self.gcfg, self.meta = gems.load_config(self.directory)
        self.history, self.search_history = served.history, served.search_history
        self.n_lower = len(self.model.model.layers) - self.gcfg.top_layers
        data = load_recsys(data_dir / "ml100k")
        null_texts, _ = general_texts(data_dir, int(self.meta.get("general_texts", tg.TrainConfig.general_texts)))
        if self.gcfg.null_space:
            batches = [self.tok(null_texts[i:i + 16], return_tensors="pt", padding=True, truncation=True,
                                max_length=64) for i in range(0, len(null_texts), 16)]
            gems.protect(self.model, gems.protected_directions(
                self.model, [(b["input_ids"], b["attention_mask"]) for b in batches], self.gcfg.null_energy))
        rng = random.Random(self.cfg.seed)
        train = [e for e in data.examples("train") if e.target in self.vocab.row]
        picked = rng.sample(train, min(self.cfg.flashbacks, len(train)))
        self.flash = {"recommend": self.cached([(recommend_prompt(self.vocab, e.history, self.history), e.target,
                                                 e.history) for e in picked]),
                      "search": self.cached([(search_prompt(e.query, self.vocab, e.history, self.search_history),
                                              e.target, e.history) for e in picked]),
                      "text": TextStates(self.tok, null_texts[:self.cfg.flashbacks])}
        self.flash["text"].enc.cache_lower(self.model, self.n_lower, desc="flashbacks text")
        windows = [w for seq in rng.sample(list(data.train_sequences().values()),
                                           min(self.cfg.replay_windows, len(data.sequences)))
                   for w in [[i for i in seq if i in self.vocab.row][-(self.history + 1):]] if len(w) >= 2]
        self.replay = tg.Encoded(self.tok, self.vocab, sequences=windows)
        self.replay.cache_lower(self.model, self.n_lower, desc="replay")
        self.old = [(h, t, q) for h, t, q in (old or []) if t in self.vocab.row]
        self.old_enc = {"recommend": self.cached(self.rows(self.old, "recommend")),
                        "search": self.cached(self.rows(self.old, "search"))}

    def cached(self, rows: list[tuple]) -> tg.Encoded:
        enc = tg.Encoded(self.tok, self.vocab, rows)
        enc.cache_lower(self.model, self.n_lower)
        return enc

    def rows(self, cases: list[tuple], task: str) -> list[tuple]:
        """(history, target, query) cases -> (prompt, target, history) rows of the task."""
        if task == "search":
            return [(search_prompt(q, self.vocab, h, self.search_history), t, h) for h, t, q in cases]
        return [(recommend_prompt(self.vocab, h, self.history), t, h) for h, t, _ in cases]

    def hr10(self, model, enc: tg.Encoded, rows: list[tuple], task: str) -> float:
        return cached_rank(model, enc, rows, self.head, self.n_lower, task, self.vocab)["hit_rate@10"] if rows else 0.0

    def learn(self, window: dict[str, tuple[list[str], list[str]]], held: list[tuple]) -> tuple:
        """window: user -> (items before the round, items of the round learned); held: (history, target, query)
        cases of the newest period, not learned. Returns (the candidate, its figures beside the served model's)."""
        window = {u: ([i for i in b if i in self.vocab.row], [i for i in s if i in self.vocab.row])
                  for u, (b, s) in window.items()}
        seqs, firsts = new_windows({u: w for u, w in window.items() if w[1]}, None, self.history)
        new = tg.Encoded(self.tok, self.vocab, sequences=seqs, first_targets=firsts)
        new.cache_lower(self.model, self.n_lower, desc="new events")
        candidate, losses = update(self.model, self.method, self.head, new, self.replay, self.flash, self.n_lower,
                                   self.vocab, self.cfg, random.Random(self.cfg.seed), self.gcfg)
        held = [(h, t, q) for h, t, q in held if t in self.vocab.row]
        held_rows = self.rows(held, "recommend")
        held_enc = self.cached(held_rows) if held_rows else None
        figures = {"method": self.method, "held_out": len(held_rows), "losses": losses}
        for key, enc, rows, task in (("newest_hr10", held_enc, held_rows, "recommend"),
                                     ("old_hr10", self.old_enc["recommend"], self.rows(self.old, "recommend"),
                                      "recommend"),
                                     ("search_hr10", self.old_enc["search"], self.rows(self.old, "search"), "search")):
            figures[key] = {"served": round(self.hr10(self.model, enc, rows, task), 4),
                            "candidate": round(self.hr10(candidate, enc, rows, task), 4)}
        return candidate, figures

    def save(self, candidate, out: Path, **meta) -> None:
        """The candidate as a served GEMS checkpoint at out: the served one's files (item IDs, the vLLM base: the
        item tokens and head do not move), new adapters and peft exports, meta. The student is left out: it was
        cloned from the old teacher."""
        import shutil

        out.mkdir(parents=True, exist_ok=True)
        for f in self.directory.iterdir():
            if f.name in ("adapters.safetensors", "gems_config.json", "meta.json", "peft") or \
                    f.name.startswith("student"):
                continue
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, out / f.name)
        emb = self.model.get_input_embeddings().weight
        first = self.vocab.first_token
        gems.save_adapters(candidate, self.gcfg, out, {
            "item_head": self.head, "item_embeddings": emb[first:first + len(self.vocab.tokens())].detach().clone()},
            **self.meta)
        for t in self.gcfg.tasks:
            gems.export_peft(candidate, self.gcfg, t, out / "peft" / t)
        from models.artifacts import read_meta, write_meta

        write_meta(out, **{**{k: v for k, v in read_meta(self.directory).items() if k != "built_at"}, **meta})

    def accept(self, candidate, directory: Path) -> None:
        """The candidate is served from now on (published at `directory`): the next round starts from it."""
        self.model, self.directory = candidate, Path(directory).resolve()


# ------------------------------------------------------------------ the experiment
def base_model(split: dict, cfg: EvolveGEMSConfig, artifacts: Path, data_dir: Path, cache: Path, lm: str | None
               ) -> dict:
    """The LM with item tokens and the GEMS model trained on the past (its epochs resumable in cache)."""
    rng = random.Random(cfg.seed)
    data = load_recsys(data_dir / "ml100k")
    ids = item_rows(split)
    sas_dir = evolve.base_sasrec(split, evolve.EvolveConfig(cut=cfg.cut, rounds=cfg.rounds,
                                                            base_epochs=cfg.sasrec_epochs, seed=cfg.seed), cache)
    base, tok = load_causal_lm(lm, dtype=torch.float32)
    catalogue = json.loads((artifacts / "search" / "dense" / "ids.json").read_text())
    docids = atomic_ids(catalogue)
    scale = float(base.get_input_embeddings().weight.detach().norm(dim=-1).mean())
    feats = tg.item_features(artifacts, docids.ids, base.config.hidden_size, scale, cfg.seed, sasrec=sas_dir)
    vocab, head0 = add_item_tokens(base, tok, docids, {}, feats)
    tcfg = tg.TrainConfig(epochs=cfg.base_epochs, history=cfg.history, search_history=cfg.search_history,
                          batch_size=cfg.batch_size, search_examples=cfg.search_examples, seed=cfg.seed)
    n_lower = len(base.model.layers) - gems.GEMSConfig().top_layers
    windows = [[ids[i] for i in inp + [tgt[-1]]] for s in split["base"].values() if len(s) >= 2
               for inp, tgt in training_windows(s, cfg.history)][:cfg.max_windows]
    probe = tg.Encoded(tok, vocab, sequences=windows[:32])
    probe.cache_lower(base, n_lower, desc="calibration")
    head0 = tg.calibrated_head(base, probe, n_lower, head0, vocab)
    null_texts, ppl_texts = general_texts(data_dir, cfg.general_texts)
    state_dir = cache / f"gems-base-cut{cfg.cut}-e{cfg.base_epochs}-h{cfg.history}-s{cfg.seed}"
    last = state_dir / "last.pt"
    done = last.exists() and torch.load(last, weights_only=False)["epoch"] >= cfg.base_epochs
    search = past_search_cases(split["base"], ids, data, cfg.search_examples, rng)
    enc = {"recommend": tg.Encoded(tok, vocab, sequences=windows),
           "search": tg.Encoded(tok, vocab, [(search_prompt(q, vocab, h, cfg.search_history), t, h)
                                            for h, q, t in search])}
    if not done:
        for t in tg.TASKS:
            enc[t].cache_lower(base, n_lower, desc=f"past {t}")
    model, gcfg, head, _, _ = tg.train_variant("gems", base, tok, vocab, head0, enc, tcfg, null_texts, None, None,
                                               state_dir)
    return {"model": model, "tok": tok, "vocab": vocab, "head": head, "n_lower": n_lower, "data": data, "ids": ids,
            "ppl_texts": ppl_texts, "null_texts": null_texts, "base_lm": base}


def run(cfg: EvolveGEMSConfig, artifacts: Path, data_dir: Path, cache: Path, methods, lm: str | None = None
        ) -> dict:
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
    t0 = time.time()
    split = evolve.time_split(data_dir / "ml100k", evolve.EvolveConfig(cut=cfg.cut, rounds=cfg.rounds))
    b = base_model(split, cfg, artifacts, data_dir, cache, lm)
    model, tok, vocab, head, n_lower, ids = b["model"], b["tok"], b["vocab"], b["head"], b["n_lower"], b["ids"]
    rng = random.Random(cfg.seed + 1)
    H = cfg.history

    def rec_rows(cases):
        return [(recommend_prompt(vocab, [ids[i] for i in c.history], H), ids[c.target], [ids[i] for i in c.history])
                for c in cases]

    def cached(rows, desc):
        enc = tg.Encoded(tok, vocab, rows)
        enc.cache_lower(b["base_lm"], n_lower, desc=desc)
        return enc

    sample = (lambda xs: rng.sample(xs, min(cfg.eval_cases, len(xs))))
    old = sample(split["old_cases"])
    tests = {"old": rec_rows(old),
             "search": [(search_prompt(b["data"].query_for(None, ids[c.target]), vocab,
                                       [ids[i] for i in c.history], cfg.search_history), ids[c.target],
                         [ids[i] for i in c.history]) for c in old]}
    tests.update({f"new{r}": rec_rows(sample(split["new_cases"][r])) for r in range(cfg.rounds + 1)})
    encs = {k: cached(v, k) for k, v in tests.items()}
    ppl = TextStates(tok, b["ppl_texts"])
    ppl.enc.cache_lower(b["base_lm"], n_lower, desc="general text")
    past = [s for s in split["base"].values() if len(s) >= 2]
    flash_rows = rng.sample(past, min(cfg.flashbacks, len(past)))
    flash = {"recommend": cached([(recommend_prompt(vocab, [ids[i] for i in s], H), ids[s[-1]], [])
                                  for s in flash_rows], "flashbacks rec"),
             "search": cached([(search_prompt(q, vocab, h, cfg.search_history), t, h)
                               for h, q, t in past_search_cases(split["base"], ids, b["data"], cfg.flashbacks, rng)],
                              "flashbacks search"),
             "text": TextStates(tok, b["null_texts"][:cfg.flashbacks])}
    flash["text"].enc.cache_lower(b["base_lm"], n_lower, desc="flashbacks text")
    replay_windows = [[ids[i] for i in inp + [tgt[-1]]] for s in rng.sample(past, min(cfg.replay_windows, len(past)))
                      for inp, tgt in training_windows(s, H)][:cfg.replay_windows]
    replay = tg.Encoded(tok, vocab, sequences=replay_windows)
    replay.cache_lower(b["base_lm"], n_lower, desc="replay")
    rounds = []
    for r in range(cfg.rounds):
        seqs, firsts = new_windows(split["windows"][r], ids, H)
        enc = tg.Encoded(tok, vocab, sequences=seqs[:cfg.max_windows], first_targets=firsts[:cfg.max_windows])
        enc.cache_lower(b["base_lm"], n_lower, desc=f"window {r}")
        rounds.append(enc)
    rows = []
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        current = model
        mrng = random.Random(cfg.seed + 2)
        torch.manual_seed(cfg.seed)
        for r in range(cfg.rounds + 1):
            losses = {}
            if r > 0:
                current, losses = update(current, method, head, rounds[r - 1], replay, flash, n_lower, vocab, cfg,
                                         mrng)
            new = cached_rank(current, encs[f"new{r}"], tests[f"new{r}"], head, n_lower, "recommend", vocab)
            old_r = cached_rank(current, encs["old"], tests["old"], head, n_lower, "recommend", vocab)
            srch = cached_rank(current, encs["search"], tests["search"], head, n_lower, "search", vocab)
            row = {"method": method, "round": r, "new_hr10": new["hit_rate@10"], "new_ndcg10": new["ndcg@10"],
                   "old_hr10": old_r["hit_rate@10"], "search_hr10": srch["hit_rate@10"],
                   "ppl_recommend": round(cached_ppl(current, ppl, n_lower, vocab, "recommend"), 3),
                   "ppl_search": round(cached_ppl(current, ppl, n_lower, vocab, "search"), 3),
                   "new_n": len(tests[f"new{r}"]), "old_n": len(tests["old"]), "losses": losses,
                   "new_hits": new["hits"], "old_hits": old_r["hits"], "search_hits": srch["hits"]}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.endswith("_hits")}), flush=True)
    return {"config": asdict(cfg), "cut_timestamp": split["cut"], "seconds": round(time.time() - t0, 1),
            "update_examples": [sum(len(p) for p in e.pred_pos) for e in rounds], "rows": rows}


def summary(result: dict, reference: str = "none") -> list[dict]:
    """Per method: next-window HR@10 / NDCG@10 pooled over rounds 1..R, old-period rec / search HR@10 and the
    perplexities after the last round; paired differences from `reference` on the same cases with their SE."""
    out = []
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    rows_of = {m: [r for r in result["rows"] if r["method"] == m and r["round"] > 0] for m in methods}
    ref = rows_of.get(reference)
    for m, rows in rows_of.items():
        new = evolve._hits(rows, "new_hits")
        last = rows[-1]
        row = {"method": m, "new_hr10": round(float(new.mean()), 4),
               "new_ndcg10": round(sum(r["new_ndcg10"] * r["new_n"] for r in rows) / sum(r["new_n"] for r in rows), 4),
               "new_n": len(new), "old_hr10": last["old_hr10"], "search_hr10": last["search_hr10"],
               "old_n": last["old_n"], "ppl_recommend": last["ppl_recommend"], "ppl_search": last["ppl_search"]}
        if ref is not None:
            for key, mine, theirs in (("new", new, evolve._hits(ref, "new_hits")),
                                      ("old", evolve._hits(rows[-1:], "old_hits"), evolve._hits(ref[-1:], "old_hits")),
                                      ("search", evolve._hits(rows[-1:], "search_hits"),
                                       evolve._hits(ref[-1:], "search_hits"))):
                row.update(evolve.paired_gain(key, mine, theirs))
        out.append(row)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("new_hr10", "gain: next window HR@10"), ("old_hr10", "old-period rec HR@10"),
            ("search_hr10", "old-period search HR@10"), ("ppl_recommend", "general ppl (rec adapter)"))
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for m in dict.fromkeys(r["method"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["method"] == m]
        for ax, (k, title) in zip(axes, keys):
            ax.plot([r["round"] for r in rows], [r[k] for r in rows], marker="o", label=m)
            ax.set(title=title, xlabel="update round")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--lm", default=None)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--tag", default="", help="suffix of the output files")
    add_config_args(p, EvolveGEMSConfig)
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    cfg = config_from_args(EvolveGEMSConfig, a)
    result = run(cfg, a.artifacts, a.data, a.out / "evolve-cache", a.methods.split(","), a.lm)
    result["summary"] = summary(result)
    a.out.mkdir(parents=True, exist_ok=True)
    name = "evolve-gems-ml100k" + (f"-{a.tag}" if a.tag else "")
    (a.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, a.out / f"{name}.png")
    print(f"{'method':8s} {'new HR@10':>9s} {'vs none':>16s} {'old HR@10':>9s} {'vs none':>16s} "
          f"{'search HR@10':>12s} {'vs none':>16s} {'ppl rec/search':>15s}")
    for s in result["summary"]:
        g = {k: s.get(k, 0.0) for k in ("new_gain", "new_gain_se", "old_gain", "old_gain_se", "search_gain",
                                        "search_gain_se")}
        print(f"{s['method']:8s} {s['new_hr10']:9.4f} {g['new_gain']:+.4f} ± {g['new_gain_se']:.4f} "
              f"{s['old_hr10']:9.4f} {g['old_gain']:+.4f} ± {g['old_gain_se']:.4f} {s['search_hr10']:12.4f} "
              f"{g['search_gain']:+.4f} ± {g['search_gain_se']:.4f} {s['ppl_recommend']:7.2f}/{s['ppl_search']:.2f}")
    print(f"wrote {a.out / name}.json and .png ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
