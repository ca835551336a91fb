"""GEMS: multi-subspace adapters on the real 135M LM: null-space projection, save/load, peft export, a tiny
training run on the real ML-100K data, and the item vocabulary / constrained generation."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch

from models.gems import subspaces as gems

ROOT = Path(__file__).resolve().parents[2]
GENERAL = ["The Eiffel Tower is located in Paris, France.", "Water boils at 100 degrees Celsius at sea level.",
           "Abraham Lincoln was the 16th president of the United States.", "The Pacific is the largest ocean.",
           "Photosynthesis converts light energy into chemical energy.", "Mount Everest is in the Himalayas."]


@pytest.fixture(scope="module")
def lm():
    from models.causal_lm import load_causal_lm

    return load_causal_lm(dtype=torch.float32)


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in gems.modules(model).values():
            for b in m.B.values():
                b.copy_(torch.randn(b.shape, generator=g) * 0.02)


def _logits(model, tok, text="Search: animation comedy 1990s\nItem:"):
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_null_space_projection_is_orthogonal(lm):
    model, tok = copy.deepcopy(lm[0]), lm[1]
    cfg = gems.GEMSConfig(top_layers=2, null_energy=0.9)
    gems.attach(model, cfg)
    enc = tok(GENERAL, return_tensors="pt", padding=True)
    dirs = gems.protected_directions(model, [(enc["input_ids"], enc["attention_mask"])], cfg.null_energy)
    ranks = gems.protect(model, dirs)
    assert all(0 < r < 2000 for r in ranks.values())
    opt = torch.optim.AdamW([p for s in cfg.subspaces for p in gems.parameters(model, s)], lr=1e-2)
    for task in ("search", "recommend", "search"):  # a few real optimiser steps, each projected
        gems.set_task(model, task)
        before = gems.snapshot_A(model)
        model(**tok("History: a b c\nNext item:", return_tensors="pt")).logits.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        gems.project_updates(model, before)
    for name, m in gems.modules(model).items():
        U = dirs[name]
        for task in ("search", "recommend"):
            dW = m.delta_weight(task)
            assert dW.norm() > 0
            assert (dW @ U).norm() / dW.norm() < 1e-4, name  # ~0 component along the protected directions
    # without protection the same kind of update has a clear component there
    free = copy.deepcopy(lm[0])
    gems.attach(free, cfg)
    _randomise(free)
    m = next(iter(gems.modules(free).values()))
    U = next(iter(dirs.values()))
    assert (m.delta_weight("search") @ U).norm() / m.delta_weight("search").norm() > 0.1


def test_adapters_round_trip(lm, tmp_path):
    model, tok = copy.deepcopy(lm[0]), lm[1]
    cfg = gems.GEMSConfig(top_layers=2)
    gems.attach(model, cfg)
    _randomise(model)
    gems.set_task(model, "recommend")
    gems.save_adapters(model, cfg, tmp_path / "ad", {"item_head": torch.ones(3, 4)})
    fresh = copy.deepcopy(lm[0])
    cfg2, extra = gems.load_adapters(fresh, tmp_path / "ad")
    gems.set_task(fresh, "recommend")
    assert cfg2 == cfg and torch.equal(extra["item_head"], torch.ones(3, 4))
    assert torch.equal(_logits(model, tok), _logits(fresh, tok))
    gems.set_task(fresh, "search")
    assert not torch.equal(_logits(model, tok), _logits(fresh, tok))  # the task subspace matters


def test_peft_export_gives_the_same_logits(lm, tmp_path):
    from peft import PeftModel

    model, tok = copy.deepcopy(lm[0]), lm[1]
    cfg = gems.GEMSConfig(top_layers=2)
    gems.attach(model, cfg)
    _randomise(model, seed=1)
    for task in ("search", "recommend"):
        gems.set_task(model, task)
        path = gems.export_peft(model, cfg, task, tmp_path / task)
        peft_model = PeftModel.from_pretrained(copy.deepcopy(lm[0]), str(path)).eval()
        ours, theirs = _logits(model, tok), _logits(peft_model, tok)
        assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
        assert not torch.allclose(theirs, _logits(lm[0], tok), atol=1e-3)  # the adapter is really applied


def _grad_form_steps(model, tok, cfg, steps=3, lr=1e-2):
    """Real optimiser steps of the paper's GEMS (form="grad") on two tasks with different texts."""
    opt = gems.GradientSubspaceOptimizer(model, cfg, lr)
    texts = {"search": "History:(none)\nSearch: comedy 1990s\nItem:", "recommend": "History: a b c d e f"}
    for _ in range(steps):
        grads = {}
        for task, text in texts.items():
            gems.set_task(model, task)
            model(**tok(text, return_tensors="pt")).logits.float().pow(2).mean().backward()
            grads[task] = gems.layer_gradients(model)
        opt.step(grads)
    return opt, grads


