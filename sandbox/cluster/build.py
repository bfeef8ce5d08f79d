"""Build the test cluster's real binaries from the project's pinned Go modules.

Each folder under ``sandbox/cluster/go/`` is a wrapper module holding only a ``go.mod`` and
``go.sum`` (and, for Kubernetes and CoreDNS, a small ``main.go``): the upstream source comes
from the Go module proxy at the versions those files pin, and nothing built is ever committed. Each
upstream program gets a module of its own so that Go's minimal version selection cannot move
one program's dependencies to satisfy another's (etcd and Kubernetes disagree on grpc and
otel, for instance).

The binaries and the CRDs (and RBAC role) copied out of each operator's own module go
into one directory under the per-user cache root (``sandbox/cache.py``), keyed by a digest of
every wrapper module's files, the Go version and this recipe's revision. It is built in a
temporary sibling, renamed into place and stamped last, so a killed build is redone and a
second run finds the stamp and returns at once. The Go module and build caches sit beside it
and are shared by every key (Go validates their content itself).

Which operator versions: the module proxy serves the ``.info`` and ``.mod`` of
``sigs.k8s.io/lws`` v0.10.0 and ``github.com/ray-project/kuberay/ray-operator`` v1.7.0 but
refused their ``.zip`` ("403 This module version is not available", checked 2026-12-06); it
served whole zips of lws v0.9.0 (and v0.8.0, v0.7.0, v0.6.2) and of ray-operator v1.6.2 (and
v1.6.1, v1.6.0). So LWS is pinned at v0.9.0 and KubeRay at v1.6.2, the newest served whole.
CoreDNS: ``go list -m -versions github.com/coredns/coredns`` listed up to v1.15.0 (2026-12-06),
which builds with Go 1.26.8; it pulls k8s.io/client-go v0.37.1, newer than the Kubernetes
module's v0.36.x, which is why it is a module of its own.

Standard library only: it runs before the project's environment exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sandbox import cache

# Bump when the way binaries are built changes without any module file changing.
RECIPE_REVISION = "cluster-bin/2"
GO_MODULES_DIR = Path(__file__).resolve().parent / "go"


@dataclass(frozen=True)
class GoProgram:
    """One binary built from one wrapper module, and files copied out of its upstream module.

    ``assets`` maps a glob inside ``asset_module``'s directory to a folder of the artefact
    directory (``<folder>/<binary>/<file name>``).
    """

    module_dir: str
    binary: str
    package: str
    asset_module: str | None = None
    assets: tuple[tuple[str, str], ...] = ()


PROGRAMS = (
    GoProgram(module_dir="k8s", binary="kube", package="."),
    GoProgram(module_dir="etcd", binary="etcd", package="go.etcd.io/etcd/server/v3"),
    # The cluster DNS: CoreDNS with only the plugins the harness's Corefile names (its main.go).
    GoProgram(module_dir="coredns", binary="coredns", package="."),
    GoProgram(
        module_dir="kuberay",
        binary="ray-operator",
        package="github.com/ray-project/kuberay/ray-operator",
        asset_module="github.com/ray-project/kuberay/ray-operator",
        # The operator's own ClusterRole, so that it runs with upstream's permissions rather
        # than as a cluster admin.
        assets=(("config/crd/bases/*.yaml", "crds"), ("config/rbac/role.yaml", "rbac")),
    ),
    GoProgram(
        module_dir="lws",
        binary="lws",
        package="sigs.k8s.io/lws/cmd",
        asset_module="sigs.k8s.io/lws",
        # Its CRDs, its ClusterRole, and the webhook manifests with the objectSelector patches
        # that the harness reads to register the webhooks at the manager's loopback address.
        assets=(
            ("config/crd/bases/*.yaml", "crds"),
            ("config/rbac/role.yaml", "rbac"),
            ("config/webhook/manifests.yaml", "webhook"),
            ("config/webhook/*-patch.yaml", "webhook"),
        ),
    ),
)


class BuildError(RuntimeError):
    """A Go command failed; the message names the module and the command's last output."""


def go_cache_dirs() -> tuple[Path, Path]:
    """The shared Go module cache and build cache under the cache root."""
    root = cache.cache_root() / "go"
    return root / "mod", root / "build"


def go_env() -> dict[str, str]:
    """The environment every Go command of the recipe runs with."""
    mod_cache, build_cache = go_cache_dirs()
    env = dict(os.environ)
    env.update(
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
        GOMODCACHE=str(mod_cache),
        GOCACHE=str(build_cache),
        # Module cache files writable, so that a person (or a cache clean-up) can delete it.
        GOFLAGS="-modcacherw",
    )
    return env


