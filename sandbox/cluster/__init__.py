"""A real Kubernetes control plane for the tests: upstream binaries built from pinned Go modules
(``build.py``), started as plain processes inside the test run's own network namespace
(``control_plane.py``), with a node agent of our own standing in for kubelets
(``node_agent.py``)."""
