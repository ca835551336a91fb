"""Train the EXSEARCH agent by generalized expectation-maximisation on its own search trajectories.

    python -m training.train_exsearch --out artifacts/v1/agent --rounds 2 --questions 16 --samples 3

Each round:

E-step: for every training question, sample `samples` trajectories with the current model (think / search /
record steps, temperature > 0, the loop of models.exsearch.loop over the BM25 retriever) and stop before the answer.
Weight trajectory z of question x by how well it supports the gold answer: the model's likelihood of the gold
answer after it, p(y | x, z), times exp(evidence_weight x the share of the question's gold supporting facts that z
retrieved), self-normalised over the question's samples: w_k = p(y | x, z_k) e^{b r_k} / sum_j p(y | x, z_j) e^{b r_j}.
With b = 0 this is the importance-sampled posterior p(z | x, y) with the model itself as the proposal; b > 0 is
the posterior under a prior that favours trajectories that find the evidence (StrategyQA gives every question's).

M-step: maximise sum_k w_k log p(z_k, y | x): the weighted negative log-likelihood of the tokens the model
wrote (actions and the gold answer; the retrieved result blocks and the prompt are context, not targets),
with LoRA adapters (peft) merged into the weights after the step.

Warm start (round 0, `--warm-start N`, off by default): before EM, behaviour cloning of a gold-guided expert on N
training questions. The expert searches the question itself, records the gold facts the results show, and spends
each further hop on a missing gold fact by searching with that fact's own text, so the model learns to write its
next query as a hypothetical fact (a HyDE query: Gao et al. 2022, "Precise zero-shot dense retrieval without
relevance labels"). At test time no gold is known: the model writes the fact it expects to find, and BM25 matches it.
The untrained model's own queries are short and generic, so its E-step samples rarely retrieve gold evidence and the
evidence-aware weights have nothing to choose between; the warm start gives EM trajectories worth weighting.

The first EM round samples with the worked example in the prompt (the untrained model needs it to follow the
format; not after a warm start); every M-step trains on the compact prompt without it, so the trained agent runs
without the example (shorter prompts, and the format is now in the weights). Logged per round: mean p(gold | z), the
effective sample size of the weights, the weighted loss before/after the M-step, dev EM. Each round's model
is saved as a standard HF checkpoint (round-N/), and the last one also at --out itself with meta.json.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from indexing.data import load_multihop
from models.artifacts import write_meta
from models.causal_lm import fast_dtype, load_causal_lm
from models.exsearch.actions import RECORD, SEARCH, Action
from models.exsearch.loop import AgentConfig, SearchAgent
from models.registry import load_backend
from training.common import (
    add_config_args,
    add_threads_arg,
    config_from_args,
    round_questions,
    set_threads,
    warm_start_questions,
)
from training.eval.metrics import exact_match, gold_recall

OTHER_ANSWER = {"yes": "no", "no": "yes"}  # the rival of a yes/no gold answer (for `Sample.correct`)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class EMConfig:
    rounds: int = 2
    questions: int = 16  # training questions per round (a fresh sample each round)
    samples: int = 3  # trajectories per question (E-step)
    temperature: float = 0.8
    max_hops: int = 2
    k: int = 2  # passages per search
    max_new_tokens: int = 32
    lr: float = 3e-4
    epochs: int = 2  # passes over the round's trajectories (M-step)
    batch_size: int = 4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_layers: int = 8  # adapt the top N blocks (backward stops there: ~4x cheaper M-step on a CPU)
    max_len: int = 640  # tokens per training sequence (longer ones are cut from the left of the transcript)
    dev_questions: int = 16
    calibrate: int = 0  # training questions the final agent's yes/no threshold is fitted on (0: none; README)
    evidence_weight: float = 2.0  # b in w ~ p(gold | z) e^{b x gold recall(z)}; 0: the answer likelihood alone
    warm_start: int = 0  # training questions of the gold-guided behaviour-cloning round 0 (0: none)
    warm_epochs: int = 1  # passes over the warm start's trajectories
    record_words: int = 16  # the warm start's Records keep a fact's first words (a Record is one generated line)
    seed: int = 0


@dataclass
class Sample:
    question: str
    prompt: str  # compact prompt: what the M-step trains under
    segments: list[tuple[str, bool]]  # transcript (text, model-written)
    answer: str  # gold
    logp_answer: float = 0.0  # log p(gold | x, z)
    weight: float = 0.0  # self-normalised over the question's samples
    hops: int = 0
    recall: float = 0.0  # share of the question's gold supporting facts the trajectory retrieved
    correct: bool = False  # the model prefers the gold answer after z (yes/no: over the other answer)
    tokens: int = 0  # tokens the model wrote (the trajectory's length)

    @property
    def reward(self) -> float:
        """ROSE's verifiable reward, logged for EM too so the two trainers compare: answer correct + recall."""
        return float(self.correct) + self.recall


