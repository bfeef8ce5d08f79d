"""Deploying the examples on the session's real cluster: the stores and the specs.

Registered from tests/conftest.py next to ``tests.real_cluster``; nothing starts unless a test
asks for ``real_stores`` or ``real_deploy_env``.

- ``real_stores``: one sandbox hub that publishes the tiny generated model
  (``sandbox.vllm.tiny_model``) under every example's model id, and one sandbox OSS with the
  examples' bucket, holding the tiny model at every example's ``model.oss_uri``, for the whole
  session. The node agent's OSS CSI stand-in reads that OSS from the harness namespace, where
  its loopback address is.
- ``real_deploy_env``: per test, ``KUBECONFIG`` names the real cluster's admin, the hub and OSS
  credentials are in the environment, and the modelscope library's endpoint (read once per
  process) is reset before and after; ``real_deploy_module_env`` the same for a module.
- ``real_cleanup``: ``real_cleanup(namespace, name)`` has the service removed with the
  product's own teardown after the test, and its namespace deleted, so that the next tests do
  not share the two CPUs with an engine left serving.
- ``write_real_spec``: an example adapted to the tiny model (``sandbox.tiny_spec``), pointing at
  the sandbox OSS, in a namespace of the test's choosing, with changes merged section by section.
- ``real_service``: ``real_service(example, namespace=..., **changes)`` is ``write_real_spec``
  in the test's own directory with the service's teardown registered (``real_cleanup``), the
  environment of ``real_deploy_env`` set, and, for an example served by vLLM, the engine
  checked first (``require_engine``: its absence fails the test).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import oss2
import pytest
import yaml
from kubernetes import client as k8s
from modelscope_hub.config import set_default_config

from llm_rollout.release.removal import teardown
from llm_rollout.spec import OSS_URI
from sandbox.cluster.control_plane import Cluster
from sandbox.hub import HubServer
from sandbox.oss import OssServer
from sandbox.tiny_spec import tiny_model_spec
from sandbox.vllm.tiny_model import TinyModelInfo, generate_tiny_model
from tests.vllm.conftest import require_engine

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KEY_ID = "LTAIrealDeployKeyId"
KEY_SECRET = "realDeploySecretValue0123"
BUCKET = "llm-models-example"


@dataclass(frozen=True)
class RealStores:
    hub: HubServer
    oss: OssServer
    root: Path
    tiny: TinyModelInfo
    model_dir: Path


@pytest.fixture(scope="session")
def real_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStores]:
    root = tmp_path_factory.mktemp("real-stores")
    model_dir = generate_tiny_model(root / "tiny-qwen3")
    tiny = TinyModelInfo.load(model_dir)
    with (
        HubServer(root / "hub") as hub,
        OssServer(root / "oss", credentials={KEY_ID: KEY_SECRET}, buckets=[BUCKET]) as oss,
    ):
        published: set[str] = set()
        for path in sorted(EXAMPLES.glob("seed-*.yaml")):
            model = yaml.safe_load(path.read_text())["model"]
            model_id = (model.get("modelscope") or {}).get("model_id")
            if model_id and model_id not in published:
                published.add(model_id)
                hub.add_revision_from_dir(model_id, "v1", model_dir)
            if model.get("oss_uri") and model["oss_uri"] not in published:
                published.add(model["oss_uri"])
                _store_in_oss(oss, model["oss_uri"], model_dir)
        yield RealStores(hub=hub, oss=oss, root=root, tiny=tiny, model_dir=model_dir)


def _store_in_oss(oss: OssServer, oss_uri: str, model_dir: Path) -> None:
    """The tiny model's files under ``oss_uri``: an example whose weights are already in OSS
    (``model.oss_uri``) skips the mirror, and its pods mount that prefix as it stands."""
    match = OSS_URI.match(oss_uri)
    assert match is not None, oss_uri
    bucket = oss2.Bucket(oss2.Auth(KEY_ID, KEY_SECRET), oss.endpoint, match["bucket"])
    prefix = match["prefix"].rstrip("/") + "/"
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            bucket.put_object_from_file(prefix + path.relative_to(model_dir).as_posix(), str(path))


@contextmanager
def deploy_environment(stores: RealStores, kubeconfig: Path) -> Iterator[RealStores]:
    """``real_deploy_env`` for a block (a module's shared release): the same variables, with
    ``kubeconfig`` (the admin's, or one through the API fault proxy) as ``KUBECONFIG``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELSCOPE_ENDPOINT", stores.hub.base_url)
        mp.setenv("KUBECONFIG", str(kubeconfig))
        mp.setenv("OSS_ACCESS_KEY_ID", KEY_ID)
        mp.setenv("OSS_ACCESS_KEY_SECRET", KEY_SECRET)
        set_default_config(None)
        try:
            yield stores
        finally:
            set_default_config(None)


@pytest.fixture
def real_deploy_env(real_stores: RealStores, real_cluster: Cluster) -> Iterator[RealStores]:
    with deploy_environment(real_stores, real_cluster.admin_kubeconfig) as stores:
        yield stores


@pytest.fixture(scope="module")
def real_deploy_module_env(real_stores: RealStores, real_cluster: Cluster) -> Iterator[RealStores]:
    """``real_deploy_env`` for a whole module: for a release its tests share."""
    with deploy_environment(real_stores, real_cluster.admin_kubeconfig) as stores:
        yield stores


# A real vLLM pod given SIGTERM while it loads has taken tens of seconds to exit at load 15.
CLEANUP_TIMEOUT_S = 180


@pytest.fixture
def real_cleanup(real_admin: k8s.ApiClient) -> Iterator[Callable[[str, str], None]]:
    services: list[tuple[str, str]] = []
    yield lambda namespace, name: services.append((namespace, name))
    for namespace, name in services:
        teardown(real_admin, namespace, name, wait_timeout_s=CLEANUP_TIMEOUT_S)
        k8s.CoreV1Api(real_admin).delete_namespace(namespace)


def merge_sections(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in: mappings key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_sections(out[key], value)
        else:
            out[key] = value
    return out


def write_real_spec(
    stores: RealStores, example: str, dest: Path, *, namespace: str, **changes: Any
) -> tuple[Path, dict[str, Any]]:
    """``examples/<example>.yaml`` serving the tiny model from the sandbox OSS in ``namespace``,
    promoted without a grace period, with ``changes`` merged in section by section."""
    data = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    data["storage"]["endpoint"] = stores.oss.endpoint
    data["namespace"] = namespace
    data["rollout"] = {**(data.get("rollout") or {}), "promote_grace_s": 0}
    data = merge_sections(tiny_model_spec(data, stores.tiny), changes)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{example}-{namespace}-{len(list(dest.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path, data


@dataclass(frozen=True)
class RealService:
    """One example's spec written for the session's real cluster (``real_service``)."""

    path: Path
    data: dict[str, Any]
    stores: RealStores

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def namespace(self) -> str:
        return str(self.data["namespace"])


class RealServiceFactory(Protocol):
    def __call__(self, example: str, *, namespace: str, **changes: Any) -> RealService: ...


@pytest.fixture
def real_service(
    real_deploy_env: RealStores,
    real_cleanup: Callable[[str, str], None],
    tmp_path: Path,
) -> RealServiceFactory:
    def make(example: str, *, namespace: str, **changes: Any) -> RealService:
        engine = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())["serving"]["engine"]
        if engine == "vllm":
            require_engine()
        path, data = write_real_spec(
            real_deploy_env, example, tmp_path, namespace=namespace, **changes
        )
        real_cleanup(namespace, data["name"])
        return RealService(path, data, real_deploy_env)

    return make
