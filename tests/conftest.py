"""Shared fixtures: the prepared real data sets and the default artifacts (built by `make artifacts`)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("UNISR_LOG_JSON", "false")
os.environ.setdefault("UNISR_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def data_dirs() -> dict[str, Path]:
    from indexing.prepare import prepare_all
    from training.eval.ranking import default_data_dirs

    prepare_all()
    return default_data_dirs(ROOT / "data")


@pytest.fixture(scope="session")
def artifacts(data_dirs) -> Path:
    art = Path(os.environ.get("UNISR_ARTIFACTS_DIR", ROOT / "artifacts" / "v1"))
    missing = [p for p in ("search/bm25", "search/dense", "retrieve/bm25", "retrieve/dense", "recommend/popularity",
                           "recommend/cooc", "recommend/sasrec") if not (art / p / "meta.json").exists()]
    if missing:
        pytest.fail(f"artifacts missing under {art}: {missing}; run `make artifacts` (make test does)")
    return art


@pytest.fixture(scope="session")
def settings(artifacts):
    from service.settings import Settings

    # the agent (an LM) loads only in the apps of the agentic tests
    return Settings(artifacts_dir=artifacts, data_dir=ROOT / "data", warmup=True, agent=False, _env_file=None)
