"""Plotly figures of a run, built from its records only.

Every builder takes the frames a run leaves (requests, faults, alerts) or the topology graph, and
returns a :class:`plotly.graph_objects.Figure`, so the HTML report, the explorer and a notebook
draw the same pictures from a simulated or a live run. Curves are summarised before plotting
(quantiles at fixed probabilities, percentiles per time bin), so a figure of a million requests
stays a few kilobytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from testbed.records.schema import latency_columns, string_labels
from testbed.sla import fault_windows
from testbed.topology import ROOT, Topology

LATENCY_TITLES = {"ttft": "time to first token", "tpot": "time per output token", "e2e": "end-to-end latency"}
FAULT_FILL = "rgba(214, 39, 40, 0.12)"
CDF_POINTS = 400  # probabilities at which a CDF is drawn: enough for a smooth curve at any size
LEVEL_COLOURS = {
    "fleet": "#444444",
    "provider": "#1f77b4",
    "region": "#2ca02c",
    "zone": "#9467bd",
    "rack": "#ff7f0e",
    "node": "#8c564b",
    "device": "#7f7f7f",
}


def seconds_ticks(values: Sequence[float]) -> dict[str, list]:
    """Ticks for a log axis of seconds at 1, 2 and 5 of each decade, labelled "20 ms", "2 s"."""
    finite = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not finite:
        return {}
    low, high = math.floor(math.log10(min(finite))), math.ceil(math.log10(max(finite)))
    ticks = [m * 10.0**e for e in range(low, high + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if min(finite) / 2 <= t <= max(finite) * 2]
    return {"tickvals": ticks, "ticktext": [f"{t * 1000:g} ms" if t < 1 else f"{t:g} s" for t in ticks]}


def _runs(requests: pd.DataFrame | Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """One frame or several labelled ones (A/B): builders overlay every run they are given."""
    return {"": requests} if isinstance(requests, pd.DataFrame) else dict(requests)


def _ok_latency(requests: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` of each request, NaN where it did not end ok (or the metric is undefined)."""
    return latency_columns(requests)[metric].where(requests["status"] == "ok")


def latency_cdf(
    requests: pd.DataFrame | Mapping[str, pd.DataFrame],
    metric: str = "ttft",
    by: str | None = "request_class",
    counting_failures: bool = False,
) -> go.Figure:
    """Empirical CDF of a latency metric over successful requests, one curve per group and run.

    The curve is drawn through the quantiles at :data:`CDF_POINTS` evenly spaced probabilities
    (plus the 99.9th), which is the CDF itself at that resolution whatever the request count.
    With ``counting_failures`` the share is of *all* requests, so a curve tops out at the share
    answered: comparing runs over successes only flatters the one that fails its slow requests
    (survivorship), which is what an A/B comparison must not do.
    """
    if metric not in LATENCY_TITLES:
        raise ValueError(f"unknown latency metric {metric!r}; expected one of {sorted(LATENCY_TITLES)}")
    probabilities = np.unique(np.concatenate([np.linspace(0, 1, CDF_POINTS + 1), [0.99, 0.999]]))
    fig = go.Figure()
    for label, frame in _runs(requests).items():
        latency = _ok_latency(frame, metric)  # once per run; each group takes its rows
        groups = [("all", latency)]
        if by is not None and by in frame and frame[by].nunique() > 1:
            groups += [(str(name), group) for name, group in latency.groupby(frame[by], observed=True)]
        for group_name, group in groups:
            values = group.dropna().to_numpy()
            if len(values) == 0:
                continue
            answered = len(values) / len(group) if counting_failures else 1.0
            name = " · ".join(part for part in (label, group_name) if part)
            fig.add_trace(
                go.Scatter(
                    x=np.quantile(values, probabilities),
                    y=probabilities * answered,
                    mode="lines",
                    name=name,
                    hovertemplate="%{x:.3s}s: %{y:.1%}<extra>" + name + "</extra>",
                )
            )
    fig.update_layout(
        title=f"CDF of {LATENCY_TITLES[metric]} "
        + ("(all requests: a failed one never arrives)" if counting_failures else "(successful requests)"),
        xaxis={"title": metric, "type": "log", **seconds_ticks([x for t in fig.data for x in t.x])},
        yaxis={"title": "share of requests", "tickformat": ".0%", "range": [0, 1.02]},
        legend={"orientation": "h", "y": -0.2},
        margin={"t": 50, "b": 40, "l": 60, "r": 20},
    )
    return fig


