"""Artifact helpers: where a backend's files live (<artifacts>/<task>/<backend>/) and its meta.json."""
from __future__ import annotations

import json
import time
from pathlib import Path


def artifact_dir(root: Path, task: str, backend: str) -> Path:
    return Path(root) / task / backend


def write_meta(directory: Path, **meta) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").write_text(json.dumps({**meta, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                                    indent=2) + "\n")


def read_meta(directory: Path) -> dict:
    return json.loads((Path(directory) / "meta.json").read_text())
