"""`plan` and `schema`: see what a spec renders to without touching any cluster.

`plan SPEC --out DIR` loads the spec, renders one release, validates every object offline,
prints the checks it made and writes `DIR/<kind>-<name>.yaml` (kind lowercased, one object per
file). With `--model-config config.json` it also checks the KV-cache fit (vLLM); without, it
says "KV fit not checked". Custom resources are checked against the CRDs of `--crd-dir`, else
of the `LLM_ROLLOUT_CRD_DIR` setting, else of the configured cluster (read-only: one list of its
CustomResourceDefinitions); with none of them, plan lists the kinds it could not check. An
invalid spec exits 2 with the offending field named; objects that fail validation exit 1. The
OSS Secret is written without values: values only exist at apply time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from llm_rollout.kinds import DEFAULT_RBG_FLAVOR

SpecArg = Annotated[Path, typer.Argument(help="Path of the service spec (YAML).")]


def plan_command(
    spec_path: SpecArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write objects into.")],
    release: Annotated[
        str | None,
        typer.Option(help="Release id to render (default: derived from the spec hash)."),
    ] = None,
    rbg_flavor: Annotated[
        str, typer.Option(help="RoleBasedGroup conventions: v0.6 (v1alpha1) or v0.7.")
    ] = DEFAULT_RBG_FLAVOR,
    model_config: Annotated[
        Path | None,
        typer.Option(
            help=(
                "The model's config.json, to check offline that one GPU holds the weights "
                "plus one max-length sequence (deploy reads it from the hub or the mirror)."
            )
        ),
    ] = None,
    crd_dir: Annotated[
        Path | None,
        typer.Option(
            help=(
                "Directory of CustomResourceDefinition YAML files to check custom resources "
                "against (default: $LLM_ROLLOUT_CRD_DIR, else the configured cluster's CRDs)."
            )
        ),
    ] = None,
) -> None:
    """Render and validate every object a spec produces, one YAML file per object."""
    from llm_rollout.crds import find_crds
    from llm_rollout.errors import ManifestValidationError, PermanentError, SpecError
    from llm_rollout.kinds import kind_for
    from llm_rollout.kv_cache import ModelConfigError
    from llm_rollout.preflight import PreflightReport, check_kv_fit, parse_model_config
    from llm_rollout.render import default_release, plan_checks, render, to_yaml
    from llm_rollout.spec import load_spec
    from llm_rollout.validation import validate_objects

    flavor: Literal["v0.6", "v0.7"]
    if rbg_flavor == "v0.6":
        flavor = "v0.6"
    elif rbg_flavor == "v0.7":
        flavor = "v0.7"
    else:
        typer.echo(f"--rbg-flavor: must be v0.6 or v0.7, got {rbg_flavor!r}", err=True)
        raise typer.Exit(code=2)
    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        typer.echo(f"invalid spec {spec_path}: {exc}", err=True)
        raise typer.Exit(code=2) from exc

    report = PreflightReport()
    config = None
    unread = "no config.json offline (pass --model-config FILE; deploy reads it from the hub)"
    try:
        if model_config is not None:
            config = parse_model_config(model_config.read_bytes(), str(model_config))
    except OSError as exc:
        typer.echo(f"--model-config: cannot read {model_config}: {exc.strerror}", err=True)
        raise typer.Exit(code=2) from exc
    except ModelConfigError as exc:
        typer.echo(f"--model-config: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    check_kv_fit(spec, report, config, unread_reason=unread)
    if report.problems:
        typer.echo(f"invalid spec {spec_path}: " + "\n  ".join(report.problems), err=True)
        raise typer.Exit(code=2)

    try:
        crds = find_crds(crd_dir)
    except PermanentError as exc:  # e.g. the CRD directory named is missing
        typer.echo(f"cannot validate: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    # Operator-version features follow the CRDs found, as deploy's preflight follows the
    # cluster's; without a CRD the kind says what it could not check.
    crd_features, crd_note = kind_for(spec).crd_features(crds.catalog)
    if crd_note:
        report.checks.append(crd_note)
    try:
        rendered = render(
            spec,
            release=release or default_release(spec),
            rbg_flavor=flavor,
            max_model_len=report.max_model_len,
            crd_features=crd_features,
        )
    except SpecError as exc:
        typer.echo(f"invalid spec {spec_path}: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    objects = rendered.all()
    try:
        unchecked = validate_objects(objects, crds.catalog)
    except ManifestValidationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=1) from exc
    except PermanentError as exc:  # e.g. the CRD directory named is missing
        typer.echo(f"cannot validate: {exc}", err=True)
        raise typer.Exit(code=1) from exc

    out.mkdir(parents=True, exist_ok=True)
    typer.echo(
        f"{spec.name} ({spec.serving.engine} {spec.serving.shape}) release {rendered.release} "
        f"in namespace {spec.namespace}: {len(objects)} objects, validated"
    )
    typer.echo("checks:")
    for check in [*plan_checks(spec, rendered), *report.checks]:
        typer.echo(f"  - {check}")
    if crds.catalog is not None:
        typer.echo(f"  - custom resources checked against the CRDs of {crds.catalog.origin}")
    if unchecked:
        typer.echo(f"  - NOT checked against a CRD schema: {', '.join(unchecked)}")
        typer.echo(f"    ({crds.missing_because}; pass --crd-dir DIR or set $LLM_ROLLOUT_CRD_DIR)")
    for obj in objects:
        kind, meta = obj["kind"], obj["metadata"]
        path = out / f"{kind.lower()}-{meta['name']}.yaml"
        path.write_text(to_yaml(obj), encoding="utf-8")
        where = f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]
        typer.echo(f"  {kind:<22} {where:<52} -> {path}")


def schema_command() -> None:
    """Print the JSON schema of the service spec."""
    from llm_rollout.spec import spec_json_schema

    typer.echo(json.dumps(spec_json_schema(), indent=2, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
    app.command("schema")(schema_command)
