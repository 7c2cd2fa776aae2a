"""The PNG chart of one run (needs matplotlib, an optional bench dependency)."""

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.typing import ColorType
from report import RAW_SERVER
from results import Results
from scenarios import WS_MESSAGES
from servers import FAST_ENGINE, PURE_H11, ServerSpec

BAR_GROUP_WIDTH = 0.8
#: How each engine's limit is drawn on the throughput bars.
LIMIT_STYLES = {PURE_H11: "solid", FAST_ENGINE: "dashed"}

Colors = dict[str, ColorType]


def write_chart(
    results: Results,
    servers: Sequence[ServerSpec],
    concurrencies: Sequence[int],
    path: Path,
) -> None:
    """Draw throughput, latency, limit ratios, echo, idle memory and slowloris (the
    HTTP rows, when any of them ran) and the WebSocket echo (a row, when it ran)."""
    names = [spec.name for spec in servers]
    colors = _colors(servers)
    http = bool(results.throughput or results.echo or results.idle or results.slowloris)
    rows = 2 * http + bool(results.websocket) or 2
    figure = Figure(figsize=(18, 5 * rows))
    axes = figure.subplots(rows, 3, squeeze=False)
    if http or not results.websocket:
        _http(axes[0], axes[1], results, servers, colors, concurrencies)
    if results.websocket:
        _websocket(axes[-1], results, names, colors)
    figure.suptitle(f"trioserve benchmark, {results.meta.date}: {results.meta.cpu}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _colors(servers: Sequence[ServerSpec]) -> Colors:
    """A color per server, none shared (up to 20): trioserve on pure h11 gets the
    light shade of the same server on the fast engine (``trioserve-h11`` that of
    ``trioserve``); every other server a dark shade of its own, or when those run
    out (limits last), the light shade of a server it never shares a panel with."""
    palette = colormaps["tab20"]
    specs = {spec.name: spec for spec in servers}

    def twin(spec: ServerSpec) -> str | None:
        """The fast-engine server of which ``spec`` is the pure-h11 variant."""
        fast = spec.name.removesuffix("-h11")
        return fast if spec.engine == PURE_H11 and fast != spec.name and fast in specs else None

    twins = {spec.name: fast for spec in servers if (fast := twin(spec))}
    paired = [name for name in specs if name in twins.values()]
    single = [name for name in specs if name not in twins and name not in paired]
    single.sort(key=lambda name: specs[name].kind == "limit")  # stable: limits last
    shades: dict[int, str] = {}  # palette index -> server
    for pair, name in enumerate(paired):
        shades[2 * pair] = name
    for name, fast in twins.items():
        shades[2 * paired.index(fast) + 1] = name
    for name in single:
        free = [i for i in range(palette.N) if i not in shades]
        free.sort(key=lambda i: i % 2)  # stable: the dark shades first
        apart = [
            i
            for i in free
            if i % 2 == 0
            or i - 1 not in shades
            or not specs[shades[i - 1]].scenarios & specs[name].scenarios
        ]
        if free:
            shades[(apart or free)[0]] = name
    colors: Colors = {name: palette(index) for index, name in shades.items()}
    for index, name in enumerate(name for name in specs if name not in colors):
        colors[name] = palette(index % palette.N)  # more than 20 servers: colors repeat
    return colors


def _http(
    top: Sequence[Axes],
    bottom: Sequence[Axes],
    results: Results,
    servers: Sequence[ServerSpec],
    colors: Colors,
    concurrencies: Sequence[int],
) -> None:
    names = [spec.name for spec in servers]
    _throughput(top[0], results, names, colors, concurrencies)
    _grouped(
        top[1], names, colors, concurrencies, results.median_p99_ms,
        "p99 latency (ms, log scale)",
    )  # fmt: skip
    top[1].set_yscale("log")
    _limit_ratio(top[2], results, servers, colors, concurrencies)
    _bars(
        bottom[0], names, colors, results.median_echo_rps,
        "1 MiB POST echo: MiB/s each way",
    )  # fmt: skip
    _bars(
        bottom[1], names, colors, lambda name: _kib_per_connection(results, name),
        "idle keep-alive connection: KiB of RSS each",
    )  # fmt: skip
    _slowloris(bottom[2], results, names, colors)


def _grouped(
    axis: Axes,
    names: Sequence[str],
    colors: Colors,
    concurrencies: Sequence[int],
    value: Callable[[str, int], float | None],
    title: str,
) -> None:
    """Bars grouped by concurrency, one bar per server that has a value."""
    width = BAR_GROUP_WIDTH / len(names)
    for index, name in enumerate(names):
        points = [(i, value(name, c)) for i, c in enumerate(concurrencies)]
        present = [(i, v) for i, v in points if v is not None]
        if present:
            xs = [i - BAR_GROUP_WIDTH / 2 + (index + 0.5) * width for i, _ in present]
            heights = [v for _, v in present]
            axis.bar(xs, heights, width, label=name, color=colors[name])
    axis.set_xticks(range(len(concurrencies)))
    axis.set_xticklabels([f"c={c}" for c in concurrencies])
    axis.set_title(title)


def _throughput(
    axis: Axes,
    results: Results,
    names: Sequence[str],
    colors: Colors,
    concurrencies: Sequence[int],
) -> None:
    title = (
        "GET / Hello, world!: req/s\n(black lines: trio + h11 limit, solid;"
        " trio + h11-mypyc limit, dashed)"
    )
    _grouped(axis, names, colors, concurrencies, results.median_rps, title)
    half = BAR_GROUP_WIDTH / 2
    for engine, style in LIMIT_STYLES.items():
        for index, connections in enumerate(concurrencies):
            limit = results.limit_rps(RAW_SERVER, connections, engine)
            if limit is not None:
                axis.hlines(
                    limit, index - half, index + half, colors="black", linestyles=style,
                    linewidth=2,
                )  # fmt: skip
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize="small", ncol=2)