def _protected_grad_form(lm):
    """The LM with the paper's GEMS on its top block and the general-domain null space protected."""
    model, tok = copy.deepcopy(lm[0]), lm[1]
    cfg = gems.GEMSConfig(top_layers=1, form="grad", rank=4, refresh=2)
    gems.attach(model, cfg)
    enc = tok(GENERAL, return_tensors="pt", padding=True)
    dirs = gems.protected_directions(model, [(enc["input_ids"], enc["attention_mask"])], cfg.null_energy)
    gems.protect(model, dirs)
    return model, tok, cfg, dirs


def test_gradient_subspaces_are_complementary_and_respect_the_null_space(lm):
    """The paper's form: each layer's shared basis and task bases are orthonormal and mutually orthogonal, every
    update lies in them (so D_shared has rank <= r x refreshes), and with a null space Delta W U = 0."""
    model, tok, cfg, dirs = _protected_grad_form(lm)
    opt, grads = _grad_form_steps(model, tok, cfg, steps=3)
    assert -1 <= gems.gradient_cosine(grads) <= 1
    eye = torch.eye(cfg.rank)
    for name, m in gems.modules(model).items():
        S = opt.state[name, "shared"]["P"]
        for task in cfg.tasks:
            T = opt.state[name, task]["P"]
            assert torch.allclose(T.T @ T, eye, atol=1e-4) and (S.T @ T).abs().max() < 1e-4, name
            dW = m.delta_weight(task)
            assert dW.norm() > 0 and (dW @ dirs[name]).norm() / dW.norm() < 1e-4, name
        # refreshed at steps 0 and 2: at most two bases' worth of directions
        assert torch.linalg.matrix_rank(m.D["shared"].float(), rtol=1e-4) <= 2 * cfg.rank


def test_an_update_of_one_task_moves_only_its_subspace(lm):
    """The continual loop's update (`only=("recommend",)`): the recommendation subspace moves, inside the null space;
    the shared and search subspaces stay bit for bit, so the search adapter answers exactly as before."""
    model, tok, cfg, dirs = _protected_grad_form(lm)
    _grad_form_steps(model, tok, cfg, steps=2)  # a trained start: every subspace non-zero
    before = {(n, s): d.detach().clone() for n, m in gems.modules(model).items() for s, d in m.D.items()}
    gems.set_task(model, "search")
    search_before = _logits(model, tok)
    gems.set_task(model, "recommend")
    rec_before = _logits(model, tok)
    opt = gems.GradientSubspaceOptimizer(model, cfg, 1e-2, only=("recommend",))
    for _ in range(2):
        model(**tok("History: a b c d e f", return_tensors="pt")).logits.float().pow(2).mean().backward()
        opt.step({"recommend": gems.layer_gradients(model)})
    for name, m in gems.modules(model).items():
        assert torch.equal(m.D["shared"], before[name, "shared"]) and torch.equal(m.D["search"], before[name, "search"])
        step = m.D["recommend"] - before[name, "recommend"]
        assert step.norm() > 0 and (step @ dirs[name]).norm() / step.norm() < 1e-4, name
    assert not torch.allclose(_logits(model, tok), rec_before, atol=1e-4)
    gems.set_task(model, "search")
    assert torch.equal(_logits(model, tok), search_before)
    with pytest.raises(ValueError, match="no subspace"):
        gems.GradientSubspaceOptimizer(model, cfg, 1e-2, only=("ranking",))


