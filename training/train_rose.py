"""Train the EXSEARCH agent with ROSE, reinforcement learning with verifiable rewards, beside generalized EM.

    python -m training.train_rose --out artifacts/v1/agent-rose --rounds 2 --questions 16 --rollouts 4 --threads 1

Same loop, retriever, questions and rollouts per question as `training.train_exsearch` (the E-step's
`samples`), so the two trainers are compared on the same question budget. Per round and training question:

1. Rollouts. `roots` rollouts of the agent (temperature > 0) start at the root. Each further one is branched
   from an already sampled rollout (`training.rose.choose_branch`): at the model-written token with the highest
   semantic entropy of the next-token distribution (the top `top_tokens` candidates, same-meaning tokens merged),
   or, with probability epsilon, restarted from the root. A branch replays the parent's actions up to that token
   (`SearchAgent.run(replay=..., partial=...)`: the searches run again) and samples on from inside the line.
2. Rewards, verifiable: 1 for the correct answer + the share of the question's gold supporting facts the rollout
   retrieved (StrategyQA gives them).
3. Advantages per segment between branch points (`training.rose.token_advantages`): a segment's value is the
   mean reward of the rollouts through it; its advantage is that value minus its parent segment's (the group mean
   for the first), over the group's reward spread; plus the length term that lowers longer correct rollouts.
4. GRPO's clipped update (`training.rose.clipped_objective`) with a small KL to the reference (the LM before any
   update: the LoRA adapter disabled), `updates` gradient steps per group on the model-written tokens.

As EM, round 1 samples with the worked example in the prompt (the untrained LM needs it for the format) and
every update trains under the compact prompt; later rounds sample without it. Logged per round (`rose_round.json`,
same fields as EM's `extra`): mean reward, gold recall, accuracy, trajectory length, hops, branches, dev EM. Each
round's model is saved merged as a standard HF checkpoint (round-N/); meta.json at --out makes it loadable as
the served agent (`models.exsearch.loop.load_trained`).
"""
from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from indexing.data import load_multihop
from models.causal_lm import fast_dtype, load_causal_lm
from models.exsearch.loop import AgentConfig, SearchAgent, Trace
from models.registry import load_backend
from training.common import round_questions
from training.eval.metrics import exact_match, gold_recall
from training.rose import Rollout, choose_branch, clipped_objective, semantic_entropy, token_advantages
from training.train_exsearch import (
    agent_cli,
    agent_lora,
    dev_exact_match,
    save_agent,
    trajectory_stats,
)


@dataclass
class RoseConfig:
    rounds: int = 2
    questions: int = 16  # training questions per round (the same draw as EM's with the same seed)
    rollouts: int = 3  # per question, roots included (EM's `samples`)
    roots: int = 1  # rollouts started from the root before branching
    epsilon: float = 0.2  # probability that a further rollout restarts from the root instead of branching
    top_tokens: int = 5  # next-token candidates of the semantic entropy
    temperature: float = 0.8
    max_hops: int = 2
    k: int = 2  # passages per search
    max_new_tokens: int = 32
    lr: float = 1e-4
    updates: int = 2  # gradient steps per question's group (the first is on-policy: ratio 1)
    clip: float = 0.2
    kl_weight: float = 0.02
    length_weight: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_layers: int = 8  # adapt the top N blocks, as EM
    dev_questions: int = 16
    calibrate: int = 0  # training questions the final agent's yes/no threshold is fitted on (0: none; README)
    seed: int = 0


@dataclass
class Node:
    """One rollout of a question's tree. Token positions count the model-written tokens of the transcript
    (segments tokenised one by one, as the update encodes them); positions < fork are its parent's."""

    question: str
    segments: list[tuple[str, bool]]  # transcript after the prompt, "Answer: <a>\\n" last (model-written)
    answer: str
    correct: bool
    recall: float
    hops: int
    parent: int | None = None
    fork: int = 0
    seg_tokens: list[list[int]] = field(default_factory=list)  # tokens of each model-written segment
    entropies: list[float] = field(default_factory=list)  # per model-written token, under the sampling prompt
    branched_at: set[int] = field(default_factory=set)

    @property
    def reward(self) -> float:
        return float(self.correct) + self.recall

    @property
    def length(self) -> int:
        return sum(len(t) for t in self.seg_tokens)

    @property
    def tokens(self) -> int:
        """Trajectory length in model tokens, the answer line left out (as EM's samples, which stop before it)."""
        return sum(len(t) for t in self.seg_tokens[:-1])


def node_from_trace(tok, trace: Trace, q: dict, parent: int | None = None, fork: int = 0) -> Node:
    segments = [*trace.segments, (f"Answer: {trace.answer}\n", True)]
    return Node(q["question"], segments, trace.answer, bool(exact_match(trace.answer, q["answer"])),
                gold_recall(trace.retrieved_ids, q.get("supporting", [])), trace.hops, parent, fork,
                [tok(t, add_special_tokens=False)["input_ids"] for t, mine in segments if mine])


