"""Reliability class "hostile upstream data" (issue 18): the hub or OSS answers with names and
numbers that would write outside the model's place, and every entry point refuses them.

Each case is run through four paths: `llm-rollout sync` streamed, `sync --mode staged`, the
deploy flow (`llm-rollout deploy`) and the refresh flow (`refresh-model`). Before and after
each run the bucket is listed bucket-wide and a temporary root is scanned: the staging
directory (tempfile's root) and the multipart checkpoints (XDG_CACHE_HOME) live inside it, and
the absolute-path case points into it. Sides:

- hub listing: one case per path rule (`llm_rollout.upstream_names`), plus sizes and hashes;
  the entry is in every listing. Survived: the run fails naming the rule, the bucket's keys
  are unchanged, no file appeared under the temporary root (directories may), no manifest.
- second listing: the first listing is truthful and every later one hostile. sync lists once
  (staged hands the checked entries to the library, which does not list again): survived when
  the mirror completes with only the truthful files; deploy and refresh list again (preflight
  then mirror; refresh's inspect before and inside the lease): survived when the later
  listing is refused and nothing was written to the bucket.
- Content-Range: the hub answers ranged GETs of one shard with a forged total. Survived: the
  run fails, no manifest, no object for that shard, new keys only the model's own.
- OSS listing: a manifest already in OSS whose record points outside the prefix (written with
  oss2), and a resumable upload whose ListParts names part 9999 of a 2-part file (uploaded
  with oss2, checkpoint planted). Survived: the run fails naming the rule, the forged part is
  never adopted, no new manifest, new keys only the model's own.

- config.json: the model's own `config.json` (listed and served consistently) carries fields
  that size the KV cache (`llm_rollout/kv_cache.py`) but cannot be true: a negative layer
  count, a head count as a string, an absurd context length, KV heads that do not divide the
  attention heads, an unknown dtype, a document that is not an object. Only deploy and refresh
  size anything from it (preflight's KV fit; `sync` copies its bytes and reads no field), so
  those two paths run it. Survived: the run fails naming the field, nothing is written to the
  bucket, no manifest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import oss2

from bench.reliability import BUCKET, KEY_ID, KEY_SECRET, InputWorld, Row, _cli, write_deploy_spec
from llm_rollout.credentials import OssCredentials
from llm_rollout.mirror.checkpoint import CheckpointStore, UploadState
from llm_rollout.mirror.models import MANIFEST_NAME, MirrorOptions
from llm_rollout.oss import OssTarget, open_bucket

PATHS = ("sync streamed", "sync staged", "deploy", "refresh")
# What a hostile entry serves: a consistent hub (listed size and sha256 match the bytes), the
# strongest attacker -- only the name is wrong.
_BODY = "hostile"
_BAD_SHA = hashlib.sha256(_BODY.encode()).hexdigest()
_counter = itertools.count()


@dataclass(frozen=True)
class HostileCase:
    """One hostile answer: how to set it up, and the rule the refusal must name."""

    side: str  # "hub listing", "second listing", "Content-Range", "OSS listing", "config.json"
    label: str
    rule: str | None  # None: the run is expected to complete (nothing hostile is ever read)
    entry: dict[str, Any] | None = None
    # config.json cases: the fields laid over the model's config (or the whole document when
    # not a dict), and the text the refusal must carry (the field it names).
    config: Any = None
    names: str = ""


def _listing(label: str, rule: str, **entry: Any) -> HostileCase:
    return HostileCase(
        "hub listing", label, rule, {"Size": len(_BODY), "Sha256": _BAD_SHA, "Body": _BODY, **entry}
    )


ABS_MARK = "<ROOT>"
HOSTILE_CASES: list[HostileCase] = [
    _listing("dot-dot segments", "dot-segment", Path="../../../escape.bin"),
    _listing("dot segment", "dot-segment", Path="./config.json"),
    _listing("absolute path into the scanned root", "absolute", Path=f"{ABS_MARK}/escape.bin"),
    _listing("backslash", "backslash", Path="..\\..\\escape.bin"),
    _listing("drive letter", "drive-letter", Path="C:escape.bin"),
    _listing("control character", "control-char", Path="esc\x1b[2Jape.bin"),
    _listing("NUL byte", "control-char", Path="escape.bin\x00.json"),
    _listing("empty segment", "empty-segment", Path="a//escape.bin"),
    _listing("empty path", "empty", Path=""),
    _listing("glob metacharacter", "glob-char", Path="model-*.safetensors"),
    _listing("pattern separator (comma)", "glob-char", Path="config.json,escape.bin"),
    _listing("edge whitespace", "edge-whitespace", Path=" config.json"),
    _listing("NFKC dot-dot (fullwidth)", "nfkc-dot-segment", Path="\uff0e\uff0e/escape.bin"),
    _listing("NFKC solidus (fullwidth)", "nfkc-separator", Path="a\uff0fescape.bin"),
    _listing("percent-encoded dot-dot", "percent-dot-segment", Path="%2e%2e/escape.bin"),
    _listing("double percent-encoded", "percent-dot-segment", Path="%252e%252e/escape.bin"),
    _listing("percent-encoded slash", "percent-absolute", Path="%2Fescape.bin"),
    _listing("reserved: manifest", "reserved", Path=MANIFEST_NAME),
    _listing("casefold collision", "collision", Path="CONFIG.JSON"),
    _listing("NFC collision", "collision", Path="cafe\u0301.json", Collide="caf\u00e9.json"),
    _listing("negative size", "size", Path="config.json", Size=-1),
    _listing("size not an integer", "size", Path="config.json", Size="12"),
    _listing("size beyond OSS", "size", Path="config.json", Size=10**15),
    _listing("sha256 not hex", "sha256", Path="config.json", Sha256="z" * 64),
    _listing("sha256 wrong length", "sha256", Path="config.json", Sha256="ab" * 16),
    HostileCase(
        "second listing",
        "second listing adds ../ and resizes config.json",
        None,
        {"Path": "../../escape.bin", "Size": len(_BODY), "Sha256": _BAD_SHA, "Body": _BODY},
    ),
    HostileCase("Content-Range", "forged Content-Range total", "content-range"),
    HostileCase("OSS listing", "manifest record outside the prefix", "outside-prefix"),
    HostileCase("OSS listing", "ListParts part number out of range", "part-number"),
    *(
        HostileCase("config.json", label, "config", config=config, names=names)
        for label, config, names in (
            ("negative layer count", {"num_hidden_layers": -4}, "num_hidden_layers = -4"),
            ("head count as a string", {"num_key_value_heads": "2"}, "num_key_value_heads"),
            (
                "absurd context length",
                {"max_position_embeddings": 10**12},
                "max_position_embeddings",
            ),
            (
                "KV heads that do not divide",
                {"num_attention_heads": 4, "num_key_value_heads": 3},
                "must divide",
            ),
            ("unknown dtype", {"torch_dtype": "float7"}, "torch_dtype"),
            ("not a JSON object", ["layers", 2], "must be a JSON object"),
        )
    ),
]


@dataclass
class HostileWorld:
    """The sandbox (`InputWorld`) plus the scanned temporary root and the model's files."""

    world: InputWorld
    root: Path
    files: dict[str, Path]

    @property
    def bucket(self) -> oss2.Bucket:
        return open_bucket(self.target(""), self.credentials)

    @property
    def credentials(self) -> OssCredentials:
        from pydantic import SecretStr

        return OssCredentials(
            access_key_id=SecretStr(KEY_ID), access_key_secret=SecretStr(KEY_SECRET)
        )

    def target(self, model_id: str) -> OssTarget:
        return OssTarget(
            endpoint=self.world.oss.endpoint,
            bucket=BUCKET,
            region=self.world.oss.region,
            prefix=f"models/{model_id}/v1" if model_id else "",
        )

    def keys(self) -> set[str]:
        self.world.oss.wait_idle(10)
        return set(self.world.oss.keys(BUCKET))

    def scan(self) -> set[str]:
        """Every file (not directory) under the temporary root."""
        return {
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() or p.is_symlink()
        }


