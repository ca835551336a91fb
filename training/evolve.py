"""Continual learning of the recommender from what happens after training (the self-evolving loop, issue #17):
MovieLens-100k split in time, the served SASRec trained on the past, then updated round by round on the future's
interactions, each update measured for gain (the next period) and forgetting (the old period).

    python -m training.evolve --rounds 4       # table + plot: results/evolve-ml100k.{json,png}

The time split: every interaction before the `cut` quantile of timestamps is the past. Each user's last past
interaction is held out (the old-period test: HR@10 of predicting it from the rest, the forgetting measure); the
base model trains on the remaining past. The future is cut into rounds+1 windows of equal size in time order;
round r learns from window r and is measured on window r+1 (every interaction there, predicted from everything the
user did before it, as the gateway sees a user's new events: the new-period HR@10 / NDCG@10, the gain). Round 0 is
the base model.

Updates (each round continues from the same method's previous round):
  none       no update (the frozen checkpoint)
  naive      fine-tune on the new interactions only (loss on the targets inside the window)
  replay     naive + a stored sample of past sequences replayed beside them (full loss)
  flashback  naive + Joint-Flashback-style retention: a symmetric KL between the updated model's and the
             pre-update model's next-item distributions on "flashbacks" (past histories, no labels), plus latent
             tasks: sequences interpolated between a flashback and a new sequence in the input-embedding space
             (mixup of the two embedding sequences, the pre-update model's output mixed the same way as target)
Hyperparameters: EvolveConfig. Training runs with OMP_WAIT_POLICY=PASSIVE and --threads.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from indexing.data.recsys import time_split as time_split_by_quantile
from models.sasrec.model import SASRec, SASRecBackend, SASRecConfig, pad_left, training_windows
from training.common import add_config_args, add_threads_arg, config_from_args, optimiser_step, set_threads
from training.eval.metrics import single_target

METHODS = ("none", "naive", "replay", "flashback")


@dataclass
class EvolveConfig:
    """The continual-learning experiment: the one place these defaults live."""
    cut: float = 0.8  # quantile of timestamps: the past / future boundary
    rounds: int = 4  # update rounds (the future is cut into rounds + 1 windows)
    base_epochs: int = 60  # SASRec on the past, from scratch
    update_epochs: int = 3  # passes over a round's new interactions
    lr: float = 5e-4
    batch_size: int = 128
    replay_users: int = 256  # past sequences replayed per round (replay) / flashbacks drawn (flashback)
    flashback_weight: float = 1.0  # weight of the symmetric KL on the flashbacks
    latent_weight: float = 0.5  # weight of the interpolated latent tasks
    seed: int = 0


@dataclass
class Case:
    history: list[int]
    target: int


def time_split(data_dir: Path, cfg: EvolveConfig) -> dict:
    """The past (per-user sequences without each user's last past item), the old-period test cases, the future
    windows (per-user item lists inside each window) and the new-period test cases of each window."""
    cut, past, future = time_split_by_quantile(data_dir, cfg.cut)
    items = sorted(set(past["item_id"]) | set(future["item_id"]), key=lambda x: (len(x), x))
    index = {i: n + 1 for n, i in enumerate(items)}
    past, future = past.assign(idx=past["item_id"].map(index)), future.assign(idx=future["item_id"].map(index))
    seqs = {u: list(g["idx"]) for u, g in past.groupby("user_id", sort=True)}
    old_cases = [Case(s[:-1], s[-1]) for s in seqs.values() if len(s) >= 3]
    base = {u: (s[:-1] if len(s) >= 3 else s) for u, s in seqs.items()}
    edges = np.quantile(future["timestamp"], np.linspace(0, 1, cfg.rounds + 2))
    windows, new_cases = [], []
    so_far = {u: list(s) for u, s in seqs.items()}  # everything before the window (the held-out past item too)
    for w in range(cfg.rounds + 1):
        lo, hi = edges[w], edges[w + 1]
        part = future[(future["timestamp"] >= lo) & ((future["timestamp"] < hi) if w < cfg.rounds else True)]
        win = {u: list(g["idx"]) for u, g in part.groupby("user_id", sort=True)}
        windows.append({u: (list(so_far.get(u, [])), s) for u, s in win.items()})  # (before, inside the window)
        cases = []
        for u, i in zip(part["user_id"], part["idx"]):  # time order: each predicted from everything before it
            if so_far.get(u):
                cases.append(Case(list(so_far[u][-200:]), i))
            so_far.setdefault(u, []).append(i)
        new_cases.append(cases)
    return {"items": items, "base": base, "old_cases": old_cases, "windows": windows, "new_cases": new_cases,
            "cut": float(cut), "past": len(past), "future": len(future)}


def evaluate(model: SASRec, items: list[str], cases: list[Case], per_case: bool = False) -> dict:
    """HR@10 and NDCG@10 of the model's answers (the served backend's code path); with per_case, also each case's
    hit (0/1 string) for paired comparisons between methods on the same cases."""
    backend = SASRecBackend(model.eval(), items)
    from models.backend import Request

    reqs = [Request("recommend", history=[items[i - 1] for i in c.history], k=10) for c in cases]
    ranked = []
    for b in range(0, len(reqs), 256):
        ranked += [[h.id for h in a.hits] for a in backend.answer(reqs[b:b + 256])]
    targets = [items[c.target - 1] for c in cases]
    scores = single_target(ranked, targets, ["hit_rate@10", "ndcg@10"])
    if per_case:
        scores["hits"] = "".join("1" if t in r[:10] else "0" for r, t in zip(ranked, targets))
    return scores


def method_config(spec: str, cfg: EvolveConfig) -> tuple[str, EvolveConfig]:
    """"flashback" or "flashback:0.1" (the flashback weight for this row) -> (method, its config)."""
    method, _, weight = spec.partition(":")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)} (flashback:W sets its weight)")
    return method, (replace(cfg, flashback_weight=float(weight)) if weight else cfg)


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p||q) + KL(q||p) of two next-item distributions (row-wise mean over the batch)."""
    lp, lq = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    return ((lp.exp() * (lp - lq)).sum(-1) + (lq.exp() * (lq - lp)).sum(-1)).mean()


