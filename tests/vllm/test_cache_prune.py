"""Superseded versions of a cached artefact go after five unused days; in-use ones stay."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest

from sandbox.cache import STALE_AFTER_S, STAMP_NAME, keyed_dir, mark_used, prune_stale, write_stamp

NOW = 1_900_000_000.0
DAY_S = 24 * 3600


def _version(root: Path, name: str, defining: str, *, used_at: float, stamped: bool = True) -> Path:
    directory = root / keyed_dir(name, defining).name
    directory.mkdir(parents=True)
    (directory / "payload").write_text(defining)
    if stamped:
        write_stamp(directory, {"defining": defining})
        os.utime(directory / STAMP_NAME, (used_at, used_at))
    os.utime(directory, (used_at, used_at))
    (root / f"{directory.name}.lock").touch()
    return directory


def test_stale_versions_go_recent_and_other_artefacts_stay(tmp_path: Path) -> None:
    current = _version(tmp_path, "vllm-venv", "new", used_at=NOW - 30 * DAY_S)
    stale = _version(tmp_path, "vllm-venv", "old", used_at=NOW - 6 * DAY_S)
    recent = _version(tmp_path, "vllm-venv", "older-but-used", used_at=NOW - 4 * DAY_S)
    killed = _version(tmp_path, "vllm-venv", "half", used_at=NOW - 9 * DAY_S, stamped=False)
    other = _version(tmp_path, "cluster-bin", "x", used_at=NOW - 60 * DAY_S)
    removed = prune_stale(current, now=NOW)
    assert sorted(removed) == sorted([stale, killed])
    assert not stale.exists() and not killed.exists()
    assert not (tmp_path / f"{stale.name}.lock").exists()
    # The target itself is never judged by its age: the caller is using it.
    assert current.exists() and recent.exists() and other.exists()


def test_mark_used_keeps_a_version_alive(tmp_path: Path) -> None:
    current = _version(tmp_path, "cluster-bin", "new", used_at=NOW)
    old = _version(tmp_path, "cluster-bin", "old", used_at=NOW - STALE_AFTER_S - DAY_S)
    stamp_before = (old / STAMP_NAME).read_bytes(), (old / STAMP_NAME).stat().st_mtime_ns
    mark_used(old)
    assert prune_stale(current) == []
    assert old.exists()
    # A use is recorded beside the stamp, which only a build writes.
    assert ((old / STAMP_NAME).read_bytes(), (old / STAMP_NAME).stat().st_mtime_ns) == stamp_before


def test_a_version_whose_lock_is_held_stays(tmp_path: Path) -> None:
    current = _version(tmp_path, "vllm-venv", "new", used_at=NOW)
    building = _version(tmp_path, "vllm-venv", "old", used_at=NOW - 10 * DAY_S)
    locked = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with (tmp_path / f"{building.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            locked.set()
            release.wait(30)
            fcntl.flock(lock, fcntl.LOCK_UN)

    # flock locks belong to the open file description, so a second open in this process
    # contends with the holder as another process's would.
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(30)
        assert prune_stale(current, now=NOW) == []
        assert building.exists()
    finally:
        release.set()
        holder.join(30)
    assert prune_stale(current, now=NOW) == [building]


def test_only_keyed_directories_are_pruned(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a keyed artefact directory"):
        prune_stale(tmp_path / "go")
