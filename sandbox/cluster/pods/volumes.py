"""A pod's volumes, set up before its containers start as the kubelet's volume manager does.

What the kubelet's volume manager (``pkg/kubelet/volumemanager``: the reconciler mounts each
volume of the pod before ``WaitForAttachAndMount`` lets SyncPod start containers) and the
volume plugins do, for the volume types our templates render and tests use:

- ``emptyDir``: a directory of the pod; ``medium: Memory`` is a tmpfs, of ``sizeLimit`` bytes
  when set (``pkg/volume/emptydir/empty_dir.go`` setupTmpfs passes ``size=`` from the limit).
  Our templates mount one at ``/dev/shm`` (``llm_rollout/render.py`` shm_volume).
- ``configMap`` and ``secret``: one file per key (or per ``items`` entry, at its ``path``),
  mode ``items[].mode`` or ``defaultMode`` (0644 when unset, ``pkg/volume/configmap`` and
  ``pkg/volume/secret``), read with the node's identity. Unlike the kubelet's AtomicWriter no
  ``..data`` symlink farm is made and later changes of the object are not synced.
- ``persistentVolumeClaim``: the claim (bound by the real kube-controller-manager's PV
  controller) names a PV whose ``csi`` source is the Alibaba Cloud OSS CSI driver
  (``ossplugin.csi.alibabacloud.com``), which ``manifests/storage.yaml.j2`` renders.

The OSS mount is a **named stand-in for the CSI node plugin** (:func:`publish_oss`): the real
driver runs ossfs, a FUSE file system, and this machine has neither FUSE nor ossfs. In its
place the node agent reads the PV's ``volumeAttributes`` (``bucket``, ``path``, ``url``) and
the ``nodePublishSecretRef`` Secret (``akId``/``akSecret``) with the node's own identity, and
copies the objects under the path from the sandbox OSS (``sandbox/oss.py``, over its REST API
with ``oss2``, so wrong keys and an unreachable endpoint fail as they would) into a directory
per PV on the node, once (the CSI global mount's role), then bind-mounts it into the pod. The
node's reads are what the Node authorizer allows a kubelet: k8s.io/kubernetes
``plugin/pkg/auth/authorizer/node/graph.go`` AddPV adds an edge secret -> PV for every
Secret ``persistentvolume/util.go`` VisitPVSecretNames reports kubelet-visible (a CSI
``nodePublishSecretRef`` is), and PV -> PVC once the PV is bound (``spec.claimRef``), so a
node may read the Secret of a PV whose claim a pod bound to it uses. ``fuseType``,
``otherOpts`` and RRSA (``authType: rrsa``) are not modelled; RRSA fails the mount.

Mounts are made in the pod's mount namespace (the sandbox's holder), so every container of the
pod sees every volume mounted by any of its containers (the kubelet mounts per container); a
mount point the host file system lacks is created there as an empty directory, as there is no
image root file system. ``readOnly`` (the volumeMount's, the PVC volume's or the CSI source's)
remounts the bind read-only.

Failures are raised as :class:`MountError` with the message the kubelet's event carries after
``MountVolume.SetUp failed for volume "<name>" : `` (``pkg/volume/util/operationexecutor/
operation_generator.go`` GenerateMountVolumeFunc; ``<name>`` is the PV's name for a claim);
the runner records ``FailedMount`` events and retries with the volume manager's back-off
(``pkg/volume/util/nestedpendingoperations``: 500 ms doubling to 2 m 2 s).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import oss2
import requests
from kubernetes.utils import parse_quantity

OSS_CSI_DRIVER = "ossplugin.csi.alibabacloud.com"
DEFAULT_FILE_MODE = 0o644
# nestedpendingoperations: initialDurationBeforeRetry, maxDurationBeforeRetry.
MOUNT_RETRY_BASE_S = 0.5
MOUNT_RETRY_MAX_S = 122.0
OSS_CONNECT_TIMEOUT_S = 10

ObjectReader = Callable[[str, str], "dict[str, Any] | None"]


class MountError(RuntimeError):
    """A volume could not be set up; ``volume`` is the name the kubelet's event names."""

    def __init__(self, volume: str, message: str) -> None:
        super().__init__(message)
        self.volume = volume

    @property
    def event_message(self) -> str:
        return f'MountVolume.SetUp failed for volume "{self.volume}" : {self}'


