"""Writes of one kind sent to PostgreSQL together: a statement for many requests.

A statement's fixed cost (its round trip, the executor's start, the commit and its WAL
flush) is most of what a small write costs PostgreSQL: a run request's accept is one
small statement (bench/RESULTS.md, "a loop turn's accepts in one statement"), and the
API's are written so (`executions.KeyedAccepts`). `Grouped` sends the requests that wait
as one call, at most `MOST` at a time, and at most `IN_FLIGHT` calls at a time. Under a
light load each goes alone as soon as the event loop comes round; under a heavy one the
calls grow rather than multiply, which is what a database's group commit does. (The
executions' ends were grouped the same way twice and not kept: docs/decisions.md.)

Under load a call also waits `LINGER` for more: once a call has carried `LINGER_FROM`
requests or more (they come several to a call's round trip), the next goes `LINGER`
after the event loop would have sent it, with whatever came meanwhile. Under a lighter
load no request waits for it: calls carry one or two, and each is sent at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")


class Grouped(Generic[Request, Answer]):
    """Requests answered a group at a time by `_answer`, which subclasses write.

    A call that raises is made again a request at a time, so that one request's fault
    fails it alone and the others are answered.
    """

    MOST = 32
    IN_FLIGHT = 1
    LINGER = 0.0  # seconds (see the module's docstring); 0: none
    LINGER_FROM = 3  # requests a call carried that make the next one linger

    def __init__(self) -> None:
        self._waiting: list[tuple[Request, asyncio.Future[Answer]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._called = False  # `_send_waiting` is due (at the loop's next turn, or lingering)
        self._grouped = False  # the last call carried LINGER_FROM requests or more
        self._lingering: asyncio.TimerHandle | None = None

    async def _answer(self, requests: list[Request]) -> Sequence[Answer]:
        """The answer to each of `requests`, in their order (one call, its own
        transaction)."""
        raise NotImplementedError

    async def ask(self, request: Request) -> Answer:
        """`request`'s answer, once a call carried it with the others waiting."""
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, answer))
        self._call()
        return await answer

    def _call(self) -> None:
        if self._lingering is not None and len(self._waiting) >= self.MOST:
            self._lingering.cancel()  # a whole call's worth waits: no more to gather
            self._lingering = None
            self._called = False
        if not self._called and self._waiting and len(self._sending) < self.IN_FLIGHT:
            self._called = True
            loop = asyncio.get_running_loop()
            if self.LINGER and self._grouped and len(self._waiting) < self.MOST:
                self._lingering = loop.call_later(self.LINGER, self._send_waiting)
            else:
                loop.call_soon(self._send_waiting)

    def _send_waiting(self) -> None:
        self._called = False
        self._lingering = None
        while self._waiting and len(self._sending) < self.IN_FLIGHT:
            group, self._waiting = self._waiting[: self.MOST], self._waiting[self.MOST :]
            self._grouped = len(group) >= self.LINGER_FROM
            sending = asyncio.create_task(self._send(group))
            self._sending.add(sending)
            sending.add_done_callback(self._sent)

    def _sent(self, sending: asyncio.Task[None]) -> None:
        self._sending.discard(sending)
        self._call()

    async def _send(self, group: list[tuple[Request, asyncio.Future[Answer]]]) -> None:
        try:
            try:
                answers = await self._answer([request for request, _ in group])
            except Exception:
                if len(group) == 1:
                    raise
                await asyncio.gather(*(self._send([one]) for one in group))
                return
            for (_, answer), value in zip(group, answers, strict=True):
                if not answer.done():
                    answer.set_result(value)
        except Exception as error:
            for _, answer in group:
                if not answer.done():
                    answer.set_exception(error)
        finally:  # cancelled (the app stopping): no request waits forever
            for _, answer in group:
                answer.cancel()
