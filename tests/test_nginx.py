"""A real nginx in front of trioserve, and the systemd units, from docs/deploy/ as written.

Each test writes a small application into its temporary directory and starts
``python -m trioserve`` on it (``tests/processes.py``: every wait bounded by ``BOUND``,
the child killed on the way out). nginx runs ``docs/deploy/nginx.conf`` with its two
placeholders filled in, included from a main configuration that keeps everything nginx
writes (temporary files, logs, pid) in the test's directory; it runs as the current
user, with one worker, listening on a free port of 127.0.0.1 only. nginx prints
nothing once it is ready, so the test waits until that port accepts a connection. It
is stopped with SIGQUIT (graceful), and its process group (it has its own) is killed
if it has not exited in time, so no worker is left behind.

nginx and systemd-socket-activate are looked for in PATH, then in /usr/sbin and
/usr/bin (not on every non-root PATH). A missing one skips its test, except in CI (the
CI variable set), where it fails: ``.ci/run`` installs both.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
import trustme

from .processes import BOUND, ChildProcess, running

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy"

#: The streamed response: this many chunks of this many bytes (5 MiB).
STREAM_CHUNKS = 80
CHUNK = 64 * 1024

#: The application the tests serve (native): it shows what it saw of each request.
APP = f"""\
import hashlib
import json

import trioserve

posts = 0


async def chunks():
    for index in range({STREAM_CHUNKS}):
        yield index.to_bytes(4, "big") * ({CHUNK} // 4)


async def app(request):
    global posts
    if request.path == "/seen":
        host = request.headers.get("host")
        seen = {{"client": request.client, "scheme": request.scheme, "host": host}}
        return trioserve.Response(200, body=json.dumps(seen))
    if request.path == "/upload":
        digest = hashlib.sha256()
        length = 0
        async for chunk in request.stream():
            digest.update(chunk)
            length += len(chunk)
        return trioserve.Response(
            200, body=json.dumps({{"length": length, "sha256": digest.hexdigest()}})
        )
    if request.path == "/stream":
        return trioserve.Response(200, body=chunks())
    if request.path == "/posts":
        if request.method == "POST":
            await request.body()
            posts += 1
        return trioserve.Response(200, body=str(posts))
    return trioserve.Response(404)
"""


def find_program(name: str) -> str:
    """The program's path; skip the test without it (fail it in CI)."""
    for found in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if found is not None and os.access(found, os.X_OK):
            return found
    message = f"{name} is not installed (.ci/run installs it in CI)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    # nginx cannot be told port 0: ask the kernel for a free one, and give it back.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_app(directory: Path) -> None:
    (directory / "app.py").write_text(APP)


def trioserve_command(directory: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        *("-m", "trioserve", "app:app", "--app-dir", str(directory), "--no-access-log"),
        *flags,
    ]


def nginx_config(
    directory: Path,
    upstream: str,
    port: int,
    *,
    ca: trustme.CA | None,
    keepalive_timeout: str | None,
) -> Path:
    """Write docs/deploy/nginx.conf, filled in, and a main configuration around it."""
    site = (DEPLOY / "nginx.conf").read_text()
    listen = f"127.0.0.1:{port}" + (" ssl" if ca is not None else "")
    filled = {
        "server @TRIOSERVE@;": f"server {upstream};",
        "listen @LISTEN@;": f"listen {listen};",
    }
    if keepalive_timeout is not None:
        filled["keepalive_timeout 4s;"] = f"keepalive_timeout {keepalive_timeout};"
    for directive, value in filled.items():
        assert site.count(directive) == 1, directive
        site = site.replace(directive, value)
    (directory / "trioserve.conf").write_text(site)
    http = [
        f"{kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    ]
    http.append(f"access_log {directory / 'access.log'};")
    if ca is not None:
        pem = directory / "nginx.pem"
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
        http += [f"ssl_certificate {pem};", f"ssl_certificate_key {pem};"]
    http.append(f"include {directory / 'trioserve.conf'};")
    # A master running as root switches its workers to "user" (nobody by default, who
    # cannot read the test's directory): keep them as the current user.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    config = directory / "nginx.conf"
    config.write_text(
        f"worker_processes 1;\n{user}\nevents {{ worker_connections 64; }}\n"
        "http {\n    " + "\n    ".join(http) + "\n}\n"
    )
    return config


@asynccontextmanager
async def running_nginx(
    directory: Path,
    upstream: str,
    *,
    ca: trustme.CA | None = None,
    keepalive_timeout: str | None = None,
) -> AsyncIterator[ChildProcess]:
    """nginx in front of ``upstream`` (``127.0.0.1:PORT`` or ``unix:PATH``), over
    HTTPS with a certificate of ``ca``'s if given; ``keepalive_timeout`` replaces the
    upstream's. Yields once its port (``.port``) accepts connections."""
    nginx = find_program("nginx")
    port = free_port()
    config = nginx_config(directory, upstream, port, ca=ca, keepalive_timeout=keepalive_timeout)
    command = [nginx, "-p", str(directory), "-c", str(config), "-e", "stderr"]
    command += ["-g", f"daemon off; pid {directory / 'nginx.pid'};"]
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            command, stderr=subprocess.PIPE, start_new_session=True
        )
        child = ChildProcess(process)
        child.port = port
        nursery.start_soon(child.collect)
        try:
            with trio.fail_after(BOUND):
                while True:
                    assert process.poll() is None, f"nginx exited: {child.stderr.decode()}"
                    try:
                        await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                        break
                    except OSError:
                        await trio.sleep(0.01)
            yield child
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGQUIT)  # graceful: idle connections close
                with trio.move_on_after(BOUND):
                    await process.wait()
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)  # the master and its worker
                await process.wait()
            nursery.cancel_scope.cancel()