@dataclass
class RoundLog:
    round: int
    questions: int
    trajectories: int
    mean_p_gold: float | None  # None for the warm start (its trajectories are the expert's, not sampled)
    mean_ess: float  # effective sample size per question, 1..samples
    loss_before: float
    loss_after: float
    dev_em: float | None = None
    sample_s: float = 0.0
    train_s: float = 0.0
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ tokenisation and likelihoods
def encode_sample(tok, s: Sample, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 target mask: the model-written segments and 'Answer: <gold>' are targets."""
    ids, target = tok(s.prompt, add_special_tokens=False)["input_ids"], []
    target = [0] * len(ids)
    for text, mine in [*s.segments, (f"Answer: {s.answer}\n", True)]:
        t = tok(text, add_special_tokens=False)["input_ids"]
        ids += t
        target += [int(mine)] * len(t)
    if len(ids) > max_len:  # keep the prompt's start (instructions + question) and the end of the transcript
        head = min(len(tok(s.prompt, add_special_tokens=False)["input_ids"]), max_len // 2)
        tail = max_len - head
        ids, target = ids[:head] + ids[-tail:], target[:head] + target[-tail:]
    return ids, target


def token_nll(model, batch: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed NLL over target tokens and the target counts (right padding)."""
    width = max(len(ids) for ids, _ in batch)
    device = next(model.parameters()).device
    ids = torch.zeros(len(batch), width, dtype=torch.long, device=device)
    att = torch.zeros_like(ids)
    tgt = torch.zeros_like(ids)
    for n, (i, t) in enumerate(batch):
        ids[n, :len(i)], att[n, :len(i)], tgt[n, :len(t)] = torch.tensor(i), 1, torch.tensor(t)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=device.type == "cpu" and fast_dtype() == torch.bfloat16):
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
    mask = tgt[:, 1:].float()
    return (nll * mask).sum(1), mask.sum(1)


@torch.no_grad()
def answer_logprobs(model, tok, contexts: list[str], answers: list[str], batch_size: int = 8) -> list[float]:
    """log p(' <answer>' | context + 'Answer:') for each pair."""
    out = []
    for b in range(0, len(contexts), batch_size):
        batch = []
        for c, a in zip(contexts[b:b + batch_size], answers[b:b + batch_size]):
            ctx = tok(c + "Answer:", add_special_tokens=False)["input_ids"]
            ans = tok(" " + a, add_special_tokens=False)["input_ids"]
            batch.append((ctx + ans, [0] * len(ctx) + [1] * len(ans)))
        nll, _ = token_nll(model, batch)
        out += (-nll).tolist()
    return out


def weighted_loss(model, tok, samples: list[Sample], max_len: int, batch_size: int = 4,
                  grad: bool = False) -> float:
    """The M-step objective: sum_i w_i NLL_i / sum_i w_i n_i (weighted NLL per target token)."""
    encoded = [encode_sample(tok, s, max_len) for s in samples]
    norm = sum(s.weight * sum(target) for s, (_, target) in zip(samples, encoded)) or 1.0
    total = 0.0
    for b in range(0, len(samples), batch_size):
        with torch.set_grad_enabled(grad):
            nll, _ = token_nll(model, encoded[b:b + batch_size])
            loss = (torch.tensor([s.weight for s in samples[b:b + batch_size]]) * nll).sum() / norm
            if grad:
                loss.backward()
        total += loss.item()
    return total


