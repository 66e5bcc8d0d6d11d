"""What an instance asks to be probed and scraped, and where a probe may go (SSRF)."""

from __future__ import annotations

import pytest

from model_registry.errors import InvalidInstance
from model_registry.probes import Check, Scrape, check_from, scrape_from, target_url


def test_a_check_takes_kubernetes_like_defaults() -> None:
    assert check_from({"http": "/health"}) == Check(
        http="/health", interval=10.0, timeout=2.0, healthy_after=1, unhealthy_after=3
    )
    given = check_from(
        {"http": "/ready", "interval": 5, "timeout": 0.5, "healthy_after": 2, "unhealthy_after": 4}
    )
    assert (given.interval, given.timeout, given.healthy_after, given.unhealthy_after) == (5.0, 0.5, 2, 4)
    assert scrape_from({"url": "/metrics"}) == Scrape(url="/metrics", interval=10.0)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({}, "check.http"),
        ({"http": ""}, "check.http"),
        ({"http": 5}, "check.http"),
        ({"http": "/h" * 2000}, "check.http"),
        ({"http": "/health", "interval": 0.5}, "check.interval"),
        ({"http": "/health", "interval": 86_400}, "check.interval"),
        ({"http": "/health", "interval": "10"}, "check.interval"),
        ({"http": "/health", "interval": float("nan")}, "check.interval"),
        ({"http": "/health", "timeout": 0}, "check.timeout"),
        ({"http": "/health", "timeout": 61, "interval": 120}, "check.timeout"),
        ({"http": "/health", "timeout": 10, "interval": 10}, "check.timeout"),
        ({"http": "/health", "healthy_after": 0}, "check.healthy_after"),
        ({"http": "/health", "unhealthy_after": 101}, "check.unhealthy_after"),
        ({"http": "/health", "unhealthy_after": 2.5}, "check.unhealthy_after"),
        ({"http": "/health", "unhealthy_after": True}, "check.unhealthy_after"),
        ({"http": "/health", "tcp": 8000}, "check.tcp"),
    ],
)
def test_a_bad_check_names_its_field(value: dict, field: str) -> None:
    with pytest.raises(InvalidInstance) as info:
        check_from(value)
    assert info.value.problems[0][0] == field, info.value.problems
    assert info.value.status == 422


def test_a_check_or_scrape_that_is_not_an_object_is_refused() -> None:
    for bad in ("/health", None, ["/health"], 3):
        with pytest.raises(InvalidInstance) as info:
            check_from(bad)
        assert info.value.problems[0][0] == "check"
    with pytest.raises(InvalidInstance) as info:
        scrape_from({"url": "/metrics", "interval": 0})
    assert info.value.problems[0][0] == "metrics.interval"


def test_a_path_is_fetched_from_the_instance_itself() -> None:
    assert target_url("10.0.0.5", 8000, "/health", "check.http") == "http://10.0.0.5:8000/health"
    assert target_url("fd00::5", 8000, "/metrics?x=1", "metrics.url") == "http://[fd00::5]:8000/metrics?x=1"
    assert target_url("gpu-1", 80, "/health", "check.http") == "http://gpu-1:80/health"


def test_a_full_url_may_name_the_instance_itself() -> None:
    assert target_url("10.0.0.5", 8000, "http://10.0.0.5:8000/health", "f") == "http://10.0.0.5:8000/health"
    assert target_url("gpu-1", 443, "https://GPU-1/health", "f") == "https://GPU-1/health"
    assert target_url("::1", 8000, "http://[0:0::1]:8000/h", "f") == "http://[0:0::1]:8000/h"


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",  # the cloud's metadata service
        "http://10.0.0.5:9000/health",  # the right host, another port
        "http://10.0.0.6:8000/health",  # another host
        "http://localhost:8000/admin",
        "//10.0.0.6:8000/health",  # scheme-relative: another host
        "http://10.0.0.5:8000@evil.example/",  # credentials that hide the host
        "http://user:pw@10.0.0.5:8000/",
        "file:///etc/passwd",
        "gopher://10.0.0.5:8000/",
        "10.0.0.5:8000/health",
        "/health\r\nHost: evil",
        "/a b",
        "/health#x",
        "http://10.0.0.5:99999/",
        "http://[zz]:8000/",
    ],
)
def test_a_probe_may_not_go_anywhere_else(target: str) -> None:
    with pytest.raises(InvalidInstance) as info:
        target_url("10.0.0.5", 8000, target, "check.http")
    [(field, message)] = info.value.problems
    assert field == "check.http" and message


def test_the_operator_may_allow_other_hosts_by_name() -> None:
    allowed = frozenset({"sidecar.local"})
    url = "http://sidecar.local:9090/probe/10.0.0.5"
    assert target_url("10.0.0.5", 8000, url, "check.http", allowed) == url
    with pytest.raises(InvalidInstance) as info:
        target_url("10.0.0.5", 8000, "http://other.local/", "check.http", allowed)
    assert "--probe-allowed-hosts" in info.value.problems[0][1]
