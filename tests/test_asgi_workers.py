"""trioserve.asgi._workers: the host's tasks that run http application calls are
reused from call to call, and a reused task must look like a fresh one to the
application (its context, its cancellation) and to the host (its drain).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable

import anyio
import pytest
import trio
import trio.testing

import trioserve.asgi._workers
from tests.loops import Signal
from tests.test_asgi import GET, hosted, respond, served
from trioserve.asgi import ABANDON_GRACE, ASGIHandler, Receive, Scope, Send
from trioserve.testing import open_client, open_connection

REQUEST_ID: contextvars.ContextVar[int] = contextvars.ContextVar("request_id")


def worker_tasks(handler: ASGIHandler) -> int:
    """The tasks in the handler's host nursery (busy and idle workers)."""
    workers = handler._apps
    assert workers is not None
    return len(workers.nursery.child_tasks)


async def test_a_context_variable_set_by_one_call_is_not_seen_by_the_next(loop: str) -> None:
    seen: list[int | None] = []
    tasks: set[object] = set()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        seen.append(REQUEST_ID.get(None))
        REQUEST_ID.set(len(seen))
        if loop == "trio":
            tasks.add(trio.lowlevel.current_task())
        await respond(send)

    async with served(app, lifespan="off") as client:
        for _ in range(3):
            assert (await client.get("/")).status == 200
    assert seen == [None, None, None]
    if loop == "trio":
        assert len(tasks) == 1  # one worker served the three calls in turn


async def test_a_worker_whose_call_was_abandoned_does_not_cancel_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    abandoned = Signal()
    slow_done = Signal()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/gone":
            await receive()
            await receive()  # http.disconnect: the exchange is aborted...
            abandoned.set()
            return  # ...and the application ends well within ABANDON_GRACE
        await trio.sleep(ABANDON_GRACE * 2)  # longer than any deadline left over
        await respond(send)
        slow_done.set()

    async with hosted(app, lifespan="off") as handler:
        async with open_connection(handler) as stream:
            await stream.send_all(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
            await trio.sleep(1)
        await abandoned.wait()
        with trio.fail_after(ABANDON_GRACE * 4):  # a cancelled call would never answer
            async with open_client(handler) as client:
                assert (await client.get("/slow")).status == 200
    assert slow_done.is_set()


async def test_idle_workers_leave_at_once_when_the_host_drains(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    entered = Signal()
    release = trio.Event()
    background = Signal()
    finish_background = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/background":
            await respond(send)
            background.set()
            await wait_for(finish_background)  # work after the response
            return
        entered.set()
        await wait_for(release)  # held until the test has three calls running
        await respond(send)

    handler = ASGIHandler(app, lifespan="off")
    async with trio.open_nursery() as nursery:
        with trio.fail_after(5):  # not DRAIN_TIMEOUT: idle workers do not hold it up
            async with handler.lifespan():
                async with trio.open_nursery() as clients:
                    for _ in range(3):
                        clients.start_soon(get, handler, "/")
                    await until(lambda: len(entered.times) == 3)
                    release.set()
                assert worker_tasks(handler) == 3  # idle now, kept for the next calls
                await get(handler, "/background")
                await background.wait()
                nursery.start_soon(set_later, finish_background)
    waits = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
    assert waits == ["waiting up to 30 s for 1 ASGI application tasks"]
    assert finish_background.is_set()


async def test_at_most_max_idle_workers_are_kept(
    monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    monkeypatch.setattr(trioserve.asgi._workers, "MAX_IDLE_WORKERS", 2)
    release = trio.Event()
    running = Signal()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        running.set()
        await wait_for(release)
        await respond(send)

    async with hosted(app, lifespan="off") as handler:
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(get, handler, "/")
            with trio.fail_after(5):
                await until(lambda: len(running.times) == 5)
            assert worker_tasks(handler) == 5
            release.set()
        with trio.fail_after(5):
            await until(lambda: worker_tasks(handler) == 2)
        await trio.testing.wait_all_tasks_blocked()
        assert worker_tasks(handler) == 2


async def get(handler: ASGIHandler, path: str) -> None:
    """``GET path`` on a connection of its own, until the response's body is in."""
    async with open_connection(handler) as stream:
        await stream.send_all(GET.replace(b"/", path.encode(), 1))
        response = b""
        while not response.endswith(b"ok"):
            response += await stream.receive_some()


async def wait_for(event: trio.Event) -> None:
    """Wait, on either loop, until the test sets ``event`` (in trio)."""
    while not event.is_set():  # noqa: ASYNC110  # a trio.Event, maybe waited on asyncio
        await anyio.sleep(0.001)


async def until(condition: Callable[[], bool]) -> None:
    """Wait (in trio) until ``condition()`` holds: what it counts is set on either loop."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.001)


async def set_later(event: trio.Event) -> None:
    await trio.sleep(0.05)
    event.set()
