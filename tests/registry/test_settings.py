"""Settings: defaults derived from what was set, refusals that name the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from model_registry.api.cli import _parser
from model_registry.settings import Settings, backends_of


def test_the_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    assert (settings.heartbeat_interval, settings.heartbeat_timeout, settings.flush_interval) == (10, 30, 1)


def test_a_short_timeout_alone_brings_the_interval_and_the_flush_down_with_it() -> None:
    settings = Settings(heartbeat_timeout=1)
    assert settings.heartbeat_timeout == 1
    assert settings.heartbeat_interval == pytest.approx(1 / 3)
    assert settings.flush_interval == 0.25


def test_a_long_interval_alone_lengthens_the_timeout() -> None:
    settings = Settings(heartbeat_interval=20)
    assert (settings.heartbeat_interval, settings.heartbeat_timeout, settings.flush_interval) == (20, 60, 1)


def test_a_long_timeout_keeps_the_usual_interval_and_flush() -> None:
    settings = Settings(heartbeat_timeout=300)
    assert (settings.heartbeat_interval, settings.flush_interval) == (10, 1)


def test_derived_defaults_come_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_HEARTBEAT_TIMEOUT", "2")
    settings = Settings()
    assert (settings.heartbeat_timeout, settings.flush_interval) == (2, 0.5)


def test_an_explicit_value_that_breaks_a_rule_is_still_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError, match=r"at most a quarter of the timeout \(0.25 s\)"):
        Settings(heartbeat_timeout=1, flush_interval=1)
    with pytest.raises(ValidationError, match="at least 2x the interval"):
        Settings(heartbeat_interval=10, heartbeat_timeout=15)


def test_help_says_which_backends_each_setting_applies_to() -> None:
    assert backends_of("flush_interval") == "sqlite, postgresql"
    assert backends_of("db_pool_size") == "postgresql"
    assert backends_of("heartbeat_timeout") == "all backends"
    serve = _parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    text = serve.format_help()
    assert "[postgresql]" in text and "[sqlite, postgresql]" in text
    assert "min(1, heartbeat-timeout / 4)" in " ".join(text.split())


def test_serve_starts_with_only_a_short_timeout_given(tmp_path) -> None:
    from tests.process import ServerProcess

    with ServerProcess(
        "--storage", f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", "--heartbeat-timeout", "1"
    ) as server:
        assert server.url.startswith("http://127.0.0.1:")
    assert server.proc.returncode == 0
