"""Prefect tasks: thin edges over the plain functions in `llm_rollout`.

A task adds retries (transient errors only), timeouts, logging and artifacts; the logic it wraps
lives in `llm_rollout` and is tested without Prefect.
"""
