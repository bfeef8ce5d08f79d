"""Checks on names and numbers that come from the hub or OSS, before anything acts on them.

A listing from the hub (or a key list from OSS) decides where bytes are written: an OSS key
under the model's prefix, a file under the staging directory. A compromised or spoofed
service must not be able to steer those writes elsewhere, so every path is accepted only as a
normalised relative POSIX path inside the model, and every size and hash only when it can be
true. Each refusal names the entry and the rule (`UnsafeUpstreamData.rule`).

The rules, one function each, are plain and side-effect free:

- `check_path`: one path (structure, characters, normalisation tricks, reserved names);
- `check_listing`: a set of paths (adds the collision rules);
- `check_sha256`, `check_size`, `check_revision`: one listed number or name;
- `key_under`, `local_path_inside`: a computed OSS key / local path stays in its place;
- `parse_content_range`, `check_part_number`: what a ranged GET or ListParts answered.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

from llm_rollout.errors import PermanentError

# Directory under the model's prefix that holds the manifest (models.MANIFEST_NAME); a listed
# file there would overwrite or shadow the completion marker.
RESERVED_TOP = ".llm-rollout"
# modelscope_hub/_download.py (`_incomplete_path`) writes `<target>.incomplete` beside the
# file it downloads into `local_dir`: a listed `X.incomplete` next to a listed `X` would be
# clobbered by (or clobber) that partial download in the staged mode.
LIBRARY_PARTIAL_SUFFIX = ".incomplete"
# OSS object keys are at most 1023 bytes; most local filesystems cap a name at 255 bytes.
MAX_PATH_BYTES = 1023
MAX_SEGMENT_BYTES = 255
# The largest object OSS stores: 10,000 parts of at most 5 GiB.
MAX_OBJECT_BYTES = 10_000 * 5 * 1024**3
MAX_PART_NUMBER = 10_000
# fnmatch's metacharacters: modelscope_hub/_download.py (`_matches_patterns`) matches listed
# paths against `allow_patterns` with fnmatch. The comma and edge whitespace: the library
# splits every pattern on "," and strips each piece (modelscope_hub/utils/patterns.py,
# `_split_inline`), so a path carrying them would not select itself.
_GLOB_CHARS = frozenset("*?[],")
_DRIVE = re.compile(r"^[A-Za-z]:")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# Same shape as spec.REVISION: one segment, so it can name an OSS folder.
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d{1,20})-(\d{1,20})/(\d{1,20})$")
_PERCENT_ROUNDS = 4


class UnsafeUpstreamData(PermanentError):
    """A name or number from the hub or OSS breaks a rule; nothing was written for it."""

    def __init__(self, where: str, entry: object, rule: str, detail: str) -> None:
        shown = ascii(entry)
        if len(shown) > 200:
            shown = shown[:200] + "...'"
        super().__init__(f"{where}: refused {shown}: rule {rule}: {detail}")
        self.where = where
        self.entry = entry
        self.rule = rule


def _structure_problem(path: str) -> tuple[str, str] | None:
    """(rule, detail) for the first structural rule `path` breaks, else None."""
    if not path:
        return "empty", "the path is empty"
    if path.startswith("/"):
        return "absolute", "a path must be relative to the model"
    if "\\" in path:
        return "backslash", "'\\' is a separator on Windows and in some libraries"
    if _DRIVE.match(path):
        return "drive-letter", "a drive letter makes the path absolute on Windows"
    for ch in path:
        if unicodedata.category(ch) == "Cc":
            return "control-char", f"control character U+{ord(ch):04X}"
    for segment in path.split("/"):
        if segment == "":
            return "empty-segment", "'//' or a trailing '/'"
        if segment in (".", ".."):
            return "dot-segment", f"a '{segment}' segment"
    glob = sorted(ch for ch in set(path) if ch in _GLOB_CHARS)
    if glob:
        return "glob-char", f"{''.join(glob)!r}: the download library reads names as patterns"
    if path != path.strip():
        return "edge-whitespace", "the download library strips patterns"
    return None


def check_path(path: object, *, where: str) -> str:
    """`path` when it is a normalised relative POSIX path inside the model; raise otherwise."""
    if not isinstance(path, str):
        raise UnsafeUpstreamData(where, path, "type", "a path must be a string")
    problem = _structure_problem(path)
    if problem is None:
        if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
            problem = "too-long", f"more than {MAX_PATH_BYTES} bytes"
        elif any(
            len(s.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for s in path.split("/")
        ):
            problem = "too-long", f"a segment of more than {MAX_SEGMENT_BYTES} bytes"
        elif any(unicodedata.category(ch) == "Cs" for ch in path):
            problem = "surrogate", "a lone surrogate is not text"
    if problem is None:
        problem = _normalised_problem(path)
    if problem is None and path.split("/", 1)[0].casefold() == RESERVED_TOP:
        problem = "reserved", f"{RESERVED_TOP}/ holds the mirror's manifest"
    if problem is not None:
        raise UnsafeUpstreamData(where, path, *problem)
    return path


def _normalised_problem(path: str) -> tuple[str, str] | None:
    """A rule broken by what `path` becomes under NFKC or percent-decoding."""
    nfkc = unicodedata.normalize("NFKC", path)
    if nfkc != path:
        inner = _structure_problem(nfkc)
        if inner is not None:
            return f"nfkc-{inner[0]}", f"NFKC turns it into a path that breaks {inner[0]}"
        if nfkc.count("/") != path.count("/"):
            return "nfkc-separator", "NFKC changes where the path's segments split"
    decoded = path
    for _ in range(_PERCENT_ROUNDS):
        step = unquote(decoded, errors="strict") if "%" in decoded else decoded
        if step == decoded:
            break
        decoded = step
        inner = _structure_problem(unicodedata.normalize("NFKC", decoded))
        if inner is not None:
            return (
                f"percent-{inner[0]}",
                f"percent-decoding turns it into a path that breaks {inner[0]}",
            )
        if decoded.count("/") != path.count("/"):
            return "percent-separator", "percent-decoding changes where the segments split"
    return None


def fold(path: str) -> str:
    """The form two paths collide under: NFC then casefold (case-insensitive filesystems)."""
    return unicodedata.normalize("NFC", path).casefold()


def check_listing(paths: Iterable[str], *, where: str) -> list[str]:
    """Every path checked, then pairwise: no two equal under NFC + casefold, no file also used
    as a directory, no `X.incomplete` beside `X`. Returns the paths in their given order."""
    checked = [check_path(p, where=where) for p in paths]
    seen: dict[str, str] = {}
    for path in checked:
        other = seen.get(fold(path))
        if other is not None:
            raise UnsafeUpstreamData(
                where, path, "collision", f"equal to {other!a} under NFC + casefold"
            )
        seen[fold(path)] = path
    for path in checked:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = seen.get(fold("/".join(parts[:depth])))
            if parent is not None:
                raise UnsafeUpstreamData(
                    where, path, "collision", f"{parent!a} is listed as a file"
                )
        if path.endswith(LIBRARY_PARTIAL_SUFFIX):
            base = seen.get(fold(path[: -len(LIBRARY_PARTIAL_SUFFIX)]))
            if base is not None:
                raise UnsafeUpstreamData(
                    where,
                    path,
                    "reserved",
                    f"the download library writes {base!a}'s partial copy under this name",
                )
    return checked


def check_sha256(value: object, *, where: str, entry: str) -> str:
    """A sha256 as 64 hex digits, returned lower-case."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise UnsafeUpstreamData(where, entry, "sha256", "the sha256 is not 64 hex digits")
    return value.lower()


