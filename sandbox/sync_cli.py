"""`llm-rollout sync` against the sandbox, for tests and benchmarks: a spec and an argv.

The spec is the single-GPU example with its model and storage pointed at a sandbox hub
revision and OSS bucket; its credentials stay the example's `OSS_ACCESS_KEY_ID` /
`OSS_ACCESS_KEY_SECRET` variable names, so the caller's environment carries the keys.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "seed-vllm-single-gpu.yaml"


def write_sync_spec(
    path: Path,
    *,
    model_id: str,
    revision: str,
    size_bytes: int,
    bucket: str,
    endpoint: str,
    region: str,
    prefix: str | None = None,
) -> Path:
    """Write the example spec, mirroring `model_id@revision` into `bucket` at `endpoint`."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["model"] = {
        "modelscope": {"model_id": model_id, "revision": revision},
        "size_bytes": size_bytes,
    }
    storage = {"bucket": bucket, "endpoint": endpoint, "region": region}
    if prefix is not None:
        storage["prefix"] = prefix
    data["storage"].update(storage)
    path.write_text(yaml.safe_dump(data))
    return path


def sync_argv(spec: Path, *options: str) -> list[str]:
    """The CLI in this interpreter (the project's venv): `llm-rollout sync SPEC OPTIONS...`."""
    return [
        sys.executable,
        "-c",
        "from llm_rollout.cli import main; main()",
        "sync",
        str(spec),
        *options,
    ]
