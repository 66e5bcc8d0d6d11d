"""An LLM engine's load, read from the text of its Prometheus ``/metrics``.

Pure, synchronous code: ``parse_engine_metrics`` turns the text a vLLM or an
SGLang server exports into an ``EngineLoad`` (requests waiting, requests
running, the fraction of the KV cache in use). Fetching the text is the
caller's business.

The metrics read, per field, in order of preference (``METRIC_NAMES``):

waiting
    ``vllm:num_requests_waiting``, ``sglang:num_queue_reqs``.
running
    ``vllm:num_requests_running``, ``sglang:num_running_reqs``.
kv_cache_usage
    ``vllm:kv_cache_usage_perc`` (vLLM 0.9 and later), its older name
    ``vllm:gpu_cache_usage_perc`` (vLLM 0.9 and 0.10 export both),
    ``sglang:token_usage``. All three are fractions from 0 to 1 despite the
    "perc": vLLM documents both gauges as "KV-cache usage. 1 means 100
    percent usage." and multiplies by 100 only to log them; SGLang sets
    ``token_usage = num_used / max_total_num_tokens``. Nothing is rescaled:
    a value above 1 is an error, not a percentage to divide.

Several schedulers behind one ``/metrics``: both engines label every sample
with the served model's name, ``model_name`` (vLLM's ``labelnames =
["model_name", "engine"]``, SGLang's ``labels = {"model_name": ...,
"engine_type", "tp_rank", "pp_rank", ...}``). With ``model`` given, only
that model's samples count; without it, all of them. The series that are
left are combined like this:

- the requests of independent schedulers add up: vLLM's ``engine`` (one
  EngineCore per data-parallel rank), SGLang's ``dp_rank`` and ``tp_rank``
  (with DP attention each attention-TP leader runs its own queue), and
  different models;
- SGLang's pipeline stages mirror one another ("Each stage runs in the same
  order and is notified by the previous stage"), and every stage exports
  its queue: series that differ only in ``pp_rank`` count once, the largest;
- with priority scheduling SGLang writes the total under ``priority=""`` and
  a breakdown under ``priority="<n>"``: the breakdown is skipped;
- the KV cache usage is the largest of all: the fullest cache is where the
  next request queues, and an average would hide it.

Overcounted: SGLang with ``--enable-metrics-for-all-schedulers`` (off by
default), where every TP rank that shares a queue reports it.

Why the text is not parsed whole: prometheus_client's parser is pure Python,
about 15 ms for a vLLM ``/metrics`` of some 70 families, too much to repeat
for thousands of instances every few seconds. A regular expression picks out
the sample lines of the seven metrics above (a linear scan in C); only those
go to ``text_string_to_metric_families``, and the whole takes some 0.3 ms. Comment lines (``# HELP``,
``# TYPE``) are not needed: a gauge's sample without them parses the same,
as an untyped sample of the same name. Counters and histograms are never
read, so the parser's renaming of ``_total`` never matters. The lines must
be as exporters write them (``name{labels} value``, from the line's start);
UTF-8 quoted metric names are not looked for.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "MAX_LINE_CHARS",
    "MAX_SAMPLES",
    "MAX_TEXT_CHARS",
    "METRIC_NAMES",
    "MODEL_LABEL",
    "EngineLoad",
    "EngineMetricsError",
    "parse_engine_metrics",
]

#: A longer text is refused before anything is read: vLLM writes some 40 KB
#: per data-parallel engine.
MAX_TEXT_CHARS = 4 * 1024 * 1024
#: At most this many sample lines of the known metrics are parsed (about
#: 15 µs each); vLLM writes 3 or 4 per engine.
MAX_SAMPLES = 512
#: A sample line of a known metric longer than this is refused: real ones are
#: some 100 to 200 characters, and the parser's cost grows with the length.
MAX_LINE_CHARS = 1024

#: The label both engines put the served model's name in.
MODEL_LABEL = "model_name"
#: SGLang's pipeline stages, which mirror one another's queue.
_MIRROR_LABELS = frozenset({"pp_rank"})
#: SGLang's per-priority breakdown of a queue (the total has ``priority=""``).
_PRIORITY_LABEL = "priority"

#: Each ``EngineLoad`` field's metrics, in order of preference: the first
#: with samples (of the model asked for) is read, the others ignored.
METRIC_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
        "running": ("vllm:num_requests_running", "sglang:num_running_reqs"),
        "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
    }
)
_FIELD_OF = {name: field for field, names in METRIC_NAMES.items() for name in names}
_KNOWN = ", ".join(_FIELD_OF)


def _alternatives(names: Iterable[str]) -> str:
    """A pattern matching any of ``names``, their shared prefixes factored out
    (``vllm:(?:a|b)|sglang:(?:c)``: a third faster to scan for than the plain list)."""
    by_prefix: dict[str, list[str]] = {}
    for name in names:
        prefix, _, rest = name.partition(":")
        by_prefix.setdefault(prefix, []).append(re.escape(rest))
    return "|".join(f"{re.escape(prefix)}:(?:{'|'.join(rests)})" for prefix, rests in by_prefix.items())


_NAMES = _alternatives(_FIELD_OF)
# A sample line: the name, then labels or a blank. The pattern starts with a
# literal, so re scans for "\n" in C; the first line is matched on its own.
_LINE = re.compile(rf"\n((?:{_NAMES})[{{ \t][^\n]*)")
_FIRST_LINE = re.compile(rf"(?:{_NAMES})[{{ \t][^\n]*")


class EngineMetricsError(ValueError):
    """The text gives no load that can be trusted; the message says why.

    The only exception ``parse_engine_metrics`` raises for bad input: a text
    too long, malformed, without the known metrics (or without the model
    asked for), or with a value that is not a finite count or a fraction.
    """


@dataclass(slots=True, frozen=True)
class EngineLoad:
    """What an engine reported; ``None`` where it exports no such metric.

    ``waiting`` and ``running`` are request counts, summed over the engine's
    schedulers; ``kv_cache_usage`` is a fraction from 0 to 1, the largest of
    them.
    """

    waiting: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None

    def to_wire(self) -> dict[str, float | None]:
        """The JSON object: one key per field, ``null`` for what was not reported."""
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in dataclasses.fields(EngineLoad))


def parse_engine_metrics(
    text: str,
    model: str | None = None,
    *,
    max_chars: int = MAX_TEXT_CHARS,
    max_samples: int = MAX_SAMPLES,
) -> EngineLoad:
    """The load in a vLLM or SGLang ``/metrics`` text.

    ``model``: only the samples whose ``model_name`` is this count; ``None``
    combines every model's (see the module's docstring for how). Only the
    samples read are checked: a NaN elsewhere in the text is not looked at.

    Raises ``EngineMetricsError``, and nothing else, for a text longer than
    ``max_chars`` or with more than ``max_samples`` sample lines of the known
    metrics (both refused before parsing), a malformed line of a known
    metric, a text with none of them (the message lists the names looked
    for) or none of ``model``'s, and a value that is NaN, infinite, negative
    or, for the KV cache usage, above 1.
    """
    if len(text) > max_chars:
        raise EngineMetricsError(
            f"the metrics text is {len(text)} characters long, over the bound of {max_chars}"
        )
    lines = _known_lines(text, max_samples)
    if not lines:
        what = "is empty" if not text.strip() else "has none of the metrics looked for"
        raise EngineMetricsError(f"the metrics text {what}: {_KNOWN}")
    if model is not None:
        # Only the model's lines are parsed (the parser costs some 15 µs a line),
        # picked by their label as exporters write it; the labels parsed decide.
        needle = f'{MODEL_LABEL}="{model}"'
        lines = [line for line in lines if needle in line] or lines
    samples = _parse(lines)
    if model is not None:
        chosen = [s for s in samples if s[1].get(MODEL_LABEL) == model]
        if not chosen:
            raise EngineMetricsError(
                f"no sample of {_KNOWN} is for {MODEL_LABEL}={model!r}; {_models(samples)}"
            )
        samples = chosen
    return _load(samples)


# (metric name, labels, value)
_Sample = tuple[str, dict[str, str], float]


def _known_lines(text: str, max_samples: int) -> list[str]:
    """The sample lines of the known metrics, at most ``max_samples`` of them."""
    first = _FIRST_LINE.match(text)
    found = ([first.group()] if first is not None else []) + [m.group(1) for m in _LINE.finditer(text)]
    if len(found) > max_samples:
        raise EngineMetricsError(
            f"the metrics text has {len(found)} samples of {_KNOWN}, over the bound of {max_samples}"
        )
    for line in found:
        if len(line) > MAX_LINE_CHARS:
            raise EngineMetricsError(
                f"a line of the metrics text is over {MAX_LINE_CHARS} characters: {line[:80]}..."
            )
    return found


def _parse(lines: list[str]) -> list[_Sample]:
    try:
        families = list(text_string_to_metric_families("\n".join(lines)))
    # The parser's errors are no contract: mostly ValueError, but IndexError
    # too on some garbage (found by fuzzing). Whatever it raises, the text is bad.
    except Exception as exc:
        raise EngineMetricsError(f"malformed metrics text: {str(exc)[:200]}") from exc
    return [(s.name, s.labels, float(s.value)) for f in families for s in f.samples if s.name in _FIELD_OF]


def _load(samples: Iterable[_Sample]) -> EngineLoad:
    by_name: dict[str, list[_Sample]] = {}
    for sample in samples:
        if sample[1].get(_PRIORITY_LABEL):
            continue  # a breakdown of the total that has priority=""
        by_name.setdefault(sample[0], []).append(sample)
    values: dict[str, float] = {}
    for field, names in METRIC_NAMES.items():
        name = next((n for n in names if n in by_name), None)
        if name is None:
            continue
        per_scheduler = _per_scheduler(by_name[name], fraction=field == "kv_cache_usage")
        values[field] = max(per_scheduler) if field == "kv_cache_usage" else sum(per_scheduler)
    if not values:  # only priority breakdowns: nothing was read, which is no load of 0
        raise EngineMetricsError(f"the metrics text has no total among its samples of {_KNOWN}")
    return EngineLoad(**values)


def _per_scheduler(samples: list[_Sample], *, fraction: bool) -> list[float]:
    """One value per scheduler: the largest of the series that mirror one another."""
    schedulers: dict[tuple[tuple[str, str], ...], float] = {}
    for name, labels, value in samples:
        _check(name, labels, value, fraction=fraction)
        key = tuple(sorted(item for item in labels.items() if item[0] not in _MIRROR_LABELS))
        previous = schedulers.get(key)
        schedulers[key] = value if previous is None else max(previous, value)
    return list(schedulers.values())


def _check(name: str, labels: dict[str, str], value: float, *, fraction: bool) -> None:
    if not math.isfinite(value) or value < 0:
        problem = "not a finite, non-negative number"
    elif fraction and value > 1:
        problem = "above 1: a fraction from 0 to 1 is expected"
    else:
        return
    series = ",".join(f'{k}="{v}"' for k, v in labels.items())
    raise EngineMetricsError(f"{name}{{{series}}} is {value!r}, {problem}")


def _models(samples: list[_Sample]) -> str:
    models = sorted({s[1][MODEL_LABEL] for s in samples if MODEL_LABEL in s[1]})
    if not models:
        return f"its samples have no {MODEL_LABEL} label"
    return f"the text has {MODEL_LABEL} " + ", ".join(repr(m) for m in models)
