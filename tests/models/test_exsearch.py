"""EXSEARCH part one: the agent's action format (pure parsing) and the search loop with the real 135M LM."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.exsearch.actions import ANSWER, RECORD, SEARCH, THINK, Action, ActionParseError, parse_step

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the parser
@pytest.mark.parametrize("text, expected", [
    ("Think: I need the war's length.", Action(THINK, "I need the war's length.")),
    ("Search: llama gestation period", Action(SEARCH, "llama gestation period")),
    ("  search :  llama gestation period \n", Action(SEARCH, "llama gestation period")),
    ("Record: A llama's gestation lasts 11.5 months. [doc:fc36287b026]",
     Action(RECORD, "A llama's gestation lasts 11.5 months.", "fc36287b026")),
    ("Record: [doc: f981bb06006] Frost is common in May.", Action(RECORD, "Frost is common in May.", "f981bb06006")),
    ("Record: fact one [doc:a1] and again [doc:a1]", Action(RECORD, "fact one and again", "a1")),
    ("Answer: no", Action(ANSWER, "no")),
    ("\n\nANSWER: Yes, it is.\n", Action(ANSWER, "Yes, it is.")),
    ("Think: a thought that\nwraps onto a second line", Action(THINK, "a thought that wraps onto a second line")),
])
def test_parse_valid_steps(text, expected):
    assert parse_step(text) == expected


@pytest.mark.parametrize("action", [
    Action(THINK, "x y"), Action(SEARCH, "q"), Action(RECORD, "fact.", "abc123"), Action(ANSWER, "yes")])
def test_render_round_trips(action):
    assert parse_step(action.render()) == action


@pytest.mark.parametrize("text, message", [
    ("", "empty step"),
    ("   \n ", "empty step"),
    ("Question: is it?", "unknown action keyword 'Question'"),
    ("Observation: results", "unknown action keyword 'Observation'"),
    ("[doc:f09efd217cf] The Pledge of Allegiance ...", "no action keyword"),
    ("just some words", "no action keyword"),
    ("Search:", "empty Search payload"),
    ("Answer:   ", "empty Answer payload"),
    ("Think:", "empty Think payload"),
    ("Search: [doc:abc]", "empty Search payload"),
    ("Record: Frost is common in May.", "Record without a doc citation"),
    ("Record: Frost is common in May. [doc:]", "malformed citation"),
    ("Record: Frost is common (doc abc)", "Record without a doc citation"),
    ("Record: [doc:abc]", "empty Record"),
    ("Record: two facts [doc:a1] [doc:b2]", "cite exactly one"),
    ("Search: frost Answer: yes", "multiple actions"),
    ("Think: hmm\nSearch: frost", "multiple actions"),
    ("Record: fact [doc:a1]\nAnswer: no", "multiple actions"),
])
def test_parse_rejects_malformed_steps(text, message):
    with pytest.raises(ActionParseError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_step(text)


def test_yes_no_normalisation():
    from models.exsearch.loop import is_yes_no_question, normalize_yes_no

    assert normalize_yes_no("Yes, because frost forms in May.") == "yes"
    assert normalize_yes_no(" no") == "no"
    assert normalize_yes_no("False") == "no"
    assert normalize_yes_no("the answer is unclear") is None
    assert is_yes_no_question("Is it common to see frost during some college commencements?")
    assert is_yes_no_question("Could a llama birth twice during War in Vietnam (1945-46)?")
    assert not is_yes_no_question("Who wrote Hamlet?")


def test_loop_with_a_scripted_model_rejects_uncited_records_and_forces_an_answer():
    """The loop's control flow without the LM: a fake generator plays a fixed script."""
    from models.exsearch.loop import AgentConfig, SearchAgent

    class Tok:
        pad_token = "<pad>"

        def encode(self, w, add_special_tokens=False):
            return [1 if "yes" in w.lower() else 2]

    script = iter(["Search: frost commencement\n", "Record: invented [doc:zzz]\n",
                   "Record: still invented [doc:zzz]\n"])
    agent = SearchAgent(None, Tok(), lambda q, k: ["d1", "d2"], {"d1": "Frost in May.", "d2": "Caps and gowns."},
                        AgentConfig(max_hops=2))
    agent._generate = lambda prompt, n: (" yes" if prompt.endswith("Answer:") else next(script, "Answer: yes\n"), 1.0)
    trace = agent.run("Is it common to see frost during commencements?")
    assert trace.hops == 1 and trace.evidence == []
    assert [s.error is not None for s in trace.steps[:3]] == [False, True, True]
    assert "not retrieved" in trace.steps[1].error
    assert trace.stop_reason == "parse_error" and trace.forced_answer and trace.answer == "yes"


