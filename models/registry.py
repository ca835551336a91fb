"""Which backends exist, for which task, and where their artifacts live: <artifacts>/<task>/<backend>/."""
from __future__ import annotations

from pathlib import Path

from models.backend import Backend
from models.cooccurrence import CooccurrenceBackend
from models.dense import DenseBackend
from models.diffugr import ARDocIDBackend, DiffuGRBackend
from models.gems_backend import GEMSBackend
from models.lexical import BM25Backend
from models.popularity import PopularityBackend
from models.sasrec import SASRecBackend

BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (BM25Backend, DenseBackend, PopularityBackend, CooccurrenceBackend, SASRecBackend,
                              DiffuGRBackend, ARDocIDBackend, GEMSBackend)
}


def backends_for(task: str) -> list[str]:
    return [name for name, cls in BACKENDS.items() if task in cls.tasks]


def artifact_dir(root: Path, task: str, backend: str) -> Path:
    return Path(root) / task / backend


def load_backend(root: Path, task: str, backend: str) -> Backend:
    directory = artifact_dir(root, task, backend)
    if not (directory / "meta.json").exists():
        raise FileNotFoundError(f"no {backend} artifacts for {task} under {directory}; run `make artifacts`")
    return BACKENDS[backend].load(directory)
