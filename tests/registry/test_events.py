"""The change feed on its own: revisions, history, bounded watchers, long-poll waits."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack

import pytest

from model_registry.events import Change, Closed, Feed, Overflow, Watcher
from model_registry.storage import ModelInstance


def instance(model: str = "m", port: int = 8000) -> ModelInstance:
    return ModelInstance(model, "10.0.0.1", port, healthy=True)


def test_revisions_increase_by_one_from_the_start() -> None:
    feed = Feed(start=100)
    first = feed.publish(Change.REGISTERED, instance())
    second = feed.publish(Change.UNHEALTHY, instance())
    assert (first.revision, second.revision, feed.revision) == (101, 102, 102)


def test_default_start_is_later_than_any_revision_of_an_earlier_process() -> None:
    earlier = Feed()
    for _ in range(3):
        earlier.publish(Change.REGISTERED, instance())
    assert Feed().revision > earlier.revision


def test_since_returns_the_events_after_a_revision_filtered_by_model() -> None:
    feed = Feed(start=0)
    for model in ("a", "b", "a", "b"):
        feed.publish(Change.REGISTERED, instance(model))
    assert [e.revision for e in feed.since(1)] == [2, 3, 4]
    assert [e.revision for e in feed.since(0, "a")] == [1, 3]
    assert feed.since(4) == []


def test_since_is_none_when_history_no_longer_reaches_back_or_revision_is_foreign() -> None:
    feed = Feed(history=3, start=0)
    for port in range(6):
        feed.publish(Change.REGISTERED, instance(port=8000 + port))
    assert [e.revision for e in feed.since(3)] == [4, 5, 6]  # the oldest kept is 4
    assert feed.since(2) is None
    assert feed.since(7) is None  # from the future: another process's revision


async def test_watcher_gets_its_models_events_in_order() -> None:
    feed = Feed(start=0)
    with feed.watch("a") as watcher:
        feed.publish(Change.REGISTERED, instance("a"))
        feed.publish(Change.REGISTERED, instance("b"))
        feed.publish(Change.UNHEALTHY, instance("a"))
        got = [await watcher.next(), await watcher.next()]
        assert [(e.revision, e.type) for e in got] == [(1, Change.REGISTERED), (3, Change.UNHEALTHY)]
    assert feed.watchers == 0


async def test_a_watcher_that_falls_behind_overflows_and_holds_nothing() -> None:
    feed = Feed(start=0)
    calls = []
    with feed.watch(limit=3) as watcher:
        watcher.on_overflow = lambda: calls.append("overflow")
        for port in range(100):
            feed.publish(Change.REGISTERED, instance(port=port + 1))
            assert watcher.backlog <= 3
        assert watcher.overflowed and watcher.backlog == 0 and calls == ["overflow"]
        with pytest.raises(Overflow):
            await watcher.next()


async def test_closing_the_feed_wakes_watchers_and_waiters() -> None:
    feed = Feed(start=0)
    with feed.watch() as watcher:
        waiting = asyncio.create_task(watcher.next())
        polling = asyncio.create_task(feed.wait(0, None, timeout=60))
        await asyncio.sleep(0)
        feed.close()
        with pytest.raises(Closed):
            await asyncio.wait_for(waiting, 5)
        await asyncio.wait_for(polling, 5)


async def test_wait_returns_on_a_matching_change_and_ignores_other_models() -> None:
    feed = Feed(start=0)
    polling = asyncio.create_task(feed.wait(0, "a", timeout=60))
    await asyncio.sleep(0)
    feed.publish(Change.REGISTERED, instance("b"))
    await asyncio.sleep(0)
    assert not polling.done()
    feed.publish(Change.REGISTERED, instance("a"))
    await asyncio.wait_for(polling, 5)


async def test_wait_answers_at_once_when_the_change_is_already_there_or_the_revision_is_foreign() -> None:
    feed = Feed(start=0)
    feed.publish(Change.REGISTERED, instance())
    await asyncio.wait_for(feed.wait(0, None, timeout=60), 1)
    await asyncio.wait_for(feed.wait(99, None, timeout=60), 1)


async def test_wait_times_out_without_a_change() -> None:
    feed = Feed(start=0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await feed.wait(0, None, timeout=0.05)
    assert loop.time() - started >= 0.05


async def test_a_gap_sends_watchers_and_resumes_to_a_fresh_snapshot() -> None:
    feed = Feed(start=0)
    feed.publish(Change.REGISTERED, instance())
    with feed.watch() as watcher:
        feed.gap()
        assert watcher.missed
        with pytest.raises(Closed):
            await watcher.next()
    assert feed.since(1) is None and feed.since(0) is None  # resync
    await asyncio.wait_for(feed.wait(1, None, timeout=60), 1)  # long-polls answer
    feed.publish(Change.REGISTERED, instance(port=8001))
    assert [e.revision for e in feed.since(feed.revision - 1)] == [feed.revision]


def counting_offers(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Spy on Watcher.offer (the real one still runs): whose watchers were handed an event."""
    offered: list[str | None] = []
    real = Watcher.offer

    def offer(self: Watcher, event) -> None:
        offered.append(self.model_name)
        real(self, event)

    monkeypatch.setattr(Watcher, "offer", offer)
    return offered


