"""The command line: flags onto Config, loading and detecting the app, real processes.

The parsing, loading and detection tests run in this process. The rest start
``python -m trioserve`` (or the ``trioserve`` script) on 127.0.0.1 with ``--port 0``,
read the port from the ``Serving on`` line, and wait for lines the process prints,
never for a while (``tests/processes.py``: every wait bounded by ``BOUND``, each
process killed on the way out whatever happened).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import math
import re
import signal
import socket
import sys
import textwrap
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import trioserve
from trioserve import _cli
from trioserve._cli import (
    FD_HEADROOM,
    CLIError,
    build_handler,
    build_parser,
    choose_interface,
    load_app,
    main,
    parse_args,
    plan_open_file_limit,
)
from trioserve._cli_config import flag_name
from trioserve.asgi import ASGIHandler
from trioserve.wsgi import WSGIHandler

from .processes import BOUND, ChildProcess, running

ROOT = Path(__file__).resolve().parent.parent


# --- Flags and Config -------------------------------------------------------------------


def parse_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Parse a bad command line; return its one line of error output."""
    with pytest.raises(SystemExit) as info:
        parse_args(["m:app", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("trioserve: ")
    return err.strip()


def sample_value(field: dataclasses.Field[object]) -> tuple[str, object]:
    """A valid value unlike the default, as typed on the command line and as parsed."""
    hint = typing.get_type_hints(trioserve.Config)[field.name]
    if hint is float or hint is int:
        assert field.default != 123
        return "123", 123
    if hint is bool:
        flag = flag_name(field.name)
        return (flag.replace("--", "--no-") if field.default else flag), not field.default
    if hint == tuple[str, ...]:
        return "10.0.0.0/8, unix", ("10.0.0.0/8", "unix")
    if typing.get_origin(hint) is typing.Literal:  # http: h11, installed everywhere
        choice = next(c for c in typing.get_args(hint) if c not in (field.default, "h11-mypyc"))
        return choice, choice
    assert hint == (str | None)
    return "cli-test", "cli-test"


def test_every_config_field_has_a_flag_with_help_and_default() -> None:
    helps = {
        option: (action.dest, action.help or "")
        for action in build_parser()._actions
        for option in action.option_strings
    }
    for field in dataclasses.fields(trioserve.Config):
        dest, text = helps[flag_name(field.name)]
        assert dest == field.name
        # The first sentence of the field's comment in _config.py, then the default.
        sentence, _, default = text.partition(" (default: ")
        assert len(sentence) > 10, field.name
        assert default.endswith(")"), field.name
    assert helps["--keep-alive-timeout"][1].startswith("idle time allowed between two requests")
    assert helps["--keep-alive-timeout"][1].endswith(" (default: 5)")
    assert helps["--max-body-size"][1].endswith(" (default: 104857600 = 100 MiB)")
    assert helps["--max-requests-per-connection"][1].endswith(" (default: inf)")
    assert helps["--server-header"][1].endswith("'none' leaves it out (default: trioserve)")


def test_command_line_reference_lists_every_flag() -> None:
    reference = (ROOT / "docs" / "command-line.md").read_text()
    table = reference.split("### Command-line reference", 1)[1].split("\n### ", 1)[0]
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| `")}
    listed = {word.strip("`").split()[0] for row in rows for word in row.split(", ")}
    flags = {
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert flags <= listed, sorted(flags - listed)


@pytest.mark.parametrize("field", dataclasses.fields(trioserve.Config), ids=lambda f: f.name)
def test_each_config_flag_reaches_config(field: dataclasses.Field[object]) -> None:
    typed, value = sample_value(field)
    argv = [typed] if typed.startswith("--") else [flag_name(field.name), typed]
    options = parse_args(["m:app", *argv])
    assert options.config == trioserve.Config().replace(**{field.name: value})  # type: ignore[arg-type]  # a number or str


def test_command_line_defaults() -> None:
    options = parse_args(["m:app"])
    assert options.config == trioserve.Config()
    listening = options.listening
    assert (listening.host, listening.port, options.interface) == ("127.0.0.1", 8000, "auto")
    assert (listening.uds, listening.listeners, listening.ssl_context) == (None, (), None)
    assert (options.log_level, options.access_log, options.factory) == ("info", True, False)
    assert (options.root_path, options.lifespan, options.wsgi_max_threads) == (None, None, None)


def test_inf_and_none_mean_no_limit() -> None:
    config = parse_args(
        [
            "m:app",
            "--max-requests-per-connection=none",
            "--max-body-size",
            "inf",
            "--keep-alive-timeout",
            "INF",
            "--server-header",
            "none",
        ]
    ).config
    assert config.max_requests_per_connection == math.inf
    assert config.max_body_size == math.inf
    assert config.keep_alive_timeout == math.inf
    assert config.server_header is None
    assert parse_args(["m:app", "--server-header="]).config.server_header is None
    assert parse_args(["m:app", "--header-timeout", "2.5"]).config.header_timeout == 2.5


def test_other_options() -> None:
    options = parse_args(
        [
            "pkg.mod:obj.app",
            "--factory",
            "--interface",
            "asgi",
            "--host",
            "*",
            "--port",
            "0",
            "--root-path",
            "/api",
            "--lifespan",
            "on",
            "--log-level",
            "DEBUG",
            "--no-access-log",
            "--app-dir",
            "src",
        ]
    )
    assert options.app == "pkg.mod:obj.app"
    assert options.factory
    assert options.interface == "asgi"
    assert options.listening.host is None  # '*': every interface
    assert options.listening.port == 0
    assert (options.root_path, options.lifespan) == ("/api", "on")
    assert (options.log_level, options.access_log, options.app_dir) == ("debug", False, "src")
    assert parse_args(["m:app", "--wsgi-max-threads", "8"]).wsgi_max_threads == 8


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--keep-alive-timeout", "-1"],
            "argument --keep-alive-timeout: keep_alive_timeout must be more than zero "
            "(inf for no limit), not -1",
        ),
        (["--header-timeout", "soon"], "expected a number or 'inf', not 'soon'"),
        (["--max-body-size", "1.5"], "max_body_size must be a whole number"),
        (["--body-min-rate", "inf"], "body_min_rate must be finite"),
        (["--shutdown-timeout", "nan"], "shutdown_timeout must not be NaN"),
        (["--backlog", "inf"], "argument --backlog: expected a whole number, not 'inf'"),
        (["--backlog", "0"], "backlog must be at least 1"),
        (["--server-header", "caf\u00e9"], "server_header must be printable ASCII"),
        (["--port", "65536"], "expected a port number from 0 to 65535, not '65536'"),
        (["--port", "http"], "expected a port number from 0 to 65535, not 'http'"),
        (["--root-path", "api"], "starts with '/'"),
        (["--root-path", "/api/"], "does not end with one"),
        (["--wsgi-max-threads", "0"], "expected a whole number of at least 1, not '0'"),
        (["--interface", "cgi"], "argument --interface: invalid choice: 'cgi'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    line = parse_error(capsys, *argv)
    assert message in line
    assert line.endswith("(see trioserve --help)")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"trioserve {trioserve.__version__} (trio {trio.__version__}, h11 ")


# --- Interface detection ----------------------------------------------------------------


async def native_function(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200)


async def asgi_function(scope: object, receive: object, send: object) -> None:
    raise AssertionError("detection never calls the application")


def wsgi_function(environ: object, start_response: object) -> list[bytes]:
    raise AssertionError("detection never calls the application")


async def asgi_with_options(
    scope: object, receive: object, send: object, debug: bool = False
) -> None:
    raise AssertionError("detection never calls the application")


async def asgi_plus_one(prefix: str, scope: object, receive: object, send: object) -> None:
    raise AssertionError("detection never calls the application")


class NativeInstance:
    async def __call__(self, request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response(200)


class ASGIInstance:
    async def __call__(self, scope: object, receive: object, send: object) -> None:
        raise AssertionError("detection never calls the application")


class WSGIInstance:
    def __call__(self, environ: object, start_response: object) -> list[bytes]:
        raise AssertionError("detection never calls the application")


class ASGIClass:
    """An ASGI 3 app as a class: ``await ASGIClass(scope, receive, send)``."""

    def __init__(self, scope: object, receive: object, send: object) -> None:
        raise AssertionError("detection never calls the application")

    def __await__(self) -> Iterator[None]:
        raise AssertionError("detection never calls the application")


class WSGIClass:
    """A WSGI app as a class (PEP 3333): its instances are the response iterable."""

    def __init__(self, environ: object, start_response: object) -> None:
        raise AssertionError("detection never calls the application")

    def __iter__(self) -> Iterator[bytes]:
        raise AssertionError("detection never calls the application")


def flask_app() -> object:
    from tests.wsgi_apps.flask_app import app

    return app


def fastapi_app() -> object:
    from tests.asgi_apps.fastapi_app import app

    return app


@pytest.mark.parametrize(
    ("make_app", "expected"),
    [
        (lambda: native_function, "native"),
        (lambda: asgi_function, "asgi"),
        (lambda: wsgi_function, "wsgi"),
        (lambda: asgi_with_options, "asgi"),
        (lambda: functools.partial(asgi_plus_one, "x"), "asgi"),
        (NativeInstance, "native"),
        (ASGIInstance, "asgi"),
        (WSGIInstance, "wsgi"),
        (lambda: ASGIClass, "asgi"),
        (lambda: WSGIClass, "wsgi"),
        (flask_app, "wsgi"),
        (fastapi_app, "asgi"),
    ],
    ids=[
        "native-function",
        "asgi-function",
        "wsgi-function",
        "asgi-optional-parameter",
        "asgi-partial",
        "native-instance",
        "asgi-instance",
        "wsgi-instance",
        "asgi-class",
        "wsgi-class",
        "flask",
        "fastapi",
    ],
)
def test_interface_detection(make_app: Callable[[], object], expected: str) -> None:
    interface, reason = choose_interface(make_app(), "auto")
    assert interface == expected
    assert reason.startswith(
        "detected: an async callable" if expected != "wsgi" else "detected: a sync"
    )


def sync_handler(request: object) -> None:
    raise AssertionError("never called")


async def any_arguments(*args: object) -> None:
    raise AssertionError("never called")


def create_app() -> object:
    return native_function


async def keyword_only(request: object, *, required: object) -> None:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (sync_handler, "is a sync callable taking (request), which is no interface"),
        (any_arguments, "is an async callable taking (*args), which could be native and asgi"),
        (create_app, "if it builds the application, pass --factory"),
        (keyword_only, "taking (request, required), which is no interface"),
    ],
    ids=["sync-one-parameter", "varargs", "factory-without-flag", "keyword-only"],
)
def test_undetectable_interfaces_say_why(app: object, message: str) -> None:
    with pytest.raises(CLIError, match=re.escape(message)) as info:
        choose_interface(app, "auto", "mod:app")
    assert str(info.value).startswith("mod:app is ")
    assert "--interface" in str(info.value)


def test_explicit_interface_is_taken_as_given() -> None:
    assert choose_interface(sync_handler, "asgi") == ("asgi", "--interface asgi")


# --- Building the handler ---------------------------------------------------------------


def test_asgi_options_reach_the_adapter() -> None:
    options = parse_args(["m:app", "--root-path", "/api", "--lifespan", "on"])
    handler, lifespan = build_handler(asgi_function, "asgi", options)
    assert isinstance(handler, ASGIHandler)
    assert (handler.app, handler.root_path, handler.lifespan_mode) == (asgi_function, "/api", "on")
    assert lifespan == handler.lifespan


def test_wsgi_options_reach_the_adapter() -> None:
    options = parse_args(["m:app", "--root-path", "/app", "--wsgi-max-threads", "7"])
    handler, lifespan = build_handler(wsgi_function, "wsgi", options)
    assert isinstance(handler, WSGIHandler)
    assert handler.root_path == "/app"
    assert handler.statistics().max_threads == 7
    assert lifespan is None


def test_native_handler_is_served_as_is() -> None:
    assert build_handler(native_function, "native", parse_args(["m:app"])) == (
        native_function,
        None,
    )


@pytest.mark.parametrize(
    ("argv", "interface", "message"),
    [
        (["--root-path", "/api"], "native", "--root-path applies to ASGI and WSGI"),
        (["--lifespan", "off"], "wsgi", "--lifespan applies to ASGI applications, not WSGI"),
        (["--wsgi-max-threads", "4"], "asgi", "--wsgi-max-threads applies to WSGI"),
    ],
)
def test_options_for_another_interface_are_usage_errors(
    argv: list[str], interface: _cli.Interface, message: str
) -> None:
    with pytest.raises(CLIError, match=re.escape(message)) as info:
        build_handler(native_function, interface, parse_args(["m:app", *argv]))
    assert info.value.status == 2


# --- Loading the application ------------------------------------------------------------


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for throwaway app modules; imports of them are forgotten after."""
    saved_path = sys.path[:]
    saved_modules = set(sys.modules)
    yield tmp_path
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        if str(tmp_path) in str(getattr(sys.modules[name], "__file__", None) or ""):
            del sys.modules[name]


def write(directory: Path, name: str, source: str) -> None:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))


def test_load_app_from_app_dir(app_dir: Path) -> None:
    write(
        app_dir,
        "pkg/apps.py",
        """
        class Holder:
            async def app(self, request): ...
        holder = Holder()
        async def handler(request): ...
        def make():
            return handler
        """,
    )
    write(app_dir, "pkg/__init__.py", "")
    loaded = load_app("pkg.apps:handler", app_dir=str(app_dir))
    assert getattr(loaded, "__name__", None) == "handler"
    assert load_app("pkg.apps:make", factory=True, app_dir=str(app_dir)) is loaded
    nested = load_app("pkg.apps:holder.app", app_dir=str(app_dir))
    assert choose_interface(nested, "auto")[0] == "native"


@pytest.mark.parametrize(
    ("files", "spec", "factory", "message"),
    [
        ({}, "nosuch_cli_app:app", False, "module 'nosuch_cli_app' not found (importing from "),
        ({}, "nosuch_cli_pkg.mod:app", False, "module 'nosuch_cli_pkg' not found"),
        (
            {"broken_import.py": "import nosuch_dependency_xyz\n"},
            "broken_import:app",
            False,
            "importing broken_import failed: ModuleNotFoundError: No module named "
            "'nosuch_dependency_xyz' (broken_import.py, line 1)",
        ),
        (
            {"broken_syntax.py": "x = 1\ndef f(:\n"},
            "broken_syntax:app",
            False,
            "importing broken_syntax failed: SyntaxError: invalid syntax "
            "(broken_syntax.py, line 2)",
        ),
        (
            {"raises.py": "raise RuntimeError('no settings')\n"},
            "raises:app",
            False,
            "importing raises failed: RuntimeError: no settings (raises.py, line 1)",
        ),
        (
            {"typo.py": "async def app(request): ...\n"},
            "typo:ap",
            False,
            "typo has no attribute 'ap' (did you mean 'app'?)",
        ),
        (
            {"nested.py": "class A: pass\nobj = A()\n"},
            "nested:obj.app",
            False,
            "nested.obj has no attribute 'app'",
        ),
        ({"text.py": "app = 'hello'\n"}, "text:app", False, "text:app is a str, not a callable"),
        (
            {"factory.py": "def make():\n    raise LookupError('no database url')\n"},
            "factory:make",
            True,
            "the factory factory:make raised LookupError: no database url (factory.py, line 2)",
        ),
        (
            {"afactory.py": "async def make():\n    return None\n"},
            "afactory:make",
            True,
            "the factory afactory:make returned an awaitable",
        ),
        (
            {"nfactory.py": "def make():\n    return 42\n"},
            "nfactory:make",
            True,
            "the factory nfactory:make returned an int, not a callable application",
        ),
    ],
    ids=[
        "module-missing",
        "package-missing",
        "import-error-inside",
        "syntax-error",
        "raises-on-import",
        "attribute-missing",
        "nested-attribute-missing",
        "not-callable",
        "factory-raises",
        "async-factory",
        "factory-returns-non-callable",
    ],
)
def test_load_errors(
    app_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    spec: str,
    factory: bool,
    message: str,
) -> None:
    for name, source in files.items():
        write(app_dir, name, source)
    monkeypatch.chdir(app_dir)  # locations are shown relative to the current directory
    with pytest.raises(CLIError) as info:
        load_app(spec, factory=factory, app_dir=str(app_dir))
    assert message in str(info.value)
    assert info.value.status == 1


@pytest.mark.parametrize("spec", ["app", "mod:", ":app", "mod:app:x", "mod:1app", "../mod:app"])
def test_malformed_app_spec_is_a_usage_error(spec: str) -> None:
    with pytest.raises(CLIError, match="expected the application as MODULE:ATTR") as info:
        load_app(spec)
    assert info.value.status == 2


# --- main() in this process: failures before serving ------------------------------------


@pytest.mark.parametrize(
    ("error", "port", "message"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied"),
            1,
            "trioserve: cannot listen on 127.0.0.1:1: permission denied (ports below 1024 "
            "need root or CAP_NET_BIND_SERVICE)",
        ),
        (
            OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"),
            8000,
            "trioserve: cannot listen on 127.0.0.1:8000: address not available",
        ),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            8000,
            "trioserve: cannot listen on 127.0.0.1:8000: cannot resolve the host name",
        ),
    ],
    ids=["permission-denied", "address-not-available", "unknown-host"],
)
def test_listen_failures_are_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    restore_logging: None,
    error: OSError,
    port: int,
    message: str,
) -> None:
    # We run as root in CI, where port 1 can be bound: make the bind fail as it does
    # for everyone else.
    async def refuse(*args: object, **kwargs: object) -> typing.NoReturn:
        raise error

    monkeypatch.setattr(trio, "open_tcp_listeners", refuse)
    status = main(["tests.conftest:hello", "--port", str(port), "--max-connections", "100"])
    assert status == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("Interface: native handler")
    assert lines[-1].startswith(message)
    assert not any("Traceback" in line for line in lines)


def test_debug_log_level_shows_the_traceback_of_an_import_error(
    capsys: pytest.CaptureFixture[str], app_dir: Path, restore_logging: None
) -> None:
    write(app_dir, "deep_error.py", "import nosuch_dependency_xyz\n")
    argv = ["deep_error:app", "--app-dir", str(app_dir)]
    assert main(argv) == 1
    quiet = capsys.readouterr().err
    assert "Traceback" not in quiet
    assert quiet.count("\n") == 1
    assert main([*argv, "--log-level", "debug"]) == 1
    loud = capsys.readouterr().err
    assert "Traceback (most recent call last)" in loud
    assert loud.splitlines()[-1] == quiet.strip()


def test_logging_setup_replaces_itself(restore_logging: None) -> None:
    error_logger = logging.getLogger("trioserve.error")
    access_logger = logging.getLogger("trioserve.access")
    _cli.configure_logging("warning", access_log=False)
    _cli.configure_logging("debug", access_log=True)
    assert len([h for h in error_logger.handlers if isinstance(h, _cli._CLIHandler)]) == 1
    assert error_logger.level == logging.DEBUG
    assert access_logger.level == logging.INFO
    assert not error_logger.propagate
    assert not access_logger.propagate
    _cli.configure_logging("info", access_log=False)
    assert not access_logger.isEnabledFor(logging.INFO)


# --- The open-file limit ----------------------------------------------------------------

UNLIMITED = -1


@pytest.mark.parametrize(
    ("soft", "hard", "max_connections", "new_soft", "warns"),
    [
        (1024, 1_048_576, 10_000, 10_000 + FD_HEADROOM, False),  # raised to what is needed
        (1024, UNLIMITED, 10_000, 10_000 + FD_HEADROOM, False),
        (1024, 4096, 10_000, 4096, True),  # as far as allowed, and a warning
        (50_000, 60_000, 100, 50_000, False),  # never lowered
        (UNLIMITED, UNLIMITED, 10_000, UNLIMITED, False),
        (1024, 4096, math.inf, 4096, False),  # no cap: as high as allowed, no warning
        (1024, UNLIMITED, math.inf, 1024, False),  # nothing to aim at
    ],
)
def test_open_file_limit_plan(
    soft: int, hard: int, max_connections: float, new_soft: int, warns: bool
) -> None:
    planned, warning = plan_open_file_limit(soft, hard, max_connections, unlimited=UNLIMITED)
    assert planned == new_soft
    assert (warning is not None) == warns
    if warning is not None:
        assert warning.startswith("open-file limit 4096 (hard limit 4096) is short of ")
        assert f"about {4096 - FD_HEADROOM} connections fit" in warning


# --- Real processes ---------------------------------------------------------------------


def command(*args: str, prefix: tuple[str, ...] = ()) -> list[str]:
    return [*prefix, sys.executable, "-m", "trioserve", *args]


@asynccontextmanager
async def serving(*args: str, prefix: tuple[str, ...] = ()) -> AsyncIterator[ChildProcess]:
    """Start the command line in the repository root; yield once it serves."""
    async with running(command(*args, "--port", "0", prefix=prefix), cwd=ROOT) as cli:
        yield cli


async def run_to_exit(*args: str, cwd: Path = ROOT) -> tuple[int, str]:
    """Run the command line to its end; its status and stderr."""
    with trio.fail_after(BOUND):
        done = await trio.run_process(
            command(*args), cwd=cwd, check=False, capture_stdout=True, capture_stderr=True
        )
    return done.returncode, done.stderr.decode()


async def test_asgi_example_serves_then_sigterm_exits_0() -> None:
    async with serving("examples.asgi_app:app", "--server-header", "cli-test") as cli:
        assert (
            b"Interface: ASGI 3 (detected: an async callable taking (scope, receive, send))"
            in (cli.stderr)
        )
        answer = await cli.get(b"/")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nserver: cli-test\r\n" in answer.lower()
        # The counter lives in the lifespan state: lifespan startup ran.
        assert answer.endswith(b"Hello from a plain ASGI app! (request 1)\n")
        await cli.wait_for(rb'"GET / HTTP/1\.1" 200 ')  # the access log
        cli.process.send_signal(signal.SIGTERM)
        assert await cli.wait() == 0
    assert b"SIGTERM received: shutting down gracefully" in cli.stderr
    assert b"Traceback" not in cli.stderr


async def test_sigterm_as_soon_as_it_serves_exits_0() -> None:
    # "Serving on" promises that signals are handled: a supervisor may stop the server
    # the moment it is up. Without that promise about 1 run in 3 died of the SIGTERM.
    for _ in range(5):
        async with serving("examples.asgi_app:app") as cli:
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.wait() == 0


async def test_flask_example_with_root_path_and_no_access_log() -> None:
    async with serving("examples.flask_app:app", "--root-path", "/app", "--no-access-log") as cli:
        assert b"Interface: WSGI (detected: a sync callable taking (environ, start_response))" in (
            cli.stderr
        )
        answer = await cli.get(b"/app/")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b'"greet":"/app/greet"' in answer  # url_for saw SCRIPT_NAME
        cli.process.send_signal(signal.SIGINT)
        assert await cli.wait() == 0
    assert b"GET /app/ HTTP/1.1" not in cli.stderr
    assert b"Traceback" not in cli.stderr


async def test_fastapi_example_with_the_console_script() -> None:
    script = Path(sys.executable).with_name("trioserve")
    console = [str(script), "examples.fastapi_app:app", "--port", "0", "--lifespan", "on"]
    async with running(console, cwd=ROOT) as cli:
        answer = await cli.get(b"/items/3?q=x")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b'{"item_id":3,"q":"x"}')
        cli.process.send_signal(signal.SIGTERM)
        assert await cli.wait() == 0


SLOW_APP = """
import sys, trio

async def slow_startup(scope, receive, send):
    await receive()
    print("slow_startup: in lifespan startup", file=sys.stderr, flush=True)
    await trio.sleep_forever()

async def failing_startup(scope, receive, send):
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
"""


async def test_ctrl_c_during_startup_exits_130(tmp_path: Path) -> None:
    write(tmp_path, "slow_app.py", SLOW_APP)
    startup = command("slow_app:slow_startup", "--app-dir", str(tmp_path), "--port", "0")
    # Ready when the application says it is in its lifespan startup (which never ends).
    async with running(startup, ready=rb"slow_startup: in lifespan startup") as cli:
        cli.process.send_signal(signal.SIGINT)
        assert await cli.wait() == 130
    assert cli.stderr.decode().splitlines()[-1] == "trioserve: interrupted before serving"


async def test_open_file_limit_is_raised_and_a_shortfall_is_reported() -> None:
    # Lower the limits for the child only: soft 1024 (the usual default), hard 2048,
    # so the default max_connections (10 000) cannot be reached.
    prefix = ("sh", "-c", 'ulimit -S -n 1024 && ulimit -H -n 2048 && exec "$@"', "sh")
    async with serving("examples.asgi_app:app", prefix=prefix) as cli:
        assert (await cli.get(b"/")).startswith(b"HTTP/1.1 200 ")
        cli.process.send_signal(signal.SIGTERM)
        assert await cli.wait() == 0
    assert b"open-file limit raised from 1024 to 2048" in cli.stderr
    assert (
        b"open-file limit 2048 (hard limit 2048) is short of --max-connections 10000 plus "
        b"128 for other files: about 1920 connections fit" in cli.stderr
    )
    # Enough room: raised to what max_connections needs, nothing to warn about.
    prefix = ("sh", "-c", 'ulimit -S -n 1024 && ulimit -H -n 8192 && exec "$@"', "sh")
    async with serving("examples.asgi_app:app", "--max-connections", "5000", prefix=prefix) as cli:
        assert (await cli.get(b"/")).startswith(b"HTTP/1.1 200 ")
        cli.process.send_signal(signal.SIGTERM)
        assert await cli.wait() == 0
    assert f"open-file limit raised from 1024 to {5000 + FD_HEADROOM}".encode() in cli.stderr
    assert b"WARNING" not in cli.stderr


@pytest.mark.parametrize(
    ("args", "status", "line"),
    [
        (
            ["nosuch_cli_app:app"],
            1,
            f"trioserve: module 'nosuch_cli_app' not found (importing from {ROOT}; "
            "--app-dir changes that)",
        ),
        (
            ["examples.asgi_app:ap"],
            1,
            "trioserve: examples.asgi_app has no attribute 'ap' (did you mean 'app'?)",
        ),
        (
            ["examples.asgi_app:annotations"],
            1,
            "trioserve: examples.asgi_app:annotations is a _Feature, not a callable application",
        ),
        (
            ["examples.asgi_app:app", "--keep-alive-timeout", "0"],
            2,
            "trioserve: argument --keep-alive-timeout: keep_alive_timeout must be more than "
            "zero (inf for no limit), not 0 (see python -m trioserve --help)",
        ),
        (
            ["examples.asgi_app"],
            2,
            "trioserve: expected the application as MODULE:ATTR, such as myapp:app, not "
            "'examples.asgi_app'",
        ),
    ],
    ids=["module-not-found", "attribute-not-found", "not-callable", "bad-value", "no-attribute"],
)
async def test_failures_before_serving_are_one_line(
    args: list[str], status: int, line: str
) -> None:
    returncode, stderr = await run_to_exit(*args)
    assert returncode == status
    assert stderr.splitlines() == [line]


async def test_import_error_inside_the_module_shows_the_real_error(tmp_path: Path) -> None:
    write(tmp_path, "needs_dep.py", "import os\nimport nosuch_dependency_xyz\n")
    returncode, stderr = await run_to_exit("needs_dep:app", cwd=tmp_path)
    assert returncode == 1
    assert stderr.splitlines() == [
        "trioserve: importing needs_dep failed: ModuleNotFoundError: No module named "
        "'nosuch_dependency_xyz' (needs_dep.py, line 2)"
    ]


async def test_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        returncode, stderr = await run_to_exit("examples.asgi_app:app", "--port", str(port))
    assert returncode == 1
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        f"trioserve: cannot listen on 127.0.0.1:{port}: address already in use (is another "
        "server running there? choose another port)"
    )


async def test_lifespan_startup_failure_is_the_apps_message(tmp_path: Path) -> None:
    write(tmp_path, "slow_app.py", SLOW_APP)
    returncode, stderr = await run_to_exit("slow_app:failing_startup", "--port", "0", cwd=tmp_path)
    assert returncode == 1
    assert "Traceback" not in stderr
    assert "Serving on" not in stderr
    assert stderr.splitlines()[-1] == (
        "trioserve: ASGI lifespan startup failed: database unreachable"
    )
