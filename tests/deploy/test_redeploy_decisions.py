"""Redeploy decisions the mutation run (bench/mutation.py, "redeploy") found no test for: the
served model name of an engine started from a shell script, and which pods count when the
pods before a change are recorded. Plain functions, workloads as read from the API server
(JSON round trip); no cluster.

The multi-node engines start from `/bin/bash -c <script>` (manifests/vllm/multi-node-lws.yaml.j2,
manifests/vllm/ray-cluster.yaml.j2), the script quoting each argument.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from llm_rollout.errors import PermanentError
from llm_rollout.kinds import PodRoll
from llm_rollout.redeploy import incarnations, not_rolled, served_model
from tests.deploy.test_redeploy_plain import _lws as plain_lws


def _wire(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _lws(container: dict[str, Any]) -> Any:
    lws = plain_lws()
    lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"] = [container]
    return _wire(lws)


def _script_engine(script: str) -> dict[str, Any]:
    return {"name": "vllm-leader", "command": ["/bin/bash", "-c", script]}


def test_the_served_model_of_a_shell_script_engine_is_read_from_its_script() -> None:
    serve = shlex.join(
        ["vllm", "serve", "/models/qwen", "--served-model-name", "qwen 7b", "--port", "8000"]
    )
    script = f"ray start --head --port=6379 && {serve}"
    assert served_model(_lws(_script_engine(script))) == ("qwen 7b", None)


@pytest.mark.parametrize(
    "script",
    [
        "vllm serve /models/qwen --port 8000",
        # Not shell words at all (an unclosed quote): no name can be read, and it says so.
        "vllm serve /models/qwen --served-model-name 'qwen",
    ],
)
def test_a_shell_script_engine_without_a_readable_name_is_refused(script: str) -> None:
    with pytest.raises(PermanentError, match="cannot tell the served model name"):
        served_model(_lws(_script_engine(script)))


def test_a_name_in_the_args_wins_over_a_script() -> None:
    container = {
        **_script_engine("vllm serve /models/qwen --served-model-name from-script"),
        "args": ["--served-model-name", "from-args"],
    }
    assert served_model(_lws(container)) == ("from-args", None)


def _pod(
    uid: str, deleting: bool = False, container_id: str = "containerd://c1", restarts: int = 0
) -> Any:
    meta: dict[str, Any] = {"name": f"pod-{uid or 'x'}", "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T01:00:00Z"
    engine = {"name": "engine", "containerID": container_id, "restartCount": restarts}
    # Ready: the roll proof counts a new or restarted pod only once it is Ready.
    status = {
        "containerStatuses": [engine],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    return _wire({"metadata": meta, "status": status})


def test_pods_going_away_or_without_uid_are_not_recorded_whatever_their_order() -> None:
    pods = [_pod("old", deleting=True), _pod(""), _pod("a"), _pod("b")]
    assert set(incarnations(pods)) == {"a", "b"}
    # A pod going away when the change was made, then replaced: every live pod is new.
    before = incarnations(pods)
    replaced = [_pod("c"), _pod("d")]
    assert not_rolled(before, replaced, PodRoll("replace")) == []


def test_in_place_every_pod_is_checked_after_one_that_restarted() -> None:
    before = incarnations([_pod("a"), _pod("b")])
    # The kubelet's restart runs a new container (new containerID) and counts it.
    now = [_pod("a", container_id="containerd://c2", restarts=1), _pod("b")]
    assert not_rolled(before, now, PodRoll("in-place")) == [
        "pod pod-b (uid b): no container restarted since the change"
    ]
