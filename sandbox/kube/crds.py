"""CustomResourceDefinitions: install the upstream CRD files and serve what they define.

A CRD object in the store (created here at start, or later through the API) registers one
resource type per served version, with the subresources and openAPIV3Schema of that version,
and gets the Established / NamesAccepted conditions a real apiextensions server sets.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

from sandbox.kube.store import Obj, ResourceType, Store

CRD_API = "apiextensions.k8s.io/v1"

# File name stems in ../shared/crds, per product and release.
CRD_FILES: dict[str, str] = {
    "lws": "leaderworkerset.x-k8s.io_leaderworkersets.{}.yaml",
    "rbg": "workloads.x-k8s.io_rolebasedgroups.{}.yaml",
    "kuberay": "ray.io_rayclusters.{}.yaml",
}


def crd_types(crd: Obj) -> list[tuple[ResourceType, Obj | None]]:
    """The resource types (one per served version) a CRD defines, with their schemas."""
    spec = crd["spec"]
    names = spec["names"]
    out: list[tuple[ResourceType, Obj | None]] = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = frozenset((version.get("subresources") or {}).keys())
        rt = ResourceType(
            group=spec["group"],
            version=version["name"],
            kind=names["kind"],
            plural=names["plural"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            subresources=subresources,
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            singular=names.get("singular", ""),
        )
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        out.append((rt, schema))
    return out


def _established_status(crd: Obj) -> Obj:
    names = crd["spec"]["names"]
    stored = [v["name"] for v in crd["spec"].get("versions") or [] if v.get("storage")]
    conditions = [
        {
            "type": "NamesAccepted",
            "status": "True",
            "reason": "NoConflicts",
            "message": "no conflicts found",
        },
        {
            "type": "Established",
            "status": "True",
            "reason": "InitialNamesAccepted",
            "message": "the initial names have been accepted",
        },
    ]
    return {"acceptedNames": names, "conditions": conditions, "storedVersions": stored}


class CrdController:
    """Keeps the store's resource types in step with the CRD objects it holds."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._registered: dict[str, list[ResourceType]] = {}
        self.unsubscribe: Callable[[], None] = store.subscribe(self._on_event)

    def _on_event(self, type_: str, obj: Obj) -> None:
        if obj.get("kind") != "CustomResourceDefinition":
            return
        name = obj["metadata"]["name"]
        for rt in self._registered.pop(name, []):
            self.store.unregister(rt)
        if type_ == "DELETED":
            return
        self.sync(obj)
        status = obj.get("status") or {}
        established = any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if not established:
            self.store.update_status({**obj, "status": _established_status(obj)})

    def sync(self, crd: Obj) -> None:
        registered = []
        for rt, schema in crd_types(crd):
            self.store.register(rt)
            if schema is not None:
                self.store.set_schema(rt, schema)
            registered.append(rt)
        self._registered[crd["metadata"]["name"]] = registered


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_parsed: dict[str, str] = {}
_parsed_lock = threading.Lock()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or tempfile.gettempdir()
    return Path(base) / "llm-rollout-sandbox" / "crds"


def load_crd(path: Path) -> Obj:
    """Parse a CRD file.

    The upstream files are megabytes of YAML (up to ~1 s each to parse); the parsed form is
    kept as JSON, in memory and in a cache directory keyed by the file's sha256, so a cluster
    starts in a fraction of a second after the first time.
    """
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    with _parsed_lock:
        text = _parsed.get(digest)
        if text is None:
            cached = _cache_dir() / f"{digest}.json"
            try:
                text = cached.read_text()
            except OSError:
                doc = yaml.load(raw, Loader=_SafeLoader)  # noqa: S506 - a safe loader
                if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                    raise ValueError(f"{path} is not a CustomResourceDefinition") from None
                text = json.dumps(doc, separators=(",", ":"))
                _write_atomic(cached, text)
            _parsed[digest] = text
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a CustomResourceDefinition")
    return doc


def _write_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        return  # a read-only cache location only costs the parse next time


def install_crds(
    store: Store,
    crd_dir: Path,
    *,
    lws: str | None = "v0.10.0",
    rbg: str | None = "v0.6.0",
    kuberay: str | None = "v1.7.0",
) -> CrdController:
    """Install the selected upstream CRDs (None leaves one out, as on a cluster without it)."""
    controller = CrdController(store)
    for product, release in (("lws", lws), ("rbg", rbg), ("kuberay", kuberay)):
        if release is None:
            continue
        path = crd_dir / CRD_FILES[product].format(release)
        if not path.is_file():
            raise FileNotFoundError(f"no CRD file for {product} {release}: {path}")
        crd = load_crd(path)
        store.create(crd)
    return controller
