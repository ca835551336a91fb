"""Low-Rank Clone on the real 135M LM: a clone at the teacher's width with every block is the teacher; the merged
student computes what the unmerged one does and exports as an ordinary HF checkpoint; the SVD basis starts the
student far closer to the teacher than a random one; a few steps lower the distillation loss."""
from __future__ import annotations

import pytest
import torch

from models.lrc import LowRankClone, LRCConfig, export, parameter_count, residual_basis

GENERAL = ["The Eiffel Tower is located in Paris, France.", "Water boils at 100 degrees Celsius at sea level.",
           "Abraham Lincoln was the 16th president of the United States.", "The Pacific is the largest ocean.",
           "Photosynthesis converts light energy into chemical energy.", "Mount Everest is in the Himalayas.",
           "The human heart has four chambers.", "Tokyo is the capital city of Japan."]
HELD_OUT = ["Honey bees communicate by dancing.", "The Nile flows north into the Mediterranean Sea.",
            "Copper conducts electricity well."]


@pytest.fixture(scope="module")
def lm():
    from models.causal_lm import load_causal_lm

    torch.manual_seed(0)
    return load_causal_lm(dtype=torch.float32)


def enc(tok, texts):
    return tok(texts, return_tensors="pt", padding=True)


@pytest.fixture(scope="module")
def basis(lm):
    model, tok = lm
    return residual_basis(model, [enc(tok, GENERAL)], model.config.hidden_size)  # the full basis, best first


def test_a_full_width_clone_of_every_block_is_the_teacher(lm, basis):
    model, tok = lm
    cfg = LRCConfig(hidden=model.config.hidden_size, every=1)
    clone = LowRankClone(model, cfg, basis)
    e = enc(tok, HELD_OUT)
    with torch.no_grad():
        losses = clone.losses(e["input_ids"], e["attention_mask"])
        student, teacher = clone.student_forward(**e).logits, model(**e).logits
    assert losses["kl"].item() < 1e-3 and losses["clone"].item() < 1e-6, losses
    mask = e["attention_mask"].bool()
    assert torch.allclose(student[mask], teacher[mask], atol=1e-2, rtol=1e-3)


def test_merged_student_equals_the_unmerged_one_and_exports_to_transformers(lm, basis, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = lm
    cfg = LRCConfig(hidden=180, every=3)
    clone = LowRankClone(model, cfg, basis[:, :180].contiguous())
    with torch.no_grad():  # move the projections off their initial basis, as training would
        for p in clone.trainable():
            p.add_(torch.randn_like(p) * 0.01)
    e = enc(tok, HELD_OUT)
    with torch.no_grad():
        unmerged = clone.student_forward(**e).logits
        merged = clone.merge()(**e).logits
    assert torch.allclose(unmerged, merged, atol=1e-4), (unmerged - merged).abs().max()
    out = export(clone, tok, tmp_path / "student")
    loaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert loaded.config.hidden_size == 180 and loaded.config.num_hidden_layers == len(clone.keep) == 10
    with torch.no_grad():
        assert torch.allclose(loaded(**e).logits, merged, atol=1e-4)
    assert parameter_count(loaded) < parameter_count(model) / 3


def test_an_extra_head_is_cloned_and_exported_with_the_same_scores(lm, basis, tmp_path):
    """GEMS's item head rides along: the exported heads.safetensors against the exported model's final states
    scores what the unmerged student does, and a full-width clone scores what the teacher's head does."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model, tok = lm
    head = torch.randn(40, model.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.05
    e = enc(tok, HELD_OUT)
    full = LowRankClone(model, LRCConfig(hidden=model.config.hidden_size, every=1), basis, {"item": head})
    with torch.no_grad():
        h_t, h_s, clone_loss = full.hidden_pair(e["input_ids"], e["attention_mask"])
        mask = e["attention_mask"].bool()
        teacher_scores = h_t[mask] @ head.T
        assert torch.allclose(h_s[mask] @ full.head_weights()["item"].T, teacher_scores, atol=1e-2, rtol=1e-3)
    clone = LowRankClone(model, LRCConfig(hidden=180, every=3), basis[:, :180].contiguous(), {"item": head})
    with torch.no_grad():
        for p in clone.trainable():
            p.add_(torch.randn_like(p) * 0.01)
        _, h_s, _ = clone.hidden_pair(e["input_ids"], e["attention_mask"])
        unmerged = h_s[mask] @ clone.head_weights()["item"].T
    out = export(clone, tok, tmp_path / "student")
    loaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    with torch.no_grad():
        states = loaded.model(**e).last_hidden_state[mask]
    assert torch.allclose(states @ load_file(str(out / "heads.safetensors"))["item"].T, unmerged, atol=1e-4)


def test_the_svd_basis_starts_closer_to_the_teacher_than_a_random_one(lm, basis):
    model, tok = lm
    cfg = LRCConfig(hidden=180, every=1)
    e = enc(tok, HELD_OUT)
    with torch.no_grad():
        svd = LowRankClone(model, cfg, basis[:, :180].contiguous()).losses(e["input_ids"], e["attention_mask"])
        torch.manual_seed(0)
        rand = LowRankClone(model, cfg, None).losses(e["input_ids"], e["attention_mask"])
    assert svd["kl"] < 0.6 * rand["kl"] and svd["clone"] < rand["clone"], (svd, rand)


def test_a_few_steps_lower_the_distillation_loss(lm, basis):
    model, tok = lm
    cfg = LRCConfig(hidden=180, every=3, lr=1e-4)
    clone = LowRankClone(model, cfg, basis[:, :180].contiguous())
    opt = torch.optim.AdamW(clone.trainable(), lr=cfg.lr)
    e = enc(tok, GENERAL)
    with torch.no_grad():
        before = clone.losses(e["input_ids"], e["attention_mask"])["total"].item()
    for _ in range(6):
        loss = clone.losses(e["input_ids"], e["attention_mask"])["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in model.parameters())  # the teacher stays frozen
    with torch.no_grad():
        after = clone.losses(e["input_ids"], e["attention_mask"])["total"].item()
    assert after < 0.9 * before, (before, after)
