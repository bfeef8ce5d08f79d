"""HTTP calls that an `Interrupt` (a rollout Lease lost meanwhile, `locking.ServiceLock`) ends
while they are in progress: the smoke test's calls and its `/metrics` read.

A call blocked in a read is ended by shutting its socket down from the interrupt's thread:
the blocked read returns at once (end of stream), httpx raises a transport error in the
calling thread, which then closes the connection itself, and the server sees the connection
end. Closing the httpx client from the other thread instead would not do: `Client.close`
ends in `SyncStream.close`, a plain `socket.close()` (httpx `_transports/default.py`
`HTTPTransport.close` -> httpcore `_sync/connection_pool.py` `ConnectionPool.close` ->
httpcore `_backends/sync.py` `SyncStream.close`), which on Linux does not wake a thread
blocked reading that socket: the call runs on until its own timeout (then fails with EBADF),
and the descriptor may meanwhile be reused by another open. Measured with httpx 0.28.1:
closed from another thread 0.5 s into a stalled GET, the call still ended at its 6 s timeout
and the server saw the close then; shut down instead, it ended at 0.5 s.

The sockets come from httpx's `trace` request extension: httpcore reports each new
connection's network stream as the `return_value` of its `connect_tcp` / `start_tls`
`.complete` event (httpcore `_sync/connection.py` `_connect`, `_trace.py`), and the stream
gives its socket (`get_extra_info("socket")`). A kept-alive connection is reused without such
an event, so a guard can cut only connections opened by calls that carried its extensions:
give every call on the client them (the smoke test's client is its own). A connection attempt
still in progress is not cut: it ends within its connect timeout, and its socket is shut at
once when it arrives.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from llm_rollout.kube.watching import Interrupt

__all__ = ["InterruptibleCalls"]


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown even for an ssl.SSLSocket: SSLSocket.shutdown first drops
    # its SSL object (CPython Lib/ssl.py), which the thread reading through it may be about to
    # use. An already closed socket has no descriptor left to shut (OSError).
    with suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class InterruptibleCalls:
    """The calls one stage makes under `interrupt` (None: nothing ever interrupts them).

    Pass `extensions` with every request; inside `armed()`, the interrupt firing shuts every
    connection those requests opened, and `check` raises the interrupt's error: call it
    before each call and first thing on a transport error, so that a cut call is reported as
    the interrupt, never as the endpoint's fault (nor made again).
    """

    def __init__(self, interrupt: Interrupt | None) -> None:
        self._interrupt = interrupt
        self._guard = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._cut = False

    @property
    def extensions(self) -> dict[str, Callable[[str, Mapping[str, Any]], None]]:
        """httpx request extensions that let the interrupt reach the request's connection."""
        return {} if self._interrupt is None else {"trace": self._trace}

    def check(self, cause: BaseException | None = None) -> None:
        """Raise the interrupt's error (chained to `cause`) once it fired."""
        error = self._interrupt.interrupted() if self._interrupt is not None else None
        if error is not None:
            raise error from cause

    @contextmanager
    def armed(self) -> Iterator[InterruptibleCalls]:
        """While the block runs, the interrupt firing cuts the calls in progress. Raises the
        interrupt's error on entry if it already fired, and on a normal exit if it fired
        meanwhile (whatever a cut left behind is never returned as a result)."""
        if self._interrupt is None:
            yield self
            return
        unsubscribe = self._interrupt.subscribe(self._cut_all)
        try:
            self.check()
            yield self
            self.check()
        finally:
            unsubscribe()

    def _trace(self, event: str, info: Mapping[str, Any]) -> None:
        # Called in the calling thread for every httpcore step; only a finished connect or TLS
        # handshake returns a network stream.
        if not event.endswith(".complete"):
            return
        get_extra_info = getattr(info.get("return_value"), "get_extra_info", None)
        if get_extra_info is None:
            return
        sock = get_extra_info("socket")
        if not isinstance(sock, socket.socket):
            return
        with self._guard:
            cut = self._cut
            if not cut:
                self._sockets.append(sock)
        if cut:
            _shut(sock)

    def _cut_all(self) -> None:
        # The interrupt's thread (the lease keeper): shut, never close, so the descriptors stay
        # the calling thread's to close.
        with self._guard:
            self._cut = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)