def test_grad_form_round_trips_and_exports_to_peft_exactly(lm, tmp_path):
    from peft import PeftModel

    model, tok = copy.deepcopy(lm[0]), lm[1]
    cfg = gems.GEMSConfig(top_layers=2, form="grad", rank=4, refresh=2, null_space=False)
    gems.attach(model, cfg)
    _grad_form_steps(model, tok, cfg, steps=4, lr=2e-2)
    gems.save_adapters(model, cfg, tmp_path / "ad")
    fresh = copy.deepcopy(lm[0])
    cfg2, _ = gems.load_adapters(fresh, tmp_path / "ad")
    assert cfg2 == cfg
    for task in ("search", "recommend"):
        gems.set_task(model, task), gems.set_task(fresh, task)
        ours = _logits(model, tok)
        assert torch.equal(ours, _logits(fresh, tok))
        path = gems.export_peft(model, cfg, task, tmp_path / task)
        peft_model = PeftModel.from_pretrained(copy.deepcopy(lm[0]), str(path)).eval()
        theirs = _logits(peft_model, tok)
        assert torch.allclose(ours, theirs, atol=1e-3), (ours - theirs).abs().max()
        assert not torch.allclose(theirs, _logits(lm[0], tok), atol=1e-3)


def test_gradient_split_routes_conflicts_to_task_subspaces(lm):
    model = copy.deepcopy(lm[0])
    cfg = gems.GEMSConfig(top_layers=1)
    gems.attach(model, cfg)
    n = sum(p.numel() for p in gems.parameters(model, "shared"))
    g = torch.randn(n)
    grads = {"search": {s: torch.zeros(n) for s in cfg.subspaces},
             "recommend": {s: torch.zeros(n) for s in cfg.subspaces}}
    g_rec = -0.5 * g + 0.1 * torch.randn(n)
    grads["search"]["shared"], grads["recommend"]["shared"] = g.clone(), g_rec.clone()
    cos = gems.split_gradients(model, grads, cfg)
    assert cos < 0
    flat = {s: torch.cat([p.grad.reshape(-1) for p in gems.parameters(model, s)]) for s in cfg.subspaces}
    assert torch.allclose(flat["shared"] + flat["search"] + flat["recommend"], g + g_rec, atol=1e-4)  # re-routed
    assert flat["search"].norm() > 0  # the conflicting part of search's gradient went to the search subspace
    # the shared update no longer conflicts with either task
    assert flat["shared"] @ g > 0 and flat["shared"] @ g_rec > 0


