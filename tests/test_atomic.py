"""Atomic writes: all or nothing under the final name, ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from avp.atomic import atomic_open, atomic_write_json, atomic_write_text


def test_write_replaces_whole_file(tmp_path) -> None:
    path = tmp_path / "a" / "x.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["x.txt"]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    path = tmp_path / "x.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write('{"half": ')
        raise RuntimeError("crash mid-write")
    assert path.read_text().strip().startswith('{\n  "ok": 1')
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_permissions_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "p.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p.txt").stat().st_mode) == 0o644
