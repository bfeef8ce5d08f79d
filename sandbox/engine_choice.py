"""Which engine answers a sandbox cluster's serving pods: real vLLM when installed.

``attach_real_vllm(cluster, model_dir)`` routes the pods that run a vLLM server (by default:
any container whose command runs ``vllm serve`` or vLLM's OpenAI API server) to one real vLLM
process per workload (``sandbox.vllm.backend.VllmBackendFactory``) and returns the factory (the
caller ``close()``s it when done). When the engine venv is not installed it changes nothing,
prints how to install the engine and returns None: the cluster keeps its scripted backend.

``model_dir`` is a directory, or ``OssVolumeMount``: what the OSS CSI driver would mount for the
pod. It follows the container's ``--model`` path to its volumeMount, the PVC, the static PV's
``csi.volumeAttributes`` (``bucket``, ``url``, ``path``) and its ``nodePublishSecretRef`` (AccessKey
Secret ``akId``/``akSecret``), and copies that OSS prefix with oss2 into a local directory, so the
engine serves exactly the files the mirror wrote.

``real_vllm_spec(data, tiny)`` adapts a spec (as loaded from YAML) to the tiny model the hub
publishes: its served name, its exact answer as the smoke expectation, probe timings a CPU
engine can meet, and no API key (see the function).
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import oss2

from sandbox.kube.backends import parse_served_model
from sandbox.kube.cluster import SandboxCluster
from sandbox.tiny_spec import tiny_model_spec
from sandbox.vllm.backend import VllmBackendFactory
from sandbox.vllm.engine import DEFAULT_KV_CACHE_BYTES, DEFAULT_MAX_MODEL_LEN
from sandbox.vllm.install import is_installed, venv_dir
from sandbox.vllm.tiny_model import TinyModelInfo

Obj = dict[str, Any]
PodPredicate = Callable[[Obj], bool]
INSTALL_HINT = "real vLLM is not installed ({venv}): run scripts/install-vllm to serve with it"


class MountError(RuntimeError):
    """The pod's model volume cannot be resolved to an OSS prefix (what a mount failure is)."""


def _command_text(container: Mapping[str, Any]) -> str:
    parts = list(container.get("command") or []) + list(container.get("args") or [])
    return " ".join(str(p) for p in parts)


def runs_vllm_server(pod: Mapping[str, Any]) -> bool:
    """True when a container of the pod starts vLLM's OpenAI-compatible server."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        text = _command_text(container)
        if "vllm serve" in text or "vllm.entrypoints.openai.api_server" in text:
            return True
    return False


class OssVolumeMount:
    """Model directory of a pod: the OSS prefix its model volume mounts, copied locally."""

    def __init__(self, cluster: SandboxCluster, cache_dir: Path) -> None:
        self._cluster = cluster
        self._cache_dir = cache_dir

    def __call__(self, pod: Obj, container: Obj) -> Path:
        store = self._cluster.store
        namespace = (pod.get("metadata") or {}).get("namespace", "default")
        _, model_path = parse_served_model(container)
        target = PurePosixPath(model_path)
        mounts = sorted(
            container.get("volumeMounts") or [],
            key=lambda m: len(str(m.get("mountPath", ""))),
            reverse=True,
        )
        mount = next(
            (
                m
                for m in mounts
                if target == PurePosixPath(m["mountPath"])
                or PurePosixPath(m["mountPath"]) in target.parents
            ),
            None,
        )
        if mount is None:
            raise MountError(f"no volumeMount of container {container.get('name')} holds {target}")
        inside = target.relative_to(PurePosixPath(mount["mountPath"]))
        volume = next(
            (
                v
                for v in (pod.get("spec") or {}).get("volumes") or []
                if v.get("name") == mount["name"]
            ),
            None,
        )
        claim = ((volume or {}).get("persistentVolumeClaim") or {}).get("claimName")
        if not claim:
            raise MountError(f"volume {mount['name']} is not a PersistentVolumeClaim")
        pvc = store.get(store.resource_type("v1", "PersistentVolumeClaim"), namespace, claim)
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if not pv_name:
            raise MountError(f"PersistentVolumeClaim {namespace}/{claim} is not bound")
        pv = store.get(store.resource_type("v1", "PersistentVolume"), None, pv_name)
        csi = (pv.get("spec") or {}).get("csi") or {}
        attrs = csi.get("volumeAttributes") or {}
        ref = csi.get("nodePublishSecretRef") or {}
        if not ref:
            raise MountError(f"PersistentVolume {pv_name}: only AccessKey mounts are supported")
        secret = store.get(
            store.resource_type("v1", "Secret"), ref.get("namespace") or namespace, ref["name"]
        )
        key_id, key_secret = _secret_value(secret, "akId"), _secret_value(secret, "akSecret")
        local = self._cache_dir / str(pv_name)
        _copy_prefix(
            oss2.Bucket(oss2.Auth(key_id, key_secret), attrs["url"], attrs["bucket"]),
            str(attrs.get("path", "/")).strip("/"),
            local,
        )
        return local / inside


def _secret_value(secret: Mapping[str, Any], key: str) -> str:
    data = secret.get("data") or {}
    if key in data:
        return base64.b64decode(data[key]).decode()
    string_data = secret.get("stringData") or {}
    if key in string_data:
        return str(string_data[key])
    name = (secret.get("metadata") or {}).get("name")
    raise MountError(f"Secret {name} has no key {key}")


def _copy_prefix(bucket: oss2.Bucket, prefix: str, dest: Path) -> None:
    """Copy every object under `prefix` to `dest`, skipping files already there at full size."""
    start = f"{prefix}/" if prefix else ""
    for info in oss2.ObjectIteratorV2(bucket, prefix=start):
        if info.key.endswith("/"):
            continue
        path = dest / info.key[len(start) :]
        if path.is_file() and path.stat().st_size == info.size:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        bucket.get_object_to_file(info.key, str(partial))
        partial.replace(path)


def attach_real_vllm(
    cluster: SandboxCluster,
    model_dir: Path | OssVolumeMount,
    *,
    selector: Mapping[str, str] | PodPredicate = runs_vllm_server,
    served_name: str | None = None,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    kv_cache_bytes: str = DEFAULT_KV_CACHE_BYTES,
    venv: Path | None = None,
    out: TextIO = sys.stdout,
) -> VllmBackendFactory | None:
    """Serve the cluster's vLLM pods (``selector``) with real vLLM; None when not installed.

    Engine output becomes the pods' container logs. Close the returned factory when done: it
    stops every engine (they also stop when their workload's pods go away).
    """
    venv = venv if venv is not None else venv_dir()
    if not is_installed(venv):
        out.write(INSTALL_HINT.format(venv=venv) + "\n")
        return None
    factory = VllmBackendFactory(
        model_dir,
        served_name=served_name,
        log_sink=cluster.store.append_log,
        max_model_len=max_model_len,
        kv_cache_bytes=kv_cache_bytes,
        venv=venv,
    )
    cluster.backends.route(selector, factory)
    return factory


def real_vllm_spec(data: Mapping[str, Any], tiny: TinyModelInfo) -> dict[str, Any]:
    """``sandbox.tiny_spec.tiny_model_spec`` for a vLLM spec."""
    return tiny_model_spec(data, tiny)
