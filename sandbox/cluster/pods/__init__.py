"""The node agent's pod runner: sandboxes, containers, probes, status and the kubelet endpoint."""
