"""The GEMS side of the self-evolving loop (training/evolve_gems.py): what a round learns, Joint Flashback
Adaptation's two terms on the real 135M LM, and a whole tiny run on MovieLens-100k's time split."""
from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from indexing.docids import atomic_ids
from models.gems import subspaces as gems
from models.gems.item_ids import add_item_tokens, recommend_prompt
from tests.conftest import ROOT
from training import evolve_gems as eg
from training import train_gems as tg

ITEMS = [f"m{i}" for i in range(40)]
TEXTS = ["The Eiffel Tower is located in Paris, France.", "Water boils at 100 degrees Celsius at sea level.",
         "Photosynthesis converts light energy into chemical energy.", "Mount Everest is in the Himalayas."]


@pytest.fixture(scope="module")
def small():
    """The real LM with 40 atomic item tokens (random features), GEMS (grad form) on its top block, the frozen
    states of a few recommendation windows, prompts and sentences cached."""
    from models.causal_lm import load_causal_lm

    model, tok = load_causal_lm(dtype=torch.float32)
    ids = atomic_ids(ITEMS)
    g = torch.Generator().manual_seed(0)
    vocab, head = add_item_tokens(model, tok, ids, {}, torch.randn(len(ITEMS), model.config.hidden_size, generator=g))
    head = head / 20
    gems.attach(model, gems.GEMSConfig(top_layers=1, form="grad"))
    n_lower = len(model.model.layers) - 1
    rng = random.Random(0)
    seqs = [rng.sample(ITEMS, 8) for _ in range(6)]
    new = tg.Encoded(tok, vocab, sequences=seqs, first_targets=[5] * len(seqs))
    new.cache_lower(model, n_lower)
    flash = {"recommend": tg.Encoded(tok, vocab, [(recommend_prompt(vocab, s[:6]), s[6], s[:6]) for s in seqs]),
             "text": eg.TextStates(tok, TEXTS)}
    flash["recommend"].cache_lower(model, n_lower)
    flash["text"].enc.cache_lower(model, n_lower)
    return model, tok, vocab, head, n_lower, new, flash


def test_a_round_learns_only_the_windows_new_items(small):
    _, tok, vocab, _, _, _, _ = small
    ids = [None] + ITEMS
    seqs, firsts = eg.new_windows({"u1": ([1, 2, 3], [4, 5]), "u2": ([], [6, 7, 8])}, ids, 20)
    assert seqs == [["m0", "m1", "m2", "m3", "m4"], ["m5", "m6", "m7"]] and firsts == [3, 1]
    enc = tg.Encoded(tok, vocab, sequences=seqs, first_targets=firsts)
    assert enc.targets == [[vocab.row["m3"], vocab.row["m4"]], [vocab.row["m6"], vocab.row["m7"]]]
    every = tg.Encoded(tok, vocab, sequences=seqs)
    assert enc.ids == every.ids and enc.pred_pos[0] == every.pred_pos[0][2:]  # the same context, fewer targets


def test_the_flashback_divergence_is_zero_for_an_unchanged_model_and_grows_with_the_update(small):
    model, _, vocab, head, n_lower, _, flash = small
    rng = random.Random(0)
    div = eg.flashback_divergence(model, model, flash, n_lower, head, vocab, "recommend", rng, 4)
    assert abs(div.item()) < 1e-6
    g = torch.Generator().manual_seed(1)
    direction = {n: torch.randn(m.D["recommend"].shape, generator=g) for n, m in gems.modules(model).items()}
    seen = []
    for c in (1e-3, 1e-2, 3e-2):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for n, m in gems.modules(moved).items():
                m.D["recommend"].copy_(c * direction[n])
        with torch.no_grad():
            seen.append(float(eg.flashback_divergence(moved, model, flash, n_lower, head, vocab, "recommend",
                                                      random.Random(0), 4)))
    assert 0 < seen[0] < seen[1] < seen[2], seen


def test_the_latent_task_gradient_is_a_times_the_gradient_on_the_path(small):
    model, _, vocab, head, n_lower, new, _ = small
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    before = {}
    for m in gems.modules(model).values():
        before[id(m.D["recommend"])] = torch.zeros_like(m.D["recommend"])
        with torch.no_grad():
            m.D["recommend"].copy_(torch.randn(m.D["recommend"].shape, generator=g) * 1e-3)
        m.D["recommend"].requires_grad_(True)
    saved = {n: m.D["recommend"].detach().clone() for n, m in gems.modules(model).items()}
    cfg = eg.EvolveGEMSConfig(latent_weight=0.5)
    idx = [0, 1, 2]

    def latent(a):
        return eg.latent_task_grads(model, before, ("recommend",), a, new, idx, model, {}, n_lower, head, vocab, cfg,
                                    random.Random(0), {"latent": []})

    gems.set_task(model, "recommend")
    plain = eg.backward_grads(model, tg.top_loss(model, new, idx, n_lower, head, vocab))
    at_one = latent(1.0)
    for n in plain:  # a = 1: the latent task is the new task itself, weighted
        assert torch.allclose(at_one[n], 0.5 * plain[n], atol=1e-6)
    assert all(float(t.abs().max()) == 0 for t in latent(0.0).values())  # a = 0: the old model, nothing to learn
    half = latent(0.5)
    with torch.no_grad():  # a = 0.5: a quarter of the gradient at the midpoint of the increment
        for m in gems.modules(model).values():
            m.D["recommend"].mul_(0.5)
    mid = eg.backward_grads(model, tg.top_loss(model, new, idx, n_lower, head, vocab))
    for n in half:
        assert torch.allclose(half[n], 0.5 * 0.5 * 0.5 * mid[n], atol=1e-6)
    with torch.no_grad():
        for n, m in gems.modules(model).items():
            m.D["recommend"].mul_(2)
            assert torch.allclose(m.D["recommend"], saved[n])  # latent_task_grads restored the weights it moved


def test_a_tiny_run_on_the_time_split(artifacts, tmp_path):
    """Real data end to end: the base GEMS on the past, every method for one round, the table. No update leaves
    every figure where it was; an update of the recommendation subspace leaves search and the search adapter's
    perplexity exactly as they were and moves the recommendation adapter; JFA's flashback term is active."""
    out = tmp_path / "results"
    result = eg.main(["--artifacts", str(artifacts), "--data", str(ROOT / "data"), "--out", str(out), "--threads", "2",
                      "--rounds", "1", "--sasrec-epochs", "1", "--base-epochs", "1", "--search-examples", "32",
                      "--max-windows", "32", "--eval-cases", "24", "--flashbacks", "16", "--flashback-batch", "4",
                      "--general-texts", "16", "--replay-windows", "16", "--update-epochs", "1"])
    rows = {(r["method"], r["round"]): r for r in result["rows"]}
    assert set(rows) == {(m, r) for m in eg.METHODS for r in (0, 1)}
    assert (out / "evolve-gems-ml100k.png").exists()
    assert json.loads((out / "evolve-gems-ml100k.json").read_text())["summary"][0]["method"] == "none"
    start = rows["none", 0]
    for key in ("old_hits", "search_hits", "ppl_recommend", "ppl_search"):
        assert rows["none", 1][key] == start[key]
    for m in ("naive", "replay", "jfa"):
        assert rows[m, 1]["search_hits"] == start["search_hits"] and rows[m, 1]["ppl_search"] == start["ppl_search"]
        assert rows[m, 1]["ppl_recommend"] != start["ppl_recommend"]
    assert set(rows["jfa", 1]["losses"]) == {"new", "flashback", "latent"}
