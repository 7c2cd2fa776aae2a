"""The HTTP engines: ``Config.http`` (``--http``) chooses the build of h11 per server.

``auto`` is h11-mypyc when it imports, else h11; a build asked for by name that does
not import fails when the server starts (``ImportError``; on the command line, exit
status 2). ``--version`` and the startup lines say which engine runs. h11_mypyc's
absence is simulated with ``sys.modules["h11_mypyc"] = None``, which makes its import
fail as on a machine without the ``fast`` extra. (The rest of the suite runs on both
engines: see ``tests/conftest.py``.)
"""

from __future__ import annotations

import functools
import re
import sys
import typing
from types import ModuleType

import h11
import h11_mypyc
import pytest
import trio

import trioserve
from trioserve import Config, Server, _engines
from trioserve._cli import main, parse_args
from trioserve.testing import open_client

from .conftest import SHIPPED_AUTO_ORDER, hello
from .processes import running

BUILDS = {"h11": h11, "h11-mypyc": h11_mypyc}


@pytest.fixture
def auto_as_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` tries what it tries in an installed trioserve (a run of the suite on
    one engine narrows it to that engine)."""
    monkeypatch.setattr(_engines, "AUTO_ORDER", SHIPPED_AUTO_ORDER)


@pytest.fixture
def without_h11_mypyc(monkeypatch: pytest.MonkeyPatch) -> None:
    """h11_mypyc cannot be imported, as where the ``fast`` extra is not installed."""
    monkeypatch.setitem(sys.modules, "h11_mypyc", None)


def described(http: str) -> str:
    return f"{http} {BUILDS[http].__version__}"


# --- Config ------------------------------------------------------------------------------


def test_config_http_is_auto_by_default_and_checked() -> None:
    assert Config().http == "auto"
    assert Config().replace(http="h11-mypyc").http == "h11-mypyc"
    names = "'auto', 'h11', 'h11-mypyc'"
    with pytest.raises(ValueError, match=f"http must be one of {names}, not 'httptools'"):
        Config(http="httptools")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="http must be a str, not NoneType"):
        Config(http=None)  # type: ignore[arg-type]


# --- Choosing ----------------------------------------------------------------------------


@pytest.mark.parametrize("http", ["h11", "h11-mypyc"])
def test_each_build_by_name(http: typing.Literal["h11", "h11-mypyc"]) -> None:
    assert Server(hello, Config(http=http)).http_engine == described(http)


def test_auto_is_h11_mypyc_when_it_is_installed(auto_as_shipped: None) -> None:
    assert Server(hello).http_engine == described("h11-mypyc")


def test_auto_is_h11_without_h11_mypyc(auto_as_shipped: None, without_h11_mypyc: None) -> None:
    assert Server(hello).http_engine == described("h11")


async def test_asking_for_h11_mypyc_without_it_fails_as_serve_starts(
    without_h11_mypyc: None,
) -> None:
    with pytest.raises(ImportError) as info:
        await trioserve.serve(hello, 0, host="127.0.0.1", config=Config(http="h11-mypyc"))
    message = str(info.value)
    assert message.startswith("the HTTP engine h11-mypyc cannot be imported (")
    assert "pip install 'trioserve[fast]'" in message
    assert info.value.name == "h11_mypyc"


@pytest.fixture
def server_connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The module of each server-side ``Connection`` built from now on, in order."""
    built: list[str] = []

    def counting(module: ModuleType, real: type[h11.Connection]) -> object:
        def connection(our_role: type[h11.SERVER], **kwargs: int) -> h11.Connection:
            if our_role is module.SERVER:  # trioserve.testing's clients use h11 too
                built.append(module.__name__)
            return real(our_role, **kwargs)

        return connection

    for module in BUILDS.values():
        monkeypatch.setattr(module, "Connection", counting(module, module.Connection))
    return built


async def test_two_servers_in_one_process_each_run_their_own_engine(
    server_connections: list[str],
) -> None:
    async with trio.open_nursery() as nursery:
        servers: list[tuple[str, Server]] = []
        for http in ("h11", "h11-mypyc"):
            config = Config(http=http)  # type: ignore[arg-type]  # a name from the tuple
            start = functools.partial(trioserve.serve, hello, 0, host="127.0.0.1", config=config)
            server = await nursery.start(start)
            assert server.http_engine == described(http)
            servers.append((http, server))
        # In turns, twice each, on connections of their own: every connection a server
        # served was built by its build.
        for _ in range(2):
            for http, server in servers:
                with trio.fail_after(10):
                    stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
                    async with stream:
                        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                        answer = await stream.receive_some()
                assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
                assert server_connections[-1] == BUILDS[http].__name__
        with trio.fail_after(10):
            for _, server in servers:
                await server.shutdown()
    assert server_connections == ["h11", "h11_mypyc"] * 2


@pytest.mark.parametrize("http", ["h11", "h11-mypyc"])
async def test_either_engine_serves_in_memory(
    http: typing.Literal["h11", "h11-mypyc"], server_connections: list[str]
) -> None:
    async with open_client(hello, Config(http=http)) as client:
        response = await client.get("/")
    assert response.status == 200
    assert response.body == b"Hello, world!"
    assert server_connections == [BUILDS[http].__name__]


# --- The command line ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--version"], "HTTP engine: h11-mypyc {h11-mypyc} (--http auto)"),
        (["--version", "--http", "h11"], "HTTP engine: h11 {h11} (--http h11)"),
        (["--http=h11", "--version"], "HTTP engine: h11 {h11} (--http h11)"),
        (
            ["--version", "--http", "h11-mypyc"],
            "HTTP engine: h11-mypyc {h11-mypyc} (--http h11-mypyc)",
        ),
    ],
)
def test_version_says_which_engine_runs(
    capsys: pytest.CaptureFixture[str], auto_as_shipped: None, argv: list[str], line: str
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith(f"trioserve {trioserve.__version__} (trio {trio.__version__}, ")
    versions = {name: module.__version__ for name, module in BUILDS.items()}
    assert second == line.format(**versions)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--version"], "HTTP engine: h11 {h11} (--http auto)"),
        (
            ["--http", "h11-mypyc", "--version"],
            "HTTP engine: h11-mypyc, not installed (--http h11-mypyc)",
        ),
    ],
)
def test_version_without_h11_mypyc(
    capsys: pytest.CaptureFixture[str],
    auto_as_shipped: None,
    without_h11_mypyc: None,
    argv: list[str],
    line: str,
) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert capsys.readouterr().out.splitlines()[1] == line.format(h11=h11.__version__)


def test_http_h11_mypyc_without_it_is_a_bad_flag(
    capsys: pytest.CaptureFixture[str], without_h11_mypyc: None
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["tests.conftest:hello", "--http", "h11-mypyc"])
    assert info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("trioserve: argument --http: the HTTP engine h11-mypyc cannot be ")
    assert "pip install 'trioserve[fast]'" in line
    assert line.endswith("(see trioserve --help)")


def test_http_takes_only_the_engine_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["tests.conftest:hello", "--http", "httptools"])
    assert info.value.code == 2
    assert "argument --http: invalid choice: 'httptools'" in capsys.readouterr().err
    assert parse_args(["tests.conftest:hello", "--http", "h11"]).config.http == "h11"
    assert parse_args(["tests.conftest:hello"]).config.http == "auto"


@pytest.mark.parametrize("http", ["h11", "h11-mypyc"])
def test_the_startup_lines_say_which_engine_runs(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    restore_logging: None,
    http: str,
) -> None:
    # Up to the bind, which fails here: main() prints its startup lines before.
    async def refuse(*args: object, **kwargs: object) -> typing.NoReturn:
        raise OSError(98, "address already in use")

    monkeypatch.setattr(trio, "open_tcp_listeners", refuse)
    assert main(["tests.conftest:hello", "--port", "0", "--http", http]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("Interface: native handler")
    assert lines[1] == f"HTTP engine: {described(http)}"


async def test_a_child_process_runs_the_engine_of_this_run(http_engine: str) -> None:
    # The child's 'auto' is this run's engine (h11_mypyc is hidden from the children of
    # the h11 run): the command-line tests in child processes test that engine.
    command = [sys.executable, "-m", "trioserve", "tests.conftest:hello", "--port", "0"]
    async with running(command) as child:
        assert re.search(rb"^HTTP engine: (.*)$", child.stderr, re.MULTILINE) is not None
        answer = await child.get(b"/")
        child.process.terminate()
        await child.wait()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"\nHTTP engine: {described(http_engine)}\n" in child.stderr.decode()
