"""The hub client follows MODELSCOPE_ENDPOINT as it is when the client is made.

The modelscope library reads the variable once per process; a long-lived worker (or a test
session) that talks to a second hub must still reach the one the environment names now.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_rollout.hub import HubClient, HubSource
from sandbox.hub import HubServer


def test_each_client_uses_the_current_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HubServer(tmp_path / "a") as first, HubServer(tmp_path / "b") as second:
        first.add_revision("acme/one", "v1", {"config.json": b'{"a": 1}'})
        second.add_revision("acme/two", "v1", {"config.json": b'{"b": 22}'})

        monkeypatch.setenv("MODELSCOPE_ENDPOINT", first.base_url)
        listed = HubClient().list_files(HubSource(model_id="acme/one", revision="v1"))
        assert [(f.path, f.size) for f in listed.files] == [("config.json", 8)]

        monkeypatch.setenv("MODELSCOPE_ENDPOINT", second.base_url)
        client = HubClient()
        assert client.endpoint == second.base_url
        listed = client.list_files(HubSource(model_id="acme/two", revision="v1"))
        assert [(f.path, f.size) for f in listed.files] == [("config.json", 9)]