def test_tiny_training_lowers_both_losses_and_generates_real_items(lm, artifacts, tmp_path):
    from indexing.data import load_recsys
    from models.gems.item_ids import add_item_tokens, beam_search
    from training.train_gems import (
        Encoded,
        TrainConfig,
        examples,
        item_features,
        item_ids,
        recommend_windows,
        top_loss,
        train_variant,
    )

    base, tok = copy.deepcopy(lm[0]), copy.deepcopy(lm[1])
    data = load_recsys(ROOT / "data" / "ml100k")
    ids = item_ids(artifacts, artifacts / "gems-test", "atomic")
    feats = item_features(artifacts, ids.ids, base.config.hidden_size, 1.0)
    vocab, head0 = add_item_tokens(base, tok, ids, {i: d["title"] for i, d in data.items.items()}, feats)
    cfg = TrainConfig(search_examples=64, epochs=4, batch_size=4, lr=5e-3, head_lr=5e-3, history=8,
                      search_history=3)
    train = examples(data, vocab, "train", 64, cfg, 0)
    enc = {"search": Encoded(tok, vocab, train["search"]),
           "recommend": Encoded(tok, vocab, sequences=recommend_windows(data, vocab, cfg.history)[:16])}
    # every item of a window after the first is a target, predicted at the position of the item before it
    seq = recommend_windows(data, vocab, cfg.history)[0]
    assert enc["recommend"].targets[0] == [vocab.row[i] for i in seq[1:]]
    assert [enc["recommend"].ids[0][p + 1] for p in enc["recommend"].pred_pos[0][:-1]] == \
        [vocab.first_token + vocab.row[i] for i in seq[1:-1]]
    n_lower = len(base.model.layers) - 2
    for t in enc:
        enc[t].cache_lower(base, n_lower)
    probe = copy.deepcopy(base)
    gems.attach(probe, gems.GEMSConfig(top_layers=2))
    idx = list(range(16))
    before = {t: top_loss(probe, enc[t], idx, n_lower, head0, vocab).item() for t in enc}
    random.seed(0), torch.manual_seed(0)
    valid = examples(data, vocab, "valid", 16, cfg, 1)
    model, gcfg, head, hist, _ = train_variant("gems", base, tok, vocab, head0, enc, cfg, GENERAL,
                                               {"top_layers": 2}, valid, tmp_path / "state")
    assert len(hist["valid_hr10"]) == 4 and set(hist["valid_hr10"][0]) == {"search", "recommend"}
    # a rerun resumes from the saved state: nothing left to train, the same adapters and head come back
    again, _, head2, hist2, _ = train_variant("gems", base, tok, vocab, head0, enc, cfg, GENERAL, {"top_layers": 2},
                                              None, tmp_path / "state")
    assert torch.equal(head, head2) and hist2["loss"] == hist["loss"]
    assert all(torch.equal(a, b) for a, b in zip(gems.adapter_state(model).values(),
                                                 gems.adapter_state(again).values()))
    after = {}
    for t in enc:
        gems.set_task(model, t)
        after[t] = top_loss(model, enc[t], idx, n_lower, head, vocab).item()
    assert all(after[t] < before[t] for t in enc), (before, after)
    assert len(hist["cos"]) == 4 * 4 and all(-1 <= c <= 1 for c in hist["cos"])
    gems.set_task(model, "search")
    res = beam_search(model, tok, vocab, head, [train["search"][0][0]], beam=8, k=5)
    assert len(res[0]) == 5 and all(i in vocab.row for i, _ in res[0])  # only real items


def test_item_tokens_are_distinct_after_initialisation(lm, artifacts):
    """Collaborative + content features make item tokens more distinct than ordinary words; the mean of the titles'
    token embeddings (the first GEMS) made them near-identical."""
    from indexing.data import load_recsys
    from models.gems.item_ids import add_item_tokens, mean_pairwise_cosine
    from training.train_gems import item_features, item_ids

    data = load_recsys(ROOT / "data" / "ml100k")
    titles = {i: d["title"] for i, d in data.items.items()}
    ids = item_ids(artifacts, artifacts / "gems-test", "atomic")
    assert ids.length == 1 and len({int(c) for c in ids.codes[:, 0]}) == len(ids.ids)  # collision-free
    words = mean_pairwise_cosine(lm[0].get_input_embeddings().weight[:5000])
    feats = item_features(artifacts, ids.ids, lm[0].config.hidden_size, 1.0)
    _, head = add_item_tokens(copy.deepcopy(lm[0]), copy.deepcopy(lm[1]), ids, titles, feats)
    _, by_title = add_item_tokens(copy.deepcopy(lm[0]), copy.deepcopy(lm[1]), ids, titles)
    # measured: features ~0.00, the first 5,000 words ~0.20 (all 49k: 0.44), one title's mean embedding per item ~0.83
    assert mean_pairwise_cosine(head) < 0.1 < words < 0.6 < 0.75 < mean_pairwise_cosine(by_title)


