"""Selection strategies: pure functions of the candidates and a seeded rng."""

from __future__ import annotations

import copy
import itertools
import random
from collections import Counter
from collections.abc import Iterable

import pytest

from model_registry.selection import DEFAULT_STRATEGY, STRATEGIES, Selector, parse_strategy
from model_registry.storage import ModelInstance

every_strategy = pytest.mark.parametrize("strategy", STRATEGIES)


def inst(
    port: int,
    weight: float = 1.0,
    queue_length: int | None = None,
    *,
    model: str = "m",
    healthy: bool = True,
    enabled: bool = True,
) -> ModelInstance:
    return ModelInstance(
        model, "10.0.0.1", port, weight=weight, healthy=healthy, enabled=enabled, queue_length=queue_length
    )


def letters(picks: Iterable[ModelInstance | None]) -> str:
    """Picks as letters: port 8001 is "a", 8002 is "b", and so on."""
    return "".join(chr(ord("a") + p.port - 8001) for p in picks)


def run(selector: Selector, candidates: list[ModelInstance], strategy: str, times: int) -> str:
    return letters(selector.pick(candidates, strategy) for _ in range(times))


def shares(picks: str) -> dict[str, float]:
    return {letter: count / len(picks) for letter, count in Counter(picks).items()}


# -- parse_strategy ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("weighted", "weighted"),
        ("WEIGHTED", "weighted"),
        ("round_robin", "round_robin"),
        ("round-robin", "round_robin"),
        ("Round-Robin", "round_robin"),
        ("least_load", "least_load"),
        ("Least_Load", "least_load"),
        ("least-LOAD", "least_load"),
    ],
)
def test_parse_strategy_accepts_any_case_and_dashes(value: str, expected: str) -> None:
    assert parse_strategy(value) == expected


