"""asyncio applications, unchanged: the server as the trio guest of an asyncio loop.

``--loop asyncio`` (and ``uvloop``) from the command line, with real applications over
real sockets (FastAPI with asyncio.sleep, an asyncio.Queue drained by a lifespan task,
aiosqlite; Django; Quart), a graceful SIGTERM while a request is in flight; and
``trioserve.asyncio`` embedded in an asyncio program. The ASGI adapter's own suites
run on both loops as well (``conftest.BOTH_LOOPS``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import trio

import trioserve
import trioserve._guest
import trioserve.asyncio
from trioserve.asgi import ASGIHandler

from .processes import BOUND, ChildProcess, running
from .test_nginx import free_port

REPO = Path(__file__).resolve().parent.parent


def command(app: str, *flags: str, app_dir: Path = REPO) -> list[str]:
    return [
        sys.executable, "-m", "trioserve", app, "--port", "0", "--app-dir", str(app_dir),
        "--no-access-log", *flags,
    ]  # fmt: skip


async def request(child: ChildProcess, method: str, target: str) -> tuple[int, bytes]:
    """One request on a new connection: the status and the body."""
    with trio.fail_after(BOUND):
        stream = await child.connect()
        async with stream:
            await stream.send_all(
                f"{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(head.split(b" ", 2)[1]), body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        length = int(size, 16)
        if not length:
            break
        out, data = out + data[:length], data[length + 2 :]
    return out


# --- FastAPI, aiosqlite, an asyncio.Queue, Quart: --loop asyncio and uvloop ------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_fastapi_on_asyncio_with_a_graceful_sigterm_in_flight(loop: str) -> None:
    cmd = command("tests.programs.asyncio_apps:fastapi_app", "--loop", loop)
    async with running(cmd) as child:
        status, body = await request(child, "GET", "/sleep")
        assert status == 200, child.stderr
        expected = "uvloop" if loop == "uvloop" else "asyncio.unix_events"
        assert json.loads(body) == {"loop": expected, "slept": 0.01}
        assert await request(child, "POST", "/queue/hi") == (200, b'{"drained":"HI"}')
        status, body = await request(child, "POST", "/notes/first")
        assert (status, json.loads(body)["notes"][-1]) == (200, "first")
        async with trio.open_nursery() as nursery:
            answers: list[tuple[int, bytes]] = []

            async def in_flight() -> None:
                answers.append(await request(child, "GET", "/sleep?seconds=1"))

            nursery.start_soon(in_flight)
            await child.wait_for(rb"handling /sleep\n(?![\s\S]*handling /sleep\n[\s\S]*handling)")
            await child.wait_for(rb"(handling /sleep\n[\s\S]*){2}")
            child.process.send_signal(signal.SIGTERM)
        assert await child.wait() == 0, child.stderr
    [(status, body)] = answers
    assert (status, json.loads(body)["slept"]) == (200, 1.0)
    assert b"SIGTERM received: shutting down gracefully" in child.stderr
    assert b"Traceback" not in child.stderr


async def test_quart_on_asyncio_with_a_graceful_sigterm_in_flight() -> None:
    async with running(command("tests.programs.asyncio_apps:quart_app", "--loop", "asyncio")) as c:
        status, body = await request(c, "GET", "/hello/ada")
        assert (status, json.loads(body)) == (200, {"hello": "ada", "task": True})
        answers: list[tuple[int, bytes]] = []
        async with trio.open_nursery() as nursery:

            async def in_flight() -> None:
                answers.append(await request(c, "GET", "/hello/bob?seconds=1"))

            nursery.start_soon(in_flight)
            await c.wait_for(rb"(handling /hello\n[\s\S]*){2}")
            c.process.send_signal(signal.SIGTERM)
        assert await c.wait() == 0, c.stderr
    [(status, body)] = answers
    assert (status, json.loads(body)["hello"]) == (200, "bob")


async def test_on_trio_an_asyncio_app_fails_with_a_line_naming_loop_asyncio() -> None:
    # Its lifespan makes an asyncio.Queue and a task: startup fails, and says why.
    async with running(command("tests.programs.asyncio_apps:fastapi_app"), ready=None) as child:
        assert await child.wait() == 1
    assert b"needs asyncio (no running event loop): run it with --loop asyncio" in child.stderr
    assert b"trioserve: ASGI lifespan startup failed" in child.stderr


# --- Django: a minimal project, made here -----------------------------------------------

DJANGO_FILES = {
    "djsite/__init__.py": "",
    "djsite/settings.py": """
        from pathlib import Path
        BASE = Path(__file__).resolve().parent
        SECRET_KEY = "not a secret: a test"
        DEBUG = False
        ALLOWED_HOSTS = ["*"]
        ROOT_URLCONF = "djsite.urls"
        INSTALLED_APPS = [
            "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
            "django.contrib.sessions", "django.contrib.messages",
        ]
        MIDDLEWARE = [
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ]
        SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
        DATABASES = {
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE / "db.sqlite3"}
        }
        TEMPLATES = [{
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {"context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]},
        }]
        STATIC_URL = "static/"
        USE_TZ = True
    """,
    "djsite/views.py": """
        import asyncio, sys, threading
        from asgiref.sync import sync_to_async
        from django.http import JsonResponse

        async def async_view(request):
            print("handling /async/", file=sys.stderr, flush=True)
            await asyncio.sleep(float(request.GET.get("seconds", "0.01")))
            return JsonResponse({"view": "async"})

        def _blocking():
            return threading.current_thread() is not threading.main_thread()

        async def through_sync_to_async(request):
            return JsonResponse({"in_a_thread": await sync_to_async(_blocking)()})

        def sync_view(request):
            return JsonResponse({"view": "sync"})
    """,
    "djsite/urls.py": """
        from django.contrib import admin
        from django.urls import path
        from . import views
        urlpatterns = [
            path("admin/", admin.site.urls),
            path("async/", views.async_view),
            path("sync/", views.sync_view),
            path("s2a/", views.through_sync_to_async),
        ]
    """,
    "djsite/asgi.py": """
        import os
        from django.core.asgi import get_asgi_application
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")
        application = get_asgi_application()
    """,
}


def django_project(where: Path) -> Path:
    for name, text in DJANGO_FILES.items():
        path = where / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return where


async def test_django_on_asyncio(tmp_path: Path) -> None:
    site = django_project(tmp_path)
    async with running(command("djsite.asgi:application", "--loop", "asyncio", app_dir=site)) as c:
        assert await request(c, "GET", "/async/") == (200, b'{"view": "async"}')
        assert await request(c, "GET", "/sync/") == (200, b'{"view": "sync"}')
        assert await request(c, "GET", "/s2a/") == (200, b'{"in_a_thread": true}')
        status, page = await request(c, "GET", "/admin/login/")
        assert status == 200, c.stderr
        assert b"csrfmiddlewaretoken" in page
        assert b"Log in" in page
        async with trio.open_nursery() as nursery:
            answers: list[tuple[int, bytes]] = []

            async def in_flight() -> None:
                answers.append(await request(c, "GET", "/async/?seconds=1"))

            nursery.start_soon(in_flight)
            await c.wait_for(rb"(handling /async/\n[\s\S]*){2}")
            c.process.send_signal(signal.SIGTERM)
        assert await c.wait() == 0, c.stderr
    assert answers == [(200, b'{"view": "async"}')]
    assert b"Traceback" not in c.stderr


async def test_django_on_trio_says_loop_asyncio(tmp_path: Path) -> None:
    site = django_project(tmp_path)
    async with running(command("djsite.asgi:application", app_dir=site)) as c:
        status, _ = await request(c, "GET", "/async/")
        assert status == 500
        await c.wait_for(rb"needs asyncio .*--loop asyncio")
        c.process.send_signal(signal.SIGTERM)
        await c.wait()


# --- trioserve.asyncio: embedded in an asyncio program ----------------------------------


def test_an_asyncio_program_embeds_trioserve() -> None:
    from tests.programs.asyncio_apps import fastapi_app

    async def native(request: trioserve.Request) -> trioserve.Response:
        # A native handler stays on trio, and reaches asyncio through run_asyncio.
        loop_name = await trioserve.asyncio.run_asyncio(_loop_name)
        return trioserve.Response(200, body=loop_name)

    async def main() -> tuple[list[object], trioserve.ServerStatistics]:
        asgi = ASGIHandler(fastapi_app)
        native_server = await trioserve.asyncio.start_server(native, 0, host="127.0.0.1")
        with pytest.raises(RuntimeError, match="run"):  # one trio run per thread
            await trioserve.asyncio.start_server(native, 0, host="127.0.0.1")
        await native_server.shutdown()
        server = await trioserve.asyncio.start_server(
            asgi, 0, host="127.0.0.1", lifespan=asgi.lifespan
        )
        async with httpx.AsyncClient(base_url=server.urls[0]) as client:
            slow = asyncio.create_task(client.get("/sleep", params={"seconds": 0.5}))
            await asyncio.sleep(0.2)
            got: list[object] = [(await client.get("/sleep")).json()]
            shutdown = asyncio.create_task(server.shutdown())
            got.append((await slow).json())
            await shutdown
        return got, server.statistics()

    got, stats = asyncio.run(main())
    assert got == [
        {"loop": "asyncio.unix_events", "slept": 0.01},
        {"loop": "asyncio.unix_events", "slept": 0.5},
    ]
    assert stats.requests_served == 2
    assert stats.shutdown_cutoffs == 0


async def _loop_name() -> bytes:
    return type(asyncio.get_running_loop()).__name__.encode()


def test_run_asyncio_from_a_native_handler_and_the_hard_stop() -> None:
    async def native(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response(200, body=await trioserve.asyncio.run_asyncio(_loop_name))

    async def main() -> bytes:
        port = free_port()  # serve() does not tell its port: not a fixed one, for -n 2
        task = asyncio.create_task(trioserve.asyncio.serve(native, port, host="127.0.0.1"))
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient() as client:
            body = (await client.get(f"http://127.0.0.1:{port}/")).content
        task.cancel()  # the hard stop
        with pytest.raises(asyncio.CancelledError):
            await task
        return body

    assert asyncio.run(main()) == b"_UnixSelectorEventLoop"


def test_a_port_in_use_is_an_oserror_from_start_server() -> None:
    async def main() -> None:
        server = await trioserve.asyncio.start_server(_hello, 0, host="127.0.0.1")
        await server.shutdown()
        taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = taken.sockets[0].getsockname()[1]
        try:
            with pytest.raises(OSError, match="in use"):
                await trioserve.asyncio.start_server(_hello, port, host="127.0.0.1")
        finally:
            taken.close()

    asyncio.run(main())


async def _hello(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, body=b"hello")


async def test_run_asyncio_on_trio_says_what_it_needs() -> None:
    with pytest.raises(RuntimeError, match="--loop asyncio"):
        await trioserve.asyncio.run_asyncio(_loop_name)


def test_run_asyncio_stops_waiting_for_a_task_that_ignores_its_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The trio caller is cancelled; the asyncio task swallows its first cancellation.
    # run_asyncio waits CANCEL_GRACE for it, not forever (nor shielded for good).
    monkeypatch.setattr(trioserve._guest, "CANCEL_GRACE", 0.3)
    swallowed: list[int] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                if swallowed:
                    raise  # the second one (asyncio.run's own cleanup) ends it
                swallowed.append(1)

    async def caller() -> float:
        start = trio.current_time()
        with trio.move_on_after(0.1):
            await trioserve.asyncio.run_asyncio(stubborn)
        return trio.current_time() - start

    waited = asyncio.run(trioserve._guest.run_as_guest(caller))
    assert swallowed == [1]
    assert 0.3 <= waited < 5
