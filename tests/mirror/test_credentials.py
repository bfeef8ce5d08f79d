"""Credential references resolve to values that never render in clear."""

from __future__ import annotations

import json
import uuid

import pytest
from prefect.blocks.system import Secret
from pydantic import SecretStr, ValidationError

from llm_rollout.credentials import (
    CredentialsError,
    CredentialsRef,
    credentials_from_mapping,
    resolve_oss_credentials,
)
from llm_rollout.mirror import is_mirrored, mirror_model
from llm_rollout.oss import OssPermanentError
from tests.mirror.conftest import MirrorCase

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


def test_a_reference_takes_one_source_only_and_both_env_names() -> None:
    with pytest.raises(ValueError, match="not both"):
        CredentialsRef(secret_block="b", access_key_id_env="MY_AK")
    with pytest.raises(ValueError, match="secret_block"):
        CredentialsRef(access_key_secret_env="MY_SK")
    assert CredentialsRef(secret_block="b").secret_block == "b"


def test_env_sts_token_is_resolved_or_named_when_missing() -> None:
    ref = CredentialsRef(
        access_key_id_env="MY_AK", access_key_secret_env="MY_SK", security_token_env="MY_TOKEN"
    )
    env = {"MY_AK": "LTAI-abc", "MY_SK": "topsecret-123"}
    with pytest.raises(CredentialsError) as failure:
        resolve_oss_credentials(ref, env)
    assert str(failure.value) == (
        "storage.credentials.security_token_env: variable MY_TOKEN is not set"
    )
    creds = resolve_oss_credentials(ref, {**env, "MY_TOKEN": "sts-token-1"})
    assert creds.security_token is not None
    assert creds.security_token.get_secret_value() == "sts-token-1"
    assert "sts-token-1" not in repr(creds) + creds.model_dump_json()
    plain = resolve_oss_credentials(REF, env)
    assert plain.security_token is None


def test_first_non_empty_spelling_wins_and_empty_values_do_not_count() -> None:
    creds = credentials_from_mapping(
        {"access_key_id": "", "akId": "LTAI-second", "AccessKeySecret": "s3", "SecurityToken": ""},
        origin="test",
    )
    assert creds.csi_secret_data() == {"akId": "LTAI-second", "akSecret": "s3"}
    assert creds.security_token is None
    with pytest.raises(CredentialsError, match=r"^test: expected keys"):
        credentials_from_mapping({"akId": 123, "akSecret": "s3"}, origin="test")


def test_resolved_credentials_and_references_cannot_be_changed() -> None:
    creds = resolve_oss_credentials(REF, {"MY_AK": "LTAI-abc", "MY_SK": "topsecret-123"})
    with pytest.raises(ValidationError, match="frozen"):
        creds.access_key_secret = SecretStr("other")  # type: ignore[misc]
    assert "topsecret-123" not in repr(creds)
    ref = CredentialsRef(access_key_id_env="MY_AK", access_key_secret_env="MY_SK")
    with pytest.raises(ValidationError, match="frozen"):
        ref.access_key_id_env = "OTHER"  # type: ignore[misc]


def test_sts_credentials_from_the_environment_mirror_and_check(case: MirrorCase) -> None:
    case.oss.add_sts_credentials("STS.mirror-temp", "temp-secret-value", "sts-token-value")
    ref = CredentialsRef(
        access_key_id_env="T_AK", access_key_secret_env="T_SK", security_token_env="T_TOKEN"
    )
    env = {"T_AK": "STS.mirror-temp", "T_SK": "temp-secret-value", "T_TOKEN": "sts-token-value"}
    creds = resolve_oss_credentials(ref, env)

    result = mirror_model(case.source, case.target, creds, case.options, hub=case.client)

    assert {o.status for o in result.files} == {"uploaded"}
    assert is_mirrored(case.target, creds).complete
    # Without the token the same key is refused before any byte moves.
    no_token = creds.model_copy(update={"security_token": None})
    with pytest.raises(OssPermanentError) as failure:
        is_mirrored(case.target, no_token)
    assert failure.value.code == "InvalidAccessKeyId"
    assert "sts-token-value" not in str(failure.value) + repr(creds)


# Last: these start the session's Prefect test server (seconds), the ones above need none.
SECRET_VALUE = "block-secret-value-never-shown"


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(
    ("value", "token"),
    [
        ({"access_key_id": "LTAI-blk", "access_key_secret": SECRET_VALUE}, None),
        # The CSI Secret's spelling, and an STS token, in a JSON string.
        (
            json.dumps({"akId": "LTAI-blk", "akSecret": SECRET_VALUE, "SecurityToken": "sts-t"}),
            "sts-t",
        ),
    ],
)
def test_secret_block_credentials_resolve_and_stay_masked(value: object, token: str | None) -> None:
    name = f"oss-creds-{uuid.uuid4().hex[:8]}"
    Secret(value=value).save(name)  # type: ignore[arg-type]

    creds = resolve_oss_credentials(CredentialsRef(secret_block=name), {})

    assert creds.csi_secret_data() == {"akId": "LTAI-blk", "akSecret": SECRET_VALUE}
    got = creds.security_token.get_secret_value() if creds.security_token else None
    assert got == token
    rendered = repr(creds) + str(creds) + creds.model_dump_json()
    assert SECRET_VALUE not in rendered and "LTAI-blk" not in rendered


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "no such Secret block"),
        ("not json {", "value is not JSON"),
        ('["a list"]', "value must be a JSON object"),
        (
            {"access_key_id": "LTAI-blk"},
            "expected keys access_key_id and access_key_secret (or akId/akSecret)",
        ),
    ],
)
def test_secret_block_problems_name_the_block_never_a_value(value: object, problem: str) -> None:
    name = f"oss-creds-{uuid.uuid4().hex[:8]}"
    if value is not None:
        Secret(value=value).save(name)  # type: ignore[arg-type]
    with pytest.raises(CredentialsError) as failure:
        resolve_oss_credentials(CredentialsRef(secret_block=name), {})
    assert str(failure.value) == f"storage.credentials.secret_block {name!r}: {problem}"
    assert "LTAI-blk" not in str(failure.value)
