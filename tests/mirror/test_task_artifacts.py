"""The Prefect mirror task: progress artifact reaches 100 %, the file table lists every file."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)

from llm_rollout.artifacts import MIRROR_FILES, MIRROR_PROGRESS, ServiceId, artifact_key
from llm_rollout.mirror import MirrorResult, MirrorStatus
from llm_rollout.spec import load_spec
from tasks.mirror import is_mirrored_task, mirror_model_task
from tests.mirror.conftest import ACCESS_KEY_ID, ACCESS_KEY_SECRET, MirrorCase, write_spec


def test_mirror_task_publishes_progress_and_file_table(
    case: MirrorCase, tmp_path: Path, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
    spec = load_spec(write_spec(case, tmp_path / "spec.yaml"))

    @flow
    def mirror_then_check() -> tuple[MirrorResult, MirrorStatus]:
        result = mirror_model_task(spec, case.options)
        return result, is_mirrored_task(spec, against_hub=True)

    state = mirror_then_check(return_state=True)
    result, status = state.result()
    # The Prefect server is shared by the whole session: read only this run's artifacts.
    this_run = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])

    service = ServiceId.of(spec)
    assert status.complete, status.reason
    assert status.manifest_uri == result.manifest_uri
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key(MIRROR_PROGRESS, service)]),
                flow_run_id=this_run,
            )
        )
        table = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key(MIRROR_FILES, service)]),
                flow_run_id=this_run,
            )
        )
    assert progress and progress[-1].data == 100.0
    assert table
    text = str(table[-1].data)
    for record in result.manifest.files:
        assert record.path in text
    assert ACCESS_KEY_SECRET not in text
