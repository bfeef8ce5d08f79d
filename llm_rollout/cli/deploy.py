"""`deploy`, `status`, `rollback` and `teardown`: the service lifecycle commands.

`deploy` runs the Prefect flow (an ephemeral local Prefect server unless PREFECT_API_URL names
one); the other three act on the cluster directly (KUBECONFIG), reading everything they need
from the objects the flow left there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

T = TypeVar("T")

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

NamespaceOpt = Annotated[
    str, typer.Option("--namespace", "-n", help="Kubernetes namespace of the service (required).")
]
NameArg = Annotated[str, typer.Argument(help="Service name (the spec's `name`).")]


def _ui_url() -> str | None:
    """The Prefect UI of the server the run went to, when it is a lasting one."""
    # Prefect's own setting (environment or profile): where the flow run was sent.
    from prefect.settings import get_current_settings

    api_url = get_current_settings().api.url
    if not api_url:
        return None
    return api_url.rstrip("/").removesuffix("/api")


def _where_to_look(run_id: str) -> str:
    """Where the run's record (logs, artifacts, events) can be read after the command ends."""
    ui = _ui_url()
    if ui:
        return f"flow run {run_id}: {ui}/runs/flow-run/{run_id}"
    # The ephemeral server is gone once the command ends, but its database stays in
    # PREFECT_HOME: a server started on the same home shows the run.
    from prefect.settings import PREFECT_HOME

    home = PREFECT_HOME.value()
    return (
        f"flow run {run_id} (record kept in {home}); to browse it run "
        f"`PREFECT_HOME={home} prefect server start` and open "
        f"http://127.0.0.1:4200/runs/flow-run/{run_id}"
    )


def _on_cluster(failure: str, call: Callable[[ApiClient], T]) -> T:
    """Run `call` with an API client from KUBECONFIG; a `RolloutError` is printed after
    `failure` and ends the command with exit code 1."""
    from llm_rollout.errors import RolloutError
    from llm_rollout.release.cluster import cluster_api

    try:
        with cluster_api() as api:
            return call(api)
    except RolloutError as exc:
        err_console.print(f"{failure}: {exc}")
        raise typer.Exit(code=1) from exc


def deploy_command(
    spec_path: Annotated[Path, typer.Argument(help="Path of the service spec (YAML).")],
) -> None:
    """Mirror, roll out, smoke-test and promote the service a spec describes."""
    from llm_rollout.errors import RolloutError, SpecError
    from llm_rollout.spec import load_spec

    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        err_console.print(f"invalid spec {spec_path}: {exc}")
        raise typer.Exit(code=2) from exc

    try:
        from flows.deploy import deploy
    except ModuleNotFoundError as exc:
        if exc.name not in ("flows", "flows.deploy"):
            raise
        # The wheel ships the core and this command, not the Prefect flows (see pyproject).
        err_console.print(
            "deploy runs the Prefect flow in flows/ of an llm-rollout checkout, which this "
            "installation does not have: run it from the repository (`uv run llm-rollout "
            "deploy ...`), or run the deploy-model Prefect deployment (prefect.yaml)"
        )
        raise typer.Exit(code=2) from exc

    state = deploy(spec, return_state=True)
    run_id = str(state.state_details.flow_run_id)
    where = _where_to_look(run_id)
    if state.is_completed():
        result = state.result()
        ttft = f"{result.ttft_s * 1000:.0f} ms" if result.ttft_s is not None else "-"
        console.print(
            f"Service {result.namespace}/{result.service} serves release {result.release} "
            f"(strategy {result.strategy})"
        )
        console.print(f"smoke test answer: {result.answer!r} (time to first token {ttft})")
        console.print(where)
        return
    try:
        state.result(raise_on_failure=True)
    except RolloutError as exc:
        err_console.print(f"deploy failed: {exc}")
    err_console.print(where)
    raise typer.Exit(code=1)


def status_command(name: NameArg, namespace: NamespaceOpt) -> None:
    """Which release serves, whether its workload is ready, its revision and spec hash."""
    from llm_rollout.release.status import service_status

    status = _on_cluster("status failed", lambda api: service_status(api, namespace, name))
    state = status.state
    if state.current_release is None:
        console.print(f"Service {namespace}/{name}: not deployed (no stable Service)")
        raise typer.Exit(code=3)
    console.print(f"Service {namespace}/{name}")
    console.print(f"  release:          {state.current_release}")
    console.print(f"  model revision:   {state.revision or '-'}")
    console.print(f"  spec hash:        {state.spec_hash or '-'}")
    previous = state.previous_release or "-"
    if state.previous_release:
        previous += (
            " (workload present: rollback possible)"
            if status.previous_release_present
            else " (workload removed)"
        )
    console.print(f"  previous release: {previous}")
    if not status.workloads:
        console.print("  workload:         MISSING (the Service routes to nothing)")
    for workload in status.workloads:
        ready = "ready" if workload.ready else "NOT ready: " + "; ".join(workload.missing)
        console.print(f"  workload:         {workload.ref} {ready}")
    if not status.workloads or not all(w.ready for w in status.workloads):
        raise typer.Exit(code=1)


def rollback_command(name: NameArg, namespace: NamespaceOpt) -> None:
    """Point the stable Service back to the previous release, if its workload still exists."""
    from llm_rollout.release.services import rollback_to_previous

    message = _on_cluster(
        "rollback not possible", lambda api: rollback_to_previous(api, namespace, name)
    )
    console.print(message)


def teardown_command(
    name: NameArg,
    namespace: NamespaceOpt,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", help="Wait per object for its deletion (s).")
    ] = 300.0,
) -> None:
    """Remove workloads, Services, PVC, PV and Secret of a service; the OSS data stays."""
    from llm_rollout.release.removal import teardown

    removed = _on_cluster(
        "teardown failed", lambda api: teardown(api, namespace, name, wait_timeout_s=timeout_s)
    )
    if not removed:
        console.print(f"nothing of Service {namespace}/{name} found")
        return
    for line in removed:
        console.print(f"removed {line}")
    console.print("the model data in OSS was kept")


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy_command)
    app.command("status")(status_command)
    app.command("rollback")(rollback_command)
    app.command("teardown")(teardown_command)