class ReadRefused(MountError):
    """The API server refused or failed a read the mount needs (the Node authorizer answers 403
    until its graph has the pod bound to this node: plugin/pkg/auth/authorizer/node builds that
    graph from its own informers, so a node can see its pod before it may read the pod's
    claim). The kubelet's volume populator keeps retrying such a pod
    (pkg/kubelet/volumemanager/populator/desired_state_of_world_populator.go, "failed to fetch
    PVC from API server"), and WaitForAttachAndMount reports it among "failed to process
    volumes" (pkg/kubelet/volumemanager/volume_manager.go); the mount is retried the same way
    here, not given up."""

    @property
    def event_message(self) -> str:
        return (
            "Unable to attach or mount volumes: unmounted volumes=[], unattached volumes=[], "
            f"failed to process volumes=[{self.volume}]: {self}"
        )


@dataclass(frozen=True)
class Readers:
    """Objects read with the node's identity; each returns None when the object is absent."""

    secret: ObjectReader
    config_map: ObjectReader
    claim: ObjectReader
    volume: Callable[[str], dict[str, Any] | None]
    # (service account, audiences, expiration seconds) -> a token bound to the pod.
    token: Callable[[str, list[str], int], str]


@dataclass(frozen=True)
class Mount:
    """One mount into the pod: a host directory bound (or a tmpfs made) at ``target``."""

    volume: str
    target: str
    source: Path | None
    read_only: bool
    tmpfs_bytes: int | None = None
    tmpfs: bool = False


def _file_mode(value: object, default: int) -> int:
    return default if value is None else int(str(value))