# ------------------------------------------------------------------ warm start: a gold-guided expert
def expert_trajectory(agent: SearchAgent, q: dict, max_hops: int, record_words: int = 16) -> Sample:
    """The gold-guided trajectory of question q under agent's retriever and result format. Hop 1 searches the
    question; every later hop searches with the text of the first gold fact not yet retrieved (a hypothetical-fact
    query; the last gold fact when none is missing). After each search the gold facts the results show (not yet
    recorded) are recorded, their first record_words words with the citation. Answer: the gold one."""
    gold = list(q["supporting"])
    segments: list[tuple[str, bool]] = []
    retrieved: list[str] = []
    recorded: set[str] = set()
    for hop in range(max_hops):
        missing = [d for d in gold if d not in retrieved]
        query = q["question"].strip() if hop == 0 else agent.passage(missing[0] if missing else gold[-1])
        search = Action(SEARCH, query)
        ids = agent.retrieve(search.text, agent.config.k)
        retrieved += [d for d in ids if d not in retrieved]
        segments += [(search.render() + "\n", True), (agent.results_block(ids), False)]
        for d in ids:
            if d in gold and d not in recorded:
                words = agent.passage(d).split()
                text = " ".join(words[:record_words]) + (" ..." if len(words) > record_words else "")
                segments.append((Action(RECORD, text, d).render() + "\n", True))
                recorded.add(d)
    tokens = sum(len(agent.tokenizer(t, add_special_tokens=False).input_ids) for t, mine in segments if mine)
    return Sample(q["question"], agent.prompt_prefix(q["question"]), segments, q["answer"], weight=1.0,
                  hops=max_hops, recall=gold_recall(retrieved, gold), correct=True, tokens=tokens)


# ------------------------------------------------------------------ E-step and M-step
def e_step(agent: SearchAgent, questions: list[dict], cfg: EMConfig, compact_prompt) -> list[Sample]:
    samples: list[Sample] = []
    for q in tqdm(questions, desc="E-step (sampling trajectories)"):
        traces = [agent.run(q["question"], max_hops=cfg.max_hops, answer=False) for _ in range(cfg.samples)]
        group = [Sample(q["question"], compact_prompt(q["question"]), tr.segments, q["answer"], hops=tr.hops,
                        recall=gold_recall(tr.retrieved_ids, q.get("supporting", [])),
                        tokens=sum(len(agent.tokenizer(t, add_special_tokens=False).input_ids)
                                   for t, mine in tr.segments if mine))
                 for tr in traces]
        contexts = [tr.context for tr in traces]
        lps = answer_logprobs(agent.lm, agent.tokenizer, contexts, [s.answer for s in group])
        other = OTHER_ANSWER.get(q["answer"])
        rivals = answer_logprobs(agent.lm, agent.tokenizer, contexts, [other] * len(group)) if other else None
        score = np.array(lps) + cfg.evidence_weight * np.array([s.recall for s in group])
        w = np.exp(score - score.max())
        w /= w.sum()
        for n, (s, lp, wk) in enumerate(zip(group, lps, w)):
            s.logp_answer, s.weight = lp, float(wk)
            s.correct = rivals is None or lp > rivals[n]
        samples += group
    return samples


def agent_lora(model, cfg):
    """The trainers' LoRA (peft) on the agent LM: rank cfg.lora_r on the attention and MLP projections of the top
    cfg.lora_layers blocks (EM's M-step and ROSE's policy)."""
    from peft import LoraConfig, get_peft_model

    n = model.config.num_hidden_layers
    layers = list(range(max(0, n - cfg.lora_layers), n)) if cfg.lora_layers else None
    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                            target_modules=LORA_TARGETS, layers_to_transform=layers,
                                            task_type="CAUSAL_LM"))


def m_step(model, tok, samples: list[Sample], cfg: EMConfig):
    """LoRA on the current weights, trained on the weighted trajectories, merged back; returns the model."""
    peft_model = agent_lora(model, cfg)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lr)
    peft_model.train()
    order = list(range(len(samples)))
    steps = cfg.epochs * math.ceil(len(order) / cfg.batch_size)
    bar = tqdm(total=steps, desc="M-step (weighted LoRA)")
    for _ in range(cfg.epochs):
        random.shuffle(order)
        for b in range(0, len(order), cfg.batch_size):
            chunk = [samples[i] for i in order[b:b + cfg.batch_size]]
            opt.zero_grad()
            loss = weighted_loss(peft_model, tok, chunk, cfg.max_len, cfg.batch_size, grad=True)
            torch.nn.utils.clip_grad_norm_([p for p in peft_model.parameters() if p.requires_grad], 1.0)
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()
    return peft_model.merge_and_unload().eval()