def encode(tok, prompt: str, node: Node) -> tuple[list[int], list[int]]:
    """Token ids of prompt + transcript and the positions of the model-written tokens in them."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    written, mine_tokens = [], iter(node.seg_tokens)
    for text, mine in node.segments:
        t = next(mine_tokens) if mine else tok(text, add_special_tokens=False)["input_ids"]
        if mine:
            written += range(len(ids), len(ids) + len(t))
        ids = ids + t
    return ids, written


@torch.no_grad()
def written_entropies(model, tok, prompt: str, node: Node, top: int) -> list[float]:
    """Semantic entropy of the next-token distribution before each model-written token (top candidates)."""
    ids, written = encode(tok, prompt, node)
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
    probs = torch.softmax(logits[[p - 1 for p in written]], -1)
    p, i = probs.topk(top, -1)
    return [semantic_entropy(list(zip(tok.convert_ids_to_tokens(row_i.tolist()), row_p.tolist())))
            for row_p, row_i in zip(p, i)]


def owner(nodes: list[Node], i: int, pos: int) -> int:
    """The rollout whose own stretch holds position pos of rollout i's transcript."""
    while pos < nodes[i].fork:
        i = nodes[i].parent
    return i


def branch_prefix(tok, node: Node, pos: int) -> tuple[list[str], str]:
    """(the action lines before model-written token pos, the start of its line up to it): what the branched rollout
    replays and where it samples on."""
    lines = [text for text, mine in node.segments if mine]
    for j, toks in enumerate(node.seg_tokens):
        if pos < len(toks):
            return lines[:j], tok.decode(toks[:pos])
        pos -= len(toks)
    raise ValueError("position past the rollout's end")


def to_rollouts(nodes: list[Node]) -> list[Rollout]:
    """The tree as `training.rose.Rollout`s: each rollout's own stretch is cut at its children's fork positions;
    a rollout passes through its ancestors' segments up to its fork, then through its own."""
    own: dict[int, list[tuple[int, int, int]]] = {}
    next_id = 0
    for n, node in enumerate(nodes):
        cuts = sorted({node.fork, node.length} | {c.fork for c in nodes if c.parent == n})
        own[n] = []
        for a, b in zip(cuts, cuts[1:]):
            own[n].append((next_id, a, b))
            next_id += 1

    def path(n: int, upto: int | None = None) -> list[tuple[int, int, int]]:
        node = nodes[n]
        mine = [s for s in own[n] if upto is None or s[2] <= upto]
        return (path(node.parent, node.fork) if node.parent is not None else []) + mine

    out = []
    for n, node in enumerate(nodes):
        segs = path(n)
        out.append(Rollout([s for s, _, _ in segs], [b - a for _, a, b in segs], node.reward, node.correct,
                           node.entropies, node.branched_at))
    return out


def sample_group(agent: SearchAgent, q: dict, cfg: RoseConfig, rng: random.Random) -> list[Node]:
    """Roots, then branches at the highest-divergence positions (or epsilon restarts), for one question."""
    tok, prompt = agent.tokenizer, agent.prompt_prefix(q["question"])
    nodes: list[Node] = []

    def add(node: Node) -> None:
        h = written_entropies(agent.lm, tok, prompt, node, cfg.top_tokens)
        floor = node.fork if node.parent is not None else 0  # inherited positions and the fork itself are taken
        node.entropies = [x if i > floor else float("-inf") for i, x in enumerate(h)]
        nodes.append(node)

    for n in range(cfg.rollouts):
        where = None if n < cfg.roots else choose_branch(to_rollouts(nodes), cfg.epsilon, rng)
        if where is None:
            add(node_from_trace(tok, agent.run(q["question"], max_hops=cfg.max_hops), q))
            continue
        i, pos = owner(nodes, *where), where[1]
        nodes[i].branched_at.add(pos)
        replay, partial = branch_prefix(tok, nodes[i], pos)
        trace = agent.run(q["question"], max_hops=cfg.max_hops, replay=replay, partial=partial)
        child = node_from_trace(tok, trace, q, parent=i, fork=pos)
        if child.length <= pos:  # the branch wrote nothing past the fork (e.g. the replay ended the loop)
            child.fork, child.parent = 0, None
        add(child)
    return nodes