async def test_a_change_reaches_only_its_models_watchers_and_the_all_models_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed = Feed(start=0)
    offered = counting_offers(monkeypatch)
    with ExitStack() as stack:
        for n in range(1000):
            stack.enter_context(feed.watch(f"other-{n}"))
        mine, everything = stack.enter_context(feed.watch("a")), stack.enter_context(feed.watch(None))
        assert feed.watchers == 1002
        feed.publish(Change.REGISTERED, instance("a"))
        assert offered == ["a", None]
        assert (await mine.next()).revision == 1 and (await everything.next()).revision == 1
    assert feed.watchers == 0 and not feed._watchers  # nothing kept for the models that went


async def test_a_change_wakes_only_its_models_long_polls_whatever_the_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed = Feed(history=10_000, start=0)
    after = feed.revision
    others = [asyncio.create_task(feed.wait(after, f"other-{n}", timeout=60)) for n in range(500)]
    everything = asyncio.create_task(feed.wait(after, None, timeout=60))
    await asyncio.sleep(0)
    assert feed.polls == 501
    walks = []
    monkeypatch.setattr(Feed, "_after", lambda self, revision: walks.append(revision) or iter(()))
    for port in range(5000):  # a long history of another model's changes
        feed.publish(Change.REGISTERED, instance("busy", port))
    await asyncio.sleep(0)
    assert everything.done() and not any(task.done() for task in others)
    mine = asyncio.create_task(feed.wait(after, "other-7", timeout=60))  # joins late, same index
    await asyncio.sleep(0)
    assert not mine.done() and walks == []  # "did other-7 change?" walked no history
    feed.publish(Change.UNHEALTHY, instance("other-7"))
    await asyncio.sleep(0)
    assert others[7].done() and mine.done() and sum(task.done() for task in others) == 1
    feed.close()
    await asyncio.gather(*others)
    assert feed.polls == 0 and not feed._pollers


def test_whether_a_model_changed_is_known_as_long_as_the_history_reaches_back() -> None:
    feed = Feed(history=3, start=0)
    feed.publish(Change.REGISTERED, instance("a"))  # 1
    for port in range(3):
        feed.publish(Change.REGISTERED, instance("b", port))  # 2, 3, 4: 1 falls out of the history
    assert feed.changed_since(0, "a")  # before the history: cannot tell, so answer
    assert not feed.changed_since(1, "a") and feed.changed_since(1, "b") and not feed.changed_since(4, "b")
    assert feed.changed_since(5, "a")  # a revision this feed never handed out
    for n in range(1000):  # churn through model names: what is kept stays within the history
        feed.publish(Change.REGISTERED, instance(f"churn-{n}"))
    assert len(feed._latest) <= 3


async def test_a_long_poll_ends_when_its_client_goes() -> None:
    feed = Feed(start=0)
    gone = asyncio.get_running_loop().create_future()
    polling = asyncio.create_task(feed.wait(0, "a", timeout=300, woken=gone))
    await asyncio.sleep(0)
    assert feed.polls == 1
    gone.set_result(None)
    await asyncio.wait_for(polling, 1)
    assert feed.polls == 0 and not feed._pollers
