"""Distil the served LM into a small student by Low-Rank Clone (models/lrc.py), and the same student architecture
from scratch with the plain KD loss (the baseline: what cloning buys at the same tokens).

    python -m training.train_lrc --out artifacts/v1/lrc                     # LRC student (hidden 180, every 2nd block)
    python -m training.train_lrc --out artifacts/v1/lrc-scratch --from-scratch
    python -m training.train_lrc --gems artifacts/v1/gems                   # the served GEMS model -> <gems>/student
    python -m training.train_lrc --gems artifacts/v1/gems --from-scratch    # -> <gems>/student-scratch
    python -m training.train_lrc --agent artifacts/v1/agent                 # the agent's LM -> <agent>/student

Texts: general-domain sentences (StrategyQA's evidence facts; the perplexity half of training.train_gems is held
out). Resumes from <out>/last/ (projections or student weights, optimiser, step). At the end: the merged student as
a standard HF checkpoint under <out>/model (loadable by AutoModelForCausalLM and vLLM), meta.json with the
distillation tokens, and the held-out perplexity of teacher and student.

With `--gems DIR` the teacher is the served GEMS model (training.train_gems: item tokens, task adapters, item head)
and one student learns both tasks: its weights are generated from the teacher with the two tasks' updates merged
(their mean; models.gems.subspaces.merged_copy), while each batch's targets come from the teacher with that batch's
task adapter set. Every step distils recommendation windows (KL of the item distributions at every position that
predicts an item, as GEMS trains) and personalised-search cases (KL at the item position), and every
`gems_text_every`-th step general-domain text (KL of the text distributions), plus the clone loss on each batch. The
item head is cloned like the output head (models.lrc `heads`). The student (an HF checkpoint with the item tokens,
and heads.safetensors with the item head) goes to <DIR>/student/model, where the GEMS backend finds it and serves it
under budgets the teacher does not fit (models.gems.backend).

With `--agent DIR` the teacher is the agent's LM (the EM-trained round in DIR, else the base LM), and the texts are
its own traces on training questions (prompt, actions, retrieved passages: the student learns the action protocol
from them) alternating with general-domain text; service.agentic serves the student under budgets the teacher does
not fit (UNISR_AGENT_STUDENT=true).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from indexing.data import general_texts
from models.artifacts import atomic_dir, complete_dir, write_meta
from models.causal_lm import load_causal_lm, perplexity
from models.exsearch.loop import agent_id
from models.lrc import (
    LowRankClone,
    LRCConfig,
    distillation_kl,
    export,
    parameter_count,
    residual_basis,
    student_config,
)
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
    gems_text_every: int = 2  # --gems: a general-domain text batch every N steps (the item batches every step)
    agent_questions: int = 200  # --agent: training questions the teacher agent runs; its traces are distilled
    agent_max_len: int = 384  # --agent: tokens per text (a trace is prompt + actions + retrieved passages)


def index_stream(n: int, size: int, seed: int):
    """Endless shuffled batches of indices 0..n-1."""
    rng = random.Random(seed)
    order = list(range(n))
    while True:
        rng.shuffle(order)
        for i in range(0, n - size + 1, size):
            yield order[i:i + size]


def batches(tok, texts: list[str], size: int, max_len: int, seed: int):
    """Endless shuffled batches of tokenised texts."""
    for idx in index_stream(len(texts), size, seed):
        yield tok([texts[j] for j in idx], return_tensors="pt", padding=True, truncation=True, max_length=max_len)


class Scratch(torch.nn.Module):
    """The baseline: the student's architecture, randomly initialised, all weights trained on KL to the teacher
    (extra heads, N rows each, random too)."""

    def __init__(self, teacher, cfg: LRCConfig, seed: int, heads: dict[str, int] | None = None):
        super().__init__()
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        self.cfg, self.teacher = cfg, teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.student = AutoModelForCausalLM.from_config(student_config(teacher.config, cfg))
        self.extra = torch.nn.ParameterDict({name: torch.nn.Parameter(torch.randn(n, cfg.hidden) / cfg.hidden ** 0.5)
                                             for name, n in (heads or {}).items()})

    def head_weights(self) -> dict[str, torch.Tensor]:
        return dict(self.extra)

    def weights(self) -> None:
        return None  # the student's own parameters: nothing to generate

    def hidden_pair(self, input_ids, attention_mask, target=None, weights=None):
        """As LowRankClone.hidden_pair, without a clone loss (nothing to clone from)."""
        target = self.teacher if target is None else target
        with torch.no_grad():
            h_t = target.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h_s = self.student.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return h_t, h_s, torch.zeros(())

    def losses(self, input_ids, attention_mask, target=None, vocab: int | None = None,
               weights=None) -> dict[str, torch.Tensor]:
        h_t, h_s, _ = self.hidden_pair(input_ids, attention_mask, target)
        mask = attention_mask.bool()
        with torch.no_grad():
            t = (self.teacher if target is None else target).get_output_embeddings()(h_t[mask])[:, :vocab]
        s = self.student.get_output_embeddings()(h_s[mask])[:, :vocab]
        kl = distillation_kl(s, t, self.cfg.temperature)
        return {"kl": kl, "clone": torch.zeros(()), "total": kl}

    def trainable(self):
        return list(self.student.parameters()) + list(self.extra.parameters())

    def merge(self):
        return self.student.eval()

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"student": self.student.state_dict(), "extra": self.extra.state_dict()}, directory / "student.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "student.pt")
        self.student.load_state_dict(state["student"])
        self.extra.load_state_dict(state["extra"])


def resume(model, opt, out: Path) -> dict:
    """The run's state as of its last complete save under <out>/last, with the model and optimiser restored to it;
    a fresh state when there is none."""
    last = complete_dir(out / "last")
    if not (last / "state.json").exists():
        return {"step": 0, "tokens": 0, "history": []}
    model.load(last)
    opt.load_state_dict(torch.load(last / "optim.pt"))
    return json.loads((last / "state.json").read_text())


def save_state(model, opt, out: Path, state: dict) -> None:
    """<out>/last, whole or not at all (atomic_dir): a kill mid-save keeps the previous one."""
    with atomic_dir(out / "last") as tmp:
        model.save(tmp)
        torch.save(opt.state_dict(), tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps(state))


def distil(out: Path, cfg: LRCConfig, run: DistilConfig, lm: str | None, data_dir: Path, from_scratch: bool,
           texts: list[str] | None = None, extra_meta: dict | None = None) -> dict:
    """texts: what to distil on (default: the general-domain texts); the perplexity is on held-out general text."""
    teacher, tok = load_causal_lm(lm, dtype=torch.float32)
    general, ppl_texts = general_texts(data_dir, run.train_texts)
    texts = general if texts is None else texts
    ppl_texts = ppl_texts[:run.ppl_texts]
    stream = batches(tok, texts, run.batch_size, run.max_len, run.seed)
    if from_scratch:
        model = Scratch(teacher, cfg, run.seed)
    else:
        basis_batches = [tok(texts[i:i + 16], return_tensors="pt", padding=True, truncation=True,
                             max_length=run.max_len) for i in range(0, run.basis_texts, 16)]
        model = LowRankClone(teacher, cfg, residual_basis(teacher, basis_batches, cfg.hidden))
    opt = torch.optim.AdamW(model.trainable(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = resume(model, opt, out)
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
            save_state(model, opt, out, state)
    student = model.merge()
    meta = {"method": "from scratch (KD)" if from_scratch else "Low-Rank Clone", "teacher": str(lm or "default"),
            "distillation_tokens": state["tokens"], "steps": state["step"], "train_texts": run.train_texts,
            "train_s": round(time.perf_counter() - t0, 1),
            "params": parameter_count(student), "teacher_params": parameter_count(teacher),
            "student_ppl": round(perplexity(student, tok, ppl_texts), 2),
            "teacher_ppl": round(perplexity(teacher, tok, ppl_texts), 2),
            "first_losses": state["history"][:1], "last_losses": state["history"][-10:],
            **asdict(cfg), **(extra_meta or {})}
    if from_scratch:
        (out / "model").mkdir(parents=True, exist_ok=True)
        student.save_pretrained(out / "model")
        tok.save_pretrained(out / "model")
    else:
        export(model, tok, out / "model", {"distillation_tokens": state["tokens"]})
    write_meta(out, **meta, lm="model")
    return meta


# ------------------------------------------------------------------ the agent's LM as the teacher
def agent_traces(agent_dir: Path, data_dir: Path, n: int) -> tuple[Path | None, str, list[str]]:
    """The agent's LM (the EM-trained round training.train_exsearch left in agent_dir, else the base LM with the
    worked example, as the gateway serves it), its id, and the full texts (prompt, actions, retrieved passages) of
    its traces on the first n training questions: what the student must learn to continue like the teacher."""
    from indexing.data import load_multihop
    from models.exsearch.loop import SearchAgent, load_served
    from models.registry import load_backend

    model, tok, config, teacher_id, meta = load_served(agent_dir)
    path = agent_dir / meta["model"] if meta else None
    data = load_multihop(data_dir / "strategyqa")
    agent = SearchAgent(model, tok, load_backend(agent_dir.parent, "retrieve", "bm25"), data, config)
    texts = [agent.run(q["question"]).context for q in tqdm(data.split("train")[:n], desc="teacher traces")]
    return path, teacher_id, texts


def distil_agent(agent_dir: Path, cfg: LRCConfig, run: DistilConfig, data_dir: Path, from_scratch: bool,
                 out: Path | None = None) -> dict:
    """The agent's student: distilled on the teacher's traces and as many general-domain texts, in turn."""
    out = out or agent_dir / ("student-scratch" if from_scratch else "student")
    out.mkdir(parents=True, exist_ok=True)
    # the same traces for a resumed run and for both students (LRC and from scratch: same tokens), while the agent is
    # the one they were sampled from
    teacher_id = agent_id(agent_dir)
    cached = [p / "traces.json" for p in (out, agent_dir / "student", agent_dir / "student-scratch")
              if (p / "traces.json").exists()]
    saved = next((s for s in (json.loads(p.read_text()) for p in cached) if s["agent_teacher"] == teacher_id), None)
    if saved is None:
        path, teacher_id, traces = agent_traces(agent_dir, data_dir, run.agent_questions)
        saved = {"teacher": str(path) if path else None, "agent_teacher": teacher_id, "texts": traces}
    (out / "traces.json").write_text(json.dumps(saved))
    general, _ = general_texts(data_dir, run.train_texts)
    texts = saved["texts"] + general[:len(saved["texts"])]
    run = DistilConfig(**{**asdict(run), "max_len": run.agent_max_len})
    return distil(out, cfg, run, saved["teacher"], data_dir, from_scratch, texts,
                  {"agent_teacher": saved["agent_teacher"], "agent_traces": len(saved["texts"])})


# ------------------------------------------------------------------ the GEMS model as the teacher
def padded(enc, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded token ids and attention mask of the sequences idx of a training.train_gems.Encoded, and the
    (row, column, level) of every position that predicts an item token."""
    width = max(len(enc.ids[i]) for i in idx)
    ids = torch.zeros(len(idx), width, dtype=torch.long)
    att = torch.zeros(len(idx), width, dtype=torch.long)
    for r, i in enumerate(idx):
        ids[r, :len(enc.ids[i])] = torch.tensor(enc.ids[i])
        att[r, :len(enc.ids[i])] = 1
    rows = torch.tensor([r for r, i in enumerate(idx) for _ in enc.pred_pos[i]])
    cols = torch.tensor([c for i in idx for c in enc.pred_pos[i]])
    levels = torch.tensor([lv for i in idx for lv in enc.levels[i]])
    return ids, att, rows, cols, levels