def _write_keys(
    directory: Path, data: dict[str, bytes], items: list[dict[str, Any]] | None, mode: int
) -> None:
    """Files per key, or per ``items`` entry at its path (``pkg/volume/util``
    MakePayload: an item whose key is absent fails unless the source is optional)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    chosen = (
        [(str(k), k, mode) for k in sorted(data)]
        if not items
        else [(str(i["path"]), str(i["key"]), _file_mode(i.get("mode"), mode)) for i in items]
    )
    for rel, key, file_mode in chosen:
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
        path.chmod(file_mode)


def _key_source(
    volume: dict[str, Any], kind: str, namespace: str, readers: Readers, directory: Path
) -> Path:
    name = str(volume["name"])
    source = volume[kind]
    object_name = str(source.get("secretName" if kind == "secret" else "name", ""))
    read = readers.secret if kind == "secret" else readers.config_map
    found = read(namespace, object_name)
    optional = bool(source.get("optional", False))
    label = "secret" if kind == "secret" else "configmap"
    if found is None and not optional:
        raise MountError(name, f'{label} "{object_name}" not found')
    data: dict[str, bytes] = {}
    if found is not None:
        for key, value in (found.get("data") or {}).items():
            data[key] = base64.b64decode(value) if kind == "secret" else str(value).encode()
        for key, value in (found.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value)
    items = source.get("items")
    for item in items or []:
        if item["key"] not in data and not optional:
            raise MountError(
                name,
                f"configmap references non-existent config key: {item['key']}"
                if kind == "configMap"
                else f"references non-existent secret key: {item['key']}",
            )
    present = [i for i in items or [] if i["key"] in data] if items else None
    target = directory / name
    _write_keys(target, data, present, _file_mode(source.get("defaultMode"), DEFAULT_FILE_MODE))
    return target


def _projected(
    pod: dict[str, Any], volume: dict[str, Any], readers: Readers, directory: Path
) -> Path:
    """``projected`` as ``pkg/volume/projected/projected.go`` collectData makes it, for the
    sources the ServiceAccount admission's kube-api-access volume uses and ConfigMap/Secret:
    ``serviceAccountToken`` (a TokenRequest bound to the pod, with the node's identity, as the
    kubelet's token manager asks), ``configMap``, ``secret`` and ``downwardAPI`` field refs."""
    name = str(volume["name"])
    namespace = str(pod["metadata"]["namespace"])
    projected = volume["projected"]
    mode = _file_mode(projected.get("defaultMode"), DEFAULT_FILE_MODE)
    files: dict[str, tuple[bytes, int]] = {}
    for source in projected.get("sources") or []:
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            account = str(pod["spec"].get("serviceAccountName") or "default")
            audience = token.get("audience")
            value = readers.token(
                account,
                [str(audience)] if audience else [],
                int(token.get("expirationSeconds") or 3600),
            )
            files[str(token["path"])] = (value.encode(), mode)
        elif "configMap" in source or "secret" in source:
            kind = "configMap" if "configMap" in source else "secret"
            ref = source[kind]
            found = (readers.config_map if kind == "configMap" else readers.secret)(
                namespace, str(ref.get("name", ""))
            )
            if found is None:
                if ref.get("optional"):
                    continue
                label = "configmap" if kind == "configMap" else "secret"
                raise MountError(name, f'{label} "{ref.get("name", "")}" not found')
            data = {
                k: (base64.b64decode(v) if kind == "secret" else str(v).encode())
                for k, v in (found.get("data") or {}).items()
            }
            for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
                if item["key"] in data:
                    files[str(item["path"])] = (
                        data[item["key"]],
                        _file_mode(item.get("mode"), mode),
                    )
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                field = str((item.get("fieldRef") or {}).get("fieldPath", ""))
                value = _pod_field(pod, field)
                if value is None:
                    raise MountError(name, f"downwardAPI field {field!r} is not supported here")
                files[str(item["path"])] = (value.encode(), _file_mode(item.get("mode"), mode))
        else:
            raise MountError(name, f"projected source {sorted(source)} is not supported here")
    target = directory / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for rel, (data_bytes, file_mode) in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data_bytes)
        path.chmod(file_mode)
    return target


def _pod_field(pod: dict[str, Any], path: str) -> str | None:
    meta = pod["metadata"]
    return {
        "metadata.namespace": str(meta.get("namespace", "")),
        "metadata.name": str(meta.get("name", "")),
        "metadata.uid": str(meta.get("uid", "")),
    }.get(path)


def _oss_endpoint(url: str) -> str:
    """alibaba-cloud-csi-driver ``pkg/oss/utils.go`` setTransmissionProtocol: a given scheme
    stays; a bare ``*-internal.aliyuncs.com`` gets http://, any other bare host https://."""
    if "://" in url:
        return url
    return f"http://{url}" if "-internal.aliyuncs.com" in url else f"https://{url}"


_publish_lock = threading.Lock()