def compare_over_time(
    requests: Mapping[str, pd.DataFrame],
    faults: pd.DataFrame | None = None,
    metric: str = "ttft",
    percentile: float = 99,
    bin_s: float | None = None,
) -> go.Figure:
    """Runs side by side over time: a latency percentile of what was answered, and availability.

    Read the two panels together: a run that fails its slow requests looks fast in the upper one
    and pays in the lower one, at the same moment.
    """
    if metric not in LATENCY_TITLES:
        raise ValueError(f"unknown latency metric {metric!r}; expected one of {sorted(LATENCY_TITLES)}")
    runs = _runs(requests)
    horizon = max((float(f["arrival"].max()) for f in runs.values() if len(f)), default=1.0)
    width = bin_s or _time_bin(horizon)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.06)
    for color, (label, frame) in zip(("#1f77b4", "#d62728", "#2ca02c", "#9467bd"), runs.items()):
        bins = (frame["arrival"] // width * width).rename("bin")
        latency = latency_columns(frame)[metric].where(frame["status"] == "ok").groupby(bins).quantile(percentile / 100)
        availability = (frame["status"] == "ok").groupby(bins).mean()
        fig.add_trace(
            go.Scatter(x=latency.index + width / 2, y=latency.to_numpy(), mode="lines", name=f"{label} p{percentile:g} {metric}",
                       line={"color": color}, legendgroup=label),
            row=1, col=1,
        )
        fig.add_trace(
            go.Scatter(x=availability.index + width / 2, y=availability.to_numpy(), mode="lines", name=f"{label} availability",
                       line={"color": color, "dash": "dot"}, legendgroup=label),
            row=2, col=1,
        )
    shade_faults(fig, faults, end=horizon, row="all", col=1)
    latencies = [y for t in fig.data if not t.name.endswith("availability") for y in t.y]
    fig.update_yaxes(title_text=metric, type="log", **seconds_ticks(latencies), row=1, col=1)
    fig.update_yaxes(title_text="availability", tickformat=".0%", range=[0, 1.05], row=2, col=1)
    fig.update_xaxes(title_text=f"arrival time (s), bins of {width:g} s", row=2, col=1)
    fig.update_layout(
        title=f"p{percentile:g} {LATENCY_TITLES[metric]} and availability over time, run by run (faults shaded)",
        legend={"orientation": "h", "y": -0.25},
        margin={"t": 50, "b": 40, "l": 60, "r": 20},
    )
    return fig


def shade_faults(fig: go.Figure, faults: pd.DataFrame | None, end: float | None = None, **where: int) -> go.Figure:
    """Shade the union of fault windows (a fault never repaired is shaded to ``end``)."""
    for start, stop in fault_windows(faults):
        if end is not None:
            stop = min(stop, end)  # a fault still active (or never repaired) at the end of the run
        elif math.isinf(stop):
            stop = start
        if stop <= start:
            continue
        fig.add_vrect(x0=start, x1=stop, fillcolor=FAULT_FILL, line_width=0, layer="below", **where)
    return fig


def _time_bin(horizon: float) -> float:
    """A round bin width giving about a hundred bins over the run."""
    raw = max(horizon / 100.0, 1e-3)
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def percentiles_over_time(
    requests: pd.DataFrame,
    faults: pd.DataFrame | None = None,
    metric: str = "ttft",
    percentiles: Sequence[float] = (50, 90, 99),
    bin_s: float | None = None,
) -> go.Figure:
    """Latency percentiles and availability per arrival-time bin, with fault windows shaded.

    The lower panel (share of requests ending ``ok``) shows what the latency panel cannot: in an
    outage the slow requests are often the few that still succeed.
    """
    if metric not in LATENCY_TITLES:
        raise ValueError(f"unknown latency metric {metric!r}; expected one of {sorted(LATENCY_TITLES)}")
    horizon = float(requests["arrival"].max()) if len(requests) else 1.0
    width = bin_s or _time_bin(horizon)
    bins = (requests["arrival"] // width * width).rename("bin")
    latency = latency_columns(requests)[metric].where(requests["status"] == "ok")
    grouped = latency.groupby(bins)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.06)
    for p in percentiles:
        series = grouped.quantile(p / 100)
        fig.add_trace(
            go.Scatter(x=series.index + width / 2, y=series.to_numpy(), mode="lines", name=f"p{p:g} {metric}"),
            row=1,
            col=1,
        )
    availability = (requests["status"] == "ok").groupby(bins).mean()
    fig.add_trace(
        go.Scatter(
            x=availability.index + width / 2, y=availability.to_numpy(), mode="lines", name="availability",
            line={"color": "#2ca02c"},
        ),
        row=2,
        col=1,
    )
    end = float(requests["finish"].max()) if len(requests) else horizon
    shade_faults(fig, faults, end=end, row="all", col=1)
    latencies = [y for t in fig.data if t.name != "availability" for y in t.y]
    fig.update_yaxes(title_text=metric, type="log", **seconds_ticks(latencies), row=1, col=1)
    fig.update_yaxes(title_text="availability", tickformat=".0%", range=[0, 1.05], row=2, col=1)
    fig.update_xaxes(title_text=f"arrival time (s), bins of {width:g} s", row=2, col=1)
    fig.update_layout(
        title=f"{LATENCY_TITLES[metric]} over time (faults shaded)",
        legend={"orientation": "h", "y": -0.25},
        margin={"t": 50, "b": 40, "l": 60, "r": 20},
    )
    return fig


def _alert_labels(alerts: pd.DataFrame) -> tuple[str | None, list[str] | None]:
    """Which column holds an alert's firing time, and a label per alert (detector, severity, target)."""
    time_col = next((c for c in ("time", "fired_at", "start", "at") if c in alerts), None)
    parts = [c for c in ("detector", "alert", "name", "severity", "target") if c in alerts]
    if not parts:
        return time_col, None
    return time_col, [" ".join(str(v) for v in row) for row in alerts[parts].itertuples(index=False)]


def fault_timeline(faults: pd.DataFrame, alerts: pd.DataFrame | None = None, limit: int = 200) -> go.Figure:
    """One bar per fault (injected → repaired), with when health checks detected it, when the
    SLA held again, and when alerts fired (if the run has alerts)."""
    fig = go.Figure()
    if faults is None or faults.empty:
        fig.update_layout(title="no faults in this run")
        return fig
    shown = faults.head(limit)
    labels = [f"{kind} {target}" for kind, target in zip(shown["kind"], shown["target"])]
    finite_end = shown["end"].replace([np.inf], np.nan)
    horizon = float(np.nanmax(finite_end.to_numpy())) if finite_end.notna().any() else float(shown["start"].max()) + 1
    ends = finite_end.fillna(horizon)
    fig.add_trace(
        go.Bar(
            y=labels,
            x=(ends - shown["start"]).to_numpy(),
            base=shown["start"].to_numpy(),
            orientation="h",
            name="fault active",
            marker={"color": "rgba(214, 39, 40, 0.5)"},
            hovertemplate="%{y}<br>%{base:.1f} s → %{x:.1f} s long<extra></extra>",
        )
    )
    markers = (("detected_at", "detected by health checks", "diamond", "#1f77b4"), ("recovered_at", "SLA held again", "star", "#2ca02c"))
    for column, name, symbol, colour in markers:
        if column in shown and shown[column].notna().any():
            fig.add_trace(
                go.Scatter(
                    y=labels, x=shown[column].to_numpy(), mode="markers", name=name,
                    marker={"symbol": symbol, "size": 11, "color": colour},
                )
            )
    if alerts is not None and not alerts.empty:
        time_col, labels = _alert_labels(alerts)
        if time_col is not None:
            fig.add_trace(
                go.Scatter(
                    x=alerts[time_col].to_numpy(), y=["alerts"] * len(alerts), mode="markers", name="alert fired",
                    marker={"symbol": "triangle-down", "size": 11, "color": "#ff7f0e"}, text=labels,
                )
            )
    title = "fault timeline" + (f" (first {limit} of {len(faults)})" if len(faults) > limit else "")
    fig.update_layout(
        title=title,
        xaxis={"title": "time (s)"},
        yaxis={"autorange": "reversed"},
        height=max(260, 120 + 28 * len(shown)),
        legend={"orientation": "h", "y": -0.3},
        margin={"t": 50, "b": 40, "l": 20, "r": 20},
    )
    return fig


def availability_by_region(
    requests: pd.DataFrame | Mapping[str, pd.DataFrame], column: str = "client_region", target: float | None = None
) -> go.Figure:
    """Share of requests ending ``ok`` per client region (one bar group per run), with the
    availability target as a line when there is one."""
    fig = go.Figure()
    lowest = 1.0 if target is None else target
    for label, frame in _runs(requests).items():
        share = (frame["status"] == "ok").groupby(string_labels(frame[column]), observed=True).mean()
        lowest = min([lowest, *share.tolist()])
        fig.add_trace(
            go.Bar(
                x=share.index.tolist(), y=share.to_numpy(), name=label or "availability",
                text=[f"{v:.2%}" for v in share], textposition="auto",
            )
        )
    if target is not None:
        fig.add_hline(y=target, line={"color": "#d62728", "dash": "dash"}, annotation_text=f"target {target:.2%}")
    fig.update_layout(
        title=f"availability by {column.replace('_', ' ')}",
        # Availabilities differ in the last digits: start the axis just below the lowest bar.
        yaxis={"title": "share ok", "tickformat": ".1%", "range": [max(0.0, lowest - max(0.1 * (1 - lowest), 0.01)), 1.0]},
        barmode="group",
        margin={"t": 50, "b": 40, "l": 60, "r": 20},
    )
    return fig


def _interval_lengths(times: np.ndarray) -> dict[float, float]:
    """Sample time -> the length of the interval it closes (samples are taken at interval ends)."""
    ordered = np.unique(times)
    return dict(zip(ordered.tolist(), np.diff(np.concatenate([[0.0], ordered])).tolist()))


def replicas_up(timeseries: pd.DataFrame, health: pd.DataFrame | None, by: str = "region") -> pd.DataFrame:
    """Replicas the gateway's health checks believe up, per ``by`` group, as a step series.

    Rows ``(time, group, up)``: one at 0 with every replica of the group, then one per health
    change. It is the gateway's view, which both planes record, so it lags a fault by the
    detection time — as a real dashboard does.
    """
    total = timeseries.groupby(string_labels(timeseries[by]), observed=True)["replica"].nunique()
    rows = [(0.0, group, int(n)) for group, n in total.items()]
    if health is not None and not health.empty:
        down: dict[str, set[int]] = {group: set() for group in total.index}
        for time, replica, group, change in health[["time", "replica", by, "change"]].itertuples(index=False):
            group = str(group)
            down.setdefault(group, set())
            (down[group].add if change == "unhealthy" else down[group].discard)(int(replica))
            rows.append((float(time), group, int(total.get(group, 0)) - len(down[group])))
    return pd.DataFrame(rows, columns=["time", "group", "up"])


def fleet_over_time(
    timeseries: pd.DataFrame,
    health: pd.DataFrame | None = None,
    faults: pd.DataFrame | None = None,
    by: str = "region",
) -> go.Figure:
    """Throughput, queue depth, utilisation and replicas up over time, one line per region.

    These are the panels that show a surviving region saturating during a failover: its
    throughput levels off at capacity while its queue grows and its utilisation pins at 100%.
    Faults are shaded as in the latency figures.
    """
    fig = make_subplots(
        rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.05,
        subplot_titles=("throughput (completed requests/s)", "queue depth (requests waiting)",
                        "utilisation (mean over replicas)", "replicas up (as health checks see them)"),
    )
    if timeseries.empty:
        fig.update_layout(title="no fleet samples in this run")
        return fig
    frame = timeseries.assign(group=string_labels(timeseries[by]))
    lengths = _interval_lengths(frame["time"].to_numpy())
    per_sample = frame.groupby(["group", "time"], observed=True).agg(
        completed=("completed", "sum"), queue_depth=("queue_depth", "sum"), utilisation=("utilisation", "mean")
    ).reset_index()
    per_sample["throughput"] = per_sample["completed"] / per_sample["time"].map(lengths).clip(lower=1e-9)
    up = replicas_up(timeseries, health, by=by)
    end = float(frame["time"].max())
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#d62728"]
    for i, (group, rows) in enumerate(per_sample.groupby("group", observed=True)):
        colour = palette[i % len(palette)]
        for row, column in enumerate(("throughput", "queue_depth", "utilisation"), start=1):
            fig.add_trace(
                go.Scatter(x=rows["time"], y=rows[column], mode="lines", name=group, legendgroup=group,
                           showlegend=row == 1, line={"color": colour}),
                row=row, col=1,
            )
        steps = up[up["group"] == group].sort_values("time", kind="stable")
        fig.add_trace(
            go.Scatter(x=[*steps["time"], end], y=[*steps["up"], steps["up"].iloc[-1]], mode="lines", name=group,
                       legendgroup=group, showlegend=False, line={"color": colour, "shape": "hv"}),
            row=4, col=1,
        )
    shade_faults(fig, faults, end=end, row="all", col=1)
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05], row=3, col=1)
    fig.update_xaxes(title_text="time (s)", row=4, col=1)
    fig.update_layout(
        title=f"fleet by {by.replace('_', ' ')} over time (faults shaded)",
        height=760, legend={"orientation": "h", "y": -0.08},
        margin={"t": 70, "b": 40, "l": 60, "r": 20},
    )
    return fig


