"""A Deployment of the SGLang stand-in for the real cluster, as tests and benches apply it."""

from __future__ import annotations

from typing import Any

SGLANG_IMAGE = "lmsysorg/sglang:v0.4.10.post2-cu126"
PORT = 8000


def standin_deployment(
    namespace: str, name: str, *, model: str, replicas: int, api_key: str | None
) -> dict[str, Any]:
    """``replicas`` stand-in servers of ``model`` on port 8000 (named ``http``), labelled
    ``app: <name>``, reading their model directory (a ``config.json`` is all the stand-in
    needs) from the ConfigMap ``model`` of ``namespace``."""
    labels = {"app": name}
    argv = ["python3", "-m", "sglang.launch_server", "--model-path", "/models/qwen"]
    argv += ["--served-model-name", model, "--host", "0.0.0.0", "--port", str(PORT)]
    argv += ["--enable-metrics"]
    if api_key is not None:
        argv += ["--api-key", api_key]
    container = {
        "name": "sglang",
        "image": SGLANG_IMAGE,
        "command": argv,
        "ports": [{"name": "http", "containerPort": PORT}],
        "volumeMounts": [{"name": "model", "mountPath": "/models/qwen", "readOnly": True}],
        # SGLang's /health generates one token (the stand-in takes at least 1 s for it).
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": PORT},
            "periodSeconds": 1,
            "timeoutSeconds": 10,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [container],
                    "volumes": [{"name": "model", "configMap": {"name": "model"}}],
                },
            },
        },
    }