# ---------------------------------------------------------------- the pipeline and the served backend
@pytest.fixture(scope="module")
def tiny_gems_artifacts(artifacts, tmp_path_factory):
    """A tiny run of the real pipeline (GEMS variant only) into an artifacts dir beside the real baselines."""
    from training.train_gems import TrainConfig, run

    root = tmp_path_factory.mktemp("art")
    for task in ("search", "recommend", "retrieve"):
        (root / task).mkdir()
        for d in (artifacts / task).iterdir():
            (root / task / d.name).symlink_to(d)
    cfg = TrainConfig(search_examples=96, recommend_users=24, epochs=2, batch_size=16, eval_users=24, beam=10,
                      general_texts=48, history=20)
    report = run(root / "gems", root, ROOT / "data", ["gems"], cfg, None, root / "results", {"top_layers": 2})
    return root, report


def test_pipeline_writes_table_plot_and_checkpoint(tiny_gems_artifacts):
    root, report = tiny_gems_artifacts
    assert (root / "results" / "gems-table.md").exists() and (root / "results" / "gems-grad-cosine.png").exists()
    row = report["rows"]["(e) GEMS"]
    assert {"search", "recommend", "general_ppl"} <= set(row)
    assert any(k.startswith("(a) sasrec") for k in report["rows"])
    assert (root / "gems" / "peft" / "search" / "adapter_config.json").exists()
    assert (root / "search" / "gems" / "meta.json").exists() and (root / "recommend" / "gems" / "meta.json").exists()


def test_served_gems_returns_real_items_and_degrades(tiny_gems_artifacts, settings):
    from fastapi.testclient import TestClient

    from service.app import create_app

    root, _ = tiny_gems_artifacts
    with TestClient(create_app(settings.model_copy(update={"artifacts_dir": root}))) as client:
        items = client.app.state.catalog.items
        r = client.get("/search", params={"q": "animation comedy 1990s", "backend": "gems", "k": 5,
                                          "latency_budget_ms": 30_000})
        body = r.json()
        assert r.status_code == 200 and body["backend"] == "gems" and not body["degraded"], body
        assert len(body["results"]) == 5 and all(x["id"] in items for x in body["results"])
        assert body["config"]["beam"] >= 5
        r = client.get("/recommend", params={"user_id": "1", "backend": "gems", "k": 5, "latency_budget_ms": 30_000})
        body = r.json()
        history = set(client.app.state.catalog.history("1"))
        assert body["backend"] == "gems" and len(body["results"]) == 5
        assert all(x["id"] in items and x["id"] not in history for x in body["results"])
        # personalised search: a user's last items go into the prompt; without a user the prompt says so
        from models.backend import Request

        backend = client.app.state.engine.backends["search"]["gems"]
        known = backend.prompt(Request("search", query="comedy", history=["1", "2"]))
        assert known.startswith("History:<item_0_") and known.endswith("\nSearch: comedy\nItem:")
        assert backend.prompt(Request("search", query="comedy")).startswith("History:(none)\n")
        r = client.get("/search", params={"q": "comedy 1990s", "user_id": "1", "backend": "gems", "k": 5,
                                          "latency_budget_ms": 30_000})
        assert r.status_code == 200 and r.json()["backend"] == "gems" and len(r.json()["results"]) == 5
        tight = client.get("/search", params={"q": "comedy", "backend": "gems", "latency_budget_ms": 0.5}).json()
        assert tight["degraded"] and tight["backend"] != "gems" and "gems" in tight["degraded_reason"]


