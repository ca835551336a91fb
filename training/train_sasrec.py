"""Train the SASRec next-item model on the train split; keep the checkpoint with the best valid HR@10.

    python -m training.train_sasrec --data data/ml100k --out artifacts/v1/recommend/sasrec [--epochs 80]
    python -m training.train_sasrec --dataset ml1m      # data/ml1m -> artifacts/ml1m/recommend/sasrec, ML1M preset

Hyperparameters: TrainConfig below (the CLI's options and defaults are its fields), with a preset per larger data set
(PRESETS; options given on the command line still win). Resumes from <out>/last/ when it exists (model, optimiser,
epoch, best score).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from indexing.data.recsys import RECSYS_SETS, load_recsys, recsys_artifacts
from models.artifacts import atomic_dir, complete_dir, write_meta
from models.backend import Request
from models.sasrec.model import SASRec, SASRecBackend, SASRecConfig, pad_left, training_windows
from training.common import add_config_args, add_threads_arg, close_epoch, config_from_args, optimiser_step, set_threads
from training.eval.metrics import single_target


@dataclass
class TrainConfig:
    """SASRec training: the one place these defaults live (`make artifacts` trains with them)."""

    epochs: int = 80
    batch_size: int = 128
    lr: float = 1e-3
    d_model: int = SASRecConfig.d_model  # the network's shape defaults are SASRecConfig's
    n_layers: int = SASRecConfig.n_layers
    max_len: int = SASRecConfig.max_len
    eval_every: int = 5  # validation HR@10 every N epochs
    patience: int = 4  # early stop after this many evaluations without a better HR@10
    seed: int = 0


# per data set: the fields that differ from TrainConfig's defaults (ml100k). ML-1M: sequences of 200 as in the SASRec
# paper (mean length 165); an epoch is ~10x ml100k's, so fewer epochs and validation every 2. 26 epochs took ~70 min on
# the shared 2-core machine; valid HR@10 was still rising slowly (0.299, 0.306, 0.312 at epochs 22, 24, 26)
PRESETS: dict[str, dict] = {"ml1m": {"max_len": 200, "epochs": 26, "eval_every": 2, "patience": 3}}


def hit_rate(backend: SASRecBackend, examples, k: int = 10) -> float:
    """HR@k (training.eval.metrics) of the backend's answers to the examples' histories."""
    reqs = [Request("recommend", history=e.history, k=k) for e in examples]
    ranked = []
    for start in range(0, len(reqs), 256):
        ranked += [[h.id for h in a.hits] for a in backend.answer(reqs[start:start + 256])]
    return single_target(ranked, [e.target for e in examples], [f"hit_rate@{k}"])[f"hit_rate@{k}"]


def train(data_dir: Path, out: Path, cfg: TrainConfig | None = None, *, max_users: int | None = None,
          **overrides) -> dict:
    """Train with cfg (default TrainConfig()), fields overridden by keyword (`train(d, o, epochs=4)`); max_users
    keeps the first N training users and validation examples (tests)."""
    cfg = replace(cfg or TrainConfig(), **overrides)
    epochs, batch_size, lr, max_len, eval_every = cfg.epochs, cfg.batch_size, cfg.lr, cfg.max_len, cfg.eval_every
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
    data = load_recsys(data_dir)
    ids = sorted(data.items, key=lambda x: (len(x), x))
    index = {i: n + 1 for n, i in enumerate(ids)}
    train_seqs = [[index[i] for i in s] for s in data.train_sequences().values() if len(s) >= 2]
    valid = data.examples("valid")
    if max_users:
        train_seqs, valid = train_seqs[:max_users], valid[:max_users]
    model = SASRec(SASRecConfig(n_items=len(ids), max_len=max_len, d_model=cfg.d_model, n_layers=cfg.n_layers))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    state = {"epoch": 0, "best_hr10": -1.0, "best_epoch": 0, "history": []}
    last = complete_dir(out / "last")  # written whole or not at all (atomic_dir): a kill mid-save loses one epoch
    if (last / "model.safetensors").exists():  # resume
        model, _ = SASRec.from_dir(last)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        opt.load_state_dict(torch.load(last / "optim.pt"))
        state = json.loads((last / "train_state.json").read_text())
        print(f"resumed from epoch {state['epoch']} (best valid HR@10 {state['best_hr10']:.4f})")
    bar = tqdm(range(state["epoch"], epochs), desc="sasrec", initial=state["epoch"], total=epochs)
    for epoch in bar:
        model.train()
        # tile every training sequence with windows of max_len+1 ending at a random offset from its end
        windows = []
        for s in train_seqs:
            end = len(s) - random.randint(0, max_len // 2) if len(s) > max_len + 1 else len(s)
            windows += training_windows(s, max_len, end)
        random.shuffle(windows)
        losses = []
        for b in range(0, len(windows), batch_size):
            chunk = windows[b:b + batch_size]
            seq = pad_left([w[0] for w in chunk], max_len)
            tgt = pad_left([w[1] for w in chunk], max_len)
            loss = model.loss(seq, tgt)
            losses.append(optimiser_step(opt, loss))
        entry = close_epoch(state, epoch, losses)
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            model.eval()
            hr = hit_rate(SASRecBackend(model, ids), valid)
            entry["valid_hr10"] = hr
            if hr > state["best_hr10"]:
                state["best_hr10"], state["best_epoch"] = hr, epoch + 1
                model.save(out, ids)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", valid_hr10=f"{hr:.4f}", best=f"{state['best_hr10']:.4f}")
            with atomic_dir(out / "last") as tmp:
                model.save(tmp, ids, extra=state)
                torch.save(opt.state_dict(), tmp / "optim.pt")
            if epoch + 1 - state["best_epoch"] >= cfg.patience * eval_every:
                print(f"early stop at epoch {epoch + 1}")
                break
    write_meta(out, backend="sasrec", data=str(data_dir), best_valid_hr10=state["best_hr10"],
               best_epoch=state["best_epoch"], epochs_run=state["epoch"])
    return state


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml100k", choices=list(RECSYS_SETS),
                   help="data/<dataset> -> artifacts/v1 (ml100k) or artifacts/<dataset>, with its preset")
    p.add_argument("--data", type=Path, default=None, help="default: data/<dataset>")
    p.add_argument("--out", type=Path, default=None, help="default: <artifacts>/recommend/sasrec")
    add_config_args(p, TrainConfig)
    add_threads_arg(p)
    preset = PRESETS.get(p.parse_known_args(argv)[0].dataset, {})
    p.set_defaults(**preset)  # the preset replaces TrainConfig's defaults; explicit options still win
    a = p.parse_args(argv)
    set_threads(a.threads)
    data = a.data or Path("data") / a.dataset
    out = a.out or recsys_artifacts(a.dataset) / "recommend" / "sasrec"
    t0 = time.time()
    s = train(data, out, config_from_args(TrainConfig, a))
    print(f"best valid HR@10 {s['best_hr10']:.4f} at epoch {s['best_epoch']} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
