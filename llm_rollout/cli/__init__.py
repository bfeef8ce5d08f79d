"""The `llm-rollout` command line: the outermost layer (cli -> flows -> tasks -> llm_rollout).

Each command group lives in its own module exposing `register(app)`; heavy imports (Prefect,
kubernetes, great_expectations) happen inside the command functions so `--help` stays fast.
"""

from __future__ import annotations

import gc
import importlib

import typer

app = typer.Typer(
    name="llm-rollout",
    help="Take an LLM from its hub to a verified, serving endpoint on Kubernetes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One entry per command module of this package; each module owns its commands.
COMMAND_MODULES: tuple[str, ...] = ("deploy", "plan", "rbac", "sync")

for _module_name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_module_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    finally:
        # The interpreter is about to exit: skip its final collection over every object
        # (measured 0.57 s -> 0.05 s once pandas and great-expectations are loaded); the
        # OS takes the memory back, and atexit handlers and stream flushes still run.
        gc.freeze()
