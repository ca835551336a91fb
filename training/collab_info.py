"""Collaborative information, measured: how much of it each recommendation case carries, and how each recommender's
accuracy depends on it (definition: models/collab_info.py and the README section "Collaborative information").

    python -m training.collab_info --dataset ml100k      # artifacts/v1 (popularity, cooc, sasrec, gems if trained)
    python -m training.collab_info --dataset ml1m        # artifacts/ml1m

Writes <out>/collab_info-<dataset>.json (every table) and .png (HR@10 by CI bucket, CI by position), and prints:
  1. distribution: the test cases overall, by target item (head = the 20% most-interacted items), by history length,
     and the training cases by position in their user's sequence (counts leave the user out);
  2. accuracy: HR@10 of every recommender on the test cases, by CI bucket (none, then quartiles of CI > 0), with
     standard errors;
  3. the same by lift (CI / P(target)): CI rises with the target's popularity, lift divides it out.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from indexing.data.recsys import RECSYS_SETS, load_recsys, recsys_artifacts
from models.backend import Request
from models.collab_info import CollabInfo
from models.registry import backends_for, load_backend
from training.common import add_threads_arg, set_threads

HISTORY_BUCKETS = [(0, 50), (50, 100), (100, 200), (200, 10**9)]
POSITION_BUCKETS = 5
HEAD_SHARE = 0.2


def history_label(lo: int, hi: int) -> str:
    return f"{lo}+" if hi >= 10**9 else f"{lo}-{hi - 1}"


def summary(ci: np.ndarray, lift: np.ndarray | None, total: int) -> dict:
    out = {"cases": int(len(ci)), "share": len(ci) / total if total else 0.0,
           "none": float(np.mean(ci == 0)) if len(ci) else 0.0,
           "mean_ci": float(np.mean(ci)) if len(ci) else 0.0,
           "median_ci": float(np.median(ci)) if len(ci) else 0.0}
    if lift is not None:
        out["median_lift"] = float(np.median(lift)) if len(lift) else 0.0
    return out


def distribution(data, info: CollabInfo, cases, ci: np.ndarray, lift: np.ndarray) -> list[dict]:
    """Rows (group, bucket, stats) of the distribution table."""
    n = len(cases)
    rows = [{"group": "all test cases", "bucket": "all", **summary(ci, lift, n)}]
    users = info.users_per_item
    order = np.argsort(-users, kind="stable")
    head = {info.ids[j] for j in order[: int(round(HEAD_SHARE * len(info.ids)))]}
    is_head = np.array([e.target in head for e in cases])
    for label, mask in ((f"head {HEAD_SHARE:.0%}", is_head), (f"tail {1 - HEAD_SHARE:.0%}", ~is_head)):
        rows.append({"group": "target item", "bucket": label, **summary(ci[mask], lift[mask], n)})
    lengths = np.array([len(e.history) for e in cases])
    for lo, hi in HISTORY_BUCKETS:
        mask = (lengths >= lo) & (lengths < hi)
        rows.append({"group": "history length", "bucket": history_label(lo, hi), **summary(ci[mask], lift[mask], n)})
    # training cases by relative position in the user's training sequence (the user's own counts left out)
    by_pos: list[list[np.ndarray]] = [[] for _ in range(POSITION_BUCKETS)]
    for s in tqdm(data.train_sequences().values(), desc="positions", leave=False):
        if len(s) < 2:
            continue
        scores = info.sequence_scores(s)
        where = np.minimum((np.arange(1, len(s)) / len(s) * POSITION_BUCKETS).astype(int), POSITION_BUCKETS - 1)
        for b in range(POSITION_BUCKETS):
            by_pos[b].append(scores[where == b])
    total_train = sum(len(x) for b in by_pos for x in b)
    step = 100 // POSITION_BUCKETS
    for b in range(POSITION_BUCKETS):
        vals = np.concatenate(by_pos[b]) if by_pos[b] else np.zeros(0)
        rows.append({"group": "position (train)", "bucket": f"{b * step}-{(b + 1) * step}%",
                     **summary(vals, None, total_train)})
    return rows


def ci_buckets(ci: np.ndarray) -> list[tuple[str, np.ndarray, tuple[float, float]]]:
    """none (value 0), then the quartiles of the values > 0."""
    out = [("none", ci == 0, (0.0, 0.0))]
    pos = ci[ci > 0]
    if len(pos):
        edges = np.quantile(pos, [0, 0.25, 0.5, 0.75, 1.0])
        for q in range(4):
            lo, hi = edges[q], edges[q + 1]
            mask = (ci > 0) & (ci >= lo) & ((ci < hi) if q < 3 else (ci <= hi))
            out.append((f"Q{q + 1}", mask, (float(lo), float(hi))))
    return out


def hits_of(backend, cases, k: int = 10, batch: int = 128) -> np.ndarray:
    hits = []
    for b in tqdm(range(0, len(cases), batch), desc=backend.name, leave=False):
        chunk = cases[b:b + batch]
        answers = backend.answer([Request("recommend", user_id=e.user_id, history=e.history, k=k) for e in chunk])
        hits += [e.target in {h.id for h in a.hits} for e, a in zip(chunk, answers)]
    return np.array(hits, dtype=float)


def accuracy(ci: np.ndarray, hits: dict[str, np.ndarray], overall: bool = True) -> list[dict]:
    """HR@10 (and its standard error) of each recommender in each bucket of the measure ci."""
    rows = []
    for label, mask, (lo, hi) in ci_buckets(ci):
        row = {"bucket": label, "cases": int(mask.sum()), "ci_min": lo, "ci_max": hi}
        for name, h in hits.items():
            p, n = float(h[mask].mean()) if mask.any() else 0.0, int(mask.sum())
            row[f"{name}.hr@10"] = p
            row[f"{name}.se"] = float(np.sqrt(p * (1 - p) / n)) if n else 0.0
        rows.append(row)
    for name, h in hits.items() if overall else ():  # the whole test split, for reference
        rows.append({"bucket": f"all ({name})", "cases": len(h), f"{name}.hr@10": float(h.mean())})
    return rows


def plot(dataset: str, acc: list[dict], by_lift: list[dict], dist: list[dict], models: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a3, a2) = plt.subplots(1, 3, figsize=(15, 4))
    for ax, rows, what in ((a1, acc, "CI"), (a3, by_lift, "lift")):
        buckets = [r for r in rows if not r["bucket"].startswith("all")]
        x = np.arange(len(buckets))
        for m in models:
            ax.errorbar(x, [r[f"{m}.hr@10"] for r in buckets], yerr=[r[f"{m}.se"] for r in buckets], marker="o",
                        capsize=3, label=m)
        ax.set(xticks=x, xticklabels=[r["bucket"] for r in buckets], xlabel=f"{what} of the test case",
               ylabel="HR@10", title=f"{dataset}: accuracy by {what} (none, then quartiles)")
        ax.legend(fontsize=8)
    pos = [r for r in dist if r["group"] == "position (train)"]
    a2.bar([r["bucket"] for r in pos], [r["mean_ci"] for r in pos], color="gray")
    a2.set(xlabel="position in the user's training sequence", ylabel="mean CI", title="CI along the sequence")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_tables(dataset: str, dist: list[dict], acc: list[dict], by_lift: list[dict], models: list[str]) -> None:
    console = Console(width=160)
    t = Table(title=f"{dataset}: collaborative information CI(H, t) of recommendation cases")
    for c in ["group", "bucket", "cases", "share", "CI = 0", "mean CI", "median CI", "median lift"]:
        t.add_column(c, justify="left" if c in ("group", "bucket") else "right")
    for r in dist:
        t.add_row(r["group"], r["bucket"], f"{r['cases']:,}", f"{r['share']:.1%}", f"{r['none']:.1%}",
                  f"{r['mean_ci']:.4f}", f"{r['median_ci']:.4f}",
                  f"{r['median_lift']:.2f}" if "median_lift" in r else "-")
    console.print(t)
    for rows, what in ((acc, "CI"), (by_lift, "lift")):
        t = Table(title=f"{dataset}: HR@10 (± standard error) by the test case's {what}")
        for c in [f"{what} bucket", "cases", f"{what} range", *models]:
            t.add_column(c, justify="right" if c in ("cases", f"{what} range", *models) else "left")
        for r in rows:
            if r["bucket"].startswith("all"):
                continue
            t.add_row(r["bucket"], str(r["cases"]), f"{r['ci_min']:.4f}-{r['ci_max']:.4f}",
                      *[f"{r[f'{m}.hr@10']:.3f} ± {r[f'{m}.se']:.3f}" for m in models])
        console.print(t)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=list(RECSYS_SETS), default="ml100k")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--artifacts", type=Path, default=None, help="default: artifacts/v1 (ml100k), artifacts/ml1m")
    p.add_argument("--backends", default=None, help="comma-separated (default: every recommend backend trained)")
    p.add_argument("--out", type=Path, default=Path("results"))
    add_threads_arg(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    artifacts = a.artifacts or recsys_artifacts(a.dataset)
    data = load_recsys(a.data / a.dataset)
    info = CollabInfo.from_sequences(data.train_sequences())
    cases = data.examples("test")
    ci = np.array([info.score(e.history, e.target) for e in cases])
    lift = np.array([info.lift(e.history, e.target, ci=c) for e, c in zip(cases, ci)])
    dist = distribution(data, info, cases, ci, lift)
    hits = {}
    for name in a.backends.split(",") if a.backends else backends_for("recommend"):
        try:
            backend = load_backend(artifacts, "recommend", name)
        except FileNotFoundError as e:
            if a.backends:
                raise SystemExit(str(e)) from None
            print(f"skipping {name}: not trained under {artifacts}")
            continue
        hits[name] = hits_of(backend, cases)
    acc = accuracy(ci, hits)
    by_lift = accuracy(lift, hits, overall=False)
    result = {"dataset": a.dataset, "test_cases": len(cases), "distribution": dist, "accuracy": acc,
              "accuracy_by_lift": by_lift,
              "definition": "CI(H,t) = mean over history items h seen in training of c(h,t)/c(h)"}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"collab_info-{a.dataset}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(a.dataset, acc, by_lift, dist, list(hits), a.out / f"collab_info-{a.dataset}.png")
    print_tables(a.dataset, dist, acc, by_lift, list(hits))
    print(f"wrote {a.out}/collab_info-{a.dataset}.json and .png")
    return result


if __name__ == "__main__":
    main()