def check_size(value: object, *, where: str, entry: str) -> int:
    """A size in bytes: a non-negative integer no larger than OSS stores."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsafeUpstreamData(where, entry, "size", "the size is not an integer")
    if value < 0:
        raise UnsafeUpstreamData(where, entry, "size", "the size is negative")
    if value > MAX_OBJECT_BYTES:
        raise UnsafeUpstreamData(where, entry, "size", "the size exceeds what OSS stores")
    return value


def check_revision(value: object, *, where: str) -> str:
    """A revision name usable as one OSS folder (letters, digits, '_', '.', '-')."""
    if not isinstance(value, str) or not _REVISION.fullmatch(value) or value in (".", ".."):
        raise UnsafeUpstreamData(
            where, value, "revision", "a revision is one segment of [A-Za-z0-9_.-]"
        )
    return value


def under_prefix(prefix: str, key: str, *, where: str) -> str:
    """`key` when it starts with `prefix` + '/' (OSS keys are flat strings: that is all
    'inside' means to OSS itself)."""
    head = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    if not key.startswith(head) or key == head:
        raise UnsafeUpstreamData(where, key, "outside-prefix", f"not under {head!a}")
    return key


def key_under(prefix: str, key: str, *, where: str) -> str:
    """`key` when it lies below `prefix` and the rest is a valid relative path."""
    under_prefix(prefix, key, where=where)
    check_path(key[len(prefix.rstrip("/")) + 1 if prefix.strip("/") else 0 :], where=where)
    return key


def local_path_inside(root: Path, relative: str, *, where: str) -> Path:
    """`root / relative` after checking `relative` and that it resolves (symlinks followed)
    inside `root`."""
    check_path(relative, where=where)
    base = root.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base) or candidate == base:
        raise UnsafeUpstreamData(where, relative, "outside-directory", f"resolves outside {base}")
    return candidate


def parse_content_range(
    header: str | None, *, where: str, start: int, stop: int, total: int
) -> int:
    """The last byte offset (inclusive) of a 206 answer to `bytes=start-(stop-1)`.

    Accepted only as `bytes START-END/TOTAL` with START equal to what was asked, END inside
    the request, and TOTAL equal to the listed size.
    """
    match = _CONTENT_RANGE.fullmatch(header or "")
    if match is None:
        raise UnsafeUpstreamData(where, header, "content-range", "not 'bytes A-B/SIZE'")
    first, last, size = (int(g) for g in match.groups())
    if first != start:
        raise UnsafeUpstreamData(
            where, header, "content-range", f"starts at {first}, {start} was asked"
        )
    if last < first or last >= stop:
        raise UnsafeUpstreamData(where, header, "content-range", "ends outside the range asked")
    if size != total:
        raise UnsafeUpstreamData(
            where, header, "content-range", f"total {size} != listed size {total}"
        )
    return last


def check_part_number(number: object, *, where: str, parts: int) -> int:
    """A multipart part number OSS listed: an integer in 1..`parts` (the file's part count)."""
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= parts:
        raise UnsafeUpstreamData(
            where, number, "part-number", f"not a part number in 1..{min(parts, MAX_PART_NUMBER)}"
        )
    return number
