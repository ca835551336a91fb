"""EXSEARCH training: one generalized-EM round on a tiny set with the real 135M LM and BM25."""
from __future__ import annotations

import copy
import math
import random

import pytest
import torch


def test_encode_sample_targets_only_what_the_model_wrote(agent_lm_parts):
    from training.train_exsearch import Sample, encode_sample

    _, tok, _, _ = agent_lm_parts
    s = Sample("Is water wet?", "PROMPT Question: Is water wet?\n",
               [("Search: water\n", True), ("Results:\n[doc:a] Water is a liquid.\n", False)], "yes")
    ids, target = encode_sample(tok, s, max_len=512)
    assert len(ids) == len(target)
    written = tok.decode([i for i, t in zip(ids, target) if t])
    assert "Search: water" in written and "Answer: yes" in written
    assert "Results" not in written and "PROMPT" not in written


def test_one_em_round_changes_the_weights_and_lowers_the_weighted_loss(agent_lm_parts):
    from models.exsearch.loop import EXAMPLE, AgentConfig, SearchAgent
    from training.train_exsearch import EMConfig, e_step, m_step, weighted_loss

    model, tok, retriever, data = agent_lm_parts
    model = copy.deepcopy(model)  # the M-step merges into the weights; the fixture is shared
    random.seed(0), torch.manual_seed(0)
    cfg = EMConfig(samples=2, temperature=0.8, max_hops=1, k=2, max_new_tokens=24, lr=1e-3, epochs=3,
                   batch_size=4, lora_r=8, lora_layers=4)
    questions = data.split("train")[:2]
    sampler = SearchAgent(copy.deepcopy(model).to(torch.bfloat16), tok, retriever, data,  # as train() samples
                          AgentConfig(max_hops=1, k=2, max_new_tokens=24, temperature=0.8))
    compact = SearchAgent(model, tok, retriever, data, AgentConfig(few_shot=False)).prompt_prefix
    samples = e_step(sampler, questions, cfg, compact)
    assert len(samples) == 4
    for group in (samples[:2], samples[2:]):  # self-normalised importance weights per question
        assert math.isclose(sum(s.weight for s in group), 1.0, rel_tol=1e-6)
        # w ~ p(gold | z) e^{b x gold recall(z)}: the answer's likelihood and the evidence found both count
        score = [s.logp_answer + cfg.evidence_weight * s.recall for s in group]
        assert group[0].weight / group[1].weight == pytest.approx(math.exp(score[0] - score[1]), rel=1e-5)
        assert all(s.logp_answer < 0 and 0.0 <= s.recall <= 1.0 for s in group)
        assert all(s.reward == float(s.correct) + s.recall and s.tokens > 0 for s in group)
    assert all(s.prompt == compact(s.question) and EXAMPLE not in s.prompt for s in samples)  # no example
    probe = "model.layers.29.self_attn.q_proj.weight"  # a block the M-step adapts
    before_w = dict(model.named_parameters())[probe].detach().clone()
    before = weighted_loss(model, tok, samples, cfg.max_len)
    model = m_step(model, tok, samples, cfg)
    after = weighted_loss(model, tok, samples, cfg.max_len)
    after_w = dict(model.named_parameters())[probe].detach()
    assert not torch.equal(before_w, after_w)  # LoRA merged into the weights
    assert after < before, (before, after)
