"""Where the Jinja2 templates of `manifests/` are read from: inside the installed package.

The wheel maps the repository's `manifests/` to `llm_rollout/manifests` (pyproject's hatch
force-include); in a checkout `llm_rollout/manifests` is a symlink to `manifests/`. Either way
`importlib.resources` finds them from any working directory, and nothing else is tried: a
package without its templates is a broken install, reported as such.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

import jinja2
from jinja2.loaders import split_template_path

from llm_rollout.errors import PermanentError

PACKAGE = "llm_rollout"
FOLDER = "manifests"


class TemplatesMissingError(PermanentError):
    """The installed package holds no `manifests` folder (a broken build or install)."""


def templates_root() -> Traversable:
    """The folder of templates inside the package; raises `TemplatesMissingError` without it."""
    root = files(PACKAGE) / FOLDER
    if not root.is_dir():
        raise TemplatesMissingError(
            f"the {PACKAGE} package has no {FOLDER}/ folder of templates at {root}; "
            "reinstall llm-rollout (the wheel ships them)"
        )
    return root


def template_loader() -> jinja2.BaseLoader:
    """A Jinja2 loader over `templates_root()`; names are paths like `vllm/single-gpu.yaml.j2`."""
    root = templates_root()

    def load(name: str) -> str | None:
        # split_template_path refuses `..` segments, so a name cannot leave the folder.
        node = root.joinpath(*split_template_path(name))
        return node.read_text(encoding="utf-8") if node.is_file() else None

    return jinja2.FunctionLoader(load)
