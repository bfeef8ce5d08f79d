"""Which host executables a container image stands for: the image -> runtime table.

There is no container runtime here: a container's command line runs on the host, inside its
pod's namespaces, with the PATH and default command of the image it names. This module is the
one place that says which images that is possible for. An image without an entry fails as an
image the registry does not have (``ErrImagePull``, ``pods/containers.py``).

The interface is deliberately small (:func:`resolve` and :class:`Runtime`) so that the table of
engine images (vLLM, Ray, the SGLang router) can join it.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Runtime:
    """How an image's containers run on this host.

    ``path`` is the image's PATH (its ``ENV PATH``): a bare argv[0] is looked up there, and the
    container's environment starts from ``env`` with it. ``entrypoint`` and ``cmd`` are the
    image's ENTRYPOINT and CMD, used when the pod gives no ``command`` / ``args``.
    """

    reason: str
    path: tuple[str, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def image_env(self) -> dict[str, str]:
        return {"PATH": ":".join(self.path), **self.env}

    def host_argv(self, argv: list[str]) -> list[str] | None:
        """``argv`` with its executable resolved on the image's PATH; None when not found
        (the runtime's 'executable file not found in $PATH')."""
        if not argv:
            return None
        executable = argv[0]
        if "/" in executable:
            return argv if Path(executable).is_file() else None
        found = shutil.which(executable, path=":".join(self.path))
        return None if found is None else [found, *argv[1:]]


_HOST_SHELL_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

_TABLE: dict[str, Runtime] = {
    # The tests' shell image: busybox's applets (sh, echo, cat, hostname, sleep, nc-less
    # coreutils) are what the host's /bin/sh and coreutils provide, which is all the tests'
    # pods run. busybox's image config: PATH as above, CMD ["sh"], no ENTRYPOINT.
    "docker.io/library/busybox:1.36": Runtime(
        reason="test shell pods: the host's /bin/sh and coreutils stand for busybox's applets",
        path=_HOST_SHELL_PATH,
        cmd=("sh",),
    ),
}


def _normalise(image: str) -> str:
    """The reference as a registry would spell it in full (``busybox:1.36`` is
    ``docker.io/library/busybox:1.36``), so the table needs one spelling per image."""
    first, _, rest = image.partition("/")
    if not rest:
        return f"docker.io/library/{image}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{image}"
    return image


def resolve(image: str) -> Runtime | None:
    """The runtime for ``image``, or None when this host has nothing standing for it."""
    return _TABLE.get(_normalise(image))
