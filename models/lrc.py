"""Low-Rank Clone (LRC; Hao et al., 2025, "A Token is Worth over 1,000 Tokens: Efficient Knowledge Distillation
through Low-Rank Clone"): a small student whose weights are the teacher's weights times trainable low-rank
projections, trained with a KL loss to the teacher's logits plus "clone" losses that match the student's
intermediate activations to the teacher's. After training the projections are merged and the student is an
ordinary Hugging Face model (same family as the teacher, smaller hidden size, fewer blocks).

For a Llama-family teacher (SmolLM2, Qwen2, Llama; torch Linear weights are (out, in)), with d_t the teacher's and
d_s the student's hidden size, student block j built from teacher block keep[j]:

    q, k, v, gate, up (read the residual):  W_s = W_t diag(g) P        P: (d_t, d_s), g: the teacher's norm gain
    o, down (write the residual):           W_s = P^T W_t
    embedding:                              E_s = E_t P_embed
    output head:                            H_s = H_t diag(g_final) P_head   (H_t = E_t for a tied teacher)

Heads, head size and the FFN width stay the teacher's, so the student's q / k / v / gate / up activations live in
the teacher's own spaces and are cloned directly (MSE); its o / down outputs are mapped up by their projection
(out @ P^T) and compared with the teacher's. Every projection starts from one basis: the top-d_s right singular
vectors of the teacher's residual stream (hidden states of sample texts, all blocks), so at initialisation the
student is the teacher with its residual stream compressed onto its principal directions (and blocks dropped); the
student's RMSNorm gains start at sqrt(d_t / d_s), which undoes the change of RMS between the two widths.

Only the projections and the student's norm gains train; the teacher stays frozen.

Extra output heads (`heads`, e.g. GEMS's item head: N x d_t rows scored against the final normed state) are cloned
like the output head, each with its own projection: H_s = H diag(g_final) P_name. A teacher with task adapters
(GEMS) is cloned from one plain teacher that supplies the weights (its adapters merged) while `hidden_pair(...,
target=...)` takes the targets from the adapted model with the task set, so one student learns every task.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

READS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # input side: read the (normed) residual stream
WRITES = ("o_proj", "down_proj")  # output side: write to it
NORM_OF = {"q_proj": "input_layernorm", "k_proj": "input_layernorm", "v_proj": "input_layernorm",
           "gate_proj": "post_attention_layernorm", "up_proj": "post_attention_layernorm"}
PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


@dataclass
class LRCConfig:
    hidden: int = 180  # the student's hidden size (SmolLM2-135M: 576 -> 180; a multiple of the heads, 9)
    every: int = 2  # keep every `every`-th teacher block (30 -> 15), the last one always
    kl_weight: float = 1.0
    clone_weight: float = 1.0
    temperature: float = 1.0
    lr: float = 1e-4  # the projections start orthonormal: 5e-4 already pulled the clone loss up in 40 steps
    weight_decay: float = 0.0
    keep: list[int] = field(default_factory=list)  # explicit teacher blocks kept (overrides `every`)

    def kept(self, n_layers: int) -> list[int]:
        if self.keep:
            return sorted(self.keep)
        kept = list(range(self.every - 1, n_layers, self.every))
        return kept if kept and kept[-1] == n_layers - 1 else kept + [n_layers - 1]


def student_config(teacher_config, cfg: LRCConfig):
    """The student's HF config: the teacher's, with the hidden size and the number of blocks changed (heads, head
    size and FFN width kept: head_dim is written out, as hidden / heads no longer gives it), and an output head of
    its own (untied: the final norm's gain is folded into it; the same cost per token as a tied one)."""
    if cfg.hidden % teacher_config.num_attention_heads:
        raise ValueError(f"the student's hidden size {cfg.hidden} must be a multiple of the teacher's "
                         f"{teacher_config.num_attention_heads} attention heads (transformers checks it on save)")
    sc = teacher_config.__class__.from_dict(teacher_config.to_dict())
    heads = teacher_config.num_attention_heads
    head_dim = getattr(teacher_config, "head_dim", None) or teacher_config.hidden_size // heads
    sc.hidden_size = cfg.hidden
    sc.head_dim = head_dim
    sc.num_hidden_layers = len(cfg.kept(teacher_config.num_hidden_layers))
    sc.tie_word_embeddings = False  # the teacher's final norm gain is folded into the student's own output head
    if hasattr(sc, "layer_types") and sc.layer_types is not None:
        sc.layer_types = [teacher_config.layer_types[i] for i in cfg.kept(teacher_config.num_hidden_layers)]
    return sc


@torch.no_grad()
def residual_basis(teacher, batches, d_s: int) -> torch.Tensor:
    """(d_t, d_s): the top-d_s right singular vectors of the teacher's hidden states (every block's output and the
    embeddings, at every real token of the batches), each state scaled to unit length first: the blocks read the
    residual through an RMSNorm, so its directions matter, and a few tokens' massive activations would otherwise
    decide the basis. batches: dicts with input_ids and attention_mask."""
    gram = None
    for b in batches:
        out = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        mask = b["attention_mask"].bool()
        for h in out.hidden_states:
            x = F.normalize(h[mask].float(), dim=-1)
            gram = x.T @ x if gram is None else gram + x.T @ x
    _, vecs = torch.linalg.eigh(gram)  # ascending eigenvalues
    return vecs[:, -d_s:].flip(-1).contiguous()


class LowRankClone(nn.Module):
    """The frozen teacher, the projections and norm gains, and the student module whose weights they generate."""

    def __init__(self, teacher, cfg: LRCConfig, basis: torch.Tensor | None = None,
                 heads: dict[str, torch.Tensor] | None = None):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        tc = teacher.config
        self.keep = cfg.kept(tc.num_hidden_layers)
        d_t, d_s = tc.hidden_size, cfg.hidden
        basis = basis if basis is not None else torch.linalg.qr(torch.randn(d_t, d_s))[0]
        self.proj = nn.ParameterDict({"embed": nn.Parameter(basis.clone())})
        for j in range(len(self.keep)):
            for name in READS + WRITES:
                self.proj[f"{j}_{name}"] = nn.Parameter(basis.clone())
        gain = math.sqrt(d_t / d_s)
        self.proj["head"] = nn.Parameter(basis.clone())
        self.heads = {name: h.detach().float() for name, h in (heads or {}).items()}  # frozen teacher heads
        for name in self.heads:
            self.proj[f"head_{name}"] = nn.Parameter(basis.clone())
        self.norms = nn.ParameterDict({"norm": nn.Parameter(torch.full((d_s,), gain))})
        for j in range(len(self.keep)):
            for norm in ("input_layernorm", "post_attention_layernorm"):
                self.norms[f"{j}_{norm}"] = nn.Parameter(torch.full((d_s,), gain))
        self.student = AutoModelForCausalLM.from_config(student_config(tc, cfg)).eval()
        for p in self.student.parameters():
            p.requires_grad_(False)  # placeholders: the forward uses the generated weights

    def teacher_layer(self, j: int):
        return self.teacher.model.layers[self.keep[j]]

    def weights(self) -> dict[str, torch.Tensor]:
        """The student's weights (named as in its state dict), as differentiable functions of the projections."""
        t = self.teacher.model
        w = {"model.embed_tokens.weight": t.embed_tokens.weight @ self.proj["embed"],
             "model.norm.weight": self.norms["norm"]}
        for j in range(len(self.keep)):
            layer = self.teacher_layer(j)
            for name in READS:
                lin = getattr(getattr(layer, PARENT[name]), name)
                gain = getattr(layer, NORM_OF[name]).weight
                w[f"model.layers.{j}.{PARENT[name]}.{name}.weight"] = (lin.weight * gain) @ self.proj[f"{j}_{name}"]
                if lin.bias is not None:
                    w[f"model.layers.{j}.{PARENT[name]}.{name}.bias"] = lin.bias
            for name in WRITES:
                lin = getattr(getattr(layer, PARENT[name]), name)
                w[f"model.layers.{j}.{PARENT[name]}.{name}.weight"] = self.proj[f"{j}_{name}"].T @ lin.weight
                if lin.bias is not None:
                    w[f"model.layers.{j}.{PARENT[name]}.{name}.bias"] = lin.bias @ self.proj[f"{j}_{name}"]
            for norm in ("input_layernorm", "post_attention_layernorm"):
                w[f"model.layers.{j}.{norm}.weight"] = self.norms[f"{j}_{norm}"]
        w["lm_head.weight"] = (self.teacher.get_output_embeddings().weight * t.norm.weight) @ self.proj["head"]
        return w

    def student_forward(self, input_ids, attention_mask, weights: dict[str, torch.Tensor] | None = None):
        """The unmerged student: its module called with the generated weights."""
        weights = self.weights() if weights is None else weights
        return functional_call(self.student, weights, args=(), kwargs={"input_ids": input_ids,
                                                                      "attention_mask": attention_mask})

    def _capture(self, model, layers: list[int]) -> tuple[dict, list]:
        seen, handles = {}, []
        for j, i in enumerate(layers):
            layer = model.model.layers[i]
            for name in READS + WRITES:
                mod = getattr(getattr(layer, PARENT[name]), name)
                handles.append(mod.register_forward_hook(
                    lambda m, a, out, key=(j, name): seen.__setitem__(key, out)))
        return seen, handles

    def head_weights(self) -> dict[str, torch.Tensor]:
        """The student's extra heads (N x d_s), as differentiable functions of their projections."""
        g = self.teacher.model.norm.weight
        return {name: (h * g) @ self.proj[f"head_{name}"] for name, h in self.heads.items()}

    def hidden_pair(self, input_ids, attention_mask, target=None, weights: dict[str, torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher's and the student's final (normed) hidden states (B x L x d_t, B x L x d_s) and the clone
        loss: the mean over the cloned activations of MSE / the teacher activation's mean square. `target`: the
        model whose activations are the targets (default the teacher; e.g. the teacher with a task's adapters)."""
        target = self.teacher if target is None else target
        mask = attention_mask.bool()
        t_seen, handles = self._capture(target, self.keep)
        try:
            with torch.no_grad():
                h_t = target.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        finally:
            for h in handles:
                h.remove()
        weights = self.weights() if weights is None else weights
        inner = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
        s_seen, handles = self._capture(self.student, list(range(len(self.keep))))
        try:
            h_s = functional_call(self.student.model, inner, args=(),
                                  kwargs={"input_ids": input_ids, "attention_mask": attention_mask}).last_hidden_state
        finally:
            for h in handles:
                h.remove()
        clone = []
        for (j, name), t_out in t_seen.items():
            s_out = s_seen[(j, name)]
            if name in WRITES:
                s_out = s_out @ self.proj[f"{j}_{name}"].T
            t_m, s_m = t_out[mask].float(), s_out[mask].float()
            clone.append(F.mse_loss(s_m, t_m) / t_m.pow(2).mean().clamp_min(1e-8))
        return h_t, h_s, torch.stack(clone).mean()

    def losses(self, input_ids, attention_mask, target=None, vocab: int | None = None,
               weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """kl: KL(teacher || student) of the next-token distributions (over the first `vocab` tokens with `vocab`);
        clone: as in hidden_pair; total: their weighted sum. `weights`: the generated weights when already at hand."""
        weights = self.weights() if weights is None else weights
        h_t, h_s, clone = self.hidden_pair(input_ids, attention_mask, target, weights)
        mask = attention_mask.bool()
        t_head = (self.teacher if target is None else target).get_output_embeddings()
        with torch.no_grad():
            t_logits = t_head(h_t[mask])[:, :vocab]
        s_logits = (h_s[mask] @ weights["lm_head.weight"].T)[:, :vocab]
        kl = distillation_kl(s_logits, t_logits, self.cfg.temperature)
        return {"kl": kl, "clone": clone, "total": self.cfg.kl_weight * kl + self.cfg.clone_weight * clone}

    @torch.no_grad()
    def merge(self):
        """The student as an ordinary HF model (weights materialised, no link to the teacher)."""
        from transformers import AutoModelForCausalLM

        student = AutoModelForCausalLM.from_config(self.student.config)
        weights = {k: v.detach().clone() for k, v in self.weights().items()}
        missing, unexpected = student.load_state_dict(weights, strict=False)
        assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
        return student.eval()

    def trainable(self) -> list[nn.Parameter]:
        return list(self.proj.parameters()) + list(self.norms.parameters())

    def save(self, directory: Path) -> None:
        """The projections and gains (resume), with the config and the kept blocks."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"proj.{k}": v.detach().contiguous() for k, v in self.proj.items()}
        tensors |= {f"norms.{k}": v.detach().contiguous() for k, v in self.norms.items()}
        save_file(tensors, str(directory / "lrc.safetensors"))
        (directory / "lrc_config.json").write_text(json.dumps({**asdict(self.cfg), "kept": self.keep}, indent=2))

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(directory / "lrc.safetensors"))
        with torch.no_grad():
            for k, v in self.proj.items():
                v.copy_(tensors[f"proj.{k}"])
            for k, v in self.norms.items():
                v.copy_(tensors[f"norms.{k}"])


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
                    ) -> torch.Tensor:
    """KL(teacher || student) of the distributions over the last dim, at temperature T (x T^2), mean over rows."""
    T = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / T, -1), F.log_softmax(teacher_logits.float() / T, -1),
                    log_target=True, reduction="batchmean") * T * T


def export(clone: LowRankClone, tokenizer, directory: Path, meta: dict | None = None) -> Path:
    """The merged student as a standard HF checkpoint (+ tokenizer), loadable with AutoModelForCausalLM and vLLM;
    its extra heads, if any, in heads.safetensors."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    clone.merge().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if clone.heads:  # extra heads (GEMS: the item head) beside the HF checkpoint
        with torch.no_grad():
            save_file({k: v.detach().contiguous() for k, v in clone.head_weights().items()},
                      str(directory / "heads.safetensors"))
    (directory / "lrc_meta.json").write_text(json.dumps({"method": "Low-Rank Clone", "kept_teacher_blocks": clone.keep,
                                                         **asdict(clone.cfg), **(meta or {})}, indent=2))
    return directory


def parameter_count(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