def http_client(
    nginx: ChildProcess, *, ca: trustme.CA | None = None, local_address: str = "127.0.0.1"
) -> httpx.AsyncClient:
    scheme = "https" if ca is not None else "http"
    verify: ssl.SSLContext | bool = False
    if ca is not None:
        verify = ssl.create_default_context()
        ca.configure_trust(verify)
    transport = httpx.AsyncHTTPTransport(local_address=local_address, verify=verify)
    return httpx.AsyncClient(
        base_url=f"{scheme}://127.0.0.1:{nginx.port}", transport=transport, timeout=BOUND
    )


# Both headers forged by the client: nginx replaces X-Forwarded-Proto and appends the
# client's address to X-Forwarded-For, so trioserve must take the address nginx added.
#: What a client forges: every forwarding header trioserve believes from nginx. The
#: config sets or clears each, so none of them gets through (a Forwarded that did
#: would make the client unknown; a forged host would be the Host handlers see).
FORGED = {
    "x-forwarded-for": "6.6.6.6",
    "x-forwarded-proto": "http",
    "x-forwarded-host": "evil.example",
    "x-forwarded-port": "4444",
    "forwarded": "for=6.6.6.6;proto=http;host=evil.example",
}


async def test_over_tcp_the_app_sees_the_client_and_scheme_nginx_saw(tmp_path: Path) -> None:
    write_app(tmp_path)
    ca = trustme.CA()
    # The client connects from 127.0.0.2: at 127.0.0.1, nginx's address, it would be a
    # trusted proxy itself, and trioserve would rightly skip its entry and believe the
    # one on its left.
    serve = trioserve_command(tmp_path, "--port", "0", "--forwarded-allow-ips", "127.0.0.1")
    async with running(serve) as server:
        async with running_nginx(tmp_path, f"127.0.0.1:{server.port}", ca=ca) as nginx:
            async with http_client(nginx, ca=ca, local_address="127.0.0.2") as client:
                response = await client.get("/seen", headers=FORGED)
    assert response.status_code == 200
    # The host the client asked nginx for, with nginx's port (X-Forwarded-Port).
    host = f"127.0.0.1:{nginx.port}"
    assert response.json() == {"client": ["127.0.0.2", 0], "scheme": "https", "host": host}


@pytest.mark.parametrize(
    ("allow", "client"),
    [("unix", ["127.0.0.1", 0]), ("127.0.0.1", None)],
    ids=["trusted", "untrusted"],
)
async def test_over_a_unix_socket_the_client_is_believed_only_with_unix_trusted(
    tmp_path: Path, sock_dir: Path, allow: str, client: list[object] | None
) -> None:
    write_app(tmp_path)
    path = sock_dir / "trioserve.sock"
    serve = trioserve_command(tmp_path, "--uds", str(path), "--forwarded-allow-ips", allow)
    async with running(serve, ready=rb"Serving on unix:"):
        async with running_nginx(tmp_path, f"unix:{path}") as nginx:
            async with http_client(nginx) as http:
                forged = {**FORGED, "x-forwarded-proto": "https"}
                response = await http.get("/seen", headers=forged)
    assert response.status_code == 200
    # Trusted, the X-Forwarded-For entry nginx added is the client (127.0.0.1 is not a
    # trusted proxy here: only "unix" is), and the host nginx was asked for, with its
    # port; untrusted, a Unix peer has no address and Host is nginx's $host.
    host = f"127.0.0.1:{nginx.port}" if client is not None else "127.0.0.1"
    assert response.json() == {"client": client, "scheme": "http", "host": host}