def flashback_divergence(model: SASRec, reference: SASRec, flashbacks: list[list[int]]) -> torch.Tensor:
    """The retention term: symmetric KL between the model's and the frozen reference's next-item distributions
    at the last position of each flashback history (no labels needed). Zero when the model equals the reference."""
    seq = pad_left(flashbacks, model.cfg.max_len)
    with torch.no_grad():
        ref = reference.logits(reference(seq)[:, -1])[:, 1:]
    return symmetric_kl(model.logits(model(seq)[:, -1])[:, 1:], ref)


def latent_task_loss(model: SASRec, reference: SASRec, flashbacks: list[list[int]], new: list[list[int]],
                     lam: float) -> torch.Tensor:
    """Latent tasks between old and new: input embeddings mixed lam * flashback + (1 - lam) * new sequence, the
    target the reference's and the new sequence's next-item distributions mixed the same way."""
    n = min(len(flashbacks), len(new))
    a, b = pad_left(flashbacks[:n], model.cfg.max_len), pad_left([s[:-1] for s in new[:n]], model.cfg.max_len)
    nxt = torch.tensor([s[-1] for s in new[:n]]) - 1
    with torch.no_grad():
        old = F.softmax(reference.logits(reference(a)[:, -1])[:, 1:], -1)
    target = lam * old + (1 - lam) * F.one_hot(nxt, old.shape[-1]).float()
    T = a.shape[1]
    pos = model.pos_emb(torch.arange(T))
    ea = (model.item_emb(a) + pos) * (a > 0).unsqueeze(-1).float()
    eb = (model.item_emb(b) + pos) * (b > 0).unsqueeze(-1).float()
    x = model.drop(lam * ea + (1 - lam) * eb)
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    h = model.norm(model.blocks(x, mask=causal, is_causal=True))[:, -1]
    return -(target * F.log_softmax(model.logits(h)[:, 1:], -1)).sum(-1).mean()


