"""Where the GEMS model loses the next-item signal: linear probes on the frozen LM's states, and a first-order baseline.

    python -m training.eval.gems_probe --threads 1                 # README "Why GEMS recommends below SASRec"
    python -m training.eval.gems_probe --item-scale 4 --no-markov  # item tokens at 4x the LM's token norm

GEMS adapts the top `top_layers` blocks of a frozen causal LM; its item tokens enter at the bottom, as the item's
collaborative + content features (training.train_gems.item_features). This asks how much of the next item the
untrained model's states still carry, with nothing trained but a linear softmax head over the 1,682 items
(Adam, every position of every training sequence, as GEMS learns them), at three depths:

  input embedding   the current item token's embedding (a linear first-order model on the item features)
  layer n_lower     the residual stream entering the adapted blocks (what GEMS's adapters are given)
  final             the untrained model's last hidden state (what the item head of an untrained GEMS reads)

Each probe's epoch is chosen on the validation split (each user's second-to-last item) and scored on the test split
(the last item), history items excluded as in the served recommender. Beside them, the last-item transition model
(next-item counts after each training item, the last `markov_items` history items with decay 0.8). Writes
results/gems-probe.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from indexing.data import load_recsys
from models.causal_lm import load_causal_lm
from models.gems.item_ids import add_item_tokens
from training.common import add_config_args, add_threads_arg, config_from_args, set_threads
from training.train_gems import (
    Encoded,
    TrainConfig,
    examples,
    item_features,
    item_ids,
    rank_metrics,
    recommend_windows,
    top_states,
)


@dataclass
class ProbeConfig:
    top_layers: int = 4  # the blocks GEMS adapts: the probe reads the stream entering them
    item_scale: float = 1.0  # item-token rows at this multiple of the LM's mean token norm
    epochs: int = 5
    lr: float = 1e-3
    batch: int = 1024
    markov_items: int = 1  # history items the transition baseline looks at
    seed: int = 0


def markov(data, split: str, last: int) -> dict[str, float]:
    """First-order transitions of the training sequences: score(j) = sum over the last `last` history items h of
    0.8^age x P(j | h), popularity breaking ties; the user's history excluded."""
    trans: dict[str, Counter] = defaultdict(Counter)
    pop: Counter = Counter()
    for seq in data.train_sequences().values():
        pop.update(seq)
        for a, b in zip(seq, seq[1:]):
            trans[a][b] += 1
    ranked, targets = [], []
    for e in data.examples(split):
        score: Counter = Counter({i: 1e-9 * c for i, c in pop.items()})
        for age, h in enumerate(reversed(e.history[-last:])):
            total = sum(trans[h].values()) or 1
            for j, c in trans[h].items():
                score[j] += 0.8 ** age * c / total
        seen = set(e.history)
        ranked.append([i for i, _ in score.most_common(len(seen) + 10) if i not in seen][:10])
        targets.append(e.target)
    return rank_metrics(ranked, targets)


