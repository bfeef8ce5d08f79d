"""great-expectations validation of a mirrored file table against the hub listing.

Callable without Prefect. GX takes seconds to import, so it is imported inside the function.
The table has one row per mirrored object (path, size, sha256, crc64) joined with what the hub
listed for that path (expected_size, expected_sha256); the suite checks row count, unique paths,
sizes, hashes and the files a server needs: config.json, the tokenizer, and every shard named by
model.safetensors.index.json.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from llm_rollout.errors import PermanentError
from llm_rollout.hub import HubListing
from llm_rollout.mirror.models import FileRecord

SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


class ExpectationOutcome(BaseModel):
    """One expectation's verdict."""

    expectation: str = Field(description="GX expectation type.")
    column: str | None = Field(default=None, description="Column checked, if any.")
    success: bool = Field(description="Whether the expectation held.")
    detail: str = Field(description="What was expected / what was missing, for humans.")


class MirrorValidationError(PermanentError):
    """The mirrored table fails one or more expectations."""

    def __init__(self, failures: Sequence[ExpectationOutcome]) -> None:
        lines = "; ".join(f"{f.expectation}: {f.detail}" for f in failures)
        super().__init__(f"mirror validation failed: {lines}")
        self.failures = list(failures)


def required_files(listing: HubListing, index: Mapping[str, Any] | None) -> list[str]:
    """config.json, the tokenizer files the hub has (tokenizer_config.json when it has none),
    and every shard the safetensors index maps weights to."""
    listed = {f.path for f in listing.files}
    required = {"config.json"}
    tokenizer = [name for name in TOKENIZER_FILES if name in listed]
    required.update(tokenizer or ["tokenizer_config.json"])
    if index is not None:
        weight_map = index.get("weight_map")
        if isinstance(weight_map, Mapping):
            required.update(str(shard) for shard in weight_map.values())
    return sorted(required)


def _detail(kind: str, column: str | None, result: Mapping[str, Any], expected: object) -> str:
    if kind == "expect_column_distinct_values_to_contain_set":
        assert isinstance(expected, tuple)
        required, present = expected
        missing = sorted(set(required) - set(present))
        return f"missing required files: {', '.join(missing)}"
    if kind == "expect_column_pair_values_to_be_equal":
        bad = result.get("partial_unexpected_list") or []
        return f"{column}: {result.get('unexpected_count', '?')} rows differ, e.g. {bad[:3]}"
    if kind == "expect_table_row_count_to_equal":
        return f"{result.get('observed_value')} rows, expected {expected}"
    bad = result.get("partial_unexpected_list") or []
    return f"{column}: unexpected values {bad[:5]}"


def validate_mirror_table(
    listing: HubListing,
    records: Sequence[FileRecord],
    index: Mapping[str, Any] | None = None,
) -> list[ExpectationOutcome]:
    """Run the suite; return every expectation's outcome (see `raise_on_failures`)."""
    import great_expectations as gx
    import pandas as pd  # type: ignore[import-untyped]

    # GX logs its own progress at INFO; keep the mirror's log readable.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    expected = {f.path: f for f in listing.files}
    rows = [
        {
            "path": r.path,
            "size": r.size,
            "sha256": r.sha256,
            "crc64": r.crc64,
            "expected_size": expected[r.path].size if r.path in expected else -1,
            "expected_sha256": expected[r.path].sha256 if r.path in expected else "",
        }
        for r in records
    ]
    frame = pd.DataFrame(
        rows,
        columns=["path", "size", "sha256", "crc64", "expected_size", "expected_sha256"],
    )
    required = set(required_files(listing, index))
    # The expectation classes are not re-exported in GX's typed namespace.
    gxe: Any = gx.expectations
    checks: list[tuple[Any, str | None, object]] = [
        (gxe.ExpectTableRowCountToEqual(value=len(listing.files)), None, len(listing.files)),
        (gxe.ExpectColumnValuesToBeUnique(column="path"), "path", None),
        (
            gxe.ExpectColumnValuesToBeInSet(column="path", value_set=sorted(expected)),
            "path",
            None,
        ),
        (
            gxe.ExpectColumnDistinctValuesToContainSet(column="path", value_set=sorted(required)),
            "path",
            (required, set(frame["path"])),
        ),
        (
            gxe.ExpectColumnPairValuesToBeEqual(column_A="size", column_B="expected_size"),
            "size",
            None,
        ),
        (
            gxe.ExpectColumnPairValuesToBeEqual(column_A="sha256", column_B="expected_sha256"),
            "sha256",
            None,
        ),
        (gxe.ExpectColumnValuesToNotBeNull(column="crc64"), "crc64", None),
    ]
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name="mirror")
    asset = source.add_dataframe_asset(name="mirrored_files")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
        batch_parameters={"dataframe": frame}
    )
    outcomes: list[ExpectationOutcome] = []
    for expectation, column, wanted in checks:
        result = batch.validate(expectation)
        kind = str(expectation.expectation_type)
        outcomes.append(
            ExpectationOutcome(
                expectation=kind,
                column=column,
                success=bool(result.success),
                detail="ok" if result.success else _detail(kind, column, result.result, wanted),
            )
        )
    return outcomes


def raise_on_failures(outcomes: Sequence[ExpectationOutcome]) -> None:
    """Raise `MirrorValidationError` naming every failed expectation."""
    failures = [o for o in outcomes if not o.success]
    if failures:
        raise MirrorValidationError(failures)
