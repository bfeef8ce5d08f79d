"""The Kubernetes edge: client loading, generic verbs, watch-based waits, service proxy.

Modules: `session` (the process's one session: client, discovery, field manager, retry
policy, get/list/apply/delete/watch and `wait_until`), `client` (the shared client and new
ones from a named kubeconfig, server_version), `resources` (ObjectRef, discovery, raw
requests, list, pod logs), `objects` (apply/get/delete for any kind), `views` (typed read-only
views of objects read), `watching` (watch streams, `wait_until`, wait_deleted,
wait_pvc_bound), `proxy` (service proxy URL and an httpx client carrying the cluster
credentials), `portforward`, `errors` (translated API errors).
"""
