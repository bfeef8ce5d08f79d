"""Credential references resolve to values that never render in clear."""

from __future__ import annotations

import pytest

from llm_rollout.credentials import CredentialsError, CredentialsRef, resolve_oss_credentials

REF = CredentialsRef(access_key_id_env="MY_AK", access_key_secret_env="MY_SK")


def test_env_credentials_resolve_and_stay_masked() -> None:
    creds = resolve_oss_credentials(REF, {"MY_AK": "LTAI-abc", "MY_SK": "topsecret-123"})
    assert creds.csi_secret_data() == {"akId": "LTAI-abc", "akSecret": "topsecret-123"}
    rendered = repr(creds) + str(creds) + creds.model_dump_json()
    assert "topsecret-123" not in rendered
    assert "LTAI-abc" not in rendered


def test_missing_variable_is_named_not_valued() -> None:
    with pytest.raises(CredentialsError) as failure:
        resolve_oss_credentials(REF, {"MY_AK": "LTAI-abc"})
    assert "MY_SK" in str(failure.value)
    assert "access_key_secret_env" in str(failure.value)
    assert "LTAI-abc" not in str(failure.value)


def test_a_reference_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="secret_block"):
        CredentialsRef(access_key_id_env="MY_AK")
