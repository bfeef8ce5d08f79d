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

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAMP_NAME = ".llm-rollout-stamp.json"
# Its mtime is the artefact's last use; the stamp itself is written only by a build.
USED_NAME = ".llm-rollout-used"
# Go's build cache drops what nothing has used for five days, the horizon over which a month of
# measured reuse ran out (cmd/go/internal/cache/cache.go trimLimit, golang.org/issue/22990). A
# superseded venv or binaries directory (hundreds of MB to 6 GB) follows the same rule: an old
# checkout still in use keeps its directory alive by using it.
STALE_AFTER_S = 5 * 24 * 3600
_DIGEST_SUFFIX = re.compile(r"-[0-9a-f]{16}$")


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


def mark_used(target: Path) -> None:
    """Record a use of the complete artefact ``target`` (a file beside its stamp, whose mtime
    is the last use; the stamp is left as the build wrote it)."""
    (target / USED_NAME).touch()


def _last_used(directory: Path) -> float:
    # The newest of the last recorded use and the build; an unstamped directory is a build
    # killed half-way, dated by its own mtime.
    dated = [directory / USED_NAME, directory / STAMP_NAME, directory]
    return max(p.stat().st_mtime for p in dated if p.exists())


def prune_stale(
    target: Path, *, stale_after_s: float = STALE_AFTER_S, now: float | None = None
) -> list[Path]:
    """Remove the other versions of ``target``'s artefact that nothing used for ``stale_after_s``.

    Versions are the siblings named ``<name>-<digest>`` for the same name. One being built or
    checked right now holds its lock and is left alone. Returns what was removed.
    """
    if _DIGEST_SUFFIX.search(target.name) is None:
        raise ValueError(f"{target.name} is not a keyed artefact directory (<name>-<digest>)")
    name = _DIGEST_SUFFIX.sub("", target.name)
    moment = time.time() if now is None else now
    removed = []
    for sibling in sorted(target.parent.glob(f"{name}-*")):
        if sibling == target or not sibling.is_dir():
            continue
        if _DIGEST_SUFFIX.sub("", sibling.name) != name:
            continue
        if moment - _last_used(sibling) < stale_after_s:
            continue
        lock_path = sibling.parent / f"{sibling.name}.lock"
        with lock_path.open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    continue
                raise
            try:
                shutil.rmtree(sibling)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        lock_path.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


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
