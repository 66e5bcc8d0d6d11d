"""An engine's /metrics text to an EngineLoad: fixtures in vLLM's and SGLang's formats, and bad texts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_registry import engines
from model_registry.engines import (
    METRIC_NAMES,
    EngineLoad,
    EngineMetricsError,
    parse_engine_metrics,
)

FIXTURES = Path(__file__).parent / "fixtures"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def sglang(name: str, value: float | str, **labels: str) -> str:
    """One SGLang sample line, with the labels its scheduler writes."""
    labels = {"engine_type": "unified", "model_name": LLAMA, "pp_rank": "0", "tp_rank": "0", **labels}
    series = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"sglang:{name}{{{series}}} {value}\n"


def vllm(name: str, value: float | str, engine: str = "0", model: str = LLAMA) -> str:
    return f'vllm:{name}{{engine="{engine}",model_name="{model}"}} {value}\n'


# vLLM


def test_vllm_sums_the_engines_requests_and_takes_the_fullest_cache() -> None:
    # two data-parallel engines: 12 + 9 running, 3 + 0 waiting, caches at 0.4375 and 0.61
    load = parse_engine_metrics(fixture("vllm_metrics.txt"))

    assert load == EngineLoad(waiting=3.0, running=21.0, kv_cache_usage=0.61)


def test_vllm_with_its_model_reads_the_same() -> None:
    text = fixture("vllm_metrics.txt")

    assert parse_engine_metrics(text, LLAMA) == parse_engine_metrics(text)


def test_vllm_old_cache_name() -> None:
    # the V0 engine: only vllm:gpu_cache_usage_perc, labelled by model_name alone
    text = fixture("vllm_legacy_metrics.txt")
    assert "vllm:kv_cache_usage_perc" not in text

    assert parse_engine_metrics(text) == EngineLoad(waiting=2.0, running=7.0, kv_cache_usage=0.8125)
    assert parse_engine_metrics(text, LLAMA).kv_cache_usage == 0.8125


def test_vllm_new_cache_name_wins_over_the_old_one() -> None:
    text = vllm("gpu_cache_usage_perc", 0.9) + vllm("kv_cache_usage_perc", 0.25)

    assert parse_engine_metrics(text).kv_cache_usage == 0.25


def test_a_metric_whose_name_starts_like_a_known_one_is_not_read() -> None:
    text = (
        vllm("num_requests_waiting", 2)
        + 'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 40\n'
    )

    assert parse_engine_metrics(text).waiting == 2.0


# SGLang


def test_sglang_two_models_summed_and_the_fullest_cache() -> None:
    # Llama: 5 queued, 17 running, 0.72 of its tokens; Qwen: 1, 4, 0.18
    load = parse_engine_metrics(fixture("sglang_metrics.txt"))

    assert load == EngineLoad(waiting=6.0, running=21.0, kv_cache_usage=0.72)


@pytest.mark.parametrize(
    ("model", "expected"),
    [(LLAMA, EngineLoad(5.0, 17.0, 0.72)), (QWEN, EngineLoad(1.0, 4.0, 0.18))],
)
def test_sglang_one_model(model: str, expected: EngineLoad) -> None:
    assert parse_engine_metrics(fixture("sglang_metrics.txt"), model) == expected


def test_a_model_not_in_the_text_is_an_error_naming_those_that_are() -> None:
    with pytest.raises(EngineMetricsError, match="model_name='mistral'") as raised:
        parse_engine_metrics(fixture("sglang_metrics.txt"), "mistral")

    assert repr(LLAMA) in str(raised.value) and repr(QWEN) in str(raised.value)


def test_sglang_pipeline_stages_count_once() -> None:
    # every stage's scheduler holds the same queue
    text = sglang("num_queue_reqs", 4, pp_rank="0") + sglang("num_queue_reqs", 4, pp_rank="1")

    assert parse_engine_metrics(text).waiting == 4.0


def test_sglang_data_parallel_ranks_add_up() -> None:
    text = (
        sglang("num_running_reqs", 3, dp_rank="0")
        + sglang("num_running_reqs", 5, dp_rank="1")
        + sglang("token_usage", 0.5, dp_rank="0")
        + sglang("token_usage", 0.75, dp_rank="1")
    )

    assert parse_engine_metrics(text) == EngineLoad(running=8.0, kv_cache_usage=0.75)


def test_sglang_priority_breakdown_is_not_counted_twice() -> None:
    # the total under priority="", then the same requests per priority
    text = (
        sglang("num_queue_reqs", 7, priority="")
        + sglang("num_queue_reqs", 5, priority="0")
        + sglang("num_queue_reqs", 2, priority="10")
    )

    assert parse_engine_metrics(text).waiting == 7.0


def test_a_priority_breakdown_without_its_total_is_no_load() -> None:
    with pytest.raises(EngineMetricsError, match="no total"):
        parse_engine_metrics(sglang("num_queue_reqs", 5, priority="0"))


# What is missing is None, and said so on the wire


def test_a_metric_the_engine_does_not_export_is_none() -> None:
    load = parse_engine_metrics(sglang("num_queue_reqs", 3))

    assert load == EngineLoad(waiting=3.0)
    assert load.to_wire() == {"waiting": 3.0, "running": None, "kv_cache_usage": None}


def test_the_wire_keys_are_the_fields_and_each_field_has_metrics() -> None:
    names = [f.name for f in dataclasses.fields(EngineLoad)]

    assert list(EngineLoad().to_wire()) == names
    assert list(METRIC_NAMES) == names


def test_a_text_starting_with_a_sample_and_with_crlf_and_timestamps() -> None:
    text = 'vllm:num_requests_running{model_name="m"} 4 1712000000000\r\nvllm:num_requests_waiting 1\r\n'

    assert parse_engine_metrics(text) == EngineLoad(waiting=1.0, running=4.0)


# Bad texts


@pytest.mark.parametrize("text", ["", "   \n\n", "\n"])
def test_empty(text: str) -> None:
    with pytest.raises(EngineMetricsError, match="empty"):
        parse_engine_metrics(text)


def test_only_unrelated_metrics_names_what_was_looked_for() -> None:
    lines = fixture("vllm_metrics.txt").splitlines()
    text = "\n".join(line for line in lines if "num_requests" not in line and "usage" not in line)

    with pytest.raises(EngineMetricsError, match="none of the metrics") as raised:
        parse_engine_metrics(text)

    for names in METRIC_NAMES.values():
        for name in names:
            assert name in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        "<html><body>502 Bad Gateway</body></html>",
        "\x00\xff\ufffd{{{}}}",
        '{"waiting": 3}',
    ],
)
def test_garbage(text: str) -> None:
    with pytest.raises(EngineMetricsError):
        parse_engine_metrics(text)


@pytest.mark.parametrize(
    "line",
    [
        'vllm:num_requests_waiting{model_name="m" 3',
        'vllm:num_requests_waiting{model_name="m"} three',
        "vllm:num_requests_waiting{model_name=m} 3",
        "vllm:num_requests_waiting ",
        # the parser raises IndexError on this one, not ValueError
        'vllm:num_requests_waiting {,\t=n"_\t{e"+\\"0:Z-a= 9Z\rn#0}#I"',
    ],
)
def test_a_malformed_line_of_a_known_metric(line: str) -> None:
    with pytest.raises(EngineMetricsError, match="malformed"):
        parse_engine_metrics(fixture("vllm_metrics.txt") + line + "\n")


@pytest.mark.parametrize("value", ["NaN", "-1", "+Inf", "-Inf"])
@pytest.mark.parametrize("name", ["num_requests_waiting", "num_requests_running", "kv_cache_usage_perc"])
def test_a_value_that_is_no_count_or_fraction(name: str, value: str) -> None:
    with pytest.raises(EngineMetricsError, match=f"vllm:{name}.* is "):
        parse_engine_metrics(vllm(name, value))


@pytest.mark.parametrize("value", ["1.5", "87.5"])
@pytest.mark.parametrize("name", METRIC_NAMES["kv_cache_usage"])
def test_a_cache_usage_above_one_is_not_taken_for_a_percentage(name: str, value: str) -> None:
    with pytest.raises(EngineMetricsError, match="above 1"):
        parse_engine_metrics(f'{name}{{model_name="m"}} {value}\n')


def test_a_bad_value_of_another_model_is_not_read() -> None:
    text = vllm("num_requests_waiting", 2) + vllm("num_requests_waiting", "NaN", model="other")

    assert parse_engine_metrics(text, LLAMA).waiting == 2.0
    with pytest.raises(EngineMetricsError):
        parse_engine_metrics(text)


def test_a_nan_in_a_metric_not_read_is_ignored() -> None:
    text = fixture("sglang_metrics.txt") + 'sglang:fwd_occupancy{model_name="m"} NaN\n'

    assert parse_engine_metrics(text).waiting == 6.0


# Bounds, checked before the parser runs


@pytest.fixture
def no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str) -> None:
        raise AssertionError("the parser ran")

    monkeypatch.setattr(engines, "text_string_to_metric_families", refuse)


@pytest.mark.usefixtures("no_parsing")
def test_an_over_size_text_is_refused_before_parsing() -> None:
    text = vllm("num_requests_waiting", 1) + "#" * engines.MAX_TEXT_CHARS

    with pytest.raises(EngineMetricsError, match="over the bound"):
        parse_engine_metrics(text)


@pytest.mark.usefixtures("no_parsing")
def test_too_many_samples_are_refused_before_parsing() -> None:
    text = fixture("vllm_metrics.txt")  # 8 sample lines of the known metrics

    with pytest.raises(EngineMetricsError, match="8 samples .* over the bound of 7"):
        parse_engine_metrics(text, max_samples=7)


@pytest.mark.usefixtures("no_parsing")
def test_an_over_long_line_of_a_known_metric_is_refused_before_parsing() -> None:
    labels = ",".join(f'l{i}="{i}"' for i in range(200))

    with pytest.raises(EngineMetricsError, match="over 1024 characters"):
        parse_engine_metrics(f"vllm:num_requests_waiting{{{labels}}} 1\n")


def test_the_bounds_are_the_callers_to_tighten() -> None:
    text = fixture("vllm_metrics.txt")

    assert parse_engine_metrics(text, max_samples=8).running == 21.0
    with pytest.raises(EngineMetricsError, match="over the bound"):
        parse_engine_metrics(text, max_chars=len(text) - 1)


_names = [name for names in METRIC_NAMES.values() for name in names]
_pieces = st.sampled_from(
    [*_names, "{", "}", "=", '"', ",", " ", "\n", "\\", "#", "model_name", "priority", "NaN", "1", "0.5", "-"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_pieces | st.text(max_size=3), max_size=30).map("".join))
def test_any_text_gives_a_load_or_the_one_error(text: str) -> None:
    try:
        load = parse_engine_metrics(text)
    except EngineMetricsError:
        return
    assert isinstance(load, EngineLoad)