def trajectory_stats(samples) -> dict[str, float]:
    """What ROSE and EM both log per round (the comparison's curve): mean reward (answer correct + gold recall),
    gold-evidence recall, answer accuracy, trajectory length in model tokens, hops."""
    return {"mean_reward": float(np.mean([s.reward for s in samples])),
            "mean_recall": float(np.mean([s.recall for s in samples])),
            "accuracy": float(np.mean([s.correct for s in samples])),
            "mean_tokens": float(np.mean([s.tokens for s in samples])),
            "mean_hops": float(np.mean([s.hops for s in samples]))}


def dev_exact_match(agent: SearchAgent, questions: list[dict], max_hops: int) -> float:
    """Mean EM (training.eval.metrics, as training.eval.agent reports it) of the agent's answers."""
    if not questions:
        return float("nan")
    return float(np.mean([exact_match(agent.run(q["question"], max_hops=max_hops).answer, q["answer"])
                          for q in questions]))


# ------------------------------------------------------------------ the loop
def train(out: Path, cfg: EMConfig, data_dir: Path = Path("data/strategyqa"),
          artifacts: Path = Path("artifacts/v1"), lm: str | None = None) -> list[RoundLog]:
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
    data = load_multihop(data_dir)
    retriever = load_backend(artifacts, "retrieve", "bm25")
    model, tok = load_causal_lm(lm, dtype=torch.float32)
    train_q, dev_q = data.split("train"), data.split("valid")[: cfg.dev_questions]
    logs: list[RoundLog] = []
    agent_cfg = lambda few_shot, temperature: AgentConfig(  # noqa: E731
        max_hops=cfg.max_hops, k=cfg.k, max_new_tokens=cfg.max_new_tokens, few_shot=few_shot,
        temperature=temperature)
    compact_agent = SearchAgent(model, tok, retriever, data, agent_cfg(False, 0.0))
    compact = compact_agent.prompt_prefix
    if cfg.warm_start:
        model, log = warm_start(model, tok, compact_agent, train_q, dev_q, cfg, out)
        logs.append(log)
    for r in range(1, cfg.rounds + 1):
        sampler = copy.deepcopy(model).to(fast_dtype()).eval()  # generation copy: bf16 where it is native (~2x)
        agent = SearchAgent(sampler, tok, retriever, data, agent_cfg(r == 1 and not cfg.warm_start,
                                                                     cfg.temperature))
        t0 = time.perf_counter()
        samples = e_step(agent, round_questions(train_q, cfg.questions, cfg.seed, r), cfg, compact)
        sample_s = time.perf_counter() - t0
        del sampler, agent
        before = weighted_loss(model, tok, samples, cfg.max_len)
        t0 = time.perf_counter()
        model = m_step(model, tok, samples, cfg)
        train_s = time.perf_counter() - t0
        after = weighted_loss(model, tok, samples, cfg.max_len)
        groups = [samples[i:i + cfg.samples] for i in range(0, len(samples), cfg.samples)]
        log = RoundLog(r, len(groups), len(samples), float(np.mean([math.exp(s.logp_answer) for s in samples])),
                       float(np.mean([1 / sum(s.weight ** 2 for s in g) for g in groups])), before, after,
                       sample_s=sample_s, train_s=train_s,
                       extra=trajectory_stats(samples))
        save_round(model, tok, compact_agent, log, dev_q, cfg.max_hops, out)
        logs.append(log)
        print(f"round {r}: mean p(gold|z) {log.mean_p_gold:.3f}  ESS {log.mean_ess:.2f}/{cfg.samples}  "
              f"weighted loss {before:.3f} -> {after:.3f}  dev EM {log.dev_em}", flush=True)
    save_agent(out, cfg, data_dir, artifacts, trainer="em", em=asdict(cfg), log=[asdict(x) for x in logs])
    return logs


