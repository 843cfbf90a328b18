"""store/grouped.py: requests that wait go together, one call in flight at a time, and a
call that fails is made again a request at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from solder.store.grouped import Grouped


class Doubling(Grouped[int, int]):
    """Answers each number doubled; a call with a negative number in it fails whole."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()

    async def _answer(self, requests: list[int]) -> Sequence[int]:
        self.calls.append(requests)
        await self.release.wait()
        if any(n < 0 for n in requests):
            raise ValueError(f"negative among {requests}")
        return [2 * n for n in requests]


async def asked_one_turn_apart(grouped: Doubling, numbers: list[int]) -> list[asyncio.Task[int]]:
    asked = []
    for n in numbers:
        asked.append(asyncio.create_task(grouped.ask(n)))
        await asyncio.sleep(0)  # each request in a loop turn of its own
    return asked


def test_requests_that_come_while_a_call_is_in_flight_go_together_in_the_next() -> None:
    async def scenario() -> tuple[list[int], list[list[int]]]:
        grouped = Doubling()
        asked = await asked_one_turn_apart(grouped, [1, 2, 3, 4, 5])
        assert grouped.calls == [[1]], "nothing more goes while the first is in flight"
        grouped.release.set()
        return list(await asyncio.gather(*asked)), grouped.calls

    answers, calls = asyncio.run(scenario())
    assert answers == [2, 4, 6, 8, 10]
    assert calls == [[1], [2, 3, 4, 5]]


def test_a_call_goes_at_once_when_none_is_in_flight() -> None:
    async def scenario() -> list[list[int]]:
        grouped = Doubling()
        grouped.release.set()
        assert await grouped.ask(1) == 2
        assert await grouped.ask(2) == 4
        return grouped.calls

    assert asyncio.run(scenario()) == [[1], [2]]


def test_at_most_a_calls_worth_go_at_a_time() -> None:
    async def scenario() -> list[list[int]]:
        grouped = Doubling()
        grouped.MOST = 2
        grouped.release.set()
        await asyncio.gather(*(grouped.ask(n) for n in range(5)))
        return grouped.calls

    assert asyncio.run(scenario()) == [[0, 1], [2, 3], [4]]


def test_a_failed_call_is_made_again_a_request_at_a_time() -> None:
    async def scenario() -> tuple[list[int | BaseException], list[list[int]]]:
        grouped = Doubling()
        asked = await asked_one_turn_apart(grouped, [0, 1, -2, 3])
        grouped.release.set()
        answers = await asyncio.gather(*asked, return_exceptions=True)
        return list(answers), grouped.calls

    answers, calls = asyncio.run(scenario())
    assert answers[:2] == [0, 2]
    assert isinstance(answers[2], ValueError)
    assert answers[3] == 6
    assert calls == [[0], [1, -2, 3], [1], [-2], [3]]


def test_a_request_cancelled_while_it_waits_leaves_the_others_answered() -> None:
    async def scenario() -> list[int | BaseException]:
        grouped = Doubling()
        asked = await asked_one_turn_apart(grouped, [1, 2, 3])
        asked[1].cancel()
        grouped.release.set()
        return list(await asyncio.gather(*asked, return_exceptions=True))

    answers = asyncio.run(scenario())
    assert answers[0] == 2
    assert answers[2] == 6
    assert isinstance(answers[1], asyncio.CancelledError)


@pytest.mark.parametrize("in_flight", [2, 3])
def test_more_calls_in_flight_when_allowed(in_flight: int) -> None:
    async def scenario() -> list[list[int]]:
        grouped = Doubling()
        grouped.IN_FLIGHT = in_flight
        asked = await asked_one_turn_apart(grouped, [1, 2, 3, 4])
        for _ in range(3):
            await asyncio.sleep(0)  # the calls sent have started
        calls = list(grouped.calls)
        grouped.release.set()
        await asyncio.gather(*asked)
        return calls

    assert len(asyncio.run(scenario())) == in_flight


async def loaded(grouped: Doubling) -> None:
    """Bring `grouped` under load: a call in flight, then one of LINGER_FROM requests."""
    grouped.release.clear()
    asked = await asked_one_turn_apart(grouped, list(range(100, 101 + grouped.LINGER_FROM)))
    grouped.release.set()
    await asyncio.gather(*asked)
    assert len(grouped.calls[-1]) == grouped.LINGER_FROM


def test_under_load_a_call_lingers_for_the_requests_that_follow() -> None:
    async def scenario() -> list[list[int]]:
        grouped = Doubling()
        grouped.LINGER = 0.2
        await loaded(grouped)
        first = asyncio.create_task(grouped.ask(1))
        for _ in range(5):
            await asyncio.sleep(0)
        assert grouped.calls[-1] != [1], "the call lingers, nothing in flight"
        second = asyncio.create_task(grouped.ask(2))
        assert list(await asyncio.gather(first, second)) == [2, 4]
        return grouped.calls

    assert asyncio.run(scenario())[-1] == [1, 2]


def test_a_lighter_load_never_waits_for_the_linger() -> None:
    async def scenario() -> list[list[int]]:
        grouped = Doubling()
        grouped.LINGER = 60.0  # a request that waited for it would time out below
        grouped.release.set()
        assert await asyncio.wait_for(grouped.ask(1), 5) == 2
        grouped.release.clear()
        asked = await asked_one_turn_apart(grouped, [2, 3, 4])  # calls of one, then two
        grouped.release.set()
        assert await asyncio.wait_for(asyncio.gather(*asked), 5) == [4, 6, 8]
        assert await asyncio.wait_for(grouped.ask(5), 5) == 10
        return grouped.calls

    assert asyncio.run(scenario()) == [[1], [2], [3, 4], [5]]


def test_a_calls_worth_of_requests_goes_without_waiting_out_the_linger() -> None:
    async def scenario() -> list[list[int]]:
        grouped = Doubling()
        grouped.LINGER = 60.0
        grouped.MOST = 4
        await loaded(grouped)
        asked = await asked_one_turn_apart(grouped, [1, 2, 3, 4])
        assert await asyncio.wait_for(asyncio.gather(*asked), 5) == [2, 4, 6, 8]
        return grouped.calls

    assert asyncio.run(scenario())[-1] == [1, 2, 3, 4]
