from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from stepstone.errors import (
    ConfigurationError,
    NonDeterminismError,
    OwnershipLost,
    SerializationError,
    StepError,
    StepstoneError,
    WorkflowCancelled,
)
from stepstone.runtime.retry import NO_RETRY, RetryPolicy


class CustomBaseException(BaseException):
    """A BaseException that is not an Exception."""


def test_delay_grows_by_backoff() -> None:
    """delay(n) is initial_interval * backoff ** (n - 1) while under the cap."""
    policy = RetryPolicy(max_attempts=10, initial_interval=0.5, backoff=3.0, max_interval=1000.0)
    assert [policy.delay(n) for n in range(1, 6)] == pytest.approx([0.5, 1.5, 4.5, 13.5, 40.5])


def test_delay_is_capped_at_max_interval() -> None:
    """delay never exceeds max_interval once the backoff would pass it."""
    policy = RetryPolicy(max_attempts=10, initial_interval=1.0, backoff=2.0, max_interval=10.0)
    assert [policy.delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_delay_with_backoff_one_is_constant() -> None:
    """A backoff of 1 waits initial_interval after every failure."""
    policy = RetryPolicy(max_attempts=5, initial_interval=2.5, backoff=1)
    assert [policy.delay(n) for n in range(1, 5)] == [2.5, 2.5, 2.5, 2.5]


def test_delay_returns_float_for_int_settings() -> None:
    """delay returns a float even when every setting is an int."""
    policy = RetryPolicy(initial_interval=1, backoff=2, max_interval=60)
    assert type(policy.delay(1)) is float
    assert type(policy.delay(100)) is float
    assert policy.delay(100) == 60.0


def test_delay_matches_docstring_example() -> None:
    """The documented example RetryPolicy(5, 0.1, 2.0).delay(3) gives 0.4."""
    assert RetryPolicy(max_attempts=5, initial_interval=0.1, backoff=2.0).delay(3) == 0.4


@pytest.mark.parametrize("attempt", [1030, 5000])
def test_delay_stays_capped_for_very_large_attempt_numbers(attempt: int) -> None:
    """delay returns max_interval, not OverflowError, for attempts far past the cap."""
    policy = RetryPolicy(max_attempts=10_000, initial_interval=1.0, backoff=2.0, max_interval=60.0)
    assert policy.delay(attempt) == 60.0


@pytest.mark.parametrize(("attempt", "expected"), [(1, True), (2, True), (3, False), (4, False)])
def test_retries_until_max_attempts(attempt: int, expected: bool) -> None:
    """An ordinary exception is retried while attempt < max_attempts, and not at or past it."""
    assert RetryPolicy(max_attempts=3).retries(ValueError("x"), attempt) is expected


def test_no_retry_has_a_single_attempt() -> None:
    """NO_RETRY allows exactly one attempt and never retries."""
    assert NO_RETRY.max_attempts == 1
    assert NO_RETRY.retries(ValueError("x"), 1) is False


@pytest.mark.parametrize(
    ("non_retryable", "exc", "expected"),
    [
        ((KeyError,), KeyError("k"), False),
        ((LookupError,), KeyError("k"), False),  # subclass of a listed type
        ((LookupError,), IndexError(0), False),
        ((ValueError, PermissionError), PermissionError(), False),
        ((OSError,), FileNotFoundError(), False),
        ((KeyError,), ValueError("v"), True),
        ((KeyError,), LookupError("base of a listed type"), True),
        ((), KeyError("k"), True),
    ],
)
def test_non_retryable_types_and_subclasses_are_not_retried(
    non_retryable: tuple[type[BaseException], ...], exc: Exception, expected: bool
) -> None:
    """Exceptions of a non_retryable type or a subclass fail at once; others are retried."""
    policy = RetryPolicy(max_attempts=5, non_retryable=non_retryable)
    assert policy.retries(exc, 1) is expected


@pytest.mark.parametrize(
    "exc",
    [
        StepstoneError("root"),
        ConfigurationError("bad"),
        SerializationError("too big"),
        StepError("ValueError", "boom"),
        WorkflowCancelled("cancelled", "wf-1"),
        OwnershipLost("wf-1", "exec-1", 3),
        NonDeterminismError("wf-1", 2, "a", "b", "here"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_stepstone_errors_are_never_retried(exc: StepstoneError) -> None:
    """Any StepstoneError subclass fails the step at once, even with attempts left."""
    assert RetryPolicy(max_attempts=10).retries(exc, 1) is False


@pytest.mark.parametrize(
    "exc",
    [KeyboardInterrupt(), SystemExit(1), GeneratorExit(), CustomBaseException()],
    ids=lambda exc: type(exc).__name__,
)
def test_base_exceptions_that_are_not_exceptions_are_never_retried(exc: BaseException) -> None:
    """A BaseException that is not an Exception (KeyboardInterrupt...) is never retried."""
    assert RetryPolicy(max_attempts=10).retries(exc, 1) is False


@pytest.mark.parametrize(
    "exc", [ValueError("v"), RuntimeError(), OSError(5, "io"), TimeoutError()], ids=repr
)
def test_ordinary_exceptions_are_retried(exc: Exception) -> None:
    """Ordinary Exceptions not listed as non_retryable are retried while attempts remain."""
    assert RetryPolicy(max_attempts=2).retries(exc, 1) is True


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"max_attempts": 0}, ["max_attempts", "0"]),
        ({"max_attempts": -1}, ["max_attempts", "-1"]),
        ({"max_attempts": 1.5}, ["max_attempts", "1.5"]),
        ({"max_attempts": "3"}, ["max_attempts", "'3'"]),
        ({"max_attempts": None}, ["max_attempts", "None"]),
        ({"initial_interval": -1}, ["initial_interval", "-1"]),
        ({"initial_interval": -0.001}, ["initial_interval", "-0.001"]),
        ({"initial_interval": "1"}, ["initial_interval", "'1'"]),
        ({"max_interval": -5.0}, ["max_interval", "-5.0"]),
        ({"backoff": 0.5}, ["backoff", "0.5"]),
        ({"backoff": 0}, ["backoff", "0"]),
        ({"backoff": -2}, ["backoff", "-2"]),
        ({"non_retryable": [ValueError]}, ["non_retryable", "[<class 'ValueError'>]"]),
        ({"non_retryable": ValueError}, ["non_retryable", "<class 'ValueError'>"]),
        ({"non_retryable": (ValueError, "KeyError")}, ["non_retryable", "'KeyError'"]),
        ({"non_retryable": (ValueError, int)}, ["non_retryable", "<class 'int'>"]),
        ({"non_retryable": (ValueError("x"),)}, ["non_retryable", "ValueError('x')"]),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_invalid_settings_raise_configuration_error_naming_the_value(
    kwargs: dict[str, Any], fragments: list[str]
) -> None:
    """Invalid settings raise ConfigurationError whose message names the field and bad value."""
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_interval": float("nan")},
        {"max_interval": float("nan")},
        {"backoff": float("nan")},
    ],
    ids=lambda v: next(iter(v)),
)
def test_nan_settings_raise_configuration_error(kwargs: dict[str, float]) -> None:
    """NaN is not a number of seconds >= 0 (nor a backoff >= 1) and is rejected."""
    with pytest.raises(ConfigurationError, match="nan"):
        RetryPolicy(**kwargs)


def test_boundary_settings_are_accepted() -> None:
    """max_attempts 1, zero intervals and backoff 1 are valid."""
    policy = RetryPolicy(max_attempts=1, initial_interval=0, backoff=1, max_interval=0)
    assert policy.delay(1) == 0.0
    assert policy.retries(ValueError(), 1) is False


def test_policy_is_immutable() -> None:
    """A RetryPolicy cannot be changed after validation."""
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 0  # type: ignore[misc]
