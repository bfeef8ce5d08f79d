"""Where the sandbox's heavy, versioned artefacts live: outside every clone, keyed by a hash.

The engine venv (~5 GB), the Go module and build caches and the binaries built from them take
minutes to make, and CI clones the repository afresh into another folder, so none of them may
live in the work tree. Each artefact gets a directory under one per-user cache root whose name
carries a digest of everything that defines it (a recipe revision, pinned versions, go.sum):
change any of those and a new directory is made beside the old one instead of trusting it.

A directory counts as complete only once its stamp file exists; the stamp is written last and
atomically (write to a temporary name, then rename), so a build killed half-way is redone by
the next run, never used. Builds of one artefact are serialised with an exclusive file lock, so
two concurrent set-ups (the demo and the tests) wait for each other instead of both building.

Standard library only: the set-up scripts run this before the project's environment exists.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAMP_NAME = ".llm-rollout-stamp.json"


def cache_root() -> Path:
    """``$LLM_ROLLOUT_CACHE``, else ``$XDG_CACHE_HOME/llm-rollout``, else ``~/.cache/...``."""
    explicit = os.environ.get("LLM_ROLLOUT_CACHE")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "llm-rollout").resolve()


def digest(*parts: str | bytes) -> str:
    """A short, stable digest of the things that define an artefact."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        # Length-prefixed so that ("ab", "c") and ("a", "bc") differ.
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


def keyed_dir(name: str, *defining: str | bytes) -> Path:
    """``<cache root>/<name>-<digest of defining>``; not created."""
    return cache_root() / f"{name}-{digest(*defining)}"


def read_stamp(target: Path) -> dict[str, object] | None:
    """The stamp of a complete artefact, or None when ``target`` is absent or incomplete."""
    try:
        data = json.loads((target / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_stamp(target: Path, stamp: dict[str, object]) -> None:
    """Mark ``target`` complete: the stamp appears whole or not at all."""
    tmp = target / f"{STAMP_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    tmp.replace(target / STAMP_NAME)


def clear_stamp(target: Path) -> None:
    """Mark ``target`` incomplete before changing what is in it."""
    (target / STAMP_NAME).unlink(missing_ok=True)


@contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold the build lock of ``target`` (a sibling ``.lock`` file) for the block."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f"{target.name}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
