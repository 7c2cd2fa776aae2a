"""Starlette and FastAPI under trioserve.asgi (on trio, through anyio), over real sockets."""

from __future__ import annotations

import trio

from tests.asgi_apps import fastapi_app, starlette_app
from tests.asgi_apps.serving import serve_asgi
from tests.loops import Signal


async def test_starlette_routes_lifespan_state_and_body() -> None:
    starlette_app.events.clear()
    async with serve_asgi(starlette_app.app, lifespan="on") as client:
        assert starlette_app.events == ["startup"]
        response = await client.get("/hello/trio")
        assert response.status_code == 200
        assert response.text == "hello from lifespan, trio"
        response = await client.post("/echo", content=b"x" * 100_000)
        assert response.json() == {"length": 100_000, "head": "xxxxxxxx"}
        assert (await client.get("/nowhere")).status_code == 404
    assert starlette_app.events == ["startup", "shutdown"]


async def test_starlette_streaming_response() -> None:
    async with serve_asgi(starlette_app.app) as client:
        async with client.stream("GET", "/numbers") as response:
            assert response.headers["transfer-encoding"] == "chunked"
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert body == b"0\n1\n2\n3\n4\n"


async def test_starlette_background_task_runs_after_the_response() -> None:
    starlette_app.events.clear()
    done = starlette_app.background_done = Signal()
    async with serve_asgi(starlette_app.app) as client:
        response = await client.get("/later")
        # The response came before the background task had finished its work.
        assert response.status_code == 202
        assert "background" not in starlette_app.events
        with trio.fail_after(5):
            await done.wait()
    assert starlette_app.events == ["startup", "background", "shutdown"]


async def test_fastapi_json_body_validation_and_dependency() -> None:
    async with serve_asgi(fastapi_app.app) as client:
        response = await client.post("/items", json={"name": "pen", "price": 1.5, "quantity": 4})
        assert response.status_code == 200
        assert response.json() == {"name": "pen", "total": 6.0}

        response = await client.post("/items", json={"name": "pen", "price": "free"})
        assert response.status_code == 422
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "price"]

        assert (await client.get("/me")).status_code == 401
        response = await client.get("/me", headers={"x-user": "alice"})
        assert response.json() == {"user": "alice"}

        response = await client.get("/items/7", params={"q": "blue"})
        assert response.json() == {"item_id": 7, "q": "blue"}
