"""Which backends exist and for which task: name -> "module:Class", imported on first use (as vLLM's model
registry), so loading BM25 never imports torch, peft or the GEMS code. Artifacts: <artifacts>/<task>/<backend>/."""
from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path

from models.artifacts import artifact_dir
from models.backend import Backend

# name -> (tasks, "module:Class"); the tasks are listed here so routing needs no import
BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "bm25": (("search", "retrieve"), "models.baselines.bm25:BM25Backend"),
    "dense": (("search", "retrieve"), "models.baselines.dense:DenseBackend"),
    "popularity": (("recommend",), "models.baselines.popularity:PopularityBackend"),
    "cooc": (("recommend",), "models.baselines.cooccurrence:CooccurrenceBackend"),
    "sasrec": (("recommend",), "models.sasrec.model:SASRecBackend"),
    "diffugr": (("retrieve",), "models.diffugr.backend:DiffuGRBackend"),
    "ar": (("retrieve",), "models.diffugr.backend:ARDocIDBackend"),
    "gems": (("search", "recommend"), "models.gems.backend:GEMSBackend"),
}


@cache
def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name][1].split(":")
    return getattr(importlib.import_module(module), cls)


def backends_for(task: str) -> list[str]:
    return [name for name, (tasks, _) in BACKENDS.items() if task in tasks]


def load_backend(root: Path, task: str, backend: str, **options) -> Backend:
    """options: keyword arguments of the backend's `load` (e.g. GEMS's engine), handed over from the settings."""
    directory = artifact_dir(root, task, backend)
    if not (directory / "meta.json").exists():
        raise FileNotFoundError(f"no {backend} artifacts for {task} under {directory}; run `make artifacts`")
    return backend_class(backend).load(directory, **options)
