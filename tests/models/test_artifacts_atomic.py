"""A resumable checkpoint directory is written whole or not at all (models.artifacts.atomic_dir)."""
from __future__ import annotations

import os

import pytest

from models.artifacts import atomic_dir, complete_dir


def test_a_failed_write_keeps_the_previous_checkpoint_and_a_good_one_replaces_it(tmp_path):
    last = tmp_path / "last"
    with atomic_dir(last) as tmp:
        (tmp / "state.json").write_text('{"epoch": 1}')
    assert (last / "state.json").read_text() == '{"epoch": 1}'
    with pytest.raises(RuntimeError), atomic_dir(last) as tmp:  # killed half-way through the next save
        (tmp / "state.json").write_text('{"ep')
        raise RuntimeError("killed")
    assert complete_dir(last) == last and (last / "state.json").read_text() == '{"epoch": 1}'
    with atomic_dir(last) as tmp:  # the next save starts from a clean temporary directory
        assert not any(tmp.iterdir())
        (tmp / "state.json").write_text('{"epoch": 2}')
    assert (last / "state.json").read_text() == '{"epoch": 2}' and not (tmp_path / "last.old").exists()
    os.replace(last, tmp_path / "last.old")  # a crash between the two renames
    assert complete_dir(last) == tmp_path / "last.old"
