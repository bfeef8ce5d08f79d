"""The resume checkpoints' own decisions, which the mutation run (bench/mutation.py, "mirror
resume (checkpoint)") found no test for: where they live by default, a checkpoint file that
names another object is not used, forgetting a missing one is quiet, and a symlink planted at
the temporary name does not redirect the write. Plain files under tmp_path; no hub or OSS."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from llm_rollout.mirror.checkpoint import CheckpointStore, UploadState, default_checkpoint_dir


def _state(key: str, bucket: str = "models") -> UploadState:
    return UploadState(
        bucket=bucket, key=key, upload_id="u-1", size=10, sha256="ab" * 32, part_size=5
    )


def test_checkpoints_live_in_the_mirror_folder_of_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_checkpoint_dir() == tmp_path / "llm-rollout" / "mirror"


@pytest.mark.parametrize(
    ("planted", "asked"),
    [
        # A checkpoint file copied over another object's: its key or bucket differs, sorting
        # either way.
        (("models", "a/one.bin"), ("models", "b/two.bin")),
        (("models", "b/two.bin"), ("models", "a/one.bin")),
        (("other", "a/one.bin"), ("models", "a/one.bin")),
        (("archive", "a/one.bin"), ("models", "a/one.bin")),
    ],
)
def test_a_checkpoint_naming_another_object_is_not_used(
    tmp_path: Path, planted: tuple[str, str], asked: tuple[str, str]
) -> None:
    store = CheckpointStore(tmp_path, "http://oss.test")
    store.save(_state(planted[1], planted[0]))
    [planted_file] = tmp_path.glob("*.json")
    store.save(_state(asked[1], asked[0]))
    [asked_file] = set(tmp_path.glob("*.json")) - {planted_file}
    assert store.load(*asked) is not None
    shutil.copyfile(planted_file, asked_file)
    assert store.load(*asked) is None


def test_forgetting_a_checkpoint_that_is_not_there_is_quiet(tmp_path: Path) -> None:
    # A first run on a fresh machine: not even the cache's parent folders exist yet.
    store = CheckpointStore(tmp_path / "cache" / "llm-rollout" / "mirror", "http://oss.test")
    store.delete("models", "never/saved.bin")
    store.save(_state("k.bin"))
    store.delete("models", "k.bin")
    assert store.load("models", "k.bin") is None


def test_a_symlink_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    store = CheckpointStore(directory, "http://oss.test")
    store.save(_state("k.bin"))
    [checkpoint] = directory.glob("*.json")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep", encoding="utf-8")
    # The temporary name of this thread's next write (checkpoint.py `_write`).
    checkpoint.with_suffix(f".{threading.get_ident()}.tmp").symlink_to(outside)
    with pytest.raises(OSError):
        store.save(_state("k.bin"))
    assert outside.read_text(encoding="utf-8") == "keep"


def test_a_longer_temporary_file_left_by_a_killed_write_is_replaced_whole(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "http://oss.test")
    state = _state("k.bin")
    store.save(state)
    [checkpoint] = tmp_path.glob("*.json")
    # kill -9 between writing the temporary file and renaming it leaves it behind.
    stale = checkpoint.with_suffix(f".{threading.get_ident()}.tmp")
    stale.write_text(checkpoint.read_text(encoding="utf-8") + "#" * 4096, encoding="utf-8")
    store.save(state)
    assert store.load("models", "k.bin") == state


@pytest.mark.parametrize("content", ["{not json", '{"format": 1}', "FORMAT 2", "FORMAT 0"])
def test_an_unreadable_or_other_format_checkpoint_starts_afresh(
    tmp_path: Path, content: str
) -> None:
    store = CheckpointStore(tmp_path, "http://oss.test")
    store.save(_state("k.bin"))
    [checkpoint] = tmp_path.glob("*.json")
    if content.startswith("FORMAT"):
        other = int(content.split()[1])
        content = _state("k.bin").model_copy(update={"format": other}).model_dump_json()
    checkpoint.write_text(content, encoding="utf-8")
    assert store.load("models", "k.bin") is None