def save_round(model, tok, agent: SearchAgent, log: RoundLog, dev_q: list[dict], max_hops: int, out: Path) -> None:
    """round-N/ of log.round: the weights as a bf16 HF checkpoint and em_round.json, with the dev EM of agent's
    loop (its retriever and settings) run by those weights."""
    save = out / f"round-{log.round}"
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(save)
    tok.save_pretrained(save)
    if dev_q:
        dev_agent = copy.copy(agent)
        dev_agent.lm = copy.deepcopy(model).to(torch.bfloat16).eval()
        log.dev_em = dev_exact_match(dev_agent, dev_q, max_hops)
    (save / "em_round.json").write_text(json.dumps(asdict(log), indent=2) + "\n")


def warm_start(model, tok, agent: SearchAgent, train_q: list[dict], dev_q: list[dict], cfg: EMConfig,
               out: Path) -> tuple[torch.nn.Module, RoundLog]:
    """Round 0: LoRA behaviour cloning of the gold-guided expert on cfg.warm_start training questions (under
    agent's retriever and result format), merged and saved as round-0/; returns (the model, its log)."""
    t0 = time.perf_counter()
    samples = [expert_trajectory(agent, q, cfg.max_hops, cfg.record_words)
               for q in tqdm(warm_start_questions(train_q, cfg.warm_start, cfg.seed), desc="warm start (expert)")]
    sample_s = time.perf_counter() - t0
    before = weighted_loss(model, tok, samples[:64], cfg.max_len)
    t0 = time.perf_counter()
    model = m_step(model, tok, samples, dataclasses.replace(cfg, epochs=cfg.warm_epochs))
    train_s = time.perf_counter() - t0
    after = weighted_loss(model, tok, samples[:64], cfg.max_len)
    log = RoundLog(0, len(samples), len(samples), None, 1.0, before, after, sample_s=sample_s,
                   train_s=train_s, extra=trajectory_stats(samples))
    save_round(model, tok, agent, log, dev_q, cfg.max_hops, out)
    print(f"warm start: {len(samples)} expert trajectories (gold recall {log.extra['mean_recall']:.3f}), "
          f"loss on the first 64 {before:.3f} -> {after:.3f}, dev EM {log.dev_em}", flush=True)
    return model, log


def save_agent(out: Path, cfg, data_dir: Path, artifacts: Path, **meta) -> None:
    """meta.json of a trained agent (its last round is the served LM: models.exsearch.loop.load_trained), then its
    calibrated yes/no threshold (cfg.calibrate training questions; 0: none). Shared by EM and ROSE."""
    write_meta(out, backend="agent", model=f"round-{cfg.rounds}", few_shot=False, max_hops=cfg.max_hops, k=cfg.k,
               max_new_tokens=cfg.max_new_tokens, rounds=cfg.rounds, retriever="bm25", data=str(data_dir), **meta)
    if cfg.calibrate:
        from training.calibrate_agent import calibrate_saved

        calibrate_saved(out, cfg.calibrate, data_dir, artifacts)


# named settings over EMConfig's defaults (explicit options still win). "warm": the served agent (`make agent`, the job
# runner): the gold-guided warm start on 1,200 training questions, 5 passages a search, room in a step for a Record's
# citation; no EM rounds after it yet (README "Warm start")
PRESETS: dict[str, dict] = {"warm": {"warm_start": 1200, "rounds": 0, "k": 5, "max_new_tokens": 48}}


def agent_cli(argv, doc: str, config_cls, out: Path, train_fn, presets: dict[str, dict] | None = None) -> None:
    """The command line of an agent trainer: paths, the config dataclass's fields, threads, and a --preset of
    named settings where the trainer has them."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=out)
    p.add_argument("--data", type=Path, default=Path("data/strategyqa"))
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/v1"))
    p.add_argument("--lm", default=None, help="local HF causal-LM directory (default: the prepared SmolLM2-135M)")
    add_config_args(p, config_cls)
    add_threads_arg(p)
    if presets:
        p.add_argument("--preset", choices=sorted(presets), default=None,
                       help="named settings replacing the defaults (options given still win)")
        p.set_defaults(**presets.get(p.parse_known_args(argv)[0].preset, {}))
    a = p.parse_args(argv)
    set_threads(a.threads)
    train_fn(a.out, config_from_args(config_cls, a), a.data, a.artifacts, a.lm)


def main(argv=None) -> None:
    agent_cli(argv, __doc__, EMConfig, Path("artifacts/v1/agent"), train, PRESETS)


if __name__ == "__main__":
    main()