@pytest.mark.parametrize("value", ["fastest", "", "round robin", "random"])
def test_parse_strategy_rejects_unknown_names_listing_the_valid_ones(value: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_strategy(value)
    assert str(info.value) == (
        f"unknown strategy {value!r}: use one of weighted, round_robin, least_load, power_of_two"
    )


def test_strategies_and_default() -> None:
    assert STRATEGIES == ("weighted", "round_robin", "least_load", "power_of_two")
    assert DEFAULT_STRATEGY == "weighted"


# -- every strategy --------------------------------------------------------------


def test_pick_reads_strategy_names_like_parse_strategy() -> None:
    selector = Selector(random.Random(0))
    candidates = [inst(8001), inst(8002)]
    assert run(selector, candidates, "Round-Robin", 4) == "abab"
    with pytest.raises(ValueError, match="unknown strategy 'fastest'"):
        selector.pick(candidates, "fastest")


def test_pick_defaults_to_weighted_and_to_a_fresh_rng() -> None:
    candidates = [inst(8001, weight=0), inst(8002)]
    assert Selector().pick(candidates) is candidates[1]


@every_strategy
def test_pick_rejects_candidates_of_several_models(strategy: str) -> None:
    with pytest.raises(ValueError, match="one model"):
        Selector(random.Random(0)).pick([inst(8001), inst(8002, model="n")], strategy)


@every_strategy
def test_ineligible_instances_are_never_picked(strategy: str) -> None:
    # The eligible one is the least attractive by weight and by load.
    candidates = [
        inst(8001, weight=0, queue_length=0),
        inst(8002, weight=10, queue_length=0, enabled=False),
        inst(8003, weight=10, queue_length=0, healthy=False),
        inst(8004, weight=0.5, queue_length=100),
    ]
    assert set(run(Selector(random.Random(1)), candidates, strategy, 500)) == {"d"}


@every_strategy
@pytest.mark.parametrize(
    "candidates",
    [
        [],
        [inst(8001, weight=0), inst(8002, enabled=False), inst(8003, healthy=False)],
    ],
    ids=["empty", "none-eligible"],
)
def test_none_when_nothing_is_eligible(strategy: str, candidates: list[ModelInstance]) -> None:
    assert Selector(random.Random(0)).pick(candidates, strategy) is None


@every_strategy
def test_pick_returns_a_candidate_and_changes_none(strategy: str) -> None:
    candidates = [inst(8001, 1, 3), inst(8002, 2, None), inst(8003, 3, 0), inst(8004, 0, 0)]
    before = copy.deepcopy(candidates)
    selector = Selector(random.Random(2))
    for _ in range(50):
        chosen = selector.pick(candidates, strategy)
        assert any(chosen is c for c in candidates)
    assert candidates == before


# -- weighted --------------------------------------------------------------------


def test_weighted_shares_follow_weights() -> None:
    candidates = [inst(8001, 1), inst(8002, 2), inst(8003, 3)]
    got = shares(run(Selector(random.Random(3)), candidates, "weighted", 20_000))
    for letter, expected in {"a": 1 / 6, "b": 2 / 6, "c": 3 / 6}.items():
        assert abs(got[letter] - expected) < 0.02, (letter, got)


def test_weighted_replays_a_seed_whatever_the_candidate_order() -> None:
    candidates = [inst(8001, 1), inst(8002, 2), inst(8003, 3)]
    forward = run(Selector(random.Random(7)), candidates, "weighted", 200)
    backward = run(Selector(random.Random(7)), candidates[::-1], "weighted", 200)
    assert forward == backward


def test_weighted_survives_weights_whose_sum_overflows() -> None:
    candidates = [inst(8001, 1e308), inst(8002, 1e308), inst(8003, 5e307)]
    got = shares(run(Selector(random.Random(4)), candidates, "weighted", 10_000))
    for letter, expected in {"a": 0.4, "b": 0.4, "c": 0.2}.items():
        assert abs(got[letter] - expected) < 0.02, (letter, got)


# -- round_robin -----------------------------------------------------------------


def test_round_robin_rotates_equal_weights_in_key_order() -> None:
    candidates = [inst(8003), inst(8001), inst(8002)]
    assert run(Selector(random.Random(0)), candidates, "round_robin", 9) == "abcabcabc"


def test_round_robin_never_repeats_an_instance_with_equal_weights() -> None:
    picks = run(Selector(random.Random(0)), [inst(8001), inst(8002), inst(8003)], "round_robin", 3000)
    assert all(first != second for first, second in itertools.pairwise(picks))


def test_round_robin_counts_follow_weights_exactly() -> None:
    candidates = [inst(8001, 1), inst(8002, 2), inst(8003, 1)]
    picks = run(Selector(random.Random(0)), candidates, "round_robin", 4000)
    assert Counter(picks) == {"a": 1000, "b": 2000, "c": 1000}
    # Smooth: every cycle of four holds each instance in proportion.
    assert all(Counter(picks[i : i + 4]) == {"a": 1, "b": 2, "c": 1} for i in range(0, 4000, 4))


def test_round_robin_interleaves_a_heavy_instance_like_nginx() -> None:
    picks = run(Selector(random.Random(0)), [inst(8001, 5), inst(8002, 1), inst(8003, 1)], "round_robin", 21)
    assert picks == "aabacaa" * 3


def test_round_robin_survives_weights_whose_sum_overflows() -> None:
    candidates = [inst(8001, 1e308), inst(8002, 1e308)]
    assert run(Selector(random.Random(0)), candidates, "round_robin", 6) == "ababab"


def test_round_robin_keeps_one_rotation_per_model() -> None:
    selector = Selector(random.Random(0))
    m = [inst(8001), inst(8002), inst(8003)]
    n = [inst(8001, model="n"), inst(8002, model="n")]
    picks = [(selector.pick(m, "round_robin"), selector.pick(n, "round_robin")) for _ in range(6)]
    assert letters(p for p, _ in picks) == "abcabc"
    assert letters(p for _, p in picks) == "ababab"
    assert all(p.model_name == "m" and q.model_name == "n" for p, q in picks)


def test_round_robin_drops_a_removed_instance_and_admits_a_new_one() -> None:
    selector = Selector(random.Random(0))
    a, b, c, d = inst(8001), inst(8002), inst(8003), inst(8004)
    assert run(selector, [a, b, c], "round_robin", 2) == "ab"

    without_b = Counter(run(selector, [a, c], "round_robin", 100))
    assert without_b.keys() == {"a", "c"}
    assert abs(without_b["a"] - without_b["c"]) <= 2

    # d starts at 0, no further behind than a and c, so it is picked in the next round.
    with_d = run(selector, [a, c, d], "round_robin", 300)
    assert "d" in with_d[:3]
    assert all(abs(count - 100) <= 2 for count in Counter(with_d).values()), Counter(with_d)


def test_round_robin_starts_over_after_a_pick_finds_none_eligible() -> None:
    selector = Selector(random.Random(0))
    candidates = [inst(8001), inst(8002), inst(8003)]
    assert run(selector, candidates, "round_robin", 1) == "a"
    assert selector.pick([inst(8001, enabled=False)], "round_robin") is None
    assert run(selector, candidates, "round_robin", 3) == "abc"


def test_other_strategies_leave_the_rotation_alone() -> None:
    selector = Selector(random.Random(0))
    candidates = [inst(8001), inst(8002), inst(8003)]
    assert run(selector, candidates, "round_robin", 1) == "a"
    run(selector, candidates, "weighted", 10)
    run(selector, candidates, "least_load", 10)
    assert run(selector, candidates, "round_robin", 2) == "bc"


# -- least_load ------------------------------------------------------------------


def test_least_load_picks_the_shortest_queue() -> None:
    candidates = [inst(8001, queue_length=5), inst(8002, queue_length=2), inst(8003, queue_length=7)]
    assert set(run(Selector(random.Random(5)), candidates, "least_load", 200)) == {"b"}


def test_least_load_divides_the_queue_by_the_weight() -> None:
    # Loads 1.0, 2.0 and 1.5: the longest queue belongs to the least loaded.
    candidates = [inst(8001, 4, 4), inst(8002, 1, 2), inst(8003, 2, 3)]
    assert set(run(Selector(random.Random(5)), candidates, "least_load", 200)) == {"a"}


def test_least_load_spreads_ties_evenly() -> None:
    # a, b and c all carry a load of 2.0; d carries 9.0.
    candidates = [inst(8001, 1, 2), inst(8002, 2, 4), inst(8003, 1, 2), inst(8004, 1, 9)]
    got = shares(run(Selector(random.Random(6)), candidates, "least_load", 3000))
    assert got.keys() == {"a", "b", "c"}
    assert all(0.28 < share < 0.39 for share in got.values()), got


def test_least_load_counts_an_unreported_load_as_zero() -> None:
    selector = Selector(random.Random(8))
    fresh, busy, idle = inst(8001, queue_length=None), inst(8002, queue_length=1), inst(8003, queue_length=0)
    assert set(run(selector, [fresh, busy], "least_load", 100)) == {"a"}
    assert set(run(selector, [fresh, idle], "least_load", 100)) == {"a", "c"}


def test_least_load_picks_do_not_inflate_the_load() -> None:
    selector = Selector(random.Random(9))
    candidates = [inst(8001, queue_length=0), inst(8002, queue_length=1)]
    # FastChat's dispatch would have raised a's queue to 1 and then sent traffic to b.
    assert run(selector, candidates, "least_load", 2) == "aa"
    assert [c.queue_length for c in candidates] == [0, 1]

    tied = [inst(8001, queue_length=3), inst(8002, queue_length=3)]
    assert set(run(selector, tied, "least_load", 100)) == {"a", "b"}
    assert [c.queue_length for c in tied] == [3, 3]


# -- power_of_two ----------------------------------------------------------------


def test_power_of_two_never_picks_the_busiest_and_favours_the_idle() -> None:
    # Loads 0, 1, 2, 3: the busiest loses every draw it is in; the idlest wins every one.
    candidates = [inst(8001, queue_length=0), inst(8002, queue_length=1), inst(8003, queue_length=2)]
    candidates.append(inst(8004, queue_length=3))
    got = shares(run(Selector(random.Random(11)), candidates, "power_of_two", 6000))
    assert "d" not in got
    # Of the six pairs, a wins 3, b 2 and c 1: shares 1/2, 1/3 and 1/6.
    for letter, expected in {"a": 1 / 2, "b": 1 / 3, "c": 1 / 6}.items():
        assert abs(got[letter] - expected) < 0.03, got


def test_power_of_two_spreads_where_least_load_herds() -> None:
    # Nine idle instances and a tenth a little less loaded: least_load sends everything to the
    # tenth; two random choices send it only what it wins (the pairs it is in: 2 in 10).
    candidates = [inst(8001 + n, 2, 1) for n in range(9)] + [inst(8010, 2, 0)]
    assert set(run(Selector(random.Random(12)), candidates, "least_load", 300)) == {"j"}
    got = shares(run(Selector(random.Random(12)), candidates, "power_of_two", 5000))
    assert abs(got["j"] - 0.2) < 0.03 and len(got) == 10, got


def test_power_of_two_divides_by_weight_and_takes_a_lone_instance() -> None:
    heavy, light = inst(8001, 4, 4), inst(8002, 1, 2)  # loads 1.0 and 2.0
    assert set(run(Selector(random.Random(13)), [heavy, light], "power_of_two", 100)) == {"a"}
    assert run(Selector(random.Random(13)), [inst(8001, queue_length=50)], "power_of_two", 3) == "aaa"
    assert Selector(random.Random(13)).pick([inst(8001, enabled=False)], "power_of_two") is None
