"""The wheel, installed offline into an empty venv, works outside this repository.

It is built from this checkout, installed with the locked dependencies from uv's cache (what
set-up downloaded; no network), and its `llm-rollout` runs from a temporary directory with no
path into the checkout. Only `llm_rollout` may land in site-packages: top-level `cli`, `tasks`,
`flows` or `sandbox` packages would collide with other distributions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from llm_rollout.rbac import render_worker_rbac
from llm_rollout.render import default_release, render
from llm_rollout.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "seed-vllm-lws.yaml"
FORBIDDEN_TOP_LEVEL = {"cli", "tasks", "flows", "sandbox"}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    workdir: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "llm-rollout"), *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def _uv(*args: str, cwd: Path) -> None:
    uv = shutil.which("uv")
    assert uv is not None, "uv is not on PATH (scripts/bootstrap installs it)"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = subprocess.run(
        [uv, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"uv {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    dist, venv = tmp / "dist", tmp / "venv"
    # An sdist, then the wheel built from it: the path through which the templates could get
    # lost (pip and `uv tool install` build the wheel from the tree, checked below too).
    _uv("build", "--offline", "--quiet", "-o", str(dist), cwd=REPO)
    (wheel,) = dist.glob("llm_rollout-*.whl")
    # The lock's exact files (pylock.toml carries their URLs, which uv's cache holds).
    lock = tmp / "pylock.toml"
    _uv("export", "--frozen", "--no-dev", "--no-emit-project", "--format", "pylock.toml",
        "--quiet", "-o", str(lock), cwd=REPO)  # fmt: skip
    _uv("venv", "--offline", "--quiet", "--python", sys.executable, str(venv), cwd=tmp)
    python = str(venv / "bin" / "python")
    _uv("pip", "install", "--offline", "--quiet", "--python", python, "-r", str(lock), cwd=tmp)
    _uv("pip", "install", "--offline", "--quiet", "--python", python, "--no-deps", str(wheel),
        cwd=tmp)  # fmt: skip
    (site_packages,) = venv.glob("lib/python3*/site-packages")
    workdir = tmp / "elsewhere"
    workdir.mkdir()
    shutil.copy(EXAMPLE, workdir / EXAMPLE.name)
    # Nothing that points back into the checkout, at a cluster or at a CRD directory.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "KUBECONFIG", "KUBERNETES_SERVICE_HOST")
        and not k.startswith("LLM_ROLLOUT_")
    }
    env["HOME"] = str(tmp / "home")
    return Installed(wheel, venv, site_packages, workdir, env)


def test_the_wheel_holds_the_package_and_every_template(
    installed: Installed, tmp_path: Path
) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    _uv("build", "--wheel", "--offline", "--quiet", "-o", str(tmp_path), cwd=REPO)
    (from_tree,) = tmp_path.glob("llm_rollout-*.whl")
    assert sorted(zipfile.ZipFile(from_tree).namelist()) == sorted(names)
    assert {name.split("/", 1)[0] for name in names} == {
        "llm_rollout",
        f"{installed.wheel.name.rsplit('-', 3)[0]}.dist-info",
    }
    shipped = {n.removeprefix("llm_rollout/manifests/") for n in names if "/manifests/" in n}
    in_repo = {str(p.relative_to(REPO / "manifests")) for p in (REPO / "manifests").rglob("*.j2")}
    assert shipped == in_repo
    assert "rbac/worker.yaml.j2" in shipped


def test_no_top_level_cli_tasks_flows_or_sandbox_in_site_packages(installed: Installed) -> None:
    top_level = {p.name for p in installed.site_packages.iterdir()}
    assert "llm_rollout" in top_level
    assert not FORBIDDEN_TOP_LEVEL & top_level
    assert not [p for p in installed.site_packages.glob("*.pth") if str(REPO) in p.read_text()]
    python = str(installed.venv / "bin" / "python")
    where = subprocess.run(
        [python, "-c", "import llm_rollout; print(llm_rollout.__file__)"],
        cwd=installed.workdir,
        env=installed.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(installed.site_packages)


def test_plan_runs_from_another_directory_and_names_what_it_could_not_check(
    installed: Installed,
) -> None:
    result = installed.run("plan", EXAMPLE.name, "--out", "out")
    assert result.returncode == 0, result.stderr
    assert "NOT checked against a CRD schema: leaderworkerset.x-k8s.io/v1 LeaderWorkerSet" in (
        result.stdout
    )
    # The same objects the checkout renders, rendered by the installed package's templates.
    spec = load_spec(EXAMPLE)
    expected = render(spec, release=default_release(spec)).all()
    assert f"{len(expected)} objects, validated" in result.stdout
    for obj in expected:
        name = f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        written = (installed.workdir / "out" / name).read_text(encoding="utf-8")
        assert yaml.safe_load(written) == obj


def test_plan_checks_against_a_named_crd_directory(installed: Installed, shared_crds: Path) -> None:
    result = installed.run("plan", EXAMPLE.name, "--out", "out2", "--crd-dir", str(shared_crds))
    assert result.returncode == 0, result.stderr
    assert f"custom resources checked against the CRDs of the directory {shared_crds}" in (
        result.stdout
    )
    assert "NOT checked" not in result.stdout


def test_schema_and_rbac_run_from_another_directory(installed: Installed) -> None:
    schema = installed.run("schema")
    assert schema.returncode == 0, schema.stderr
    assert {"name", "namespace", "serving"} <= set(json.loads(schema.stdout)["properties"])
    rbac = installed.run("rbac", "--namespace", "team-a")
    assert rbac.returncode == 0, rbac.stderr
    assert [doc for doc in yaml.safe_load_all(rbac.stdout) if doc] == render_worker_rbac("team-a")


def test_deploy_says_it_needs_a_checkout(installed: Installed) -> None:
    result = installed.run("deploy", EXAMPLE.name)
    assert result.returncode == 2
    assert "deploy runs the Prefect flow in flows/ of an llm-rollout checkout" in result.stderr
