"""Plain-function tests of the run summary, annotations and event payload."""

from __future__ import annotations

from llm_rollout.artifacts import RUN_SUMMARY, ServiceId, artifact_key, summary_markdown
from llm_rollout.record import (
    RunSummary,
    SmokeSummary,
    StageTiming,
    deployment_annotations,
    event_payload,
    service_resource_id,
)
from llm_rollout.vocabulary import ANN_PREVIOUS_RELEASE, ANN_RELEASE, ANN_REVISION, ANN_SPEC_HASH


def _summary(**overrides: object) -> RunSummary:
    base: dict[str, object] = {
        "kind": "LeaderWorkerSet",
        "service": "qwen",
        "namespace": "llm",
        "model": "Qwen/Qwen3-32B",
        "revision": "master",
        "engine": "vllm",
        "shape": "multi-node",
        "requested_strategy": "auto",
        "strategy": "blue-green",
        "release": "r1abc",
        "previous_release": "r0abc",
        "spec_hash": "deadbeef",
        "outcome": "promoted",
        "message": "promote release r1abc",
        "objects_applied": ["LeaderWorkerSet llm/qwen-r1abc", "Service llm/qwen"],
        "timings": [StageTiming("preflight", 0.25, "ok"), StageTiming("mirror", 0.0, "skipped")],
        "smoke": SmokeSummary(
            passed=True,
            answer="hello | world",
            ttft_s=0.0421,
            latency_s=0.2,
            checks=[("status is 200", True, "200")],
        ),
    }
    base.update(overrides)
    return RunSummary(**base)  # type: ignore[arg-type]


def test_summary_names_everything_a_reader_needs() -> None:
    md = summary_markdown(_summary())
    assert md.startswith("# llm/qwen: SERVING")
    for needle in (
        "Qwen/Qwen3-32B",
        "vllm / multi-node",
        "blue-green (requested auto)",
        "| preflight | 0.25 | ok |",
        "| **total** | 0.25 |",
        "time to first token: 42 ms",
        "LeaderWorkerSet llm/qwen-r1abc",
        "hello \\| world",  # a pipe in the answer must not break the table
    ):
        assert needle in md, needle


def test_failed_summary_says_so() -> None:
    md = summary_markdown(_summary(outcome="rolled-back", message="smoke test failed"))
    assert md.startswith("# llm/qwen: ROLLED BACK")
    assert "smoke test failed" in md


def test_annotations_and_ids() -> None:
    ann = deployment_annotations(
        release="r1",
        previous_release=None,
        model="m",
        revision="v1",
        spec_hash="h",
        strategy="recreate",
        deployed_at_iso="2025-01-01T00:00:00Z",
    )
    assert ann[ANN_RELEASE] == "r1" and ann[ANN_REVISION] == "v1" and ann[ANN_SPEC_HASH] == "h"
    assert ANN_PREVIOUS_RELEASE not in ann
    assert service_resource_id("llm", "qwen") == "llm-rollout.service.llm.qwen"


def test_artifact_keys_name_the_service_in_prefects_alphabet() -> None:
    service = ServiceId("LeaderWorkerSet", "LLM", "qwen_3.5")
    assert artifact_key(RUN_SUMMARY, service) == "rollout-leaderworkerset-llm-qwen-3-5"
    # Two services of one namespace never share a history.
    other = ServiceId("LeaderWorkerSet", "LLM", "qwen-4")
    assert artifact_key("smoke-verdict", service) != artifact_key("smoke-verdict", other)


def test_event_payload_has_only_identifiers() -> None:
    payload = event_payload(_summary())
    assert payload["outcome"] == "promoted" and payload["ttft_s"] == "0.042"
    assert all(isinstance(v, str) for v in payload.values())
    assert "answer" not in payload
