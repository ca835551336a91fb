"""StrategyQA (Geva et al., TACL 2021): multi-hop questions whose reasoning steps are implicit, each with a
yes/no answer and the evidence facts annotators wrote from Wikipedia. It arrives through the PyPI sdist
bigbench==1.0.0 (benchmark_tasks/strategyqa/task.json; BIG-bench is Apache-2.0, StrategyQA MIT).

From it we prepare two sets:
  strategyqa-facts  a retrieval collection in BEIR layout: corpus = the evidence facts (one passage each),
                    queries = the questions, qrels = each question's own facts
  strategyqa        multi-hop QA: question, answer (yes/no), supporting fact ids, evidence passages
Both split the questions by a stable hash of their id (70/10/20), so both tasks test on the same questions.
BIG-bench asks that its data never be used as training data for web-scale LMs; we keep its canary in the
manifests and never commit the data.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

from indexing.data.common import data_root, fetch_members, stable_split, write_jsonl, write_manifest

SOURCE = "StrategyQA (Geva et al. 2021) via the PyPI sdist bigbench==1.0.0, benchmark_tasks/strategyqa"
LICENSE = "StrategyQA: MIT; BIG-bench packaging: Apache-2.0 (not committed; loaded from the package)"
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def _raw(dest: Path) -> list[dict]:
    fetch_members("bigbench", "1.0.0", {"bigbench-1.0.0/bigbench/benchmark_tasks/strategyqa/task.json":
                                        "task.json"}, dest, sdist=True)
    return json.loads((dest / "task.json").read_text())


def _doc_id(text: str) -> str:
    return "f" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]


def parse(task: dict) -> tuple[list[dict], dict[str, str]]:
    """Questions with answers and fact ids, and the fact passages (identical facts share one id)."""
    questions, facts = [], {}
    for n, ex in enumerate(task["examples"]):
        answer = max(ex["target_scores"], key=ex["target_scores"].get).lower()
        _, _, explanation = ex["target"].partition(". ")
        sentences = [s.strip() for s in _SENT.split(explanation) if len(s.strip()) > 3]
        ids = []
        for s in sentences:
            facts.setdefault(_doc_id(s), s)
            ids.append(_doc_id(s))
        qid = f"q{n:04d}"
        questions.append({"id": qid, "question": ex["input"], "answer": answer,
                          "supporting": list(dict.fromkeys(ids)), "split": stable_split(qid)})
    return questions, facts


def prepare_strategyqa(root: Path | None = None) -> tuple[Path, Path]:
    root = root or data_root()
    qa_dir, ret_dir = root / "strategyqa", root / "strategyqa-facts"
    if (qa_dir / "manifest.json").exists() and (ret_dir / "manifest.json").exists():
        return qa_dir, ret_dir
    task = _raw(root / "_raw" / "strategyqa")
    questions, facts = parse(task)
    counts = {s: sum(q["split"] == s for q in questions) for s in ("train", "valid", "test")}
    common = dict(source=SOURCE, license=LICENSE, canary=task.get("canary", ""), split="stable hash 70/10/20")

    qa_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(qa_dir / "questions.jsonl", questions)
    write_jsonl(qa_dir / "passages.jsonl", ({"_id": i, "title": "", "text": t} for i, t in facts.items()))
    write_manifest(qa_dir, name="strategyqa", kind="multihop", counts={"questions": len(questions),
                   "passages": len(facts), **counts}, answers="yes/no", **common)

    (ret_dir / "qrels").mkdir(parents=True, exist_ok=True)
    write_jsonl(ret_dir / "corpus.jsonl", ({"_id": i, "title": "", "text": t} for i, t in facts.items()))
    write_jsonl(ret_dir / "queries.jsonl", ({"_id": q["id"], "text": q["question"]} for q in questions))
    for split in ("train", "valid", "test"):
        with open(ret_dir / "qrels" / f"{split}.tsv", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["query-id", "corpus-id", "score"])
            for q in questions:
                if q["split"] == split:
                    w.writerows([q["id"], d, 1] for d in q["supporting"])
    write_manifest(ret_dir, name="strategyqa-facts", kind="retrieval", counts={"docs": len(facts),
                   "queries": len(questions), "qrels": sum(len(q["supporting"]) for q in questions),
                   **{f"{s}_queries": c for s, c in counts.items()}}, **common)
    return qa_dir, ret_dir
