"""The one reader of UNISR_* variables: `RuntimeSettings` (paths and model choices every package needs) and the
process set-up the whole project shares (stay offline, passive OpenMP threads).

The gateway's `service.settings.Settings` extends `RuntimeSettings` with its own fields, so there is one settings
object per process; entry points read it once and pass plain values down (backends never read the environment).

    UNISR_DATA_DIR      prepared data sets                     (default <project>/data)
    UNISR_CACHE         downloaded registry packages            (default ~/.cache/unisr)
    UNISR_SHARED_DATA   ../shared/data beside the checkout
    UNISR_LM            any local HF causal-LM directory        (default: the prepared SmolLM2)
    UNISR_ENCODER       any local sentence-transformers path    (default: the packaged MiniLM)
    UNISR_GEMS_ENGINE   transformers (CPU) | vllm (in-process, GPU) | vllm-server (a vLLM server at UNISR_VLLM_URL)
    UNISR_ENV_FILE      an env file read as well                (default unisr.env)
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = os.environ.get("UNISR_ENV_FILE", "unisr.env")  # the settings hand-off: where the env file lies


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNISR_", env_file=ENV_FILE, extra="ignore")

    artifacts_dir: Path = Path("artifacts/v1")
    data_dir: Path = PROJECT_ROOT / "data"
    cache: Path = Path.home() / ".cache" / "unisr"
    shared_data: Path = PROJECT_ROOT.parent / "shared" / "data"
    lm: Path | None = None
    encoder: str | None = None
    gems_engine: Literal["transformers", "vllm", "vllm-server"] = "transformers"
    vllm_url: str = "http://127.0.0.1:8001"  # the vLLM OpenAI-compatible server of gems_engine=vllm-server
    # serve GEMS's Low-Rank Clone student (<artifacts>/gems/student) under budgets the teacher does not fit; off by
    # default: at the distillation budget measured (README) the student loses to the task's fallback
    gems_student: bool = False
    pip_index_url: str = Field("https://pypi.org/simple", validation_alias="PIP_INDEX_URL")  # pip's own variable

    @property
    def lm_dir(self) -> Path:
        """The causal LM to load by default: UNISR_LM, else the prepared SmolLM2 (`python -m indexing.lm prepare`)."""
        return self.lm or PROJECT_ROOT / "artifacts" / "lm" / "smollm2-135m-instruct"


@lru_cache(maxsize=1)
def runtime_settings() -> RuntimeSettings:
    return RuntimeSettings()


def stay_offline() -> None:
    """Never reach for a model hub: everything loads from local paths (set before transformers is imported)."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        os.environ.setdefault(key, "1")


def passive_threads() -> None:
    """OpenMP threads that spin while they wait (the default of the runtime faiss and torch share) starve each
    other on a small, busy machine (one dense query ~500 ms instead of ~15 ms; one training epoch 534 s instead of
    38 s). Set before faiss or torch load; an explicit environment setting wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
