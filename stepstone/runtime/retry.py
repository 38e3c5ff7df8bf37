"""`RetryPolicy`: how often, and how far apart, a failing step body is tried again."""

from __future__ import annotations

from dataclasses import dataclass

from stepstone.errors import ConfigurationError, StepstoneError

__all__ = ["NO_RETRY", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry a step body up to `max_attempts` times in all, waiting `initial_interval`
    seconds after the first failure, multiplied by `backoff` after each further one and
    capped at `max_interval`. Exceptions of the `non_retryable` types fail the step at once.

    >>> RetryPolicy(max_attempts=5, initial_interval=0.1, backoff=2.0).delay(3)
    0.4
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if not _is_int(self.max_attempts) or self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        for name in ("initial_interval", "max_interval"):
            value = getattr(self, name)
            if not _is_number(value) or not value >= 0:
                raise ConfigurationError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if not _is_number(self.backoff) or not self.backoff >= 1:
            raise ConfigurationError(f"backoff must be a number >= 1, got {self.backoff!r}")
        kinds = self.non_retryable
        if not isinstance(kinds, tuple) or not all(
            isinstance(k, type) and issubclass(k, BaseException) for k in kinds
        ):
            raise ConfigurationError(
                f"non_retryable must be a tuple of exception types, got {kinds!r}"
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        try:
            grown = self.initial_interval * self.backoff ** (attempt - 1)
        except OverflowError:
            return float(self.max_interval)
        return float(min(self.max_interval, grown))

    def retries(self, exc: BaseException, attempt: int) -> bool:
        """Whether a body that raised `exc` on attempt `attempt` is tried again."""
        return (
            attempt < self.max_attempts
            and isinstance(exc, Exception)
            and not isinstance(exc, (StepstoneError, *self.non_retryable))
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    # NaN compares false with everything, so callers check `not value >= bound`.
    return _is_int(value) or isinstance(value, float)


NO_RETRY = RetryPolicy(max_attempts=1)
"""The policy of a step declared without one: a single attempt."""
