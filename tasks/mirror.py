"""Prefect edge of the model mirror: spec -> mirror parameters, progress and per-file artifacts.

`llm_rollout.mirror.inputs.mirror_inputs(spec)` is the only place that reads the spec for the
mirror; the core in `llm_rollout.mirror` takes the small parameter objects it returns.
Retries cover transient failures only; a retry resumes (checkpoints + skip), so it never
re-sends verified bytes.
"""

from __future__ import annotations

import threading
import time
from typing import cast
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from llm_rollout.artifacts import MIRROR_FILES, MIRROR_PROGRESS, ServiceId, artifact_key
from llm_rollout.credentials import resolve_oss_credentials
from llm_rollout.hub import HubClient
from llm_rollout.mirror import (
    FileOutcome,
    MirrorOptions,
    MirrorResult,
    MirrorStatus,
    is_mirrored,
    mirror_model,
)
from llm_rollout.mirror.inputs import mirror_inputs
from llm_rollout.spec import ServiceSpec
from tasks.policy import retry_transient_only

# Artifact updates are API calls: at most one per this many seconds (plus the final one).
PROGRESS_UPDATE_INTERVAL_S = 2.0
# A 65 GB model at 100 MB/s takes ~11 minutes; the bound catches a wedged run, not a slow one.
MIRROR_TIMEOUT_S = 12 * 3600


class ArtifactProgress:
    """MirrorProgress that drives a Prefect progress artifact (throttled, thread-safe)."""

    def __init__(self, artifact_id: UUID, interval_s: float = PROGRESS_UPDATE_INTERVAL_S) -> None:
        self._artifact_id = artifact_id
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._total = 0
        self._done = 0
        self._last_update = 0.0

    def on_start(self, total_files: int, total_bytes: int) -> None:
        """Remember the total."""
        with self._lock:
            self._total = total_bytes

    def on_bytes(self, path: str, nbytes: int) -> None:
        """Count bytes; push an update at most every interval."""
        with self._lock:
            self._done += nbytes
            now = time.monotonic()
            if now - self._last_update < self._interval_s:
                return
            self._last_update = now
            percent = self.percent
        update_progress_artifact(artifact_id=self._artifact_id, progress=percent)

    def on_file_done(self, outcome: FileOutcome) -> None:
        """Nothing per file: the table artifact lists files at the end."""

    @property
    def percent(self) -> float:
        """Share of bytes accounted for, 0-100."""
        return 100.0 if self._total == 0 else min(100.0, 100.0 * self._done / self._total)


def _file_table(result: MirrorResult) -> list[dict[str, str | int | float]]:
    return [
        {
            "path": o.record.path,
            "size_bytes": o.record.size,
            "status": o.status,
            "bytes_sent": o.bytes_sent,
            "sha256": o.record.sha256,
            "crc64": o.record.crc64,
            "seconds": round(o.seconds, 2),
        }
        for o in result.files
    ]


@task(
    name="mirror-model",
    retries=3,
    retry_delay_seconds=[10, 30, 90],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient_only,
    timeout_seconds=MIRROR_TIMEOUT_S,
    cache_policy=NO_CACHE,
)
def mirror_model_task(spec: ServiceSpec, options: MirrorOptions | None = None) -> MirrorResult:
    """Mirror the spec's ModelScope revision into OSS, with progress and per-file artifacts."""
    logger = get_run_logger()
    inputs = mirror_inputs(spec)
    credentials = resolve_oss_credentials(inputs.credentials)
    # Called from a sync task the dispatcher returns the id itself, not a coroutine.
    artifact_id = cast(
        UUID,
        create_progress_artifact(
            progress=0.0,
            key=artifact_key(MIRROR_PROGRESS, ServiceId.of(spec)),
            description=f"Mirror {inputs.source.model_id}@{inputs.source.revision} "
            f"to {inputs.target.uri(inputs.target.key())}/",
        ),
    )
    progress = ArtifactProgress(artifact_id)
    result = mirror_model(inputs.source, inputs.target, credentials, options, progress)
    update_progress_artifact(artifact_id=artifact_id, progress=100.0)
    create_table_artifact(
        key=artifact_key(MIRROR_FILES, ServiceId.of(spec)),
        table=_file_table(result),
        description=f"Files of {result.model_uri} (manifest {result.manifest_uri})",
    )
    logger.info(
        "mirror complete: %d files, %d bytes sent, %d fetched, %.1fs; manifest %s",
        len(result.files),
        result.bytes_sent,
        result.bytes_fetched,
        result.seconds,
        result.manifest_uri,
    )
    return result


@task(
    name="is-mirrored",
    retries=2,
    retry_delay_seconds=[5, 15],
    retry_condition_fn=retry_transient_only,
    timeout_seconds=300,
    cache_policy=NO_CACHE,
)
def is_mirrored_task(spec: ServiceSpec, against_hub: bool = True) -> MirrorStatus:
    """Whether the spec's revision is mirrored and verified (HEADs only, no data read).

    With `against_hub`, the hub is listed once so a moved branch counts as not mirrored.
    """
    inputs = mirror_inputs(spec)
    credentials = resolve_oss_credentials(inputs.credentials)
    listing = HubClient().list_files(inputs.source) if against_hub else None
    status = is_mirrored(inputs.target, credentials, listing)
    get_run_logger().info(
        "mirror of %s: %s",
        inputs.target.uri(inputs.target.key()),
        "complete" if status.complete else f"incomplete ({status.reason})",
    )
    return status
