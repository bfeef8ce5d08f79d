"""A Kubernetes stand-in: object store, API server over HTTP, CRD install, pod network.

Controllers (scheduler, kubelet, workload controllers) live beside it and use the store
in-process; the real `kubernetes` client reaches it over HTTP through `ApiServer`.

Public pieces (API-server side):
- `controlplane.build_control_plane(crd_dir, lws=, rbg=, kuberay=, history_size=,
  bookmark_interval=, faults=, network=, start=)` -> `ControlPlane(store, network, api, crds)`;
- `store.Store` (+ `ResourceType`, errors `NotFound`, `Conflict`/`AlreadyExists`, `Invalid`,
  `BadRequest`, `Gone`, `Forbidden`), see its module docstring for controller conventions;
- `apiserver.ApiServer(store, network, faults=)`: `start()`, `stop()`, `write_kubeconfig()`,
  `faults` (`faults.FaultPlan`), `request_log` (`faults.RequestLog`), `tokens`;
- `network.PodNetwork`: `bind`, `unbind_pod`, `resolve`;
- `crds.install_crds(store, crd_dir, lws=, rbg=, kuberay=)`; `validation.SchemaValidator`.
"""
