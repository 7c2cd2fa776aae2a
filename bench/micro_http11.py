"""The protocol engine alone, in memory: one keep-alive GET parsed and one small response
serialised through ``HTTP11Protocol``, per HTTP engine (docs/http-engines.md).

    python bench/micro_http11.py [--number 20000] [--repeat 15]

No sockets, no trio: what a request costs in ``_http11`` and the h11 build under it.
The engines are timed in turns (h11, h11-mypyc, h11, ...) so that a change in the
machine's load touches both alike; prints the minimum and median microseconds per
request of each. Quick enough (seconds) to run on a shared machine, unlike run.py.
"""

from __future__ import annotations

import argparse
import statistics
import timeit

from trioserve import Config
from trioserve._engines import Engine, load_engine
from trioserve._http11 import HTTP11Protocol, RequestHead

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
HEADERS = [(b"content-type", b"text/plain")]
BODY = b"Hello, world!"


def exchange(proto: HTTP11Protocol) -> bytes:
    """One request in and one response out, as the connection task drives them."""
    proto.receive_data(REQUEST)
    head = proto.next_request()
    assert isinstance(head, RequestHead)
    out, _ = proto.start_response(200, HEADERS, len(BODY), close=False)
    out += b"".join(proto.send_data(BODY))
    out += proto.end_response()
    assert proto.start_next_cycle()
    return out


def timings(engines: list[Engine], number: int, repeat: int) -> dict[str, list[float]]:
    """Microseconds per exchange, ``repeat`` rounds of ``number`` for each engine."""
    config = Config()
    protocols = {str(engine): HTTP11Protocol(config, engine) for engine in engines}
    for proto in protocols.values():
        exchange(proto)  # warm up (and check that it works)
    results: dict[str, list[float]] = {name: [] for name in protocols}
    for _ in range(repeat):
        for name, proto in protocols.items():
            seconds = timeit.timeit(lambda proto=proto: exchange(proto), number=number)
            results[name].append(seconds / number * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20_000, help="exchanges per round")
    parser.add_argument("--repeat", type=int, default=15, help="rounds per engine")
    args = parser.parse_args()
    engines = [load_engine("h11")]
    try:
        engines.append(load_engine("h11-mypyc"))
    except ImportError:
        print("h11-mypyc is not installed: timing h11 alone")
    for name, micros in timings(engines, args.number, args.repeat).items():
        print(f"{name:18} min {min(micros):6.2f} us  median {statistics.median(micros):6.2f} us")


if __name__ == "__main__":
    main()
