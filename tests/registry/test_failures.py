"""What a report means (``failures``): statuses, busyness, patterns, and where the policy is set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from model_registry.errors import InvalidInstance
from model_registry.failures import (
    FailurePolicy,
    PolicyError,
    check_metadata,
    classify,
    parse_statuses,
    policy_from,
)
from model_registry.settings import Settings
from model_registry.validation import instance_from

DEFAULT = FailurePolicy()


@pytest.mark.parametrize(
    "ok, status, error, retry_after, kind",
    [
        (True, 200, None, None, "success"),
        (False, 500, "CUDA error: device-side assert", None, "failure"),
        (False, 502, None, None, "failure"),
        (False, 503, "engine dead", None, "failure"),
        (False, 504, None, None, "failure"),
        (False, 402, "insufficient credits", None, "failure"),
        (False, None, "TimeoutError", None, "failure"),
        (False, None, None, None, "failure"),
        (False, 429, "rate limited", None, "busy"),
        (False, 429, None, 7.0, "busy"),
        (False, 503, "overloaded", 4.0, "busy"),
        (False, 501, "not implemented", None, "ignored"),
        (False, 400, "prompt too long", None, "ignored"),
        (False, 404, None, None, "ignored"),
        (False, 422, None, None, "ignored"),
    ],
)
def test_the_default_classification(
    ok: bool, status: int | None, error: str | None, retry_after: float | None, kind: str
) -> None:
    assert classify(DEFAULT, ok, status, error, retry_after).kind == kind


def test_busy_is_passed_over_for_its_retry_after_or_the_default() -> None:
    assert classify(DEFAULT, False, 429, None, 7.0).pass_over == 7.0
    assert classify(DEFAULT, False, 429, None, None).pass_over == DEFAULT.busy_pass_over


def test_patterns_turn_any_report_into_a_failure() -> None:
    policy = FailurePolicy(body_patterns=("insufficient.*credits",), exception_patterns=("ssl: certificate",))
    verdict = classify(policy, False, 400, "Error: Insufficient CREDITS left", None)
    assert verdict.kind == "failure" and "insufficient.*credits" in verdict.why
    assert classify(policy, False, 429, "insufficient credits", None).kind == "failure"
    assert classify(policy, False, None, "SSL: CERTIFICATE_VERIFY_FAILED", None).kind == "failure"
    # Body patterns read answers (with a status), exception patterns errors without one.
    assert classify(policy, False, 400, "SSL: certificate", None).kind == "ignored"


def test_the_reason_quotes_the_status_and_the_error() -> None:
    verdict = classify(DEFAULT, False, 500, "CUDA error:\ndevice-side assert", None)
    assert verdict.why == 'HTTP 500 "CUDA error: device-side assert"'
    assert classify(DEFAULT, False, None, "TimeoutError", None).why == '"TimeoutError"'
    assert classify(DEFAULT, False, 502, None, None).why == "HTTP 502"


@pytest.mark.parametrize(
    "pattern, why",
    [
        (r"(a)\1", "invalid escape sequence"),
        (r"(?=lookahead)", "invalid perl operator"),
        (r"(unclosed", "missing )"),
        ("x" * 257, "1 to 256 characters"),
    ],
)
def test_patterns_that_need_backtracking_or_are_broken_are_refused(pattern: str, why: str) -> None:
    with pytest.raises(PolicyError, match="unhealthy_response_body_patterns") as caught:
        FailurePolicy(body_patterns=(pattern,))
    assert why in str(caught.value)


def test_too_many_patterns_are_refused() -> None:
    with pytest.raises(PolicyError, match="at most 32 patterns"):
        FailurePolicy(exception_patterns=tuple(f"p{n}" for n in range(33)))


def test_a_catastrophic_pattern_runs_in_linear_time() -> None:
    """(a+)+b on a long run of a's backtracks for ever in Python's re; RE2 does not."""
    policy = FailurePolicy(body_patterns=("(a+)+b",))
    started = time.perf_counter()
    assert classify(policy, False, 400, "a" * 1024, None).kind == "ignored"
    assert time.perf_counter() - started < 0.1


@pytest.mark.parametrize(
    "text, codes",
    [
        ("402,500,502-599", {402, 500, *range(502, 600)}),
        ("429", {429}),
        (" 429 , 503 ", {429, 503}),
        ("", set()),
        ([429, 529], {429, 529}),
    ],
)
def test_status_lists(text: str | list[int], codes: set[int]) -> None:
    assert parse_statuses(text) == codes


@pytest.mark.parametrize("text", ["abc", "600", "99", "599-500", "5xx", [True], ["429"]])
def test_bad_status_lists_are_refused(text: str | list) -> None:
    with pytest.raises(PolicyError):
        parse_statuses(text)


def test_per_model_sections_and_instance_metadata_layer_over_the_server() -> None:
    policy = policy_from(
        DEFAULT,
        {
            "unhealthy_threshold": 4,
            "unhealthy_exception_patterns": ["CUDA error"],
            "models": {"deepseek-*": {"unhealthy_threshold": 5, "busy_statuses": "429,529"}},
        },
    )
    assert policy.threshold == 4 and policy.for_model("llama").threshold == 4
    deepseek = policy.for_model("deepseek-r1")
    assert deepseek.threshold == 5 and deepseek.busy_statuses == {429, 529}
    assert deepseek.exception_patterns == ("CUDA error",)  # the server's, under the model's
    instance = policy.for_instance({"unhealthy_threshold": 1, "reset_timeout": 10}, "deepseek-r1")
    assert (instance.threshold, instance.window, instance.busy_statuses) == (1, 10.0, {429, 529})
    assert classify(deepseek, False, 529, None, None).kind == "busy"


@pytest.mark.parametrize(
    "document, field",
    [
        ({"unhealthy_threshold": 0}, "unhealthy_threshold"),
        ({"failure_cooldown": 700}, "failure_cooldown"),  # above max_cooldown
        ({"reset_on_success": "yes"}, "reset_on_success"),
        ({"failure_statuses": "5xx"}, "failure_statuses"),
        ({"unhealthy_response_body_patterns": "one"}, "unhealthy_response_body_patterns"),
        ({"typo_threshold": 3}, "typo_threshold"),
        ({"models": {"x*": {"trial_requests": 0}}}, "models.x*.trial_requests"),
        ({"models": []}, "models"),
    ],
)
def test_a_bad_policy_file_names_the_field(document: dict, field: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_from(DEFAULT, document)
    assert caught.value.field == field


def test_the_settings_read_the_policy_file_and_refuse_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "policy.json"
    good.write_text(json.dumps({"unhealthy_response_body_patterns": ["insufficient.*credits"]}))
    settings = Settings(failure_policy=good, trial_requests=2, no_reset_on_success=True)
    assert settings.failures.body_patterns == ("insufficient.*credits",)
    assert settings.failures.trial_requests == 2 and settings.failures.reset_on_success is False
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"unhealthy_exception_patterns": ["(?<=x)"]}))
    with pytest.raises(ValueError, match=r"unhealthy_exception_patterns.*RE2"):
        Settings(failure_policy=bad)
    with pytest.raises(ValueError, match="--failure-statuses"):
        Settings(failure_statuses="5xx")
    with pytest.raises(ValueError, match="cannot read"):
        Settings(failure_policy=tmp_path / "missing.json")


def test_patterns_in_metadata_are_checked_at_registration() -> None:
    check_metadata({"unhealthy_response_body_patterns": ["credits"], "gpu": "a100"})
    body = {"model_name": "m", "host": "10.0.0.1", "port": 8000}
    with pytest.raises(InvalidInstance) as caught:
        instance_from({**body, "metadata": {"unhealthy_response_body_patterns": [r"(a)\1"]}})
    assert caught.value.field == "metadata.unhealthy_response_body_patterns"
    with pytest.raises(InvalidInstance) as caught:
        instance_from({**body, "metadata": {"busy_statuses": "often"}})
    assert caught.value.field == "metadata.busy_statuses"