def publish_oss(pv: dict[str, Any], credentials: dict[str, str], cache_dir: Path) -> Path:
    """The CSI node plugin stand-in: the PV's objects copied once into ``cache_dir/<pv>``.

    Raises MountError with a CSI-style ``rpc error`` message naming what failed (never the
    keys)."""
    pv_name = str(pv["metadata"]["name"])
    attributes = pv["spec"]["csi"].get("volumeAttributes") or {}
    done = cache_dir / pv_name / ".published"
    target = cache_dir / pv_name / "data"
    with _publish_lock:
        if done.exists():
            return target
        if attributes.get("authType") == "rrsa":
            raise MountError(pv_name, _rpc("authType rrsa is not supported by the stand-in"))
        bucket_name = str(attributes.get("bucket") or "")
        url = str(attributes.get("url") or "")
        if not bucket_name or not url:
            raise MountError(pv_name, _rpc("volumeAttributes need bucket and url"))
        key_id, secret = credentials.get("akId"), credentials.get("akSecret")
        if not key_id or not secret:
            raise MountError(pv_name, _rpc("the node publish secret has no akId/akSecret"))
        prefix = str(attributes.get("path") or "/").strip("/")
        prefix = f"{prefix}/" if prefix else ""
        bucket = oss2.Bucket(
            oss2.Auth(key_id, secret),
            _oss_endpoint(url),
            bucket_name,
            connect_timeout=OSS_CONNECT_TIMEOUT_S,
        )
        staging = cache_dir / pv_name / "staging"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        try:
            for info in oss2.ObjectIteratorV2(bucket, prefix=prefix):
                rel = info.key[len(prefix) :]
                if not rel or rel.endswith("/"):
                    continue
                path = staging / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                bucket.get_object_to_file(info.key, str(path))
        except oss2.exceptions.RequestError as exc:
            raise MountError(
                pv_name, _rpc(f"oss endpoint {url} unreachable: {type(exc.exception).__name__}")
            ) from exc
        except oss2.exceptions.OssError as exc:
            raise MountError(
                pv_name,
                _rpc(f"oss bucket {bucket_name} path /{prefix}: {exc.status} {exc.code}"),
            ) from exc
        except requests.RequestException as exc:
            raise MountError(pv_name, _rpc(f"oss endpoint {url}: {type(exc).__name__}")) from exc
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        done.write_text("")
        return target


def _rpc(description: str) -> str:
    return f"rpc error: code = Internal desc = ossfs stand-in: {description}"


def _claim_source(
    volume: dict[str, Any], namespace: str, readers: Readers, cache_dir: Path
) -> tuple[Path, bool]:
    """The directory a claim's volume binds, and whether the PV or claim asks read-only."""
    name = str(volume["name"])
    claim_name = str(volume["persistentVolumeClaim"]["claimName"])
    claim = readers.claim(namespace, claim_name)
    if claim is None:
        raise MountError(name, f'persistentvolumeclaim "{claim_name}" not found')
    pv_name = str((claim.get("spec") or {}).get("volumeName") or "")
    if not pv_name or (claim.get("status") or {}).get("phase") != "Bound":
        raise MountError(name, f"PVC {namespace}/{claim_name} has not been bound")
    pv = readers.volume(pv_name)
    if pv is None:
        raise MountError(pv_name, f'persistentvolume "{pv_name}" not found')
    csi = (pv.get("spec") or {}).get("csi")
    if not csi:
        raise MountError(pv_name, "only CSI persistent volumes are supported on this node")
    driver = str(csi.get("driver", ""))
    if driver != OSS_CSI_DRIVER:
        # pkg/volume/csi/csi_plugin.go: the driver must have registered with the kubelet.
        raise MountError(
            pv_name,
            f"kubernetes.io/csi: mounter.SetUpAt failed to get CSI client: driver name "
            f"{driver} not found in the list of registered CSI drivers",
        )
    credentials: dict[str, str] = {}
    ref = csi.get("nodePublishSecretRef")
    if ref:
        ref_ns, ref_name = str(ref.get("namespace", "")), str(ref.get("name", ""))
        found = readers.secret(ref_ns, ref_name)
        if found is None:
            # pkg/volume/csi/csi_mounter.go SetUpAt and csi_util.go getCredentialsFromSecret.
            raise MountError(
                pv_name,
                f"fetching NodePublishSecretRef {ref_ns}/{ref_name} failed: kubernetes.io/csi: "
                f"failed to find the secret {ref_name} in the namespace {ref_ns} with error: "
                f'secrets "{ref_name}" not found',
            )
        credentials = {
            k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()
        }
    read_only = (
        bool(csi.get("readOnly"))
        or bool(volume["persistentVolumeClaim"].get("readOnly"))
        or list(pv["spec"].get("accessModes") or []) == ["ReadOnlyMany"]
    )
    return publish_oss(pv, credentials, cache_dir), read_only


