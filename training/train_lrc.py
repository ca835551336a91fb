"""Distil the served LM into a small student by Low-Rank Clone (models/lrc.py), and the same student architecture
from scratch with the plain KD loss (the baseline: what cloning buys at the same tokens).

    python -m training.train_lrc --out artifacts/v1/lrc                     # LRC student (hidden 192, every 2nd block)
    python -m training.train_lrc --out artifacts/v1/lrc-scratch --from-scratch

Texts: general-domain sentences (StrategyQA's evidence facts; the perplexity half of training.train_gems is held
out). Resumes from <out>/last/ (projections or student weights, optimiser, step). At the end: the merged student as
a standard HF checkpoint under <out>/model (loadable by AutoModelForCausalLM and vLLM), meta.json with the
distillation tokens, and the held-out perplexity of teacher and student. Not yet: distilling the GEMS model (its
adapters and item head) and serving the student under tight budgets (issue #18).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from indexing.data import general_texts
from models.artifacts import write_meta
from models.causal_lm import load_causal_lm, perplexity
from models.lrc import LowRankClone, LRCConfig, export, parameter_count, residual_basis, student_config
from training.common import add_config_args, add_threads_arg, config_values, set_threads


@dataclass
class DistilConfig:
    """The distillation run (the clone's own hyperparameters are LRCConfig's)."""

    steps: int = 400
    batch_size: int = 8
    max_len: int = 64
    basis_texts: int = 128  # texts whose hidden states give the initial basis
    train_texts: int = 4000
    ppl_texts: int = 300
    save_every: int = 50
    seed: int = 0


def batches(tok, texts: list[str], size: int, max_len: int, seed: int):
    """Endless shuffled batches of tokenised texts."""
    rng = random.Random(seed)
    order = list(range(len(texts)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            yield tok([texts[j] for j in order[i:i + size]], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_len)


class Scratch(torch.nn.Module):
    """The baseline: the student's architecture, randomly initialised, all weights trained on KL to the teacher."""

    def __init__(self, teacher, cfg: LRCConfig, seed: int):
        super().__init__()
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        self.cfg, self.teacher = cfg, teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.student = AutoModelForCausalLM.from_config(student_config(teacher.config, cfg))

    def losses(self, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        mask = attention_mask.bool()
        with torch.no_grad():
            t = self.teacher(input_ids=input_ids, attention_mask=attention_mask).logits
        s = self.student(input_ids=input_ids, attention_mask=attention_mask).logits
        T = self.cfg.temperature
        kl = F.kl_div(F.log_softmax(s[mask].float() / T, -1), F.log_softmax(t[mask].float() / T, -1),
                      log_target=True, reduction="batchmean") * T * T
        return {"kl": kl, "clone": torch.zeros(()), "total": kl}

    def trainable(self):
        return list(self.student.parameters())

    def merge(self):
        return self.student.eval()

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.student.state_dict(), directory / "student.pt")

    def load(self, directory: Path) -> None:
        self.student.load_state_dict(torch.load(directory / "student.pt"))


def distil(out: Path, cfg: LRCConfig, run: DistilConfig, lm: str | None, data_dir: Path, from_scratch: bool) -> dict:
    teacher, tok = load_causal_lm(lm, dtype=torch.float32)
    texts, ppl_texts = general_texts(data_dir, run.train_texts)
    ppl_texts = ppl_texts[:run.ppl_texts]
    stream = batches(tok, texts, run.batch_size, run.max_len, run.seed)
    if from_scratch:
        model = Scratch(teacher, cfg, run.seed)
    else:
        basis_batches = [tok(texts[i:i + 16], return_tensors="pt", padding=True, truncation=True,
                             max_length=run.max_len) for i in range(0, run.basis_texts, 16)]
        model = LowRankClone(teacher, cfg, residual_basis(teacher, basis_batches, cfg.hidden))
    opt = torch.optim.AdamW(model.trainable(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    last, state = out / "last", {"step": 0, "tokens": 0, "history": []}
    if (last / "state.json").exists():
        model.load(last)
        opt.load_state_dict(torch.load(last / "optim.pt"))
        state = json.loads((last / "state.json").read_text())
        for _ in range(state["step"]):  # the same batches as an uninterrupted run
            next(stream)
    t0 = time.perf_counter()
    bar = tqdm(range(state["step"], run.steps), desc="lrc" if not from_scratch else "scratch", initial=state["step"],
               total=run.steps)
    for step in bar:
        b = next(stream)
        losses = model.losses(b["input_ids"], b["attention_mask"])
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        state["step"], state["tokens"] = step + 1, state["tokens"] + int(b["attention_mask"].sum())
        state["history"].append({k: round(v.item(), 4) for k, v in losses.items()})
        bar.set_postfix(kl=f"{losses['kl'].item():.3f}", clone=f"{losses['clone'].item():.3f}")
        if state["step"] % run.save_every == 0 or state["step"] == run.steps:
            model.save(last)
            torch.save(opt.state_dict(), last / "optim.pt")
            (last / "state.json").write_text(json.dumps(state))
    student = model.merge()
    meta = {"method": "from scratch (KD)" if from_scratch else "Low-Rank Clone", "teacher": str(lm or "default"),
            "distillation_tokens": state["tokens"], "steps": state["step"], "train_texts": run.train_texts,
            "train_s": round(time.perf_counter() - t0, 1),
            "params": parameter_count(student), "teacher_params": parameter_count(teacher),
            "student_ppl": round(perplexity(student, tok, ppl_texts), 2),
            "teacher_ppl": round(perplexity(teacher, tok, ppl_texts), 2),
            "first_losses": state["history"][:1], "last_losses": state["history"][-10:],
            **asdict(cfg)}
    if from_scratch:
        (out / "model").mkdir(parents=True, exist_ok=True)
        student.save_pretrained(out / "model")
        tok.save_pretrained(out / "model")
    else:
        export(model, tok, out / "model", {"distillation_tokens": state["tokens"]})
    write_meta(out, **meta, lm="model")
    return meta


CLONE_OPTIONS = tuple(f for f in LRCConfig.__dataclass_fields__ if f != "keep")  # keep: a list, set in code


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("artifacts/v1/lrc"))
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--lm", default=None, help="the teacher: a local HF causal-LM directory (default: the served LM)")
    p.add_argument("--from-scratch", action="store_true", help="the baseline: random init, KL only")
    add_config_args(p, LRCConfig, CLONE_OPTIONS)
    add_config_args(p, DistilConfig)
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    cfg = LRCConfig(**config_values(LRCConfig, a, CLONE_OPTIONS))
    meta = distil(a.out, cfg, DistilConfig(**config_values(DistilConfig, a)), a.lm, a.data, a.from_scratch)
    print(json.dumps({k: v for k, v in meta.items() if k not in ("first_losses", "last_losses")}, indent=2))
    return meta


if __name__ == "__main__":
    main()