def _run_go(args: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BuildError(f"`go {' '.join(args)}` failed in {cwd.name}:\n{tail}")
    return proc.stdout


def go_version() -> str:
    proc = subprocess.run(
        ["go", "env", "GOVERSION"], env=go_env(), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BuildError(f"`go env GOVERSION` failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _module_files(program: GoProgram) -> list[Path]:
    directory = GO_MODULES_DIR / program.module_dir
    return sorted(p for p in directory.iterdir() if p.suffix in (".mod", ".sum", ".go"))


def artefact_dir() -> Path:
    """Where the binaries of the current module files live (complete once stamped)."""
    defining: list[str | bytes] = [RECIPE_REVISION, go_version()]
    for program in PROGRAMS:
        for path in _module_files(program):
            defining += [f"{program.module_dir}/{path.name}", path.read_bytes()]
    return cache.keyed_dir("cluster-bin", *defining)


def _required_version(go_mod: str, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod, re.MULTILINE)
    if match is None:
        raise BuildError(f"{module} is not required by a wrapper go.mod")
    return match.group(1)


def _ldflags(program: GoProgram) -> str:
    flags = ["-s", "-w"]
    if program.module_dir == "k8s":
        # What upstream's build scripts stamp (hack/lib/version.sh), so `/version` and the
        # components' version checks see v1.36.x instead of v0.0.0-master.
        go_mod = (GO_MODULES_DIR / "k8s" / "go.mod").read_text()
        version = _required_version(go_mod, "k8s.io/kubernetes")
        major, minor = version.lstrip("v").split(".")[:2]
        flags += [
            f"-X k8s.io/component-base/version.gitVersion={version}",
            f"-X k8s.io/component-base/version.gitMajor={major}",
            f"-X k8s.io/component-base/version.gitMinor={minor}",
            "-X k8s.io/component-base/version.gitTreeState=clean",
        ]
    return " ".join(flags)


def _build_one(program: GoProgram, out_dir: Path, env: dict[str, str]) -> dict[str, object]:
    module = GO_MODULES_DIR / program.module_dir
    started = time.monotonic()
    # Downloads first, so a refused module fails fast with the proxy's own message.
    _run_go(["mod", "download"], cwd=module, env=env)
    downloaded = time.monotonic()
    binary = out_dir / "bin" / program.binary
    _run_go(
        ["build", "-trimpath", "-ldflags", _ldflags(program), "-o", str(binary), program.package],
        cwd=module,
        env=env,
    )
    built = time.monotonic()
    copied: list[str] = []
    if program.asset_module is not None:
        source = Path(
            _run_go(
                ["list", "-m", "-f", "{{.Dir}}", program.asset_module], cwd=module, env=env
            ).strip()
        )
        for pattern, folder in program.assets:
            matches = sorted(source.glob(pattern))
            if not matches:
                raise BuildError(f"nothing matches {pattern} in {program.asset_module}")
            target = out_dir / folder / program.binary
            target.mkdir(parents=True, exist_ok=True)
            for path in matches:
                shutil.copyfile(path, target / path.name)
                copied.append(f"{folder}/{program.binary}/{path.name}")
    return {
        "download_s": round(downloaded - started, 1),
        "build_s": round(built - downloaded, 1),
        "size_mb": round(binary.stat().st_size / 1e6, 1),
        "copied": copied,
    }


def _say(line: str) -> None:
    sys.stderr.write(f"build-cluster: {line}\n")
    sys.stderr.flush()


def build(*, force: bool = False) -> Path:
    """Make sure the binaries of the current module files exist; return their directory."""
    target = artefact_dir()
    with cache.exclusive(target):
        if not force and cache.read_stamp(target) is not None:
            return target
        env = go_env()
        staging = target.parent / f".tmp-{target.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            results = {}
            for program in PROGRAMS:
                _say(f"building {program.binary} ...")
                results[program.binary] = _build_one(program, staging, env)
                _say(f"{program.binary}: {json.dumps(results[program.binary])}")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        cache.write_stamp(
            target,
            {"recipe": RECIPE_REVISION, "go": go_version(), "programs": results},
        )
    return target


def binaries_dir() -> Path:
    """The stamped binaries directory, or a clear error naming the command that makes it."""
    target = artefact_dir()
    if cache.read_stamp(target) is None:
        raise FileNotFoundError(
            f"the test cluster's binaries are not built ({target}); run ./scripts/build-cluster"
        )
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when stamped")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        target = build(force=args.force)
    except BuildError as exc:
        _say(str(exc))
        return 1
    stamp = cache.read_stamp(target)
    _say(f"{target} ready in {time.monotonic() - started:.1f} s")
    cache.mark_used(target)
    for stale in cache.prune_stale(target):
        _say(f"removed {stale}, unused for 5 days")
    sys.stdout.write(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