@contextmanager
def hostile_world(world: InputWorld) -> Iterator[HostileWorld]:
    """The scanned root and the model's files (see `redirected` for what points into it)."""
    root = Path(tempfile.mkdtemp(prefix="hostile-root-", dir=world.work.parent))
    (root / "tmp").mkdir()
    files = {
        path: entry.source
        for path, entry in world.hub.files("rel/input", "v1").items()
        if entry.source is not None
    }
    yield HostileWorld(world, root, files)


@contextmanager
def redirected(hw: HostileWorld) -> Iterator[None]:
    """Point tempfile (the staged mode's staging dir) and XDG_CACHE_HOME (checkpoints) into the
    scanned root for one run only: anything else started meanwhile (a Prefect server) keeps
    its own temporary directories."""
    saved_tempdir, saved_cache = tempfile.tempdir, os.environ.get("XDG_CACHE_HOME")
    tempfile.tempdir = str(hw.root / "tmp")
    os.environ["XDG_CACHE_HOME"] = str(hw.root / "cache")
    try:
        yield
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_cache is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved_cache


# A file of three 4 MiB parts at the default part size, for the resume case: only a multipart
# upload consults ListParts.
BIG_FILE = "big.bin"
BIG_BYTES = 9 * 1024 * 1024


def applies(case: HostileCase, path: str) -> bool:
    """Whether `case` reaches our code on `path`: in the staged mode the library fetches the
    bytes (and parses Content-Range itself, modelscope_hub/_download.py
    `_parse_content_range`), so forged ranges are a streamed-mode case."""
    if case.side == "config.json":
        return path in ("deploy", "refresh")
    return not (case.side == "Content-Range" and path == "sync staged")


