"""The last measured figures (training/eval/expected.yaml, schema in its header): the README tables print them and
the quality floors of the tests come from them.

    expected()["conditions"]             # the parsed file
    row("baselines", "search", "bm25")   # {"row", "command", "scores", "floor", "beats", ...}
"""
from __future__ import annotations

import functools
from pathlib import Path

PATH = Path(__file__).with_name("expected.yaml")


@functools.cache
def expected(path: Path = PATH) -> dict:
    """The parsed YAML (cached per path)."""
    import yaml

    return yaml.safe_load(Path(path).read_text())


def condition(name: str, path: Path = PATH) -> dict:
    for c in expected(path)["conditions"]:
        if c["name"] == name:
            return c
    raise KeyError(f"no condition {name!r} in {path}")


def rows(name: str, path: Path = PATH) -> list[dict]:
    return condition(name, path)["rows"]


def row(name: str, *labels: str, path: Path = PATH) -> dict:
    """The row of condition `name` whose label cells are `labels` (e.g. "retrieve", "bm25")."""
    for r in rows(name, path):
        if r["row"] == list(labels):
            return r
    raise KeyError(f"no row {list(labels)} in condition {name!r} of {path}")