def availability_over_time(
    requests: pd.DataFrame, faults: pd.DataFrame | None = None, by: str = "client_region",
    target: float | None = None, bin_s: float | None = None,
) -> go.Figure:
    """Share of requests ending ``ok`` per arrival-time bin, one line per ``by`` group (client
    region by default: availability as each region's users saw it), faults shaded."""
    fig = go.Figure()
    horizon = float(requests["arrival"].max()) if len(requests) else 1.0
    width = bin_s or _time_bin(horizon)
    bins = (requests["arrival"] // width * width + width / 2).rename("bin")
    share = (requests["status"] == "ok").groupby([string_labels(requests[by]), bins], observed=True).mean()
    for group, series in share.groupby(level=0):
        fig.add_trace(go.Scatter(x=series.index.get_level_values(1), y=series.to_numpy(), mode="lines", name=group))
    if target is not None:
        fig.add_hline(y=target, line={"color": "#d62728", "dash": "dash"}, annotation_text=f"target {target:.2%}")
    end = float(requests["finish"].max()) if len(requests) else horizon
    shade_faults(fig, faults, end=end)
    fig.update_layout(
        title=f"availability by {by.replace('_', ' ')} over time (faults shaded)",
        xaxis={"title": f"arrival time (s), bins of {width:g} s"},
        yaxis={"title": "share ok", "tickformat": ".0%", "range": [0, 1.05]},
        legend={"orientation": "h", "y": -0.25},
        margin={"t": 50, "b": 40, "l": 60, "r": 20},
    )
    return fig


def _tree_layout(topology: Topology, levels: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Leaves spread evenly along x in spec order, parents centred over their children; y is depth."""
    graph, depth = topology.graph, {level: i for i, level in enumerate(levels)}
    positions: dict[str, tuple[float, float]] = {}
    next_leaf = [0.0]

    def place(node: str) -> float:
        children = [c for c in graph.successors(node) if graph.nodes[c]["level"] in depth]
        if not children:
            x = next_leaf[0]
            next_leaf[0] += 1.0
        else:
            xs = [place(c) for c in children]
            x = (min(xs) + max(xs)) / 2
        positions[node] = (x, -depth[graph.nodes[node]["level"]])
        return x

    place(ROOT)
    return positions


LABEL_WIDTH = 1.2  # x units (leaf spacings) an RTT label needs at least, so that two labels do not touch
LABEL_SHARE = 0.07  # ... and at least this share of the drawing's width, for wide trees
LANE_HEIGHT = 0.3  # y units between stacked RTT labels (levels are 1 apart)


def link_lifts(topology: Topology, positions: Mapping[str, tuple[float, float]]) -> list[float]:
    """How high above the regions each link's arc peaks, so that no two RTT labels overlap.

    A label sits at its arc's apex, over the midpoint of its two regions. Links are placed
    shortest first in the lowest lane whose labels are at least a label's width away, so a
    short hop stays low and the long links that span it arc over it.
    """
    links = topology.spec.links
    xs = [x for x, _ in positions.values()]
    width = max(LABEL_WIDTH, LABEL_SHARE * (max(xs) - min(xs))) if xs else LABEL_WIDTH
    mids = [(positions[l.between[0]][0] + positions[l.between[1]][0]) / 2 for l in links]
    spans = [abs(positions[l.between[0]][0] - positions[l.between[1]][0]) for l in links]
    lanes: list[list[float]] = []
    lifts = [0.0] * len(links)
    for i in sorted(range(len(links)), key=lambda i: (spans[i], mids[i])):
        lane = next((k for k, taken in enumerate(lanes) if all(abs(mids[i] - m) >= width for m in taken)), len(lanes))
        if lane == len(lanes):
            lanes.append([])
        lanes[lane].append(mids[i])
        lifts[i] = 0.35 + LANE_HEIGHT * lane
    return lifts


def topology_graph(topology: Topology, max_nodes: int = 64) -> go.Figure:
    """The containment tree (providers, regions, zones, racks, and nodes when there are at most
    ``max_nodes``) with each failure domain's replica count, and the inter-region links' RTTs."""
    levels = ["fleet", "provider", "region", "zone", "rack", "node"]
    if len(topology.failure_domains("node")) > max_nodes:
        levels.remove("node")
    positions = _tree_layout(topology, levels)
    fig = go.Figure()
    edge_x: list[float | None] = []
    edge_y: list[float | None] = []
    for parent, child in topology.graph.edges():
        if parent in positions and child in positions:
            edge_x += [positions[parent][0], positions[child][0], None]
            edge_y += [positions[parent][1], positions[child][1], None]
    fig.add_trace(go.Scatter(x=edge_x, y=edge_y, mode="lines", line={"color": "#bbbbbb", "width": 1}, hoverinfo="skip", showlegend=False))
    region_y = -levels.index("region")
    for link, lift in zip(topology.spec.links, link_lifts(topology, positions)):
        a, b = (positions[end] for end in link.between)
        mid = (a[0] + b[0]) / 2
        xs = np.linspace(0, 1, 21)
        fig.add_trace(
            go.Scatter(
                x=a[0] + (b[0] - a[0]) * xs, y=region_y + lift * 4 * xs * (1 - xs), mode="lines",
                line={"color": "#17becf", "dash": "dot"}, hoverinfo="skip", showlegend=False,
            )
        )
        fig.add_annotation(
            x=mid, y=region_y + lift, text=f"{link.rtt * 1000:g} ms", showarrow=False, font={"color": "#0e7c86", "size": 11},
            bgcolor="rgba(255, 255, 255, 0.9)", bordercolor="#17becf", borderpad=2,
        )
    for level in levels:
        nodes = [n for n, data in topology.graph.nodes(data=True) if data["level"] == level]
        hover = []
        for n in nodes:
            replicas = len(topology.domain_replicas(n))
            tier = topology.graph.nodes[n].get("tier")
            hover.append(f"{n}<br>{level}{f' ({tier} tier)' if tier else ''}<br>{replicas} replicas fail with it")
        show_text = level in ("provider", "region") or len(nodes) <= 12
        fig.add_trace(
            go.Scatter(
                x=[positions[n][0] for n in nodes],
                y=[positions[n][1] for n in nodes],
                mode="markers+text" if show_text else "markers",
                text=[n.rsplit("/", 1)[-1] + ("" if level in ("fleet", "provider") else f" ({len(topology.domain_replicas(n))})") for n in nodes],
                # Regions are labelled below their marker: above it is where the links' RTT labels go.
                textposition="bottom center" if level == "region" else "top center",
                hovertext=hover,
                hoverinfo="text",
                name=level,
                marker={
                    "size": 16 if level in ("fleet", "provider", "region") else 10,
                    "color": LEVEL_COLOURS[level],
                    "symbol": ["square" if topology.graph.nodes[n].get("tier") == "fallback" else "circle" for n in nodes],
                },
            )
        )
    fig.update_layout(
        title=f"{topology.spec.name}: {len(topology.replicas)} replicas on {topology.device_count} devices "
        "(failure domains; replicas in brackets; fallback regions square)",
        xaxis={"visible": False},
        yaxis={"visible": False},
        legend={"orientation": "h", "y": -0.05},
        margin={"t": 50, "b": 20, "l": 20, "r": 20},
        height=480,
    )
    return fig
