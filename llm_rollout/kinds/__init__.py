"""Each workload kind's knowledge in one module; see `llm_rollout.kinds.base`.

Every module of this package is imported here, so a kind registers itself by existing.
"""

from __future__ import annotations

import importlib
import pkgutil

from llm_rollout.kinds.base import (
    DEFAULT_RBG_FLAVOR,
    ApiRequirement,
    PodCreator,
    PodDemand,
    PodRoll,
    RbgFlavor,
    TemplateChange,
    UnsupportedKindError,
    WorkloadKind,
    all_kinds,
    kind_for,
    kind_for_shape,
    kind_named,
    kind_of,
    rendered_kinds,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DEFAULT_RBG_FLAVOR",
    "ApiRequirement",
    "PodCreator",
    "PodDemand",
    "PodRoll",
    "RbgFlavor",
    "TemplateChange",
    "UnsupportedKindError",
    "WorkloadKind",
    "all_kinds",
    "kind_for",
    "kind_for_shape",
    "kind_named",
    "kind_of",
    "rendered_kinds",
]
