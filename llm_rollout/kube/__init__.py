"""The Kubernetes edge: client loading, generic verbs, watch-based waits, service proxy.

Modules: `client` (load_api_client, server_version), `resources` (ObjectRef, discovery, raw
requests, list, pod logs), `objects` (apply/get/delete for any kind), `watching` (watch
streams, wait_deleted, wait_pvc_bound), `readiness` (wait_ready), `proxy` (service proxy URL
and an httpx client carrying the cluster credentials), `errors` (translated API errors).
"""