def distil_gems(out: Path, cfg: LRCConfig, run: DistilConfig, gems_dir: Path, data_dir: Path,
                from_scratch: bool) -> dict:
    """One student for both tasks of the served GEMS model (see the module doc); <out>/model + meta.json."""
    from safetensors.torch import save_file

    from indexing.data import load_recsys
    from models.gems import subspaces as gems
    from models.gems.backend import GEMSModel
    from models.gems.vllm import export_vllm_base
    from training.train_gems import TASKS, Encoded, TrainConfig, examples, item_logits, recommend_windows

    served = GEMSModel(gems_dir, dtype=torch.float32)
    target, tok, vocab, item_head = served.model, served.tok, served.vocab, served.item_head.float()
    teacher = gems.merged_copy(target, TASKS)  # the weights the student is generated from
    gcfg = TrainConfig(history=served.history, search_history=served.search_history)
    data = load_recsys(data_dir / "ml100k")
    train = examples(data, vocab, "train", gcfg.search_examples, gcfg, gcfg.seed)  # GEMS's own search cases
    enc = {"search": Encoded(tok, vocab, train["search"]),
           "recommend": Encoded(tok, vocab, sequences=recommend_windows(data, vocab, gcfg.history))}
    texts, _ = general_texts(data_dir, run.train_texts)
    text_stream = batches(tok, texts, run.batch_size, run.max_len, run.seed)
    streams = {t: index_stream(len(enc[t].ids), run.batch_size, run.seed + n) for n, t in enumerate(TASKS)}
    if from_scratch:
        model = Scratch(teacher, cfg, run.seed, heads={"item": item_head.shape[0]})
    else:
        basis_batches = [tok(texts[i:i + 16], return_tensors="pt", padding=True, truncation=True,
                             max_length=run.max_len) for i in range(0, run.basis_texts, 16)]
        basis_batches += [dict(zip(("input_ids", "attention_mask"), padded(enc[t], list(range(8)))[:2]))
                          for t in TASKS]  # the residual stream of GEMS prompts too
        model = LowRankClone(teacher, cfg, residual_basis(teacher, basis_batches, cfg.hidden), {"item": item_head})
    opt = torch.optim.AdamW(model.trainable(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = resume(model, opt, out)
    if state["step"]:
        for step in range(state["step"]):  # the same batches as an uninterrupted run
            next(streams["search"]), next(streams["recommend"])
            if step % run.gems_text_every == 0:
                next(text_stream)
        print(f"resumed after step {state['step']}")
    t0 = time.perf_counter()
    bar = tqdm(range(state["step"], run.steps), desc="gems " + ("scratch" if from_scratch else "lrc"),
               initial=state["step"], total=run.steps)
    for step in bar:
        losses, tokens = {}, 0
        weights, head = model.weights(), model.head_weights()["item"]  # generated once a step, used by every batch
        for t in TASKS:  # the item distributions at every item-predicting position, the task's adapter set
            ids, att, rows, cols, levels = padded(enc[t], next(streams[t]))
            gems.set_task(target, t)
            h_t, h_s, clone = model.hidden_pair(ids, att, target, weights)
            with torch.no_grad():
                t_logits = item_logits(h_t[rows, cols].float(), levels, item_head, vocab)
            s_logits = item_logits(h_s[rows, cols].float(), levels, head, vocab)
            losses[t] = distillation_kl(s_logits, t_logits, cfg.temperature)
            losses[f"clone_{t}"] = clone
            tokens += int(att.sum())
        if step % run.gems_text_every == 0:  # general-domain text: the text distributions (the merged weights')
            b = next(text_stream)
            text = model.losses(b["input_ids"], b["attention_mask"], vocab=vocab.first_token, weights=weights)
            losses["text"], losses["clone_text"] = text["kl"], text["clone"]
            tokens += int(b["attention_mask"].sum())
        kls = [v for k, v in losses.items() if not k.startswith("clone")]
        kl = sum(kls) / len(kls)
        clone = sum(v for k, v in losses.items() if k.startswith("clone")) / (len(losses) - len(kls))
        total = cfg.kl_weight * kl + cfg.clone_weight * clone
        opt.zero_grad()
        total.backward()
        opt.step()
        state["step"], state["tokens"] = step + 1, state["tokens"] + tokens
        state["history"].append({k: round(float(v.detach()), 4) for k, v in losses.items()})
        bar.set_postfix(rec=f"{losses['recommend'].item():.3f}", search=f"{losses['search'].item():.3f}",
                        clone=f"{clone.item():.3f}")
        if state["step"] % run.save_every == 0 or state["step"] == run.steps:
            save_state(model, opt, out, state)
    gems.set_task(target, None)
    student = model.merge()
    directory = out / "model"
    meta = {"distillation_tokens": state["tokens"], "teacher": str(gems_dir)}
    if from_scratch:
        directory.mkdir(parents=True, exist_ok=True)
        student.save_pretrained(directory)
        tok.save_pretrained(directory)
        save_file({k: v.detach().contiguous() for k, v in model.head_weights().items()},
                  str(directory / "heads.safetensors"))
    else:
        export(model, tok, directory, meta)
    # the form vLLM serves (no adapters: one model for both tasks): the item head as lm_head rows
    export_vllm_base(student, tok, vocab, model.head_weights()["item"].detach(), out / "vllm")
    meta = {"kind": "gems-student", "method": "from scratch (KD)" if from_scratch else "Low-Rank Clone",
            **meta, "steps": state["step"], "train_s": round(time.perf_counter() - t0, 1),
            "params": parameter_count(student) + item_head.shape[0] * cfg.hidden,
            "teacher_params": parameter_count(teacher) + item_head.numel(),
            "first_losses": state["history"][:1], "last_losses": state["history"][-10:], **asdict(cfg)}
    write_meta(out, **meta, lm="model")
    return meta


CLONE_OPTIONS = tuple(f for f in LRCConfig.__dataclass_fields__ if f != "keep")  # keep: a list, set in code


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="default artifacts/v1/lrc (with --gems: see --gems)")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--lm", default=None, help="the teacher: a local HF causal-LM directory (default: the served LM)")
    p.add_argument("--from-scratch", action="store_true", help="the baseline: random init, KL only")
    p.add_argument("--gems", type=Path, default=None,
                   help="distil the served GEMS checkpoint at this directory (default --out: <DIR>/student, "
                        "<DIR>/student-scratch with --from-scratch)")
    p.add_argument("--agent", type=Path, default=None,
                   help="distil the agent's LM (the EM-trained round in this directory, else the base LM) on its own "
                        "traces (default --out: <DIR>/student, <DIR>/student-scratch with --from-scratch)")
    add_config_args(p, LRCConfig, CLONE_OPTIONS)
    add_config_args(p, DistilConfig)
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    cfg = LRCConfig(**config_values(LRCConfig, a, CLONE_OPTIONS))
    run = DistilConfig(**config_values(DistilConfig, a))
    if a.gems is not None:
        out = a.out or a.gems / ("student-scratch" if a.from_scratch else "student")
        meta = distil_gems(out, cfg, run, a.gems, a.data, a.from_scratch)
    elif a.agent is not None:
        meta = distil_agent(a.agent, cfg, run, a.data, a.from_scratch, a.out)
    else:
        meta = distil(a.out or Path("artifacts/v1/lrc"), cfg, run, a.lm, a.data, a.from_scratch)
    print(json.dumps({k: v for k, v in meta.items() if k not in ("first_losses", "last_losses")}, indent=2))
    return meta


if __name__ == "__main__":
    main()
