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


def _expert_agent(k: int = 2):
    """A SearchAgent over a hand-made retriever (query -> ids) and passages, with the real tokenizer."""
    from models.causal_lm import load_causal_lm
    from models.exsearch.loop import AgentConfig, SearchAgent

    passages = {"a": "Llamas gestate for 11 months.", "b": "The war lasted 6 months.", "c": "Vietnam is in Asia.",
                "d": "Paris is in France."}
    routes = {"Could a llama give birth twice during the war?": ["c", "b"],
              "Llamas gestate for 11 months.": ["a", "d"], "The war lasted 6 months.": ["b", "c"]}
    _, tok = load_causal_lm()
    return SearchAgent(None, tok, lambda q, n: routes[q][:n], passages, AgentConfig(k=k, few_shot=False))


def test_expert_searches_the_question_then_a_missing_gold_fact_and_records_the_gold_it_sees():
    from models.exsearch.actions import RECORD, SEARCH, parse_step
    from training.train_exsearch import expert_trajectory

    agent = _expert_agent()
    q = {"question": "Could a llama give birth twice during the war?", "answer": "no", "supporting": ["b", "a"]}
    s = expert_trajectory(agent, q, max_hops=2, record_words=3)
    written = [parse_step(text) for text, mine in s.segments if mine]
    assert [(a.kind, a.text, a.doc_id) for a in written] == [
        (SEARCH, q["question"], None), (RECORD, "The war lasted ...", "b"),  # hop 1: the question; b is shown
        (SEARCH, "Llamas gestate for 11 months.", None), (RECORD, "Llamas gestate for ...", "a")]  # a was missing
    shown = [text for text, mine in s.segments if not mine]
    assert shown == [agent.results_block(["c", "b"]), agent.results_block(["a", "d"])]
    assert s.recall == 1.0 and s.weight == 1.0 and s.hops == 2 and s.answer == "no"
    assert s.prompt == agent.prompt_prefix(q["question"])  # the compact prompt the trained agent runs under
    assert all(text == parse_step(text).render() + "\n" for text, mine in s.segments if mine)  # canonical lines


def test_expert_with_nothing_missing_searches_the_last_gold_fact_and_records_nothing_twice():
    from models.exsearch.actions import RECORD, SEARCH, parse_step
    from training.train_exsearch import expert_trajectory

    q = {"question": "Could a llama give birth twice during the war?", "answer": "no", "supporting": ["b"]}
    s = expert_trajectory(_expert_agent(), q, max_hops=2)
    written = [parse_step(text) for text, mine in s.segments if mine]
    assert [(a.kind, a.doc_id) for a in written] == [(SEARCH, None), (RECORD, "b"), (SEARCH, None)]
    assert written[2].text == "The war lasted 6 months." and s.recall == 1.0


def test_warm_start_questions_are_a_fixed_draw_and_calibration_avoids_them(tmp_path):
    from models.artifacts import write_meta
    from training.eval.agent import calibration_questions, trainer_draws
    from training.train_exsearch import warm_start_questions

    train = [{"id": f"q{n}", "question": f"Q{n}?", "answer": "no", "supporting": [f"d{n}"] if n % 5 else []}
             for n in range(400)]
    warm = warm_start_questions(train, 200, seed=0)
    assert warm == warm_start_questions(train, 200, seed=0) and len({q["id"] for q in warm}) == 200
    assert all(q["supporting"] for q in warm)  # the expert needs gold facts
    write_meta(tmp_path, rounds=0, em={"warm_start": 200, "seed": 0, "questions": 16})  # what train() saves
    drawn = trainer_draws(train, tmp_path)
    assert {q["id"] for q in warm} <= drawn
    cal = calibration_questions(train, 50, exclude=drawn)
    assert len(cal) == 50 and not {q["id"] for q in cal} & {q["id"] for q in warm}
