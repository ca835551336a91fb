"""The collaborative-information study (training/collab_info.py) on MovieLens-100k with the trained baselines: its
tables partition the cases, and the finding the README states holds (accuracy rises with CI)."""
from __future__ import annotations

import json

import pytest

from training import collab_info


@pytest.fixture(scope="module")
def study(artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("collab")
    collab_info.main(["--dataset", "ml100k", "--data", str(artifacts.parents[1] / "data"), "--artifacts",
                      str(artifacts), "--backends", "popularity,cooc,sasrec", "--threads", "1", "--out", str(out)])
    assert (out / "collab_info-ml100k.png").stat().st_size > 10_000
    return json.loads((out / "collab_info-ml100k.json").read_text())


def test_tables_partition_the_cases(study):
    n = study["test_cases"]
    assert n == 943
    dist = study["distribution"]
    for group in ("target item", "history length"):
        rows = [r for r in dist if r["group"] == group]
        assert sum(r["cases"] for r in rows) == n and sum(r["share"] for r in rows) == pytest.approx(1.0)
    pos = [r for r in dist if r["group"] == "position (train)"]
    assert sum(r["share"] for r in pos) == pytest.approx(1.0)
    for table in (study["accuracy"], study["accuracy_by_lift"]):
        buckets = [r for r in table if not r["bucket"].startswith("all")]
        assert [r["bucket"] for r in buckets] == ["none", "Q1", "Q2", "Q3", "Q4"]
        assert sum(r["cases"] for r in buckets) == n
        # the bucket HR@10s average back to each model's overall HR@10
        for m in ("popularity", "cooc", "sasrec"):
            overall = next(r for r in study["accuracy"] if r["bucket"] == f"all ({m})")[f"{m}.hr@10"]
            assert sum(r[f"{m}.hr@10"] * r["cases"] for r in buckets) / n == pytest.approx(overall)


def test_accuracy_rises_with_collaborative_information(study):
    """The co-occurrence model and SASRec hit the top-CI quartile far more often than the bottom one (beyond two
    standard errors), and the head items carry more CI than the tail."""
    q = {r["bucket"]: r for r in study["accuracy"]}
    for m in ("cooc", "sasrec"):
        gap = q["Q4"][f"{m}.hr@10"] - q["Q1"][f"{m}.hr@10"]
        assert gap > 2 * (q["Q4"][f"{m}.se"] ** 2 + q["Q1"][f"{m}.se"] ** 2) ** 0.5, m
    item = {r["bucket"]: r for r in study["distribution"] if r["group"] == "target item"}
    assert item["head 20%"]["mean_ci"] > 2 * item["tail 80%"]["mean_ci"]
