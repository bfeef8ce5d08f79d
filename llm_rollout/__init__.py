"""llm-rollout core: spec, errors, rendering, validation and the helpers that talk to the
hub, OSS and Kubernetes. Nothing in this package imports Prefect tasks or flows; those layers
sit on top of it (cli -> flows -> tasks -> llm_rollout)."""

__version__ = "0.1.0"