# ---------------------------------------------------------------- the loop with the real LM and retriever
@pytest.fixture(scope="module")
def agent_parts(artifacts):
    from indexing.data import load_multihop
    from models.causal_lm import load_causal_lm
    from models.registry import load_backend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: much faster greedy decoding on a shared 2-core box
    model, tok = load_causal_lm()  # prepares the packaged SmolLM2 when missing
    data = load_multihop(ROOT / "data" / "strategyqa")
    retriever = load_backend(artifacts, "retrieve", "bm25")
    yield model, tok, retriever, data
    torch.set_num_threads(threads)


def _agent(agent_parts, **cfg):
    from models.exsearch.loop import AgentConfig, SearchAgent

    model, tok, retriever, data = agent_parts
    return SearchAgent(model, tok, retriever, data, AgentConfig(**cfg)), data


def test_loop_stops_at_the_hop_limit_and_answers(agent_parts):
    agent, data = _agent(agent_parts, max_hops=1, max_new_tokens=24, steps_after_limit=1)
    q = data.split("test")[0]
    trace = agent.run(q["question"])
    assert trace.hops <= 1
    assert sum(1 for s in trace.steps if s.action and s.action.kind == SEARCH and s.executed) <= 1
    assert trace.answer in ("yes", "no")  # a yes/no question is normalised
    assert trace.steps[-1].action.kind == ANSWER
    assert trace.stop_reason in ("answer", "hop_limit", "step_limit", "parse_error")
    assert trace.forced_answer == (trace.stop_reason != "answer")
    assert all(s.gen_ms > 0 for s in trace.steps)
    # max_hops=0 overrides the config: no search at all, the answer is forced at once
    trace0 = agent.run(q["question"], max_hops=0)
    assert trace0.hops == 0 and trace0.retrieved_ids == [] and trace0.forced_answer


def test_recorded_evidence_cites_retrieved_documents(agent_parts):
    agent, data = _agent(agent_parts, max_hops=2, max_new_tokens=40)
    traces = [agent.run(q["question"]) for q in data.split("test")[:3]]
    for trace in traces:
        retrieved = set(trace.retrieved_ids)
        for ev in trace.evidence:
            assert ev.doc_id in retrieved and ev.text
        for s in trace.steps:
            if s.action and s.action.kind == RECORD:
                assert s.action.doc_id in retrieved
            if s.action and s.action.kind == SEARCH and s.executed:
                assert 0 < len(s.retrieved) <= 3 or not s.retrieved
        assert trace.hops <= 2 and trace.answer in ("yes", "no")
    assert any(t.hops > 0 for t in traces)  # the model does search


def test_baselines_answer_yes_or_no(agent_parts):
    agent, data = _agent(agent_parts, k=3)
    q = data.split("test")[1]["question"]
    answer, ids, ms = agent.rag_answer(q)
    assert answer in ("yes", "no") and len(ids) == 3 and ms > 0
    answer, ms = agent.closed_book_answer(q)
    assert answer in ("yes", "no") and ms > 0


def test_the_evaluation_row_of_a_loop(agent_parts):
    """training.eval.agent's loop row: answers scored, tokens the model wrote counted, evidence recall measured."""
    from training.eval.agent import K_EVIDENCE, run_loop

    agent, data = _agent(agent_parts, max_hops=1, max_new_tokens=24, steps_after_limit=1)
    row = run_loop("loop", agent, data.split("test")[:2])
    assert row["n"] == 2 and 0 <= row["em"] <= 1 and row["mean_hops"] <= 1
    assert row["tokens_per_q"] > 0 and 0 <= row[f"evidence_recall@{K_EVIDENCE}"] <= 1


def test_a_calibrated_threshold_decides_yes_no_answers_from_the_preference(agent_parts):
    """With yes_threshold set, the answer is "yes" iff log P(yes) - log P(no) after "Answer:" exceeds it, for the
    loop and both baselines; the threshold fitted on training questions maximises their accuracy."""
    from training.eval.agent import calibrate

    agent, data = _agent(agent_parts, max_hops=1, max_new_tokens=24, steps_after_limit=1)
    q = data.split("test")[0]["question"]
    score = agent.yes_no_score(agent.closed_book_prompt(q))
    for thr, expected in ((score - 1.0, "yes"), (score + 1.0, "no")):
        agent.config.yes_threshold = thr
        assert agent.closed_book_answer(q)[0] == expected
        assert agent.rag_answer(q)[0] == ("yes" if agent.yes_no_score(
            agent.rag_prompt(q, agent.retrieve(q, agent.config.k))) > thr else "no")
    agent.config.yes_threshold = -1e9
    trace = agent.run(q)
    assert trace.answer == "yes" and trace.answer_score is not None and trace.answer_score > -1e9
    agent.config.yes_threshold = None
    train = data.split("train")[:12]
    fit = calibrate(lambda x: agent.yes_no_score(agent.closed_book_prompt(x["question"])), train)
    share_yes = sum(x["answer"] == "yes" for x in train) / len(train)
    assert fit["calibration_n"] == 12 and fit["calibration_accuracy"] >= max(share_yes, 1 - share_yes)