def plan_mounts(
    pod: dict[str, Any], readers: Readers, pod_dir: Path, cache_dir: Path
) -> list[Mount]:
    """Every volume the pod's containers mount, set up on the node; raises MountError."""
    namespace = str(pod["metadata"]["namespace"])
    spec = pod["spec"]
    mounted: dict[str, list[dict[str, Any]]] = {}
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for mount in container.get("volumeMounts") or []:
            mounted.setdefault(str(mount["name"]), []).append(mount)
    mounts: list[Mount] = []
    for volume in spec.get("volumes") or []:
        name = str(volume["name"])
        uses = mounted.get(name)
        if not uses:
            continue
        volume_ro = False
        tmpfs_bytes: int | None = None
        tmpfs = False
        source: Path | None
        if "emptyDir" in volume:
            empty = volume["emptyDir"] or {}
            tmpfs = empty.get("medium") == "Memory"
            limit = empty.get("sizeLimit")
            tmpfs_bytes = int(parse_quantity(limit)) if tmpfs and limit else None
            source = None if tmpfs else pod_dir / "empty-dir" / name
            if source is not None:
                source.mkdir(parents=True, exist_ok=True)
        elif "configMap" in volume or "secret" in volume:
            kind = "configMap" if "configMap" in volume else "secret"
            source = _key_source(volume, kind, namespace, readers, pod_dir / kind)
            volume_ro = True  # the kubelet mounts these read-only
        elif "persistentVolumeClaim" in volume:
            source, volume_ro = _claim_source(volume, namespace, readers, cache_dir)
        elif "projected" in volume:
            source = _projected(pod, volume, readers, pod_dir / "projected")
            volume_ro = True
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise MountError(name, f"volume type {kinds} is not supported on this node")
        for use in uses:
            sub = str(use.get("subPath") or "")
            if tmpfs:
                mounts.append(Mount(name, str(use["mountPath"]), None, False, tmpfs_bytes, True))
                continue
            assert source is not None
            bound = source / sub if sub else source
            if sub and not bound.exists():
                bound.mkdir(parents=True)
            read_only = volume_ro or bool(use.get("readOnly"))
            mounts.append(Mount(name, str(use["mountPath"]), bound, read_only))
    return mounts


_MOUNT_SCRIPT = """
set -e
target="$1"; shift
if [ "$1" = tmpfs ]; then
  [ -d "$target" ] || mkdir -p "$target"
  mount -t tmpfs -o "$2" tmpfs "$target"
else
  [ -e "$2" ] || { echo "source $2 is not visible in the pod's mount namespace" >&2; exit 32; }
  if [ -d "$2" ]; then [ -e "$target" ] || mkdir -p "$target"
  else [ -e "$target" ] || { mkdir -p "$(dirname "$target")"; : > "$target"; }; fi
  mount --bind "$2" "$target"
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$target"; fi
fi
"""


def apply_mounts(enter: list[str], mounts: list[Mount], done: set[str]) -> None:
    """Make ``mounts`` in the pod's mount namespace (``enter``: the sandbox's nsenter prefix
    with ``--mount``), skipping the targets in ``done`` and adding each one made to it.

    Binds go first and tmpfs mounts last: the node's directories may live under a path a
    tmpfs covers in the pod (the harness keeps its run directory in /dev/shm, where the pod's
    memory emptyDir goes), and a bind's source is looked up in the pod's mount namespace."""
    for mount in sorted(mounts, key=lambda m: m.tmpfs):
        if mount.target in done:
            continue
        if mount.tmpfs:
            options = "mode=1777" + (
                f",size={mount.tmpfs_bytes}" if mount.tmpfs_bytes is not None else ""
            )
            args = ["tmpfs", options]
        else:
            assert mount.source is not None
            args = ["bind", str(mount.source), "ro" if mount.read_only else "rw"]
        made = subprocess.run(
            [*enter, "sh", "-c", _MOUNT_SCRIPT, "mount", mount.target, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if made.returncode != 0:
            raise MountError(
                mount.volume, f"mount failed: exit status {made.returncode}: {made.stderr.strip()}"
            )
        done.add(mount.target)
