"""The error hierarchy every layer raises.

Two branches matter to callers: `PermanentError` (retrying cannot help: bad input, missing
objects, wrong credentials) and `TransientError` (the same call may succeed later: throttling,
dropped connections, 5xx). Prefect tasks retry only the transient branch.

Messages must never contain secret material or raw request/response payloads, because they end
up in logs, Prefect states and artifacts. Chain the original exception with `raise ... from exc`
so the cause stays inspectable in-process without being rendered into the message.
"""

from __future__ import annotations


class RolloutError(Exception):
    """Base of every error llm-rollout raises on purpose."""


class PermanentError(RolloutError):
    """Retrying the same operation cannot succeed; fail fast."""


class TransientError(RolloutError):
    """The operation may succeed if tried again after a delay."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SpecError(PermanentError):
    """The user's spec is invalid. `field` is the dotted path of the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class ManifestValidationError(PermanentError):
    """A rendered object failed offline validation; nothing was applied."""


class PreflightError(PermanentError):
    """One or more preconditions failed; `problems` lists every one found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("preflight failed:\n" + "\n".join(f"- {p}" for p in problems))
        self.problems = list(problems)


def is_transient(exc: BaseException) -> bool:
    """True when `exc` (or an exception it was raised from) is a `TransientError`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TransientError):
            return True
        if isinstance(current, PermanentError):
            return False
        seen.add(id(current))
        current = current.__cause__
    return False
