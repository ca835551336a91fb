"""Artifact helpers: where a backend's files live (<artifacts>/<task>/<backend>/), its meta.json, and versions of
an artifacts directory (published by the background job runner, served through <root>/CURRENT)."""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path


def artifact_dir(root: Path, task: str, backend: str) -> Path:
    return Path(root) / task / backend


def write_meta(directory: Path, **meta) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").write_text(json.dumps({**meta, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                                    indent=2) + "\n")


def read_meta(directory: Path) -> dict:
    return json.loads((Path(directory) / "meta.json").read_text())


# ---------------------------------------------------------------- versions
# An artifacts root (e.g. artifacts/) holds versions side by side: v1 (what `make artifacts` builds), then v2, v3, ...
# each published by the background job runner (service/jobs.py) when a trained checkpoint passed its validation.
# <root>/CURRENT names the version to serve; it is replaced atomically (os.replace), so a reader sees the old name or
# the new one, never a half-written file. A version is never modified once published: a new checkpoint makes a new
# version (hard links to the unchanged files of the one it extends, so a version costs only its new files), and the
# previous versions stay for rollback.
POINTER = "CURRENT"


def link_tree(src: Path, dst: Path) -> None:
    """Copy the tree src to dst with hard links (a plain copy across file systems); symlinks stay symlinks."""
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, symlinks=True, copy_function=link)


def remove_path(path: Path) -> None:
    """Delete a file, a symlink or a directory tree; nothing when it is not there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextmanager
def atomic_dir(directory: Path):
    """Write a directory whole or not at all (a resumable checkpoint): yields an empty sibling <dir>.tmp to write
    into; on leaving, the previous directory is renamed to <dir>.old, the new one into place, and the old one removed.
    A process killed mid-write leaves the previous complete directory (or, between the two renames, <dir>.old, which
    `complete_dir` returns)."""
    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    remove_path(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    remove_path(old)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    remove_path(old)


def complete_dir(directory: Path) -> Path:
    """The last complete write of an `atomic_dir` directory (itself, or <dir>.old after a crash between renames)."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    return old if not directory.exists() and old.exists() else directory


def served_version(artifacts_dir: Path) -> Path:
    """The version to serve: the one <root>/CURRENT names (root = the parent of artifacts_dir) when a job runner
    has published one and it exists, else artifacts_dir itself."""
    pointer = Path(artifacts_dir).parent / POINTER
    if pointer.exists():
        named = pointer.parent / pointer.read_text().strip()
        if named.is_dir():
            return named
    return Path(artifacts_dir)


def version_number(path: Path) -> int | None:
    name = Path(path).name
    return int(name[1:]) if name.startswith("v") and name[1:].isdigit() else None


def publish_version(base: Path, stage: Path, outputs: list[str]) -> Path:
    """A new version <root>/v<N+1>: the served version (served_version(base)) with each relative path in `outputs`
    taken from `stage`; then CURRENT names it. Returns the new version's directory."""
    served = served_version(base)
    root = Path(base).parent
    number = 1 + max([n for p in root.iterdir() if (n := version_number(p)) is not None] or [0])
    new, tmp = root / f"v{number}", root / f".v{number}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    link_tree(served, tmp)
    for rel in outputs:
        target, source = tmp / rel, Path(stage) / rel
        if not (source / "meta.json").exists() and not source.is_file():
            raise FileNotFoundError(f"the job did not produce {rel} (no {source / 'meta.json'})")
        remove_path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        link_tree(source, target) if source.is_dir() else shutil.copy2(source, target)
    os.replace(tmp, new)
    point_to(new)
    return new


def point_to(version: Path) -> bool:
    """Make <root>/CURRENT name `version` (atomically) when it is a version (v<N>) of its root; False otherwise."""
    version = Path(version)
    if version_number(version) is None or not version.is_dir():
        return False
    tmp = version.parent / f".{POINTER}.tmp"
    tmp.write_text(version.name + "\n")
    os.replace(tmp, version.parent / POINTER)
    return True