async def test_upstream_connections_are_kept_alive_and_large_bodies_pass_intact(
    tmp_path: Path,
) -> None:
    write_app(tmp_path)
    # Without proxy headers the app's client is nginx's end of the upstream connection:
    # its port tells the connections apart.
    serve = trioserve_command(tmp_path, "--port", "0", "--no-proxy-headers")
    upload = os.urandom(10 * 1024 * 1024)
    async with running(serve) as server:
        async with running_nginx(tmp_path, f"127.0.0.1:{server.port}") as nginx:
            async with http_client(nginx) as http:
                ports = set()
                for _ in range(20):
                    response = await http.get("/seen")
                    assert response.status_code == 200
                    ports.add(response.json()["client"][1])
                uploaded = await http.post("/upload", content=upload)
                digest = hashlib.sha256()
                length = 0
                async with http.stream("GET", "/stream") as streamed:
                    async for chunk in streamed.aiter_raw():
                        digest.update(chunk)
                        length += len(chunk)
    assert len(ports) == 1, ports  # 20 requests, one after another: one connection
    assert uploaded.status_code == 200
    assert uploaded.json() == {"length": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}
    assert streamed.status_code == 200
    assert "content-length" not in streamed.headers  # streamed all the way
    expected = b"".join(i.to_bytes(4, "big") * (CHUNK // 4) for i in range(STREAM_CHUNKS))
    assert (length, digest.hexdigest()) == (len(expected), hashlib.sha256(expected).hexdigest())


async def test_posts_around_the_keep_alive_timeouts_are_answered_once_each(
    tmp_path: Path,
) -> None:
    """nginx never retries a POST it has sent (it may have been processed), so a POST
    sent on a connection that trioserve closes at that moment gets a 502. The rule in
    docs/deployment.md prevents it: nginx's upstream keepalive_timeout below
    trioserve's --keep-alive-timeout (4 s and 5 s; here 100 ms and 250 ms, to try many
    idle times around both in a few seconds). With nginx's at 60 s instead, 4 or 5 of
    the 21 POSTs idle for about 250 ms got a 502, and the app never saw them."""
    write_app(tmp_path)
    serve = trioserve_command(tmp_path, "--port", "0", "--keep-alive-timeout", "0.25")
    # Idle times in steps of 0.5 ms around nginx's timeout, then around trioserve's:
    # the client waits after receiving a response, a little after trioserve's timer
    # started, so the race shows from a few ms before 250 ms.
    pauses = [0.1 + k * 0.0005 for k in range(-8, 8)]
    pauses += [0.25 + k * 0.0005 for k in range(-16, 5)]
    statuses = []
    async with running(serve) as server:
        upstream = f"127.0.0.1:{server.port}"
        async with running_nginx(tmp_path, upstream, keepalive_timeout="100ms") as nginx:
            async with http_client(nginx) as http:
                for pause in pauses:
                    await trio.sleep(pause)
                    response = await http.post("/posts", content=b"x" * 100)
                    statuses.append(response.status_code)
                count = int((await http.get("/posts")).text)
    assert statuses == [200] * len(pauses), nginx.stderr.decode()
    assert count == len(pauses)


def unit_setting(path: Path, name: str) -> str:
    """The value of ``name=`` in a systemd unit file (it must be there once)."""
    lines = path.read_text().splitlines()
    [value] = [line.partition("=")[2] for line in lines if line.startswith(f"{name}=")]
    return value


async def test_the_systemd_units_serve_through_socket_activation(tmp_path: Path) -> None:
    activate = find_program("systemd-socket-activate")
    listen = unit_setting(DEPLOY / "trioserve.socket", "ListenStream")
    assert listen == "127.0.0.1:8000"  # as docs/deployment.md says
    assert unit_setting(DEPLOY / "trioserve.socket", "Accept") == "no"
    program, *arguments = shlex.split(unit_setting(DEPLOY / "trioserve.service", "ExecStart"))
    assert Path(program).name == "trioserve"
    assert unit_setting(DEPLOY / "trioserve.service", "KillSignal") == "SIGTERM"
    write_app(tmp_path)  # app:app, from the working directory as WorkingDirectory=
    # The socket's address with a free port, the service's command with this Python.
    command = [activate, "-l", f"127.0.0.1:{free_port()}", sys.executable, "-m", "trioserve"]
    ready = rb"Listening on 127\.0\.0\.1:(\d+) as 3\."
    async with running([*command, *arguments], cwd=tmp_path, ready=ready) as service:
        # systemd-socket-activate starts the service on the first connection, as systemd
        # does; trioserve finds the socket through LISTEN_FDS.
        response = await service.get(b"/seen")
        await service.wait_for(rb"Serving on http://127\.0\.0\.1:%d " % service.port)
        service.process.send_signal(signal.SIGTERM)  # KillSignal=: a graceful drain
        status = await service.wait()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(response.partition(b"\r\n\r\n")[2])["client"][0] == "127.0.0.1"
    assert status == 0, service.stderr.decode()
