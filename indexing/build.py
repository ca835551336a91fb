"""Build the baseline indexes into a versioned artifacts directory (skips what already exists).

    python -m indexing.build [--artifacts artifacts/v1] [--force]
    python -m indexing.build --dataset ml1m            # the recommendation baselines only, into artifacts/ml1m

search/{bm25,dense}      over the item texts of the search+recommendation set
retrieve/{bm25,dense}    over the document corpus of the retrieval set
recommend/{popularity,cooc}  from the training sequences
recommend/collab         co-occurrence counts behind /recommend?explain=true (models/collab_info.py)
(recommend/sasrec is trained by `python -m training.train_sasrec`.)
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from indexing.data import load_recsys, load_retrieval
from indexing.data.common import read_manifest
from indexing.data.recsys import RECSYS_SETS, recsys_artifacts
from models.artifacts import artifact_dir
from models.baselines.bm25 import BM25Backend
from models.baselines.cooccurrence import CooccurrenceBackend
from models.baselines.dense import DenseBackend
from models.baselines.popularity import PopularityBackend
from models.collab_info import CollabInfo
from models.settings import runtime_settings


def recsys_jobs(rec) -> list:
    return [
        ("recommend", "popularity", lambda d: PopularityBackend.build(rec.train_sequences(), d)),
        ("recommend", "cooc", lambda d: CooccurrenceBackend.build(rec.train_sequences(), d)),
        ("recommend", "collab", lambda d: CollabInfo.build(rec.train_sequences(), d)),
    ]


def run_jobs(artifacts: Path, jobs: list, force: bool) -> list[str]:
    built = []
    for task, name, build in jobs:
        d = artifact_dir(artifacts, task, name)
        if (d / "meta.json").exists() and not force:
            continue
        if d.exists():
            shutil.rmtree(d)
        print(f"building {task}/{name} ...", flush=True)
        build(d)
        built.append(f"{task}/{name}")
    return built


def build_recsys(artifacts: Path, recsys_dir: Path, force: bool = False) -> list[str]:
    """The recommendation baselines of one recommendation set (a second set, e.g. ml1m, in its own directory)."""
    built = run_jobs(artifacts, recsys_jobs(load_recsys(recsys_dir)), force)
    (artifacts / "datasets.json").write_text(json.dumps({
        "recsys": {"path": str(recsys_dir), "sha256": read_manifest(recsys_dir)["sha256"]}}, indent=2))
    return built


def build_all(artifacts: Path, recsys_dir: Path, retrieval_dir: Path, force: bool = False,
              encoder: str | None = None) -> list[str]:
    """encoder: a local sentence-transformers path for the dense indexes (None: the packaged MiniLM)."""
    rec = load_recsys(recsys_dir)
    ret = load_retrieval(retrieval_dir)
    items = {i: d["text"] for i, d in rec.items.items()}
    docs = {i: ret.doc_text(i) for i in ret.corpus}
    jobs = [
        ("search", "bm25", lambda d: BM25Backend.build(items, d)),
        ("search", "dense", lambda d: DenseBackend.build(items, d, encoder)),
        ("retrieve", "bm25", lambda d: BM25Backend.build(docs, d)),
        ("retrieve", "dense", lambda d: DenseBackend.build(docs, d, encoder)),
        *recsys_jobs(rec),
    ]
    built = run_jobs(artifacts, jobs, force)
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "datasets.json").write_text(json.dumps({
        "recsys": {"path": str(recsys_dir), "sha256": read_manifest(recsys_dir)["sha256"]},
        "retrieval": {"path": str(retrieval_dir), "sha256": read_manifest(retrieval_dir)["sha256"]},
    }, indent=2))
    return built


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=None, help="default: artifacts/v1, or artifacts/<dataset>")
    p.add_argument("--recsys", type=Path, default=Path("data/ml100k"))
    p.add_argument("--retrieval", type=Path, default=Path("data/strategyqa-facts"))
    p.add_argument("--dataset", default=None, choices=list(RECSYS_SETS),
                   help="build only the recommendation baselines of data/<dataset>")
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    if a.dataset:
        built = build_recsys(a.artifacts or recsys_artifacts(a.dataset), a.recsys.parent / a.dataset, a.force)
    else:
        built = build_all(a.artifacts or Path("artifacts/v1"), a.recsys, a.retrieval, a.force,
                          runtime_settings().encoder)
    print("built: " + (", ".join(built) or "nothing (all present)"))


if __name__ == "__main__":
    main()