def train_base(seqs: list[list[int]], n_items: int, cfg: EvolveConfig) -> SASRec:
    model = SASRec(SASRecConfig(n_items=n_items))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in tqdm(range(cfg.base_epochs), desc="base SASRec (the past)"):
        model.train()
        batches = [w for s in seqs for w in training_windows(s, model.cfg.max_len)]
        random.shuffle(batches)
        for b in range(0, len(batches), cfg.batch_size):
            chunk = batches[b:b + cfg.batch_size]
            optimiser_step(opt, model.loss(pad_left([c[0] for c in chunk], model.cfg.max_len),
                                           pad_left([c[1] for c in chunk], model.cfg.max_len)))
    return model.eval()


def update(model: SASRec, method: str, window: dict, past: list[list[int]], cfg: EvolveConfig) -> SASRec:
    """One round of `method` on the window's new interactions; returns the updated copy."""
    if method == "none":
        return model
    reference = copy.deepcopy(model).eval()
    model = copy.deepcopy(model)
    L = model.cfg.max_len
    new_windows = [w for before, inside in window.values()
                   for w in training_windows(before + inside, L, first_target=len(before))]
    new_seqs = [(before + inside)[-(L + 1):] for before, inside in window.values() if before]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    for _ in range(cfg.update_epochs):
        model.train()
        batches = list(new_windows)
        if method == "replay":
            batches += [w for s in random.sample(past, min(cfg.replay_users, len(past)))
                        for w in training_windows(s, L)]
        random.shuffle(batches)
        for b in range(0, len(batches), cfg.batch_size):
            chunk = batches[b:b + cfg.batch_size]
            loss = model.loss(pad_left([c[0] for c in chunk], L), pad_left([c[1] for c in chunk], L))
            if method == "flashback":
                flash = [s[-L:] for s in random.sample(past, min(cfg.batch_size, len(past)))]
                loss = loss + cfg.flashback_weight * flashback_divergence(model, reference, flash)
                if cfg.latent_weight > 0 and new_seqs:
                    lam = random.random()
                    loss = loss + cfg.latent_weight * latent_task_loss(
                        model, reference, flash, random.sample(new_seqs, min(len(flash), len(new_seqs))), lam)
            optimiser_step(opt, loss)
    return model.eval()


def base_sasrec(split: dict, cfg: EvolveConfig, cache: Path) -> Path:
    """The base SASRec trained on the past, kept in cache per (cut, base_epochs, seed) so runs that vary only the
    update (and training.evolve_gems, whose item tokens it builds) reuse it; returns its directory."""
    where = cache / f"base-cut{cfg.cut}-e{cfg.base_epochs}-s{cfg.seed}"
    if not (where / "model.safetensors").exists():
        random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
        past = [s for s in split["base"].values() if len(s) >= 2]
        train_base(past, len(split["items"]), cfg).save(where, split["items"])
    return where


def run(data_dir: Path, cfg: EvolveConfig, methods=METHODS, cache: Path | None = None) -> dict:
    """cache: a directory where the base model is kept (base_sasrec), so runs that vary only the update reuse it."""
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
    split = time_split(data_dir, cfg)
    items = split["items"]
    past = [s for s in split["base"].values() if len(s) >= 2]
    t0 = time.time()
    if cache is not None:
        base, _ = SASRec.from_dir(base_sasrec(split, cfg, cache))
    else:
        base = train_base(past, len(items), cfg)
    rows = []
    for spec in methods:
        method, mcfg = method_config(spec, cfg)
        torch.manual_seed(cfg.seed), random.seed(cfg.seed)
        model = base
        for r in range(cfg.rounds + 1):
            if r > 0:
                model = update(model, method, split["windows"][r - 1], past, mcfg)
            new = evaluate(model, items, split["new_cases"][r], per_case=True)
            old = evaluate(model, items, split["old_cases"], per_case=True)
            rows.append({"method": spec, "round": r, "new_hr10": new["hit_rate@10"], "new_ndcg10": new["ndcg@10"],
                         "old_hr10": old["hit_rate@10"], "new_n": len(split["new_cases"][r]),
                         "old_n": len(split["old_cases"]), "new_hits": new["hits"], "old_hits": old["hits"]})
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("_hits")}), flush=True)
    return {"config": asdict(cfg), "cut_timestamp": split["cut"], "past_interactions": split["past"],
            "future_interactions": split["future"], "seconds": round(time.time() - t0, 1), "rows": rows}