def _arm(hw: HostileWorld, case: HostileCase, model_id: str) -> None:
    """Publish the case's model and set its hostile answer."""
    hub = hw.world.hub
    files: dict[str, Path | bytes] = dict(hw.files)
    if case.rule == "part-number":
        files[BIG_FILE] = hashlib.sha256(b"big").digest() * (BIG_BYTES // 32)
    if case.side == "config.json":
        files["config.json"] = _config_bytes(hw, case.config)
    entry = dict(case.entry or {})
    collide = entry.pop("Collide", None)
    if collide:
        files[str(collide)] = b"{}"
    hub.add_revision(model_id, "v1", files)
    if "Path" in entry:
        entry["Path"] = str(entry["Path"]).replace(ABS_MARK, str(hw.root))
    if case.side == "hub listing":
        hub.faults.hostile_listing([entry], model_id=model_id)
    elif case.side == "second listing":
        config = hub.files(model_id, "v1")["config.json"]
        resized = {"Path": "config.json", "Size": config.size + 5}
        hub.faults.hostile_listing([entry, resized], model_id=model_id, skip=1)
    elif case.side == "Content-Range":
        shard = _shard(hw)
        size = hw.files[shard].stat().st_size
        hub.faults.bad_content_range(shard, f"bytes 0-1023/{size + 1}", times=1000)
    elif case.rule == "outside-prefix":
        _plant_manifest(hw, model_id)
    elif case.rule == "part-number":
        _plant_upload(hw, model_id)


def _config_bytes(hw: HostileWorld, config: Any) -> bytes:
    """The model's config.json with `config`'s fields laid over it (or `config` itself when it
    is not a dict)."""
    if not isinstance(config, dict):
        return json.dumps(config).encode()
    base = json.loads(hw.files["config.json"].read_bytes())
    return json.dumps({**base, **config}).encode()


def _shard(hw: HostileWorld) -> str:
    return sorted(p for p in hw.files if p.endswith(".safetensors"))[0]


def _plant_manifest(hw: HostileWorld, model_id: str) -> None:
    """A manifest (written with oss2) whose first record's key is another model's object."""
    target = hw.target(model_id)
    records = [
        {
            "path": path,
            "key": target.key(path) if n else f"models/other/v1/{path}",
            "size": src.stat().st_size,
            "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
            "crc64": "0",
            "uploaded_at": "2026-01-01T00:00:00Z",
        }
        for n, (path, src) in enumerate(sorted(hw.files.items()))
    ]
    manifest = {
        "format": 1,
        "model_id": model_id,
        "revision": "v1",
        "content_digest": "0" * 64,
        "bucket": BUCKET,
        "prefix": target.key(),
        "created_at": "2026-01-01T00:00:00Z",
        "total_bytes": sum(r["size"] for r in records),
        "files": records,
    }
    hw.bucket.put_object(target.key(MANIFEST_NAME), json.dumps(manifest).encode())


def _plant_upload(hw: HostileWorld, model_id: str) -> None:
    """An unfinished upload of the big file holding part 9999 (with oss2), and the checkpoint
    the mirror resumes from, in the checkpoint directory every path uses."""
    target = hw.target(model_id)
    data = hashlib.sha256(b"big").digest() * (BIG_BYTES // 32)
    key = target.key(BIG_FILE)
    part_size = MirrorOptions().part_size_for(len(data))
    # Every path uses the default checkpoint directory (XDG_CACHE_HOME, inside the root), and
    # sync is given it explicitly.
    store = CheckpointStore(_checkpoint_dir(hw), target.endpoint)
    plant_stray_part(hw.bucket, store, key, data, part_size)


def plant_stray_part(
    bucket: oss2.Bucket, store: CheckpointStore, key: str, data: bytes, part_size: int
) -> None:
    """Start an upload of `data` at `key` with oss2, upload part 9999 (a number the file
    cannot have at `part_size`), and save the checkpoint the mirror would resume from."""
    upload_id = str(bucket.init_multipart_upload(key).upload_id)
    bucket.upload_part(key, upload_id, 9999, b"hostile" * 100)
    store.save(
        UploadState(
            bucket=bucket.bucket_name,
            key=key,
            upload_id=upload_id,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            part_size=part_size,
        )
    )


def _checkpoint_dir(hw: HostileWorld) -> Path:
    return hw.root / "cache" / "llm-rollout" / "mirror"


def _spec(hw: HostileWorld, model_id: str) -> Path:
    n = next(_counter)
    size = sum(f.size for f in hw.world.hub.files(model_id, "v1").values())
    return write_deploy_spec(
        hw.world,
        f"hostile-{n}",
        "hostile",
        f"hostile-{n}",
        model={
            "modelscope": {"model_id": model_id, "revision": "v1"},
            "size_bytes": size,
        },
    )


def _run(path: str, spec: Path, hw: HostileWorld) -> tuple[bool, str]:
    """(completed, output or error text) of one entry point."""
    if path.startswith("sync"):
        mode = "staged" if path.endswith("staged") else "streamed"
        argv = ["sync", str(spec), "--no-progress", "--mode", mode]
        argv += ["--checkpoint-dir", str(_checkpoint_dir(hw))]
        code, output = _cli(argv)
        return code == 0, output
    if path == "deploy":
        code, output = _cli(["deploy", str(spec)])
        return code == 0, output
    from flows.refresh import refresh
    from llm_rollout.spec import load_spec

    state = refresh(load_spec(spec), return_state=True)
    message = str(state.message or "")
    if not state.is_completed():
        try:
            state.result()
        except Exception as exc:  # noqa: BLE001 - the flow's failure is the observation
            message += f" {exc}"
    return state.is_completed(), message


def _model_keys(hw: HostileWorld, model_id: str) -> set[str]:
    target = hw.target(model_id)
    return {target.key(p) for p in hw.world.hub.files(model_id, "v1")}


def check_case(hw: HostileWorld, case: HostileCase, path: str) -> str:
    """'' when `path` handled `case` as the module docstring says; else what went wrong."""
    model_id = f"rel/hostile-{next(_counter)}"
    hw.world.hub.faults.clear()
    _arm(hw, case, model_id)
    spec = _spec(hw, model_id)
    keys_before, files_before = hw.keys(), hw.scan()
    try:
        with redirected(hw):
            completed, output = _run(path, spec, hw)
    finally:
        hw.world.hub.faults.clear()
    keys_after, files_after = hw.keys(), hw.scan()
    new_keys = keys_after - keys_before
    lost_keys = keys_before - keys_after
    new_files = files_after - files_before
    target = hw.target(model_id)
    manifest = target.key(MANIFEST_NAME)
    problems: list[str] = []
    allowed_files = {
        f for f in new_files if f.startswith(("cache/llm-rollout/mirror/", "cache/prefect"))
    }
    outside = new_files - allowed_files
    if lost_keys:
        problems.append(f"keys removed: {sorted(lost_keys)[:3]}")
    expects_completion = case.rule is None and path.startswith("sync")
    if expects_completion:
        if not completed:
            problems.append(f"did not complete: {output.strip()[-200:]}")
        if not new_keys <= _model_keys(hw, model_id) | {manifest}:
            problems.append(f"keys outside the model: {sorted(new_keys)[:3]}")
        staged = {f for f in outside if f.startswith("tmp/llm-rollout-staged-")}
        outside -= staged
    else:
        if completed:
            problems.append("the run completed")
        rule = case.rule or "dot-segment"
        if case.side == "config.json":
            if "config.json" not in output or case.names not in output:
                problems.append(f"message does not name {case.names!r}: {output.strip()[-200:]}")
        elif f"rule {rule}" not in output and case.side != "Content-Range":
            problems.append(f"message does not name rule {rule}: {output.strip()[-200:]}")
        if case.side == "Content-Range" and path != "sync staged" and "content-range" not in output:
            problems.append(f"message does not name content-range: {output.strip()[-200:]}")
        if manifest in new_keys:
            problems.append("a manifest was written")
        if case.side in ("hub listing", "second listing", "config.json") and new_keys:
            problems.append(f"bucket written: {sorted(new_keys)[:3]}")
        if not new_keys <= _model_keys(hw, model_id):
            problems.append(
                f"keys outside the model: {sorted(new_keys - _model_keys(hw, model_id))[:3]}"
            )
        if case.side == "Content-Range" and target.key(_shard(hw)) in new_keys:
            problems.append("the forged shard was stored")
        if case.rule == "part-number" and target.key(BIG_FILE) in new_keys:
            problems.append("the upload holding part 9999 was completed")
    if outside:
        problems.append(f"files written under the scanned root: {sorted(outside)[:3]}")
    return "; ".join(problems)


def run_hostile_upstream(world: InputWorld) -> Row:
    """Every case through every path; one row."""
    row = Row("hostile upstream data (hub + OSS answers; nothing written outside)")
    sides: dict[str, int] = {}
    with hostile_world(world) as hw:
        for case in HOSTILE_CASES:
            for path in PATHS:
                if not applies(case, path):
                    continue
                row.trials += 1
                problem = check_case(hw, case, path)
                if problem:
                    row.failures.append(f"{case.label} via {path}: {problem}")
                else:
                    row.survived += 1
                    sides[case.side] = sides.get(case.side, 0) + 1
    row.notes = (
        f"{len(HOSTILE_CASES)} cases x {len(PATHS)} paths ({', '.join(PATHS)}; forged "
        "Content-Range not in staged: the library fetches); survived by side: "
        + ", ".join(f"{k} {v}" for k, v in sides.items())
        + "; bucket-wide key listing and a temp-root scan before/after each (config.json "
        "cases: deploy and refresh, the paths that size anything from it)"
    )
    return row