def written_logps(model, batch: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of each model-written token ([B, W], right-padded) and its mask."""
    width = max(len(ids) for ids, _ in batch)
    wmax = max(len(w) for _, w in batch)
    device = next(model.parameters()).device
    ids = torch.zeros(len(batch), width, dtype=torch.long, device=device)
    att = torch.zeros_like(ids)
    for n, (i, _) in enumerate(batch):
        ids[n, :len(i)], att[n, :len(i)] = torch.tensor(i), 1
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=att).logits.float(), -1)
    out = torch.zeros(len(batch), wmax, device=device)
    mask = torch.zeros(len(batch), wmax, device=device)
    for n, (_, w) in enumerate(batch):
        pos = torch.tensor(w, device=device)
        out[n, :len(w)] = logp[n, pos - 1, ids[n, pos]]
        mask[n, :len(w)] = 1
    return out, mask


def update(policy, tok, prompt_of, nodes: list[Node], cfg: RoseConfig, opt) -> dict[str, float]:
    """GRPO steps on one group: segment advantages + length term, clipped ratio to the pre-update policy, KL to
    the reference (adapter disabled)."""
    adv_lists = token_advantages(to_rollouts(nodes), cfg.length_weight)
    batch = [encode(tok, prompt_of(n.question), n) for n in nodes]
    adv = torch.zeros(len(nodes), max(len(w) for _, w in batch))
    for n, a in enumerate(adv_lists):
        adv[n, :len(a)] = torch.tensor(a)
    with torch.no_grad():
        old, mask = written_logps(policy, batch)
        with policy.disable_adapter():
            ref, _ = written_logps(policy, batch)
    params = [p for p in policy.parameters() if p.requires_grad]
    losses = []
    for _ in range(cfg.updates):
        opt.zero_grad()
        logp, _ = written_logps(policy, batch)
        loss = clipped_objective(logp, old, ref, adv, mask, cfg.clip, cfg.kl_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    return {"loss_first": losses[0], "loss_last": losses[-1], "mean_abs_adv": float((adv.abs() * mask).sum() /
                                                                                  mask.sum())}


def train(out: Path, cfg: RoseConfig, data_dir: Path = Path("data/strategyqa"),
          artifacts: Path = Path("artifacts/v1"), lm: str | None = None) -> list[dict]:
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed + 1)
    data = load_multihop(data_dir)
    retriever = load_backend(artifacts, "retrieve", "bm25")
    model, tok = load_causal_lm(lm, dtype=torch.float32)
    policy = agent_lora(model, cfg)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    train_q, dev_q = data.split("train"), data.split("valid")[: cfg.dev_questions]
    agent_cfg = lambda few_shot, temperature: AgentConfig(  # noqa: E731
        max_hops=cfg.max_hops, k=cfg.k, max_new_tokens=cfg.max_new_tokens, few_shot=few_shot,
        temperature=temperature)
    compact = SearchAgent(model, tok, retriever, data, agent_cfg(False, 0.0)).prompt_prefix
    logs = []
    for r in range(1, cfg.rounds + 1):
        merged = copy.deepcopy(policy).merge_and_unload().eval()
        agent = SearchAgent(merged.to(fast_dtype()), tok, retriever, data, agent_cfg(r == 1, cfg.temperature))
        t0, groups, sample_s, stats = time.perf_counter(), [], 0.0, []
        policy.train()
        for q in tqdm(round_questions(train_q, cfg.questions, cfg.seed, r), desc=f"ROSE round {r}"):
            ts = time.perf_counter()
            nodes = sample_group(agent, q, cfg, rng)
            sample_s += time.perf_counter() - ts
            groups.append(nodes)
            stats.append(update(policy, tok, compact, nodes, cfg, opt))
        del agent, merged
        policy.eval()
        nodes = [x for g in groups for x in g]
        merged = copy.deepcopy(policy).merge_and_unload().to(torch.bfloat16).eval()
        save = out / f"round-{r}"
        merged.save_pretrained(save)
        tok.save_pretrained(save)
        dev_em = dev_exact_match(SearchAgent(merged, tok, retriever, data, agent_cfg(False, 0.0)), dev_q,
                                 cfg.max_hops) if dev_q else None
        log = {"round": r, "questions": len(groups), "trajectories": len(nodes),
               "branches": sum(x.parent is not None for x in nodes), **trajectory_stats(nodes),
               "loss_first": float(np.mean([s["loss_first"] for s in stats])),
               "loss_last": float(np.mean([s["loss_last"] for s in stats])),
               "mean_abs_adv": float(np.mean([s["mean_abs_adv"] for s in stats])), "dev_em": dev_em,
               "sample_s": sample_s, "train_s": time.perf_counter() - t0 - sample_s}
        logs.append(log)
        print(f"round {r}: reward {log['mean_reward']:.3f}  recall {log['mean_recall']:.3f}  "
              f"accuracy {log['accuracy']:.3f}  tokens {log['mean_tokens']:.1f}  branches {log['branches']}  "
              f"loss {log['loss_first']:.4f} -> {log['loss_last']:.4f}  dev EM {dev_em}", flush=True)
        (save / "rose_round.json").write_text(json.dumps(log, indent=2) + "\n")
    save_agent(out, cfg, data_dir, artifacts, trainer="rose", rose=asdict(cfg), log=logs)
    return logs


def main(argv=None) -> None:
    agent_cli(argv, __doc__, RoseConfig, Path("artifacts/v1/agent-rose"), train)


if __name__ == "__main__":
    main()
