"""ROSE's rollout driver and update (training.train_rose): the rollout tree as segments, branching by replay in
the real loop (SmolLM2-135M + BM25), and one GRPO step on a real group."""
from __future__ import annotations

import copy
import random

import torch

from training.train_rose import Node, RoseConfig, branch_prefix, owner, to_rollouts


def _node(length: int, reward: float, parent=None, fork=0) -> Node:
    return Node("q", [("x", True)], "yes", reward >= 1, reward % 1, 0, parent, fork, [[0] * length])


def test_the_tree_becomes_segments_cut_at_the_fork_positions():
    # A (10 tokens, root); B forks A at 4 (9 tokens); C forks B at 6 (8 tokens); D forks A at 7 (9 tokens)
    nodes = [_node(10, 1.0), _node(9, 0.0, 0, 4), _node(8, 1.5, 1, 6), _node(9, 0.5, 0, 7)]
    rollouts = to_rollouts(nodes)
    # A's own stretch is cut at 4 and 7: segments [0,4) [4,7) [7,10); B owns [4,6) [6,9); C [6,8); D [7,9)
    a, b, c, d = rollouts
    assert a.lengths == [4, 3, 3] and sum(a.lengths) == 10
    assert b.segments[:1] == a.segments[:1] and b.lengths == [4, 2, 3]
    assert c.segments[:2] == b.segments[:2] and c.lengths == [4, 2, 2]
    assert d.segments[:2] == a.segments[:2] and d.lengths == [4, 3, 2] and d.segments[2] != a.segments[2]
    assert all(sum(r.lengths) == n.length for r, n in zip(rollouts, nodes))
    # a position in B's inherited stretch belongs to A; one in its own stretch to B
    assert owner(nodes, 2, 3) == 0 and owner(nodes, 2, 5) == 1 and owner(nodes, 2, 7) == 2


def test_a_branch_replays_the_parent_up_to_the_fork_and_samples_on(agent_lm_parts):
    from models.exsearch.loop import AgentConfig, SearchAgent
    from training.train_rose import node_from_trace, sample_group

    model, tok, retriever, data = agent_lm_parts
    q = data.split("train")[0]
    greedy = SearchAgent(model, tok, retriever, data, AgentConfig(max_hops=1, k=2, max_new_tokens=24))
    trace = greedy.run(q["question"])
    lines = [t for t, mine in trace.segments if mine]
    again = greedy.run(q["question"], replay=lines, partial="Answer:")  # all actions replayed, the answer generated
    assert again.segments == trace.segments and again.retrieved_ids == trace.retrieved_ids
    assert all(s.gen_ms == 0.0 for s in again.steps[:len(lines)])  # replayed, not generated
    parent = node_from_trace(tok, trace, q)
    replay, partial = branch_prefix(tok, parent, len(parent.seg_tokens[0]) + 2)  # 2 tokens into the 2nd line
    assert replay == lines[:1] and lines[1].startswith(partial) and partial

    random.seed(0), torch.manual_seed(0)
    sampler = SearchAgent(copy.deepcopy(model).to(torch.bfloat16), tok, retriever, data,
                          AgentConfig(max_hops=1, k=2, max_new_tokens=24, temperature=0.8))
    cfg = RoseConfig(rollouts=3, roots=1, epsilon=0.0, max_hops=1, k=2, max_new_tokens=24)
    nodes = sample_group(sampler, q, cfg, random.Random(0))
    assert len(nodes) == 3 and nodes[0].parent is None
    for child in nodes[1:]:
        if child.parent is None:  # a branch that wrote nothing past its fork restarts as a root
            continue
        par = nodes[child.parent]
        assert child.fork in par.branched_at
        r, part = branch_prefix(tok, par, child.fork)
        written = [t for t, mine in child.segments if mine]
        assert written[:len(r)] == r and written[len(r)].startswith(part)  # same transcript up to the fork
        # the fork was the highest-entropy free position of the group when it was chosen
        assert par.entropies[child.fork] > float("-inf")
    for n in nodes:
        assert 0.0 <= n.reward <= 2.0 and len(n.entropies) == n.length


def test_one_grpo_step_moves_the_adapter_and_lowers_the_objective(agent_lm_parts):
    from peft import LoraConfig, get_peft_model

    from models.exsearch.loop import AgentConfig, SearchAgent
    from training.train_exsearch import LORA_TARGETS
    from training.train_rose import encode, update, written_logps

    model, tok, retriever, data = agent_lm_parts
    q = data.split("train")[1]
    agent = SearchAgent(model, tok, retriever, data, AgentConfig(max_hops=1, k=2, max_new_tokens=24))
    from training.train_rose import node_from_trace

    trace = agent.run(q["question"])
    good = node_from_trace(tok, trace, q)
    bad = copy.deepcopy(good)
    good.correct, good.recall, bad.correct, bad.recall = True, 1.0, False, 0.0
    bad.segments[-1] = ("Answer: maybe\n", True)
    bad.seg_tokens[-1] = tok("Answer: maybe\n", add_special_tokens=False)["input_ids"]
    policy = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS,
                                                             layers_to_transform=[27, 28, 29],
                                                             task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    prompt = agent.prompt_prefix
    batch = [encode(tok, prompt(q["question"]), n) for n in (good, bad)]
    with torch.no_grad():
        before, mask = written_logps(policy, batch)
    stats = update(policy, tok, prompt, [good, bad], RoseConfig(updates=3), opt)
    with torch.no_grad():
        after, _ = written_logps(policy, batch)
    assert stats["loss_last"] < stats["loss_first"]
    # the rewarded rollout's answer tokens became likelier, the unrewarded one's less likely
    g_ans = slice(sum(len(t) for t in good.seg_tokens[:-1]), good.length)
    b_ans = slice(sum(len(t) for t in bad.seg_tokens[:-1]), bad.length)
    assert after[0, g_ans].sum() > before[0, g_ans].sum()
    assert after[1, b_ans].sum() < before[1, b_ans].sum()
