"""Prefect flows: deploy, refresh and redeploy, composed from `tasks`."""
