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
from servers import ServerSpec

BAR_GROUP_WIDTH = 0.8

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
    palette = colormaps["tab10"]
    colors: Colors = {name: palette(index % palette.N) for index, name in enumerate(names)}
    http = bool(results.throughput or results.echo or results.idle or results.slowloris)
    rows = 2 * http + bool(results.websocket) or 2
    figure = Figure(figsize=(18, 5 * rows))
    axes = figure.subplots(rows, 3, squeeze=False)
    if http or not results.websocket:
        _http(axes[0], axes[1], results, names, colors, concurrencies)
    if results.websocket:
        _websocket(axes[-1], results, names, colors)
    figure.suptitle(f"trioserve benchmark, {results.meta.date}: {results.meta.cpu}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _http(
    top: Sequence[Axes],
    bottom: Sequence[Axes],
    results: Results,
    names: Sequence[str],
    colors: Colors,
    concurrencies: Sequence[int],
) -> None:
    _throughput(top[0], results, names, colors, concurrencies)
    _grouped(
        top[1], names, colors, concurrencies, results.median_p99_ms,
        "p99 latency (ms, log scale)",
    )  # fmt: skip
    top[1].set_yscale("log")
    _limit_ratio(top[2], results, names, colors, concurrencies)
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
    title = "GET / Hello, world!: req/s (black line: trio + h11 limit)"
    _grouped(axis, names, colors, concurrencies, results.median_rps, title)
    for index, connections in enumerate(concurrencies):
        limit = results.limit_rps(RAW_SERVER, connections)
        if limit is not None:
            half = BAR_GROUP_WIDTH / 2
            axis.hlines(limit, index - half, index + half, colors="black", linewidth=2)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize="small")


def _limit_ratio(
    axis: Axes,
    results: Results,
    names: Sequence[str],
    colors: Colors,
    concurrencies: Sequence[int],
) -> None:
    def ratio(name: str, connections: int) -> float | None:
        rps = results.median_rps(name, connections)
        limit = results.limit_rps(RAW_SERVER, connections)
        return rps / limit if rps is not None and limit else None

    measured = [name for name in names if name != RAW_SERVER]
    _grouped(axis, measured, colors, concurrencies, ratio, "ratio to the trio + h11 limit")
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
    axis.tick_params(axis="x", labelrotation=30)


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
    axis.set_xticklabels(shown, rotation=30)
    axis.set_title("p99 of ordinary clients (ms): alone | hatched: with slowloris")
