"""Upstream CustomResourceDefinitions, as JSON schemas for offline validation.

They are upstream data and never shipped with llm-rollout. A `CrdCatalog` holds them, read
either from the cluster (`crds_from_cluster`: the CustomResourceDefinitions its API serves,
the very schemas it will enforce) or from a directory of CRD YAML files the user names
(`crds_from_dir`: `plan --crd-dir`, or the `LLM_ROLLOUT_CRD_DIR` setting). Without either,
validation reports which custom kinds it could not check (`llm_rollout.validation`).

Each served version with an `openAPIV3Schema` becomes one `CrdSchema` (for example both the
v0.6.0 and v0.10.0 LeaderWorkerSet CRD files serve `leaderworkerset.x-k8s.io/v1`), converted so
that `jsonschema` enforces what the API server enforces structurally: unknown fields are
rejected unless the schema sets `x-kubernetes-preserve-unknown-fields`,
`x-kubernetes-int-or-string` accepts both, `nullable` accepts null. CEL rules and list-map keys
are not checked here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from llm_rollout.errors import PermanentError
from llm_rollout.settings import ENV_PREFIX, settings

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

CRD_DIR_ENV = f"{ENV_PREFIX}CRD_DIR"
CRD_LIST_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


class CrdDirError(PermanentError):
    """The CRD directory is missing or holds no readable CRDs."""


class CrdReadError(PermanentError):
    """A CustomResourceDefinition (file or API answer) is not one."""


@dataclass(frozen=True)
class CrdSchema:
    """One served version of one CRD, as a JSON schema for the whole object."""

    group: str
    kind: str
    version: str
    source: str
    schema: dict[str, Any]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


# eq=False: a catalog is compared (and cached against) by identity, never by its schemas.
@dataclass(frozen=True, eq=False)
class CrdCatalog:
    """The CRD schemas validation checks custom resources against, and where they came from."""

    origin: str
    schemas: tuple[CrdSchema, ...]

    def for_kind(self, api_version: str, kind: str) -> list[CrdSchema]:
        """Schemas of every CRD serving `api_version` for `kind` (empty when none does)."""
        return [s for s in self.schemas if s.api_version == api_version and s.kind == kind]

    def kinds(self) -> set[tuple[str, str]]:
        """`(group, kind)` pairs the catalog defines."""
        return {(s.group, s.kind) for s in self.schemas}


def crd_dir() -> Path | None:
    """The directory the `LLM_ROLLOUT_CRD_DIR` setting names, or None when unset."""
    return settings().crd_dir


def configured_crds() -> CrdCatalog | None:
    """The catalog of the `LLM_ROLLOUT_CRD_DIR` directory, or None when the setting is unset."""
    path = crd_dir()
    if path is None:
        return None
    return crds_from_dir(path, how=f"${CRD_DIR_ENV}")


_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf")


def structural_to_jsonschema(node: Any) -> Any:
    """Translate an `openAPIV3Schema` node into an equivalent strict JSON schema."""
    if isinstance(node, list):
        return [structural_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("description", "x-kubernetes-validations", "x-kubernetes-list-map-keys"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: structural_to_jsonschema(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA_KEYS and isinstance(value, dict | list):
            out[key] = structural_to_jsonschema(value)
        else:
            out[key] = copy.deepcopy(value)
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if out.pop("x-kubernetes-embedded-resource", False):
        # Embedded objects carry apiVersion/kind/metadata even when the schema omits them.
        preserve = True
    if out.get("type") == "object" and "properties" in out and not preserve:
        out.setdefault("additionalProperties", False)
    if out.pop("nullable", False) and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    return out


def _object_schema(version_schema: dict[str, Any]) -> dict[str, Any]:
    schema = structural_to_jsonschema(version_schema)
    props = schema.setdefault("properties", {})
    # The API server validates metadata as ObjectMeta, not via the CRD schema; the webhook
    # rules in validation.py check name/labels, so metadata may carry any ObjectMeta field.
    props["metadata"] = {"type": "object"}
    # Status is written by controllers; rendered objects never carry it.
    props.pop("status", None)
    return {str(k): v for k, v in schema.items()}


def _schemas_of(doc: Mapping[str, Any], source: str) -> list[CrdSchema]:
    """Every served version of one CRD that has an `openAPIV3Schema`."""
    try:
        spec = doc["spec"]
        group, kind = str(spec["group"]), str(spec["names"]["kind"])
        out = []
        for version in spec["versions"]:
            raw = (version.get("schema") or {}).get("openAPIV3Schema")
            if not version.get("served", False) or raw is None:
                continue
            out.append(CrdSchema(group, kind, str(version["name"]), source, _object_schema(raw)))
    except (KeyError, TypeError, AttributeError) as exc:
        raise CrdReadError(
            f"{source}: not a CustomResourceDefinition (spec.group, spec.names.kind and "
            f"spec.versions[].name are required; missing or malformed: {exc})"
        ) from exc
    return out


def _catalog(origin: str, docs: Iterable[tuple[str, Any]]) -> CrdCatalog:
    schemas: list[CrdSchema] = []
    for source, doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
            schemas += _schemas_of(doc, source)
    return CrdCatalog(origin, tuple(schemas))


@cache
def _load_dir(path: Path) -> CrdCatalog:
    files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs = []
    for file in files:
        with file.open("rb") as handle:
            docs.append((file.name, yaml.load(handle, Loader=loader)))  # noqa: S506 - safe loader
    catalog = _catalog(f"the directory {path}", docs)
    if not catalog.schemas:
        raise CrdDirError(f"no CustomResourceDefinition found in {path}")
    return catalog


def crds_from_dir(path: Path, *, how: str = "--crd-dir") -> CrdCatalog:
    """The CRD YAML files of `path` (cached per path); `how` names where the path came from."""
    if not path.is_dir():
        raise CrdDirError(f"CRD directory {path} from {how} does not exist")
    return _load_dir(path.resolve())


def crds_from_cluster(api: ApiClient, *, timeout_s: float = 30.0) -> CrdCatalog:
    """The CustomResourceDefinitions the cluster serves (one list call; RBAC: list CRDs)."""
    # Imported here: the Kubernetes helpers are only needed when a cluster is asked.
    from llm_rollout.kube.resources import request_json
    from llm_rollout.kube.views import ObjectView

    answer = request_json(
        api, "GET", CRD_LIST_PATH, target="CustomResourceDefinitions", timeout_s=timeout_s
    )
    items = answer.get("items")
    if not isinstance(items, list):
        raise CrdReadError("the API server's CustomResourceDefinition list has no items")
    docs = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise CrdReadError(f"CustomResourceDefinition list item {index} is not an object")
        name = ObjectView(item).metadata.name or f"#{index}"
        # Items of a list carry no kind of their own.
        docs.append((f"cluster CRD {name}", {**item, "kind": "CustomResourceDefinition"}))
    return _catalog(f"the cluster at {api.configuration.host}", docs)


@dataclass(frozen=True)
class CrdLookup:
    """The catalog found for offline validation, or why there is none."""

    catalog: CrdCatalog | None
    missing_because: str = ""


def find_crds(named_dir: Path | None, *, cluster_timeout_s: float = 5.0) -> CrdLookup:
    """CRDs for `plan`: the directory named (`--crd-dir`, else `LLM_ROLLOUT_CRD_DIR`), else the
    cluster's when one is configured and answers, else none and why.

    A named directory that does not exist is an error (`CrdDirError`); a cluster that cannot
    be reached or read is not: validation then says which kinds it could not check.
    """
    if named_dir is not None:
        return CrdLookup(crds_from_dir(named_dir, how="--crd-dir"))
    configured = configured_crds()
    if configured is not None:
        return CrdLookup(configured)
    # Imported here: only a lookup that reaches for the cluster needs the Kubernetes client.
    from llm_rollout.errors import RolloutError
    from llm_rollout.kube.client import KubeConfigError
    from llm_rollout.kube.session import process_session

    try:
        api = process_session().api
    except KubeConfigError as exc:
        return CrdLookup(None, f"no CRD directory named, and no cluster to read them from: {exc}")
    try:
        return CrdLookup(crds_from_cluster(api, timeout_s=cluster_timeout_s))
    except RolloutError as exc:
        return CrdLookup(
            None, f"no CRD directory named, and the cluster's could not be read: {exc}"
        )
