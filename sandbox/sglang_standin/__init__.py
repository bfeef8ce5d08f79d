"""A STAND-IN for SGLang's server (``python -m sglang.launch_server``), not SGLang.

Real SGLang needs CUDA kernels and does not run on this machine. The image table
(``sandbox.cluster.images``) runs this module for the SGLang images' ``sglang.launch_server``
entrypoint. It implements only:

- the flags our templates render (``--model-path``, ``--served-model-name``, ``--tp``, ``--host``,
  ``--port``, ``--enable-metrics``, ``--dist-init-addr``, ``--nnodes``, ``--node-rank``,
  ``--disaggregation-mode``, ``--disaggregation-bootstrap-port``, ...), with SGLang
  0.4.10.post2's names, choices and defaults (``python/sglang/srt/server_args.py``); any other
  flag is refused with exit code 2;
- what the pinned sglang-router (0.1.8) calls on its workers (``sgl-router/src/core/worker.rs``,
  ``routers/pd_router.rs``, ``routers/router.rs``): ``/health``, ``/health_generate``,
  ``/get_server_info``, ``/get_model_info``, ``/v1/models``, ``/generate``,
  ``/v1/chat/completions``, ``/v1/completions``, ``/flush_cache``, and in PD mode the bootstrap
  fields the router adds to each request (``bootstrap_host``, ``bootstrap_port``,
  ``bootstrap_room``, ``routers/pd_types.rs``);
- what our smoke test calls: ``/v1/models``, chat completions plain and streamed with usage,
  ``/metrics`` (``sglang:`` counters) under ``--enable-metrics``.

Its answers are deterministic text (the tiny model's answer when ``--model-path`` holds
``tiny_model.json``), not inference. The PD "KV transfer" is a stand-in handshake: a decode
server waits until the prefill named by the router's bootstrap fields has seen the same
``bootstrap_room`` (asked over the prefill's bootstrap port), so a wrong bootstrap host or port
fails the request as a real transfer would. Multi-node (``--nnodes``): rank 0 waits for every
other rank to connect to ``--dist-init-addr`` before it reports healthy; ranks >= 1 serve only
``/health`` and ``/health_generate`` (SGLang's ``launch_dummy_health_check_server``,
``python/sglang/srt/utils.py``), and any rank exits when its peers drop, as a broken NCCL
group ends every rank.

One test knob, not SGLang: a chat completion whose message is ``server.HOLD_PROMPT`` is held
unanswered until its client closes the connection, both moments logged (a call cut short by
its client, seen from the server).
"""
