"""A fixed set of reusable part buffers: the mirror's whole transfer memory.

Parts are fetched straight into these buffers and sent from them (oss2 with its own CRC off
passes a memoryview to the socket unchanged), so a part costs no allocation after warm-up and
the process's transfer memory is `count * size` bytes whatever the model size. Reuse also keeps
glibc from turning freed multi-megabyte blocks into heap fragments that RSS never gives back.
"""

from __future__ import annotations

import threading


class BufferPool:
    """At most `count` buffers of `size` bytes, allocated on first use and then recycled."""

    def __init__(self, count: int, size: int) -> None:
        if count < 1 or size < 1:
            raise ValueError("a buffer pool needs count >= 1 and size >= 1")
        self.count = count
        self.size = size
        self._available = threading.BoundedSemaphore(count)
        self._lock = threading.Lock()
        self._free: list[bytearray] = []
        self._allocated = 0
        self._retiring = False

    @property
    def allocated(self) -> int:
        """How many buffers exist (in use or free)."""
        with self._lock:
            return self._allocated

    def acquire(self, *, blocking: bool = True) -> bytearray | None:
        """A buffer for the caller's exclusive use; None when none is free and not blocking."""
        if not self._available.acquire(blocking=blocking):
            return None
        with self._lock:
            if self._free:
                return self._free.pop()
            self._allocated += 1
        return bytearray(self.size)

    def release(self, buf: bytearray) -> None:
        """Give back a buffer obtained from `acquire` (dropped once the pool is retiring)."""
        with self._lock:
            if self._retiring:
                self._allocated -= 1
            else:
                self._free.append(buf)
        self._available.release()

    def retire(self) -> None:
        """No more buffers will be needed: drop the free ones now and each one given back."""
        with self._lock:
            self._retiring = True
            self._allocated -= len(self._free)
            self._free.clear()

    def clear(self) -> None:
        """Drop the free buffers (their memory goes back to the allocator)."""
        with self._lock:
            self._allocated -= len(self._free)
            self._free.clear()
