"""Train the SASRec next-item model on the train split; keep the checkpoint with the best valid HR@10.

    python -m training.train_sasrec --data data/ml100k --out artifacts/v1/recommend/sasrec [--epochs 200]

Resumes from <out>/last/ when it exists (model, optimiser, epoch, best score).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from indexing.data.recsys import load_recsys
from models.artifacts import write_meta
from models.backend import Request
from models.sasrec.model import SASRec, SASRecBackend, SASRecConfig, pad_left


def hit_rate(backend: SASRecBackend, examples, k: int = 10) -> float:
    reqs = [Request("recommend", history=e.history, k=k) for e in examples]
    hits = 0
    for start in range(0, len(reqs), 256):
        batch = reqs[start:start + 256]
        for e, ans in zip(examples[start:start + 256], backend._answer(batch, None)):
            hits += any(h.id == e.target for h in ans)
    return hits / max(1, len(examples))


def train(data_dir: Path, out: Path, epochs: int = 200, batch_size: int = 128, lr: float = 1e-3,
          d_model: int = 64, n_layers: int = 2, max_len: int = 50, eval_every: int = 5, patience: int = 4,
          seed: int = 0, max_users: int | None = None) -> dict:
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    data = load_recsys(data_dir)
    ids = sorted(data.items, key=lambda x: (len(x), x))
    index = {i: n + 1 for n, i in enumerate(ids)}
    train_seqs = [[index[i] for i in s] for s in data.train_sequences().values() if len(s) >= 2]
    valid = data.examples("valid")
    if max_users:
        train_seqs, valid = train_seqs[:max_users], valid[:max_users]
    model = SASRec(SASRecConfig(n_items=len(ids), max_len=max_len, d_model=d_model, n_layers=n_layers))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    state = {"epoch": 0, "best_hr10": -1.0, "best_epoch": 0, "history": []}
    last = out / "last"
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
            while end >= 2:
                windows.append(s[max(0, end - max_len - 1):end])
                end -= max_len
        random.shuffle(windows)
        losses = []
        for b in range(0, len(windows), batch_size):
            chunk = windows[b:b + batch_size]
            seq = pad_left([w[:-1] for w in chunk], max_len)
            tgt = pad_left([w[1:] for w in chunk], max_len)
            loss = model.loss(seq, tgt)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            model.eval()
            hr = hit_rate(SASRecBackend(model, ids), valid)
            state["history"][-1]["valid_hr10"] = hr
            if hr > state["best_hr10"]:
                state["best_hr10"], state["best_epoch"] = hr, epoch + 1
                model.save(out, ids)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", valid_hr10=f"{hr:.4f}", best=f"{state['best_hr10']:.4f}")
            model.save(last, ids, extra=state)
            torch.save(opt.state_dict(), last / "optim.pt")
            if epoch + 1 - state["best_epoch"] >= patience * eval_every:
                print(f"early stop at epoch {epoch + 1}")
                break
    write_meta(out, backend="sasrec", data=str(data_dir), best_valid_hr10=state["best_hr10"],
               best_epoch=state["best_epoch"], epochs_run=state["epoch"])
    return state


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/ml100k"))
    p.add_argument("--out", type=Path, default=Path("artifacts/v1/recommend/sasrec"))
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.time()
    s = train(a.data, a.out, a.epochs, a.batch_size, a.lr, a.d_model, a.layers, a.max_len, seed=a.seed)
    print(f"best valid HR@10 {s['best_hr10']:.4f} at epoch {s['best_epoch']} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
