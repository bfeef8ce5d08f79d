"""`sync SPEC`: run the model mirror alone (ModelScope -> OSS) and print the manifest location.

Exit codes: 0 complete and verified (stdout: the manifest's oss:// URI); 2 invalid spec;
1 permanent failure (wrong keys, missing bucket, unknown model, corrupt data, failed
expectations); 3 transient failure (run again: it resumes without re-sending verified bytes).
The hub endpoint comes from MODELSCOPE_ENDPOINT (else ModelScope's default), OSS from the spec.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from llm_rollout.mirror import FileOutcome

EXIT_PERMANENT = 1
EXIT_SPEC = 2
EXIT_TRANSIENT = 3

SpecArg = Annotated[Path, typer.Argument(help="Path of the service spec (YAML).")]


class _RichProgress:
    """MirrorProgress drawing one byte-progress bar on stderr."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None
        self._lock = threading.Lock()

    def on_start(self, total_files: int, total_bytes: int) -> None:
        self._task = self._progress.add_task(f"mirroring {total_files} files", total=total_bytes)

    def on_bytes(self, path: str, nbytes: int) -> None:
        if self._task is not None:
            with self._lock:
                self._progress.advance(self._task, nbytes)

    def on_file_done(self, outcome: FileOutcome) -> None:
        self._progress.console.log(f"{outcome.status:8} {outcome.record.path}")


def sync_command(
    spec_path: SpecArg,
    mode: Annotated[
        str,
        typer.Option(
            help="streamed (no local copy) or staged (the checked files downloaded first, "
            "then uploaded)."
        ),
    ] = "streamed",
    part_size_mb: Annotated[
        float | None, typer.Option(help="Multipart part size in MiB [default: MirrorOptions'].")
    ] = None,
    max_parallel_files: Annotated[
        int | None, typer.Option(help="Files in flight at once [default: MirrorOptions'].")
    ] = None,
    max_parallel_parts: Annotated[
        int | None, typer.Option(help="Parts in flight at once [default: MirrorOptions'].")
    ] = None,
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Multipart checkpoint directory.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Mirror the spec's ModelScope revision into OSS; print the manifest's oss:// URI."""
    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from llm_rollout.credentials import resolve_oss_credentials
    from llm_rollout.errors import PermanentError, RolloutError, SpecError, TransientError
    from llm_rollout.mirror import MirrorOptions, mirror_model
    from llm_rollout.mirror.inputs import mirror_inputs
    from llm_rollout.spec import load_spec

    err = Console(stderr=True)
    try:
        spec = load_spec(spec_path)
        inputs = mirror_inputs(spec)
        given = {
            "mode": mode,
            "part_size_mb": part_size_mb,
            "max_parallel_files": max_parallel_files,
            "max_parallel_parts": max_parallel_parts,
            "checkpoint_dir": checkpoint_dir,
        }
        # Options left out keep MirrorOptions' defaults (one place states them).
        options = MirrorOptions.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        typer.echo(f"--{field.replace('_', '-')}: {first['msg']}", err=True)
        raise typer.Exit(code=EXIT_SPEC) from exc
    except (SpecError, PermanentError) as exc:
        typer.echo(f"invalid spec {spec_path}: {exc}", err=True)
        raise typer.Exit(code=EXIT_SPEC) from exc

    try:
        credentials = resolve_oss_credentials(inputs.credentials)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not progress,
        ) as bar:
            result = mirror_model(
                inputs.source, inputs.target, credentials, options, _RichProgress(bar)
            )
    except TransientError as exc:
        typer.echo(f"mirror incomplete (transient, run again to resume): {exc}", err=True)
        raise typer.Exit(code=EXIT_TRANSIENT) from exc
    except RolloutError as exc:
        typer.echo(f"mirror failed: {exc}", err=True)
        raise typer.Exit(code=EXIT_PERMANENT) from exc
    err.print(
        f"mirrored {len(result.files)} files: {result.bytes_sent} bytes sent in "
        f"{result.seconds:.1f}s; {result.model_uri}"
    )
    # Where the time went, for whoever tunes part size and parallelism.
    err.print(
        "phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.phases.items()),
        soft_wrap=True,
    )
    typer.echo(result.manifest_uri)


def register(app: typer.Typer) -> None:
    """Add `sync` to the CLI."""
    app.command(name="sync")(sync_command)