def test_vllm_export_scores_items_like_the_cpu_path(tiny_gems_artifacts):
    """The GPU path's inputs, checked on CPU: the exported base (item head as lm_head rows) + the task's peft
    adapter give the same item-token distribution as the served transformers path."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from models.gems.backend import GEMSModel
    from models.gems.item_ids import search_prompt
    from training.export_vllm import export

    root, _ = tiny_gems_artifacts
    served = GEMSModel(root / "gems", dtype=torch.float32)  # the served path, in fp32 for an exact comparison
    base_dir = export(root / "gems")  # what the gems job runs (python -m training.export_vllm)
    assert base_dir == root / "gems" / "vllm-base" and (base_dir / "meta.json").exists()
    rank = json.loads((root / "gems" / "peft" / "search" / "adapter_config.json").read_text())["r"]
    assert rank <= json.loads((base_dir / "meta.json").read_text())["max_lora_rank"] in (8, 16, 32, 64, 128, 256, 512)
    exported = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    vllm_like = PeftModel.from_pretrained(exported, str(root / "gems" / "peft" / "search")).eval()
    prompt = search_prompt("animation comedy 1990s")
    ids = served.tok(prompt, return_tensors="pt", add_special_tokens=False)
    V, first = served.vocab.vocab, served.vocab.first_token
    with torch.no_grad():
        theirs = torch.log_softmax(vllm_like(**ids).logits[0, -1, first:first + V].float(), -1)
        gems.set_task(served.model, "search")
        h = served.model.model(**ids).last_hidden_state[0, -1]
        ours = torch.log_softmax(h @ served.item_head[:V].T, -1)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert ours.argmax() == theirs.argmax()


# ---------------------------------------------------------------- a Low-Rank Clone student beside the teacher (#18)
def test_a_cloned_student_answers_under_a_budget_between_the_two_costs(tiny_gems_artifacts):
    """A short real distillation (training.train_lrc --gems) into <gems>/student; the backend then holds teacher and
    student, measures both, and plan() picks the largest model that fits: the teacher when both fit, the student
    under a budget between their costs (the response's config says so), nothing (the gateway's fallback) below."""
    from models.backend import Request
    from models.gems.backend import GEMSBackend, GEMSModel
    from models.lrc import LRCConfig
    from training.train_lrc import DistilConfig, distil_gems

    root, _ = tiny_gems_artifacts
    run = DistilConfig(steps=3, batch_size=4, basis_texts=16, train_texts=64, save_every=3)
    meta = distil_gems(root / "gems" / "student", LRCConfig(), run, root / "gems", ROOT / "data", from_scratch=False)
    assert meta["distillation_tokens"] > 0 and meta["steps"] == 3
    assert meta["params"] < meta["teacher_params"] / 3
    assert (root / "gems" / "student" / "model" / "heads.safetensors").exists()
    shared = GEMSModel(root / "gems", dtype=torch.float32)
    # the student's vLLM form (item head as lm_head rows) scores items as the served student does
    from transformers import AutoModelForCausalLM

    from models.gems.item_ids import recommend_prompt

    vllm_form = AutoModelForCausalLM.from_pretrained(root / "gems" / "student" / "vllm", dtype=torch.float32).eval()
    ids = shared.tok(recommend_prompt(shared.vocab, ["1", "2", "3"]), return_tensors="pt", add_special_tokens=False)
    V, first = shared.vocab.vocab, shared.vocab.first_token
    with torch.no_grad():
        theirs = vllm_form(**ids).logits[0, -1, first:first + V]
        ours = shared.student.model(**ids).last_hidden_state[0, -1] @ shared.student_head.T
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert shared.sizes == ("teacher", "student")
    backend = GEMSBackend(shared, "recommend")
    history = ["1", "2", "3", "4"]
    backend.warm_up(Request("recommend", history=history, k=5))
    assert {s for s, _ in backend.cost_ms} == {"teacher", "student"}
    teacher = min(ms for (s, _), ms in backend.cost_ms.items() if s == "teacher")
    student = max(ms for (s, _), ms in backend.cost_ms.items() if s == "student")
    assert student < teacher, backend.cost_ms  # 15 blocks of width 180 against 30 of 576

    between = Request("recommend", history=history, k=5)
    assert backend.plan(between, (student + teacher) / 2) and between.options["model"] == "student"
    answer = backend.answer([between])[0]
    assert answer.config["model"] == "student" and len(answer.hits) == 5
    assert all(h.id in shared.vocab.row and h.id not in history for h in answer.hits)

    roomy = Request("recommend", history=history, k=5)
    assert backend.plan(roomy, 10 * max(backend.cost_ms.values()))
    assert roomy.options == {"model": "teacher", "beam": 20}  # the largest model, then the widest beam
    assert backend.answer([roomy])[0].config["model"] == "teacher"
    tight = Request("recommend", history=history, k=5)
    assert not backend.plan(tight, min(backend.cost_ms.values()) / 2)