def _hits(rows: list[dict], key: str) -> np.ndarray:
    return np.array([c == "1" for r in rows for c in r[key]], dtype=float)


def paired_gain(key: str, mine: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """{key_gain, key_gain_se}: the mean paired difference of two methods' hits on the same cases, and its SE."""
    d = mine - theirs
    se = d.std(ddof=1) / np.sqrt(len(d))
    return {f"{key}_gain": round(float(d.mean()), 4), f"{key}_gain_se": round(float(se), 4)}


def summary(result: dict, reference: str = "none") -> list[dict]:
    """Per method: new-period HR@10 / NDCG@10 pooled over the update rounds (1..R), old-period HR@10 after the last
    round, and each one's paired difference from `reference` (same cases) with its standard error."""
    out = []
    rows_of = {m: [r for r in result["rows"] if r["method"] == m and r["round"] > 0]
               for m in dict.fromkeys(r["method"] for r in result["rows"])}
    ref = rows_of.get(reference)
    for m, rows in rows_of.items():
        n_new = sum(r["new_n"] for r in rows)
        new, old = _hits(rows, "new_hits"), _hits(rows[-1:], "old_hits")
        row = {"method": m, "new_hr10": round(float(new.mean()), 4),
               "new_ndcg10": round(sum(r["new_ndcg10"] * r["new_n"] for r in rows) / n_new, 4), "new_n": n_new,
               "old_hr10": round(float(old.mean()), 4), "old_n": len(old)}
        if ref is not None:
            for key, mine, theirs in (("new", new, _hits(ref, "new_hits")), ("old", old, _hits(ref[-1:], "old_hits"))):
                row.update(paired_gain(key, mine, theirs))
        out.append(row)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for m in dict.fromkeys(r["method"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["method"] == m]
        a.plot([r["round"] for r in rows], [r["new_hr10"] for r in rows], marker="o", label=m)
        b.plot([r["round"] for r in rows], [r["old_hr10"] for r in rows], marker="o", label=m)
    a.set(title="gain: next period HR@10", xlabel="update round")
    b.set(title="forgetting: old period HR@10", xlabel="update round")
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/ml100k"))
    p.add_argument("--methods", default="none,naive,replay,flashback,flashback:0.3,flashback:0.1",
                   help="comma-separated: none, naive, replay, flashback, or flashback:W (its flashback weight W)")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--tag", default="", help="suffix of the output files (e.g. a sweep's setting)")
    add_config_args(p, EvolveConfig)
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    cfg = config_from_args(EvolveConfig, a)
    result = run(a.data, cfg, a.methods.split(","), cache=a.out / "evolve-cache")
    result["summary"] = summary(result)
    a.out.mkdir(parents=True, exist_ok=True)
    name = "evolve-ml100k" + (f"-{a.tag}" if a.tag else "")
    (a.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, a.out / f"{name}.png")
    print(f"{'method':16s} {'new HR@10':>9s} {'vs none':>16s} {'NDCG@10':>8s} {'old HR@10':>9s} {'vs none':>16s}")
    for s in result["summary"]:
        g = {k: s.get(k, 0.0) for k in ("new_gain", "new_gain_se", "old_gain", "old_gain_se")}
        print(f"{s['method']:16s} {s['new_hr10']:9.4f} {g['new_gain']:+.4f} ± {g['new_gain_se']:.4f} "
              f"{s['new_ndcg10']:8.4f} {s['old_hr10']:9.4f} {g['old_gain']:+.4f} ± {g['old_gain_se']:.4f}")
    print(f"wrote {a.out / name}.json and .png ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
