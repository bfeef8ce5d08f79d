"""Scriptable faults of the sandbox API server, and the request log tests read back.

A rule matches a request by method and path regex (the path without the query) and fires
`remaining` times (None: always) with a seeded probability. Actions:
- `throttle`: 429 TooManyRequests with a Retry-After header (like API priority and fairness);
- `error`: 500 InternalError (or another code) with a Status body;
- `reset`: close the connection without any response;
- `cut_watch`: let a watch stream deliver `after_events` events or run `after_seconds`,
  then close it mid-stream (no final chunk), as a load balancer dropping a long request does;
- `gone_watch`: let a watch stream deliver `after_events` events (default 0), then answer an
  ERROR event carrying a Status with code 410 (reason Expired) and end the stream, as a real
  server does when the watched resourceVersion was compacted away. Only watch requests match
  (`cut_watch` too); the client must re-list.
"""

from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass, field

STREAM_ACTIONS = ("cut_watch", "gone_watch")


@dataclass
class FaultRule:
    action: str  # "throttle" | "error" | "reset" | "cut_watch" | "gone_watch"
    method: str = "*"
    path: str = ".*"
    remaining: int | None = 1
    probability: float = 1.0
    retry_after: int = 1
    code: int = 500
    message: str = ""
    after_events: int | None = None
    after_seconds: float | None = None
    hits: int = 0
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.action not in ("throttle", "error", "reset", *STREAM_ACTIONS):
            raise ValueError(f"unknown fault action {self.action!r}")
        self._pattern = re.compile(self.path)

    @property
    def in_stream(self) -> bool:
        """Fires inside a watch stream (the request itself is answered normally)."""
        return self.action in STREAM_ACTIONS

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method.upper())) and bool(self._pattern.search(path))


class FaultPlan:
    def __init__(self, *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._random = random.Random(seed)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def throttle(
        self,
        method: str = "*",
        path: str = ".*",
        *,
        times: int | None = 1,
        retry_after: int = 1,
        probability: float = 1.0,
    ) -> FaultRule:
        return self.add(FaultRule("throttle", method, path, times, probability, retry_after))

    def error(
        self,
        method: str = "*",
        path: str = ".*",
        *,
        times: int | None = 1,
        code: int = 500,
        message: str = "",
        probability: float = 1.0,
    ) -> FaultRule:
        return self.add(
            FaultRule("error", method, path, times, probability, code=code, message=message)
        )

    def reset(
        self,
        method: str = "*",
        path: str = ".*",
        *,
        times: int | None = 1,
        probability: float = 1.0,
    ) -> FaultRule:
        return self.add(FaultRule("reset", method, path, times, probability))

    def cut_watch(
        self,
        path: str = ".*",
        *,
        after_events: int | None = None,
        after_seconds: float | None = None,
        times: int | None = 1,
    ) -> FaultRule:
        if after_events is None and after_seconds is None:
            raise ValueError("cut_watch needs after_events or after_seconds")
        return self.add(
            FaultRule(
                "cut_watch",
                "GET",
                path,
                times,
                after_events=after_events,
                after_seconds=after_seconds,
            )
        )

    def gone_watch(
        self, path: str = ".*", *, after_events: int = 0, times: int | None = 1
    ) -> FaultRule:
        """Watches of `path` end with an ERROR event, Status 410 Expired, after `after_events`."""
        return self.add(FaultRule("gone_watch", "GET", path, times, after_events=after_events))

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, method: str, path: str, *, watch: bool) -> FaultRule | None:
        """The rule that fires for this request, if any (its remaining count is consumed)."""
        with self._lock:
            for rule in self._rules:
                if rule.remaining is not None and rule.remaining <= 0:
                    continue
                if rule.in_stream and not watch:
                    continue
                if not rule.matches(method, path):
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                rule.hits += 1
                return rule
        return None


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: str
    status: int  # 0 when the connection was reset without a response
    user: str
    verb: str  # get, list, watch, create, update, patch, delete, proxy, ...
    content_type: str = ""


class RequestLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def writes(self) -> list[RequestRecord]:
        """Requests that could change state (dry runs included: check `query` for dryRun)."""
        return [r for r in self.records() if r.method in ("POST", "PUT", "PATCH", "DELETE")]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
