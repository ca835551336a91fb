"""Helpers shared by the training and evaluation entry points: a config dataclass as --options (the dataclass is
the one place its defaults live), the torch thread count, and the agent trainers' draws of questions (per round,
the warm start's, all that a saved trainer drew).

Importing `training` already set OMP_WAIT_POLICY=PASSIVE (training/__init__.py), before torch loads."""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import types
import typing
from pathlib import Path

from models.artifacts import read_meta


def _option_type(f: dataclasses.Field, hints: dict):
    """The argparse type of a field: its annotation's scalar type (`int | None` -> int), else its default's."""
    hint = hints.get(f.name, type(f.default))
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    return hint


def add_config_args(parser: argparse.ArgumentParser, cls, names: tuple[str, ...] | None = None) -> None:
    """One --option per field of the dataclass cls (or of its fields in `names`), named with dashes, default the
    field's own default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if names is None or f.name in names:
            parser.add_argument("--" + f.name.replace("_", "-"), type=_option_type(f, hints), default=f.default)


def config_values(cls, args: argparse.Namespace, names: tuple[str, ...] | None = None) -> dict:
    """{field: parsed value} for the fields add_config_args added."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if names is None or f.name in names}


def config_from_args(cls, args: argparse.Namespace):
    """The dataclass built from the parsed options."""
    return cls(**config_values(cls, args))


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_threads_arg(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    """--threads: torch's intra-op thread count (default: the cores this process may use)."""
    parser.add_argument("--threads", type=int, default=default or cores(),
                        help="torch threads (default: the available cores, %(default)s; 1 decodes fastest on a busy "
                             "CPU)")


def set_threads(threads: int) -> int:
    """Set torch's thread count explicitly (every entry point does, from --threads)."""
    import torch

    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def optimiser_step(opt, loss, clip: float | None = None) -> float:
    """One update: zero the gradients, backpropagate, clip the gradients' norm to `clip` (None: no clipping),
    step. Returns the loss value."""
    import torch

    opt.zero_grad()
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()
    return loss.item()


def close_epoch(state: dict, epoch: int, losses: list[float]) -> dict:
    """Record a finished epoch (0-based `epoch`) and its mean loss in the resumable training state; returns the
    epoch's history entry, to which validation figures are added."""
    state["epoch"] = epoch + 1
    state["history"].append({"epoch": epoch + 1, "loss": float(sum(losses) / max(1, len(losses)))})
    return state["history"][-1]


def round_questions(questions: list[dict], n: int, seed: int, round_: int) -> list[dict]:
    """The training questions of a round: a fresh draw per round that depends only on (seed, round), so EM and
    ROSE (training.train_rose) with the same seed train on the same questions."""
    return random.Random(f"{seed}:{round_}").sample(questions, min(n, len(questions)))


def warm_start_questions(train: list[dict], n: int, seed: int) -> list[dict]:
    """The agent warm start's training questions (training.train_exsearch): a draw that depends only on (seed, n),
    among the questions with gold supporting facts."""
    pool = [q for q in train if q.get("supporting")]
    return random.Random(f"warm:{seed}").sample(pool, min(n, len(pool)))


def trainer_draws(train: list[dict], agent_dir: Path | None, rounds: int = 10) -> set[str]:
    """Ids of the training questions a trainer saved in agent_dir drew (its warm start's and its first `rounds`
    rounds' draws; the defaults' draws when it has not saved one yet, so a calibration set does not depend on what
    is trained)."""
    meta = read_meta(agent_dir) if agent_dir is not None and (agent_dir / "meta.json").exists() else {}
    cfg = meta.get("em") or meta.get("rose") or {}
    warm = warm_start_questions(train, cfg["warm_start"], cfg.get("seed", 0)) if cfg.get("warm_start") else []
    return {q["id"] for q in warm} | {q["id"] for r in range(1, max(rounds, meta.get("rounds", 0)) + 1)
                                      for q in round_questions(train, cfg.get("questions", 16), cfg.get("seed", 0), r)}
