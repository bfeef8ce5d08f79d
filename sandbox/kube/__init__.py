"""A Kubernetes stand-in: object store, API server over HTTP, CRD install, pod network.

Controllers (scheduler, kubelet, workload controllers) live beside it and use the store
in-process; the real `kubernetes` client reaches it over HTTP through `ApiServer`.
"""
