"""`rbac`: print the worker's RBAC objects for a namespace (for `kubectl apply -f -`)."""

from __future__ import annotations

from typing import Annotated

import typer


def rbac_command(
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Namespace the worker deploys into.")
    ],
    service_account: Annotated[
        str, typer.Option(help="Name of the worker's ServiceAccount (and Role).")
    ] = "llm-rollout-worker",
    cluster_role: Annotated[
        str, typer.Option(help="Name of the shared ClusterRole (bound once per namespace).")
    ] = "llm-rollout-worker",
) -> None:
    """Print the ServiceAccount, Role, ClusterRole and bindings the worker needs, as YAML."""
    from llm_rollout.errors import SpecError
    from llm_rollout.rbac import render_worker_rbac
    from llm_rollout.render import to_yaml

    try:
        objects = render_worker_rbac(
            namespace, service_account=service_account, cluster_role=cluster_role
        )
    except SpecError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from exc
    typer.echo("---\n".join(to_yaml(obj) for obj in objects), nl=False)


def register(app: typer.Typer) -> None:
    app.command("rbac")(rbac_command)
