"""The rules on names and numbers from the hub or OSS, one by one: each has a case that must be
refused (naming the rule) and a near miss that must pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_rollout.upstream_names import (
    MAX_OBJECT_BYTES,
    UnsafeUpstreamData,
    check_listing,
    check_part_number,
    check_path,
    check_revision,
    check_sha256,
    check_size,
    key_under,
    local_path_inside,
    parse_content_range,
)

# (rule, refused path, near miss that passes)
PATH_RULES = [
    ("empty", "", "a"),
    ("absolute", "/etc/passwd", "etc/passwd"),
    ("backslash", "..\\evil", "dotdot-evil"),
    ("drive-letter", "C:evil.bin", "C-evil.bin"),
    ("control-char", "a\nb.json", "a b.json"),
    ("control-char", "a\x7fb", "a~b"),
    ("empty-segment", "a//b", "a/b"),
    ("empty-segment", "dir/", "dir/x"),
    ("dot-segment", "a/../../b", "a/..b/c"),
    ("dot-segment", "./config.json", ".config.json"),
    ("glob-char", "model-*.safetensors", "model-1.safetensors"),
    ("glob-char", "w[0].bin", "w(0).bin"),
    ("glob-char", "a,b.json", "a;b.json"),
    ("edge-whitespace", " config.json", "my config.json"),
    ("nfkc-dot-segment", "\uff0e\uff0e/x", "\uff0ex/y"),
    ("nfkc-separator", "a\uff0fb", "a\uff41b"),
    ("percent-dot-segment", "%2e%2e/etc/passwd", "100%.txt"),
    ("percent-absolute", "%2Fetc%2Fpasswd", "a%20b.txt"),
    ("percent-dot-segment", "%252e%252e/x", "%25.txt"),
    ("percent-separator", "a%2Fb", "a%41b"),
    ("reserved", ".llm-rollout/manifest.json", ".llm-rollout.json"),
    ("reserved", ".LLM-Rollout/x", "llm-rollout/x"),
    ("too-long", "a" * 256, "a" * 255),
]


@pytest.mark.parametrize(("rule", "bad", "good"), PATH_RULES)
def test_path_rule_refuses_and_near_miss_passes(rule: str, bad: str, good: str) -> None:
    with pytest.raises(UnsafeUpstreamData) as caught:
        check_path(bad, where="test listing")
    assert caught.value.rule == rule
    assert "test listing" in str(caught.value)
    assert f"rule {rule}" in str(caught.value)
    assert check_path(good, where="test listing") == good


def test_refusal_names_entry_without_raw_control_bytes() -> None:
    with pytest.raises(UnsafeUpstreamData) as caught:
        check_path("x\x1b[31mred", where="hub listing of a/b@v1")
    message = str(caught.value)
    assert "\x1b" not in message
    assert "\\x1b" in message


def test_non_string_path_is_refused() -> None:
    with pytest.raises(UnsafeUpstreamData, match="rule type"):
        check_path(7, where="t")


@pytest.mark.parametrize(
    ("bad", "good"),
    [
        (["Config.json", "config.json"], ["config.json", "config.jsonx"]),
        # NFC: "e" + combining acute vs the precomposed letter.
        (["caf\u00e9.txt", "cafe\u0301.txt"], ["caf\u00e9.txt", "cafe.txt"]),
        (["a", "a/b"], ["a1", "a/b"]),
    ],
)
def test_listing_collisions(bad: list[str], good: list[str]) -> None:
    with pytest.raises(UnsafeUpstreamData) as caught:
        check_listing(bad, where="t")
    assert caught.value.rule == "collision"
    assert check_listing(good, where="t") == good


def test_library_partial_name_beside_its_file_is_reserved() -> None:
    with pytest.raises(UnsafeUpstreamData) as caught:
        check_listing(["w.bin", "w.bin.incomplete"], where="t")
    assert caught.value.rule == "reserved"
    assert check_listing(["w.bin.incomplete"], where="t") == ["w.bin.incomplete"]


@pytest.mark.parametrize("bad", ["ab" * 31, "g" * 64, "a" * 65, 12, None, "a" * 63 + " "])
def test_sha256_refused(bad: object) -> None:
    with pytest.raises(UnsafeUpstreamData, match="rule sha256"):
        check_sha256(bad, where="t", entry="x")


def test_sha256_near_miss_is_lowered() -> None:
    assert check_sha256("AB" * 32, where="t", entry="x") == "ab" * 32


@pytest.mark.parametrize("bad", [-1, 1.5, "12", True, None, MAX_OBJECT_BYTES + 1])
def test_size_refused(bad: object) -> None:
    with pytest.raises(UnsafeUpstreamData, match="rule size"):
        check_size(bad, where="t", entry="x")


@pytest.mark.parametrize("good", [0, 1, MAX_OBJECT_BYTES])
def test_size_near_miss(good: int) -> None:
    assert check_size(good, where="t", entry="x") == good


@pytest.mark.parametrize("bad", ["..", "a/b", "", "-x", "v1\n", "\uff561"])
def test_revision_refused(bad: str) -> None:
    with pytest.raises(UnsafeUpstreamData, match="rule revision"):
        check_revision(bad, where="t")


def test_revision_near_miss() -> None:
    assert check_revision("v1..2", where="t") == "v1..2"


def test_key_under_prefix() -> None:
    assert key_under("models/a/v1", "models/a/v1/w.bin", where="t") == "models/a/v1/w.bin"
    with pytest.raises(UnsafeUpstreamData, match="rule outside-prefix"):
        key_under("models/a/v1", "models/a/v10/w.bin", where="t")
    with pytest.raises(UnsafeUpstreamData, match="rule dot-segment"):
        key_under("models/a/v1", "models/a/v1/../v2/w.bin", where="t")


def test_local_path_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "staged"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert local_path_inside(root, "sub/w.bin", where="t") == (root / "sub/w.bin").resolve()
    with pytest.raises(UnsafeUpstreamData, match="rule outside-directory"):
        local_path_inside(root, "link/w.bin", where="t")
    with pytest.raises(UnsafeUpstreamData, match="rule absolute"):
        local_path_inside(root, str(outside / "w.bin"), where="t")


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "bytes 0-99/*",
        "bytes 10-99/1000",  # starts elsewhere than asked
        "bytes 0-100/1000",  # ends beyond the request
        "bytes 0-99/999",  # total differs from the listed size
        "bytes 0-99/1000, bytes 0-1/1000",
        "items 0-99/1000",
    ],
)
def test_content_range_refused(bad: str | None) -> None:
    with pytest.raises(UnsafeUpstreamData, match="rule content-range"):
        parse_content_range(bad, where="t", start=0, stop=100, total=1000)


def test_content_range_near_miss() -> None:
    assert parse_content_range("bytes 0-99/1000", where="t", start=0, stop=100, total=1000) == 99
    # A shorter answer is allowed: the rest is asked for again.
    assert parse_content_range("bytes 0-49/1000", where="t", start=0, stop=100, total=1000) == 49


@pytest.mark.parametrize("bad", [0, 5, -1, "1", True])
def test_part_number_refused(bad: object) -> None:
    with pytest.raises(UnsafeUpstreamData, match="rule part-number"):
        check_part_number(bad, where="t", parts=4)


def test_part_number_near_miss() -> None:
    assert check_part_number(4, where="t", parts=4) == 4
    assert check_part_number(1, where="t", parts=4) == 1