@torch.no_grad()
def prompt_states(model, tok, prompts: list[str], n_lower: int, batch: int = 32) -> dict[str, torch.Tensor]:
    """The three probed states at each prompt's last position (right padding, causal: exact)."""
    tok.padding_side = "right"
    out: dict[str, list] = {"input embedding": [], "layer n_lower": [], "final": []}
    for b in range(0, len(prompts), batch):
        enc = tok(prompts[b:b + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        o = model.model(**enc, output_hidden_states=True)
        rows, last = torch.arange(enc["input_ids"].shape[0]), enc["attention_mask"].sum(1) - 1
        out["input embedding"].append(o.hidden_states[0][rows, last].float())
        out["layer n_lower"].append(o.hidden_states[n_lower][rows, last].float())
        out["final"].append(o.last_hidden_state[rows, last].float())
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def training_states(model, enc: Encoded, n_lower: int, batch: int = 64) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The three probed states at every predicting position of the training windows, and the target items."""
    lm = model.model
    out: dict[str, list] = {"input embedding": [], "layer n_lower": [], "final": []}
    targets = []
    for b in tqdm(range(0, len(enc.ids), batch), desc="states"):
        idx = list(range(b, min(b + batch, len(enc.ids))))
        hs, _, tg = top_states(model, enc, idx, n_lower)
        pos = [(i, p) for i in idx for p in enc.pred_pos[i]]
        out["final"].append(hs)
        out["layer n_lower"].append(torch.stack([enc.states[i][p].float() for i, p in pos]))
        out["input embedding"].append(lm.embed_tokens(torch.tensor([enc.ids[i][p] for i, p in pos])).float())
        targets.append(tg)
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(targets)


def fit_probe(x: torch.Tensor, y: torch.Tensor, evals: dict[str, tuple], n_items: int, cfg: ProbeConfig,
              item_list: list[str], name: str) -> dict:
    """A linear softmax head on standardised x; per epoch HR@10 on each eval split; the test figures at the epoch
    with the best validation HR@10."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    g = torch.Generator().manual_seed(cfg.seed)
    w = torch.zeros(x.shape[1], n_items, requires_grad=True)
    bias = torch.zeros(n_items, requires_grad=True)
    opt = torch.optim.Adam([w, bias], lr=cfg.lr)
    xs = (x - mu) / sd
    curve = []
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(xs), generator=g)
        for s in tqdm(range(0, len(xs), cfg.batch), desc=f"{name} epoch {epoch + 1}", leave=False):
            j = perm[s:s + cfg.batch]
            loss = F.cross_entropy(xs[j] @ w + bias, y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
        point = {"epoch": epoch + 1, "train_loss": float(loss.detach())}
        with torch.no_grad():
            for split, (xe, seen, targets) in evals.items():
                scores = ((xe - mu) / sd) @ w + bias
                for q, rows in enumerate(seen):
                    scores[q, rows] = -torch.inf
                top = scores.topk(10, dim=1).indices
                point[split] = rank_metrics([[item_list[i] for i in r] for r in top.tolist()], targets)
        curve.append(point)
        print(f"{name} epoch {epoch + 1}: " + ", ".join(f"{s} HR@10 {point[s]['hr@10']:.4f}" for s in evals),
              flush=True)
    best = max(curve, key=lambda p: p["valid"]["hr@10"])
    return {"epoch": best["epoch"], "valid": best["valid"], "test": best["test"], "curve": curve}


def run(artifacts: Path, data_dir: Path, results: Path, cfg: ProbeConfig, lm: str | None, with_markov: bool) -> dict:
    torch.manual_seed(cfg.seed)
    tcfg = TrainConfig()
    data = load_recsys(data_dir / "ml100k")
    report: dict = {"config": asdict(cfg), "rows": {}}
    if with_markov:
        for split in ("valid", "test"):
            report["rows"].setdefault("last-item transitions", {})[split] = markov(data, split, cfg.markov_items)
        print(f"last-item transitions: {json.dumps(report['rows']['last-item transitions'])}", flush=True)
    base, tok = load_causal_lm(lm, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        ids = item_ids(artifacts, Path(tmp), "atomic")  # one token per item, as GEMS serves
    scale = float(base.get_input_embeddings().weight.detach().norm(dim=-1).mean()) * cfg.item_scale
    feats = item_features(artifacts, ids.ids, base.config.hidden_size, scale, tcfg.seed)
    vocab, _ = add_item_tokens(base, tok, ids, {i: d.get("title", i) for i, d in data.items.items()}, feats)
    n_lower = len(base.model.layers) - cfg.top_layers
    enc = Encoded(tok, vocab, sequences=recommend_windows(data, vocab, tcfg.history))
    enc.cache_lower(base, n_lower, desc="recommend")
    x, y = training_states(base, enc, n_lower)
    evals_by_layer: dict[str, dict] = defaultdict(dict)
    for split, seed in (("valid", tcfg.seed + 2), ("test", tcfg.seed + 1)):
        rows = examples(data, vocab, split, None, tcfg, seed)["recommend"]
        states = prompt_states(base, tok, [p for p, _, _ in rows], n_lower)
        seen = [[vocab.row[h] for h in hist if h in vocab.row] for _, _, hist in rows]
        for layer, xe in states.items():
            evals_by_layer[layer][split] = (xe, seen, [t for _, t, _ in rows])
    for layer in ("input embedding", "layer n_lower", "final"):
        name = f"linear probe: {layer}" + (f" ({n_lower})" if layer == "layer n_lower" else "")
        report["rows"][name] = fit_probe(x[layer], y, evals_by_layer[layer], len(ids.ids), cfg, ids.ids, name)
        results.mkdir(parents=True, exist_ok=True)
        (results / "gems-probe.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, row in report["rows"].items():
        print(f"{name}: valid HR@10 {row['valid']['hr@10']:.4f}, test HR@10 {row['test']['hr@10']:.4f}"
              + (f" (epoch {row['epoch']})" if "epoch" in row else ""))
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--lm", default=None)
    p.add_argument("--no-markov", action="store_true", help="skip the last-item transition baseline")
    add_config_args(p, ProbeConfig)
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    run(a.artifacts, a.data, a.results, config_from_args(ProbeConfig, a), a.lm, not a.no_markov)


if __name__ == "__main__":
    main()
