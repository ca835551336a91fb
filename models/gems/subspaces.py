"""GEMS: gradient multi-subspace tuning of one causal LM for several tasks (here search and recommendation).

Every adapted linear layer W (frozen) gets one shared low-rank subspace and one per task:

    y = W x + s * B_shared A_shared x + s * B_task A_task x        (s = alpha / r, the running task picks B_task)

Training (see `split_gradients`): each task's loss is back-propagated separately. On the shared factors the
two tasks' gradients g_1, g_2 are compared; when they conflict (cos < 0) each is projected onto the normal
plane of the other (the agreeing components, PCGrad-style) and their sum updates the shared subspace, while the
removed conflicting part g_t - g_t' is routed to task t's own subspace (same shape), added to its own gradient.
So conflicting signal is not cancelled in the shared factors but kept, per task, where it does not interfere.
The cosine of the two tasks' shared gradients is logged every step.

Null-space projection (AlphaEdit-style): from the adapted layer's inputs on general-domain text K0 (d_in x n),
the covariance's top principal directions U (enough to hold `null_energy` of its energy) are protected:
P = I - U U^T. Every update of an A factor is projected, A <- A_old + (A - A_old) P (A starts at 0 or in the null
space), so Delta W = B A satisfies Delta W U = 0: the layer's output on general-domain inputs along its
dominant directions is unchanged.

Variants (for the comparison): "gems" (shared + task subspaces, gradient split), "joint" (shared subspace only,
summed loss: one LoRA for both tasks), "single" (task subspaces only: a separate LoRA per task).
Adapters save/load as safetensors + JSON config; `peft_state` writes a task's adapter (shared (+) task, rank
r_shared + r_task) as a peft LoRA for vLLM --enable-lora.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class GEMSConfig:
    tasks: tuple[str, ...] = ("search", "recommend")
    variant: str = "gems"  # gems | joint | single
    rank: int = 8  # of every subspace (shared and per task; equal so conflicting gradients can be re-routed)
    alpha: float = 16.0
    top_layers: int = 4  # adapt the last N transformer blocks (the frozen lower ones can be cached)
    targets: tuple[str, ...] = TARGETS
    null_space: bool = True
    null_energy: float = 0.9  # fraction of the general-domain input covariance's energy that is protected
    form: str = "lora"  # lora: low-rank factors per subspace + the gradient split | grad: projected-gradient subspaces
    refresh: int = 100  # form=grad: optimiser steps between SVD refreshes of the gradient subspaces
    extra: dict = field(default_factory=dict)

    @property
    def subspaces(self) -> tuple[str, ...]:
        if self.variant == "joint":
            return ("shared",)
        if self.variant == "single":
            return tuple(self.tasks)
        if self.variant == "gems":
            return ("shared", *self.tasks)
        raise ValueError(f"unknown GEMS variant {self.variant!r}: gems | joint | single")


class MultiSubspaceLinear(nn.Module):
    """A frozen nn.Linear plus low-rank subspaces; `task` (set by `set_task`) selects the task subspace."""

    def __init__(self, base: nn.Linear, subspaces: tuple[str, ...], rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / rank
        self.task: str | None = None
        d_in, d_out = base.in_features, base.out_features
        self.A = nn.ParameterDict({s: nn.Parameter(torch.empty(rank, d_in)) for s in subspaces})
        self.B = nn.ParameterDict({s: nn.Parameter(torch.zeros(d_out, rank)) for s in subspaces})
        for a in self.A.values():  # as LoRA: A random, B zero, so training starts from the base model
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.register_buffer("projector", None, persistent=False)  # P = I - U U^T (d_in x d_in) or None

    def active(self) -> list[str]:
        return [s for s in self.A if s == "shared" or s == self.task]

    def delta_weight(self, task: str | None) -> torch.Tensor:
        """The dense update this layer applies for `task` (d_out x d_in)."""
        names = [s for s in self.A if s == "shared" or s == task]
        return sum((self.B[s] @ self.A[s] for s in names), torch.zeros_like(self.base.weight, dtype=torch.float32)) \
            * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for s in self.active():
            y = y + (x @ self.A[s].to(x.dtype).T) @ self.B[s].to(x.dtype).T * self.scale
        return y

    @torch.no_grad()
    def set_protected(self, U: torch.Tensor | None) -> None:
        """Protect the columns of U (d_in x k, orthonormal): from now on every A lies in their null space."""
        if U is None or U.shape[1] == 0:
            self.projector = None
            return
        self.projector = torch.eye(U.shape[0]) - U @ U.T
        for a in self.A.values():
            a.copy_(a @ self.projector)

    @torch.no_grad()
    def project_update(self, before: dict[str, torch.Tensor]) -> None:
        """After an optimiser step: A <- A_before + (A - A_before) P."""
        if self.projector is None:
            return
        for s, a in self.A.items():
            a.copy_(before[s] + (a - before[s]) @ self.projector)


class GradSubspaceLinear(nn.Module):
    """A frozen nn.Linear plus one dense update per subspace, y = W x + D_shared x + D_task x, trained only through
    `GradientSubspaceOptimizer` (each D moves inside its own low-rank gradient subspace, so it stays low rank:
    at most rank x refreshes)."""

    def __init__(self, base: nn.Linear, subspaces: tuple[str, ...]):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.task: str | None = None
        self.D = nn.ParameterDict({s: nn.Parameter(torch.zeros(base.out_features, base.in_features))
                                   for s in subspaces})
        self.register_buffer("projector", None, persistent=False)

    @property
    def A(self) -> dict:  # the subspaces, by name (the LoRA form's A factors play that role there)
        return self.D

    def active(self) -> list[str]:
        return [s for s in self.D if s == "shared" or s == self.task]

    def delta_weight(self, task: str | None) -> torch.Tensor:
        names = [s for s in self.D if s == "shared" or s == task]
        return sum((self.D[s].float() for s in names), torch.zeros_like(self.base.weight, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self.active()
        if not active:
            return self.base(x)
        # one matmul with the summed update: its gradient is computed once and reaches every active D
        return self.base(x) + x @ sum(self.D[s] for s in active).to(x.dtype).T

    @torch.no_grad()
    def set_protected(self, U: torch.Tensor | None) -> None:
        self.projector = None if U is None or U.shape[1] == 0 else torch.eye(U.shape[0]) - U @ U.T

    def project_update(self, before) -> None:  # the optimiser projects every update itself
        return None


def adapted_layers(model, cfg: GEMSConfig) -> list[int]:
    n = len(model.model.layers)
    return list(range(max(0, n - cfg.top_layers), n))


def attach(model, cfg: GEMSConfig) -> dict[str, MultiSubspaceLinear]:
    """Wrap the target linears of the top layers; freeze everything else. Returns name -> module."""
    for p in model.parameters():
        p.requires_grad_(False)
    out: dict[str, MultiSubspaceLinear] = {}
    for i in adapted_layers(model, cfg):
        layer = model.model.layers[i]
        for parent_name, parent in (("self_attn", layer.self_attn), ("mlp", layer.mlp)):
            for t in cfg.targets:
                if isinstance(getattr(parent, t, None), nn.Linear):
                    m = (GradSubspaceLinear(getattr(parent, t), cfg.subspaces) if cfg.form == "grad" else
                         MultiSubspaceLinear(getattr(parent, t), cfg.subspaces, cfg.rank, cfg.alpha))
                    setattr(parent, t, m)
                    out[f"model.layers.{i}.{parent_name}.{t}"] = m
    return out


def modules(model) -> dict[str, MultiSubspaceLinear | GradSubspaceLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (MultiSubspaceLinear, GradSubspaceLinear))}


def set_task(model, task: str | None) -> None:
    for m in modules(model).values():
        m.task = task


@torch.no_grad()
def merged_copy(model, tasks: tuple[str, ...] | list[str]):
    """A plain copy of the adapted model: every adapted layer an nn.Linear holding W + the mean over `tasks` of the
    task's update (D_shared + D_task). With one task that is the task's served model, exactly; with all tasks, the
    one set of weights a single student (models.lrc) is generated from."""
    import copy

    out = copy.deepcopy(model)
    for name, m in modules(out).items():
        lin = nn.Linear(m.base.in_features, m.base.out_features, bias=m.base.bias is not None)
        lin.weight.copy_(m.base.weight.float() + sum(m.delta_weight(t).float() for t in tasks) / len(tasks))
        if m.base.bias is not None:
            lin.bias.copy_(m.base.bias)
        parent, child = name.rsplit(".", 1)
        setattr(out.get_submodule(parent), child, lin.to(m.base.weight.dtype))
    return out


def parameters(model, subspace: str) -> list[nn.Parameter]:
    return [p for m in modules(model).values() if subspace in m.A
            for p in ((m.D[subspace],) if isinstance(m, GradSubspaceLinear) else (m.A[subspace], m.B[subspace]))]


# ------------------------------------------------------------------ null space from general-domain activations
@torch.no_grad()
def protected_directions(model, batches, energy: float, max_rank: int | None = None) -> dict[str, torch.Tensor]:
    """For every adapted layer: the top eigenvectors of its input covariance on general-domain text holding
    `energy` of the total (trace). batches: iterable of (input_ids, attention_mask)."""
    mods = modules(model)
    cov = {n: torch.zeros(m.base.in_features, m.base.in_features, dtype=torch.float64) for n, m in mods.items()}
    hooks = []

    def hook(name):
        def fn(module, args):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            keep = fn.mask.reshape(-1) if fn.mask is not None else slice(None)
            cov[name].add_(x[keep].T @ x[keep])
        fn.mask = None
        return fn

    fns = {n: hook(n) for n in mods}
    for n, m in mods.items():
        hooks.append(m.register_forward_pre_hook(fns[n]))
    task = next(iter(mods.values())).task if mods else None
    set_task(model, None)
    try:
        for ids, att in batches:
            for f in fns.values():
                f.mask = att.bool()
            model.model(input_ids=ids, attention_mask=att)
    finally:
        for h in hooks:
            h.remove()
        set_task(model, task)
    out = {}
    for n, c in cov.items():
        vals, vecs = torch.linalg.eigh(c)
        vals, vecs = vals.flip(0).clamp(min=0), vecs.flip(1)
        share = torch.cumsum(vals, 0) / vals.sum().clamp(min=1e-12)
        k = int((share < energy).sum()) + 1
        if max_rank:
            k = min(k, max_rank)
        out[n] = vecs[:, :k].float()
    return out


def protect(model, directions: dict[str, torch.Tensor]) -> dict[str, int]:
    ranks = {}
    for n, m in modules(model).items():
        m.set_protected(directions.get(n))
        ranks[n] = 0 if directions.get(n) is None else int(directions[n].shape[1])
    return ranks


def snapshot_A(model) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {s: a.detach().clone() for s, a in m.A.items()} for n, m in modules(model).items()
            if m.projector is not None}


def project_updates(model, before: dict[str, dict[str, torch.Tensor]]) -> None:
    for n, m in modules(model).items():
        if n in before:
            m.project_update(before[n])


# ------------------------------------------------------------------ the gradient split
def _flat(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def _assign(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    i = 0
    for p in params:
        n = p.numel()
        p.grad = flat[i:i + n].view_as(p).clone()
        i += n


def split_gradients(model, task_grads: dict[str, dict[str, torch.Tensor]], cfg: GEMSConfig) -> float:
    """Combine the per-task gradients (task -> subspace -> flat grad) into .grad of every subspace parameter.
    Returns the cosine between the tasks' shared-subspace gradients (nan when there is no shared subspace)."""
    tasks = list(task_grads)
    cos = float("nan")
    if "shared" in cfg.subspaces:
        g = [task_grads[t]["shared"] for t in tasks]
        if len(g) == 2:
            cos = float(torch.nn.functional.cosine_similarity(g[0], g[1], dim=0))
        if cfg.variant == "gems" and len(g) == 2 and cos < 0:
            agree = [g[0] - (g[0] @ g[1]) / (g[1] @ g[1]).clamp(min=1e-20) * g[1],
                     g[1] - (g[1] @ g[0]) / (g[0] @ g[0]).clamp(min=1e-20) * g[0]]
            for t, gt, at in zip(tasks, g, agree):  # the conflicting part goes to the task's own subspace
                task_grads[t][t] = task_grads[t][t] + (gt - at)
            g = agree
        _assign(parameters(model, "shared"), sum(g))
    for t in tasks:
        if t in cfg.subspaces:
            _assign(parameters(model, t), task_grads[t][t])
    return cos


