"""The README's main job: deploy an example spec end to end against the local sandbox.

Starts the ModelScope hub stand-in (serving a small synthetic model under the example's model
id), the OSS stand-in (with known fake keys, exported as the variables the spec names), and the
Kubernetes stand-in with GPU nodes and the upstream CRDs; writes a copy of the example spec
pointing at the sandbox OSS; then runs `llm-rollout deploy` on it, exactly as a user would
against a real cluster (KUBECONFIG and MODELSCOPE_ENDPOINT select the endpoints). Everything
stops on exit.

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

from sandbox.hub import HubServer
from sandbox.kube.cluster import ClusterConfig, SandboxCluster
from sandbox.oss import OssServer
from sandbox.synthetic import make_synthetic_model

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLE = REPO_ROOT / "examples" / "seed-vllm-lws.yaml"
WORKDIR = REPO_ROOT / ".sandbox" / "demo"
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

    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    with ExitStack() as stack:
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
        cluster = stack.enter_context(SandboxCluster(ClusterConfig(), WORKDIR / "kube"))

        os.environ["MODELSCOPE_ENDPOINT"] = hub.base_url
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        os.environ[str(creds["access_key_id_env"])] = DEMO_ACCESS_KEY_ID
        os.environ[str(creds["access_key_secret_env"])] = DEMO_ACCESS_KEY_SECRET

        spec_path = WORKDIR / example.name
        spec_path.write_text(
            yaml.safe_dump(sandbox_spec(example, oss.endpoint, bucket), sort_keys=False),
            encoding="utf-8",
        )
        sys.stdout.write(
            f"sandbox: hub {hub.base_url}, OSS {oss.endpoint}, Kubernetes {cluster.url}\n"
            f"deploying {spec_path.relative_to(REPO_ROOT)} (from {example.name})\n"
        )

        from cli import app

        # Outside standalone mode click returns the command's exit code instead of exiting.
        code = app(["deploy", str(spec_path)], standalone_mode=False)
        return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
