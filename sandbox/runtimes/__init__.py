"""Runtimes the image table (``sandbox.cluster.images``) points to beyond the vLLM engine venv:
their installation (``install``) and the flags they need on this CPU (``adapt``)."""