def task_gradients(model, cfg: GEMSConfig) -> dict[str, torch.Tensor]:
    """After loss.backward() for one task: its gradient on every subspace, flattened; .grad is cleared."""
    out = {s: _flat(parameters(model, s)) for s in cfg.subspaces}
    for s in cfg.subspaces:
        for p in parameters(model, s):
            p.grad = None
    return out


# ------------------------------------------------------------------ the paper's form: projected-gradient subspaces
def top_left_vectors(m: torch.Tensor, r: int) -> torch.Tensor:
    """The top-r left singular vectors of m (rows x r, orthonormal columns): randomized SVD (torch.svd_lowrank,
    a few oversampled power iterations), since only r of up to 1,536 directions are needed at every refresh."""
    r = min(r, *m.shape)
    with torch.random.fork_rng():  # its random test matrix neither reads nor moves the training's RNG
        torch.manual_seed(0)
        u, _, _ = torch.svd_lowrank(m.float(), q=min(r + 8, *m.shape), niter=4)
    return u[:, :r]


def low_rank_factors(d: torch.Tensor, tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """d = B @ A exactly at d's numerical rank (singular values above tol x the largest): (A, B), at least rank 1."""
    u, sv, vh = torch.linalg.svd(d.float(), full_matrices=False)
    k = max(1, int((sv > tol * sv[0].clamp(min=1e-30)).sum())) if sv.numel() else 1
    root = sv[:k].sqrt()
    return root[:, None] * vh[:k], u[:, :k] * root[None]


class GradientSubspaceOptimizer:
    """Gradient multi-subspace tuning (GEMS), the form-"grad" layers' optimiser. For every adapted layer, each task's
    gradient G_t of the layer's update (d_out x d_in; the same for D_shared and D_task, which enter additively) is
    split between complementary low-rank subspaces of the gradient, GaLore-style:

        shared  S   = top-r left singular vectors of [G_1/|G_1|, G_2/|G_2|]   (directions both tasks use)
        task t  T_t = top-r left singular vectors of (I - S S^T) G_t         (t's own directions, orthogonal to S)

    refreshed every `refresh` steps. Adam runs in the projected space (state r x d_in): D_shared moves along
    S Adam(S^T (G_1 + G_2)), D_t along T_t Adam(T_t^T G_t), so the tasks' signals meet only where they share
    directions and neither overwrites the other's. With a null space (the layer's protected general-domain input
    directions U) every update is right-multiplied by I - U U^T: Delta W U = 0, as in the LoRA form.

    `only` names the subspaces that move (default: all of cfg's). A later update of one task alone (the continual
    loop, training.evolve_gems: `only=("recommend",)`) moves that task's D and nothing another task reads; without
    "shared" among them, the task basis is its gradient's own top-r directions."""

    def __init__(self, model, cfg: GEMSConfig, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, only: tuple[str, ...] | None = None):
        self.mods = {n: m for n, m in modules(model).items() if isinstance(m, GradSubspaceLinear)}
        self.cfg, self.lr, self.betas, self.eps = cfg, lr, betas, eps
        unknown = set(only or ()) - set(cfg.subspaces)
        if unknown:
            raise ValueError(f"no subspace {sorted(unknown)} in this GEMS model; it has {list(cfg.subspaces)}")
        self.moving = tuple(only) if only else cfg.subspaces
        self.t = 0
        self.state: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def bases(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Subspace name -> basis (d_out x r) from this layer's per-task gradients."""
        out = {}
        tasks = [t for t in self.cfg.tasks if t in grads]
        shared = None
        if "shared" in self.moving:
            stack = torch.cat([grads[t] / grads[t].norm().clamp(min=1e-12) for t in tasks], dim=1)
            shared = out["shared"] = top_left_vectors(stack, self.cfg.rank)
        for t in tasks:
            if t in self.moving:
                g = grads[t] if shared is None else grads[t] - shared @ (shared.T @ grads[t])
                out[t] = top_left_vectors(g, self.cfg.rank)
        return out

    @torch.no_grad()
    def step(self, grads: dict[str, dict[str, torch.Tensor]], lr: float | None = None) -> None:
        """grads: task -> layer name -> G_t (the .grad of the layer's D after that task's backward)."""
        lr = self.lr if lr is None else lr
        refresh = self.t % max(1, self.cfg.refresh) == 0
        self.t += 1
        b1, b2 = self.betas
        for name, m in self.mods.items():
            g = {t: grads[t][name].float() for t in grads if name in grads[t]}
            if refresh:
                for sub, basis in self.bases(g).items():
                    st = self.state.setdefault((name, sub), {})
                    if "m" in st and st["P"].shape == basis.shape:  # moments follow the basis change (GaLore-like)
                        rot = basis.T @ st["P"]
                        st["m"], st["v"] = rot @ st["m"], (rot.abs() @ st["v"])
                    st["P"] = basis
            for sub in m.D:
                if sub not in self.moving:
                    continue
                st = self.state.get((name, sub))
                if st is None:
                    continue
                gs = sum(g.values()) if sub == "shared" else g.get(sub)
                if gs is None:
                    continue
                low = st["P"].T @ gs  # r x d_in
                st["m"] = st.get("m", torch.zeros_like(low)) * b1 + (1 - b1) * low
                st["v"] = st.get("v", torch.zeros_like(low)) * b2 + (1 - b2) * low * low
                st["k"] = st.get("k", 0) + 1
                mhat, vhat = st["m"] / (1 - b1 ** st["k"]), st["v"] / (1 - b2 ** st["k"])
                step = mhat / (vhat.sqrt() + self.eps)  # r x d_in
                if m.projector is not None:  # (P s)(I - U U^T) = P (s (I - U U^T)): projected in the small space
                    step = step @ m.projector
                update = st["P"] @ step
                m.D[sub].sub_(lr * update.to(m.D[sub].dtype))

    def state_dict(self) -> dict:
        return {"t": self.t, "state": {f"{n}|{s}": v for (n, s), v in self.state.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.t = sd["t"]
        self.state = {tuple(k.split("|", 1)): v for k, v in sd["state"].items()}


def layer_gradients(model) -> dict[str, torch.Tensor]:
    """After one task's backward: each grad-form layer's gradient of its update (taken from any of its subspaces,
    which all receive the same one); .grad is cleared."""
    out = {}
    for n, m in modules(model).items():
        if isinstance(m, GradSubspaceLinear):
            for s in m.active():
                if m.D[s].grad is not None:
                    out[n] = m.D[s].grad.detach().clone()
                    break
            for p in m.D.values():
                p.grad = None
    return out


def gradient_cosine(grads: dict[str, dict[str, torch.Tensor]]) -> float:
    """Cosine between the two tasks' gradients over all grad-form layers (the conflict measure)."""
    tasks = list(grads)
    if len(tasks) != 2:
        return float("nan")
    names = sorted(set(grads[tasks[0]]) & set(grads[tasks[1]]))
    if not names:
        return float("nan")
    a = torch.cat([grads[tasks[0]][n].reshape(-1) for n in names])
    b = torch.cat([grads[tasks[1]][n].reshape(-1) for n in names])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


# ------------------------------------------------------------------ save, load, peft export
def _tables(m) -> tuple[tuple[str, dict], ...]:
    return (("D", m.D),) if isinstance(m, GradSubspaceLinear) else (("A", m.A), ("B", m.B))


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {f"{n}.{kind}.{s}": t.detach().contiguous() for n, m in modules(model).items()
            for kind, d in _tables(m) for s, t in d.items()}


def save_adapters(model, cfg: GEMSConfig, directory: Path, extra_tensors: dict[str, torch.Tensor] | None = None,
                  **meta) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({**adapter_state(model), **(extra_tensors or {})}, str(directory / "adapters.safetensors"))
    (directory / "gems_config.json").write_text(json.dumps({**asdict(cfg), **meta}, indent=2) + "\n")


def load_config(directory: Path) -> tuple[GEMSConfig, dict]:
    raw = json.loads((Path(directory) / "gems_config.json").read_text())
    fields = GEMSConfig.__dataclass_fields__
    cfg = GEMSConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in fields})
    return cfg, {k: v for k, v in raw.items() if k not in fields}


def load_adapters(model, directory: Path) -> tuple[GEMSConfig, dict[str, torch.Tensor]]:
    """Attach the saved subspaces to a fresh base model; returns the config and the non-adapter tensors."""
    cfg, _ = load_config(directory)
    mods = attach(model, cfg)
    state = load_file(str(Path(directory) / "adapters.safetensors"))
    with torch.no_grad():
        for n, m in mods.items():
            for kind, d in _tables(m):
                for s, t in d.items():
                    t.copy_(state.pop(f"{n}.{kind}.{s}"))
    return cfg, state


def peft_state(model, cfg: GEMSConfig, task: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Task `task`'s adapter as one peft LoRA (scaling 1, ours folded into A). LoRA form: A = [A_shared; A_task],
    B = [B_shared, B_task]; grad form: the exact low-rank factors of D_shared + D_task (SVD at numerical rank)."""
    state = {}
    factors = {}
    for n, m in modules(model).items():
        if isinstance(m, GradSubspaceLinear):  # the dense update, factored exactly (it is low rank by construction)
            factors[n] = low_rank_factors(m.delta_weight(task))
        else:
            names = [s for s in m.A if s == "shared" or s == task]
            factors[n] = (torch.cat([m.A[s].detach() for s in names], dim=0) * m.scale,
                          torch.cat([m.B[s].detach() for s in names], dim=1))
    rank = max(a.shape[0] for a, _ in factors.values())
    for n, (A, B) in factors.items():  # one rank for all layers (peft's r): pad with zero rows / columns
        A = torch.cat([A, torch.zeros(rank - A.shape[0], A.shape[1])], dim=0)
        B = torch.cat([B, torch.zeros(B.shape[0], rank - B.shape[1])], dim=1)
        state[f"base_model.model.{n}.lora_A.weight"] = A.contiguous()
        state[f"base_model.model.{n}.lora_B.weight"] = B.contiguous()
    targets = sorted({n.rsplit(".", 1)[1] for n in modules(model)})
    layers = sorted({int(n.split(".")[2]) for n in modules(model)})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank,  # scaling 1 (in A)
              "lora_dropout": 0.0, "bias": "none", "target_modules": targets, "layers_to_transform": layers,
              "fan_in_fan_out": False, "base_model_name_or_path": None, "inference_mode": True}
    return state, config


def export_peft(model, cfg: GEMSConfig, task: str, directory: Path) -> Path:
    state, config = peft_state(model, cfg, task)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory
