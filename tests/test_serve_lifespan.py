"""serve() and its lifespan: what a lifespan sets reaches the handlers, its cleanup
runs whatever ended the serving, and errors come out of serve() as themselves.

Over real loopback sockets (serve() binds), each bounded in time.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import pickle
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

import trioserve

BOUND = 10.0
pool: contextvars.ContextVar[str] = contextvars.ContextVar("pool", default="<unset>")


async def hello(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, body=pool.get())


async def test_a_context_variable_set_by_the_lifespan_reaches_the_handlers() -> None:
    # The lifespan is entered in serve()'s own task, which the connections descend
    # from (it was once entered in a task of its own: the handler saw "<unset>").
    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        token = pool.set("the pool")
        try:
            yield
        finally:
            pool.reset(token)

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            server: trioserve.Server = await nursery.start(
                functools.partial(trioserve.serve, hello, 0, host="127.0.0.1", lifespan=lifespan)
            )
            stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = b""
                while data := await stream.receive_some():
                    answer += data
            await server.shutdown()
    assert answer.endswith(b"\r\n\r\nthe pool")


async def test_a_crashing_shutdown_trigger_still_lets_the_lifespan_clean_up() -> None:
    log: list[str] = []

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        try:
            yield
        finally:
            try:
                await trio.sleep(0.05)  # closing a database pool takes a moment
                log.append("closed the pool")
            except trio.Cancelled:
                log.append("cancelled")
                raise

    async def trigger() -> None:
        await trio.sleep(0.05)
        raise RuntimeError("the trigger crashed")

    with trio.fail_after(BOUND), pytest.RaisesGroup(RuntimeError, flatten_subgroups=True):
        await trioserve.serve(
            hello, 0, host="127.0.0.1", lifespan=lifespan, shutdown_trigger=trigger
        )
    assert log == ["closed the pool"]


async def test_an_error_in_the_lifespans_exit_comes_out_as_itself() -> None:
    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        yield
        raise ValueError("the exit failed")

    done = trio.Event()
    done.set()
    with trio.fail_after(BOUND), pytest.raises(ValueError, match="the exit failed"):
        await trioserve.serve(hello, 0, host="127.0.0.1", lifespan=lifespan, shutdown_trigger=done)


class Tagged(trioserve.Response):
    __slots__ = ()


def test_a_frozen_response_can_still_be_copied_and_pickled() -> None:
    response = Tagged(201, headers=[("x-a", "1")], body="made")
    for twin in (
        copy.copy(response),
        copy.deepcopy(response),
        pickle.loads(pickle.dumps(response)),
    ):
        assert type(twin) is Tagged
        assert (twin.status, twin.headers, twin.body) == (201, ((b"x-a", b"1"),), b"made")
    assert type(response.with_body(b"other")) is Tagged