def _limit_ratio(
    axis: Axes,
    results: Results,
    servers: Sequence[ServerSpec],
    colors: Colors,
    concurrencies: Sequence[int],
) -> None:
    engines = {spec.name: spec.limit_engine for spec in servers}

    def ratio(name: str, connections: int) -> float | None:
        rps = results.median_rps(name, connections)
        limit = results.limit_rps(RAW_SERVER, connections, engines[name])
        return rps / limit if rps is not None and limit else None

    measured = [spec.name for spec in servers if spec.kind != "limit"]
    title = "ratio to the limit with the server's engine (peers: pure h11's)"
    _grouped(axis, measured, colors, concurrencies, ratio, title)
    axis.axhline(1.0, color="black", linewidth=1)


def _bars(
    axis: Axes,
    names: Sequence[str],
    colors: Colors,
    value: Callable[[str], float | None],
    title: str,
) -> None:
    """One bar per server that has a value."""
    present = [(name, value(name)) for name in names]
    shown = [(name, v) for name, v in present if v is not None]
    axis.bar(
        [name for name, _ in shown],
        [v for _, v in shown],
        color=[colors[name] for name, _ in shown],
    )
    axis.set_title(title)
    _slant_labels(axis)


def _slant_labels(axis: Axes) -> None:
    """Server names under the bars, slanted so that long ones do not overlap."""
    axis.tick_params(axis="x", labelrotation=40)
    for label in axis.get_xticklabels():
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")


def _websocket(
    axes: Sequence[Axes], results: Results, names: Sequence[str], colors: Colors
) -> None:
    connections = results.meta.websocket_connections
    for axis, message in zip(axes, WS_MESSAGES, strict=False):
        rate = functools.partial(_ws_rate, results, message.label)
        title = f"WebSocket echo, {message.label}, {connections} connections: messages/s"
        _bars(axis, names, colors, rate, title)
    for axis in axes[len(WS_MESSAGES) :]:
        axis.set_axis_off()


def _ws_rate(results: Results, message: str, name: str) -> float | None:
    return results.median_ws_rate(name, message)


def _kib_per_connection(results: Results, name: str) -> float | None:
    idle = results.idle.get(name)
    return idle.kib_per_connection if idle else None


def _slowloris(axis: Axes, results: Results, names: Sequence[str], colors: Colors) -> None:
    shown = [name for name in names if name in results.slowloris]
    for index, name in enumerate(shown):
        run = results.slowloris[name]
        heights = [run.baseline.p99_ms or 0.0, run.loaded.p99_ms or 0.0]
        axis.bar([index - 0.2, index + 0.2], heights, 0.4, color=colors[name])
        axis.bar([index + 0.2], [heights[1]], 0.4, color="none", hatch="//")
    axis.set_xticks(range(len(shown)))
    axis.set_xticklabels(shown)
    _slant_labels(axis)
    axis.set_title("p99 of ordinary clients (ms): alone | hatched: with slowloris")
