"""Repro: how often a streamed chat call breaks, one route at a time.

Each sequence is what a smoke test sends on one fresh client (GET /v1/models, a chat
completion, a streamed one); a break is a transport error (RemoteProtocolError: "incomplete
chunked read" when an answer is cut short). Routes:
- ``router``: the real sglang-router (PD) in front of SGLang stand-ins, local processes;
- ``pod``: the stand-in pod's IP on the real cluster (the harness namespace routes to it);
- ``port-forward``: the product's port-forward through the API server and the node agent;
- ``proxy-http1``: the API server's service proxy with an HTTP/1.1 client;
- ``proxy``: the same with the product's client (``httpx_client_for``, HTTP/2).

The cut of ``proxy-http1`` is upstream (Go net/http under kube-apiserver's service proxy,
golang/go issue 40747; see llm_rollout/kube/proxy.py ``httpx_client_for``); the API server
logs "ReverseProxy read error during body copy" for each. Concurrent loops make it likelier.

Run inside the harness's network namespace (the cluster routes need it):
    ./scripts/in-netns uv run python bench/stream_breaks.py [--sequences 600] [--threads 4]
        [--routes router,pod,port-forward,proxy-http1,proxy]
Target: 0 breaks on every route the product uses.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client as k8s

from llm_rollout.kube.objects import apply
from llm_rollout.kube.portforward import PortForwarder, pick_pod
from llm_rollout.kube.proxy import _tls_verify, auth_headers, httpx_client_for, service_proxy_url
from llm_rollout.kube.resources import ObjectRef
from llm_rollout.readiness import wait_ready
from sandbox.cluster import images
from sandbox.cluster.control_plane import ClusterConfig, start_cluster, stop_cluster
from sandbox.cluster.node_agent import NodeSpec
from sandbox.cluster.processes import Supervisor, http_ok
from sandbox.sglang_standin.workload import SGLANG_IMAGE, standin_deployment
from sandbox.vllm.engine import free_port

MODEL = "standin"
MESSAGES = [{"role": "user", "content": "hello"}]
CLUSTER = ClusterConfig(
    nodes=(NodeSpec(name="bench-node-0", internal_ip="10.244.254.1", gpus=1),),
    with_kuberay=False,
    with_lws=False,
)
LOCAL_ROUTES = ("router",)
ClientFactory = Callable[[], httpx.Client]


def sequence(client: httpx.Client, base_url: str) -> list[str]:
    """One smoke-shaped sequence; the outcome of each call ("ok" or the error's type)."""
    outcomes = []
    body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
    try:
        client.get(f"{base_url}/v1/models").raise_for_status()
        outcomes.append("models ok")
        client.post(f"{base_url}/v1/chat/completions", json=body).raise_for_status()
        outcomes.append("chat ok")
        stream = dict(body, stream=True, stream_options={"include_usage": True})
        with client.stream("POST", f"{base_url}/v1/chat/completions", json=stream) as response:
            response.raise_for_status()
            lines = [line for line in response.iter_lines() if line]
        outcomes.append("stream ok" if lines[-1] == "data: [DONE]" else "stream no [DONE]")
    except httpx.TransportError as exc:
        outcomes.append(f"break ({type(exc).__name__})")
    return outcomes


def hammer(make_client: ClientFactory, base_url: str, sequences: int, threads: int) -> Counter[str]:
    def loop(count: int) -> Counter[str]:
        counts: Counter[str] = Counter()
        for _ in range(count):
            with make_client() as client:
                counts.update(sequence(client, base_url))
        return counts

    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(loop, [sequences // threads] * threads))
    return sum(parts, Counter())


def _standin_model(directory: Path) -> Path:
    model = directory / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    return model


@contextmanager
def local_router(directory: Path) -> Iterator[str]:
    """The real sglang-router (PD) in front of one prefill and one decode stand-in."""
    supervisor = Supervisor(log_dir=directory / "logs")
    model = _standin_model(directory)
    runtime = images.resolve(SGLANG_IMAGE)
    assert runtime is not None
    launch = ["python3", "-m", "sglang.launch_server", "--model-path", str(model)]
    launch += ["--served-model-name", MODEL, "--host", "127.0.0.1"]

    def start(name: str, argv: list[str], port: int) -> str:
        host = runtime.command(argv)
        component = supervisor.start(name, host.argv, env=host.env)
        url = f"http://127.0.0.1:{port}"
        supervisor.wait_ready(component, lambda: http_ok(f"{url}/health"), timeout_s=120)
        return url

    try:
        bootstrap, prefill_port, decode_port, port = (free_port() for _ in range(4))
        prefill = start(
            "prefill",
            [
                *launch,
                *("--port", str(prefill_port), "--disaggregation-mode", "prefill"),
                *("--disaggregation-bootstrap-port", str(bootstrap)),
            ],
            prefill_port,
        )
        decode = start(
            "decode",
            [*launch, "--port", str(decode_port), "--disaggregation-mode", "decode"],
            decode_port,
        )
        router = ["python3", "-m", "sglang_router.launch_router", "--pd-disaggregation"]
        router += ["--prefill", prefill, str(bootstrap), "--decode", decode]
        router += ["--host", "127.0.0.1", "--port", str(port)]
        router += ["--prometheus-port", str(free_port())]
        yield start("router", router, port)
    finally:
        supervisor.stop_all()


def cluster_routes(
    api: k8s.ApiClient, routes: list[str], sequences: int, threads: int
) -> dict[str, Counter[str]]:
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(api)
    apply(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"config.json": "{}"}}
    apply(api, {**config_map, "metadata": {"name": "model", "namespace": namespace}})
    deployment = standin_deployment(namespace, "standin", model=MODEL, replicas=1, api_key=None)
    apply(api, deployment)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "standin", "namespace": namespace},
        "spec": {"selector": {"app": "standin"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    apply(api, service)
    wait_ready(api, ObjectRef.of(deployment), timeout_s=120)
    plain: ClientFactory = lambda: httpx.Client(timeout=30, trust_env=False)  # noqa: E731
    proxy_url = service_proxy_url(api, namespace, "standin", 80)
    results = {}
    for route in routes:
        if route == "pod":
            (pod,) = core.list_namespaced_pod(namespace, label_selector="app=standin").items
            assert pod.status is not None and pod.status.pod_ip, "a Ready pod has an IP"
            url = f"http://{pod.status.pod_ip}:8000"
            results[route] = hammer(plain, url, sequences, threads)
        elif route == "port-forward":
            with PortForwarder(api, pick_pod(api, namespace, "standin", 80)) as forwarder:
                results[route] = hammer(plain, forwarder.base_url, sequences, threads)
        elif route == "proxy":
            results[route] = hammer(
                lambda: httpx_client_for(api, timeout_s=30), proxy_url, sequences, threads
            )
        elif route == "proxy-http1":
            # The product's client but for its protocol: same credentials and TLS settings.
            def http1() -> httpx.Client:
                verify = _tls_verify(api.configuration)
                return httpx.Client(headers=auth_headers(api), verify=verify, timeout=30)

            results[route] = hammer(http1, proxy_url, sequences, threads)
        else:
            raise SystemExit(f"unknown route {route!r}")
    core.delete_namespace(namespace)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sequences", type=int, default=600)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--routes", default="router,pod,port-forward,proxy-http1,proxy")
    args = parser.parse_args()
    routes = args.routes.split(",")
    results: dict[str, Counter[str]] = {}
    with tempfile.TemporaryDirectory(prefix="stream-breaks-") as tmp:
        if "router" in routes:
            with local_router(Path(tmp)) as url:
                started = time.monotonic()
                results["router"] = hammer(
                    lambda: httpx.Client(timeout=30, trust_env=False),
                    url,
                    args.sequences,
                    args.threads,
                )
                print(f"router: {time.monotonic() - started:.0f} s", flush=True)
        remote = [r for r in routes if r not in LOCAL_ROUTES]
        if remote:
            cluster = start_cluster(CLUSTER)
            try:
                results.update(
                    cluster_routes(cluster.api_client(), remote, args.sequences, args.threads)
                )
            finally:
                stop_cluster(cluster)
    print(f"{'route':14} {'sequences':>9} {'streams ok':>10} {'breaks':>7}  detail")
    for route, counts in results.items():
        breaks = sum(v for k, v in counts.items() if k.startswith("break"))
        detail = {k: v for k, v in counts.items() if not k.endswith(" ok")}
        print(
            f"{route:14} {counts['models ok']:>9} {counts['stream ok']:>10} {breaks:>7}  {detail}"
        )


if __name__ == "__main__":
    main()
