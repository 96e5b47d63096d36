"""Figures of a run as plain plotly figure dicts, built from its records only.

Every builder takes the frames a run leaves (requests, faults, alerts) or the topology graph, and
returns ``{"data": [trace, ...], "layout": {...}}``: what a :class:`plotly.graph_objects.Figure`
holds, written directly. ``report.html`` hands these to plotly.js as they are; building them as
graph objects cost more than the report's data, every property set through plotly's validators
and every figure deep-copied on output. :mod:`testbed.report.plots` wraps each builder in a
Figure (validating it) for the explorer and notebooks.

The dicts hold what the graph objects would: titles as ``{"text": ...}``, a subplot grid's axes
(:func:`subplots`), spanning shapes (:func:`shade_faults`, :func:`add_hline`) as plotly places
them, so a report draws the same figures either way. Curves are summarised before plotting
(quantiles at fixed probabilities, percentiles per time bin), so a figure of a million requests
stays a few kilobytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from testbed.records.schema import latency_columns, string_labels
from testbed.sla import fault_windows
from testbed.topology import ROOT, Topology

Figure = dict[str, Any]  # {"data": [trace dicts], "layout": {...}}, as Figure.to_dict() gives it

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


def figure(**layout: Any) -> Figure:
    """An empty figure with ``layout``."""
    return {"data": [], "layout": layout}


def title(text: str) -> dict[str, str]:
    """A title as plotly stores one given as a string."""
    return {"text": text}


def subplots(rows: int, vertical_spacing: float, row_heights: Sequence[float] | None = None,
             subplot_titles: Sequence[str] = ()) -> Figure:
    """A column of ``rows`` panels sharing the x axis, laid out as ``make_subplots(rows, 1,
    shared_xaxes=True, ...)`` lays them out: panel ``i`` (1 at the top) on axes ``x{i}``/``y{i}``,
    every x axis matching the bottom one, whose tick labels alone are shown."""
    spacing = vertical_spacing
    if row_heights is None:
        heights = [(1.0 - spacing * (rows - 1)) / rows] * rows
    else:
        total = float(sum(row_heights))
        heights = [(1.0 - spacing * (rows - 1)) * (h / total) for h in row_heights][::-1]  # bottom panel first
    layout: dict[str, Any] = {}
    annotations = []
    for r in range(rows):
        above = rows - 1 - r  # panels below this one
        bottom = sum(heights[:above]) + above * spacing
        domain = [min(max(bottom, 0.0), 1.0), min(max(bottom + heights[-1 - r], 0.0), 1.0)]
        x, y = _axis_names(r + 1)
        layout[_axis_key("x", r + 1)] = {"anchor": y, "domain": [0.0, 1.0]}
        layout[_axis_key("y", r + 1)] = {"anchor": x, "domain": domain}
        if r < rows - 1:
            layout[_axis_key("x", r + 1)] |= {"matches": _axis_names(rows)[0], "showticklabels": False}
        if r < len(subplot_titles) and subplot_titles[r]:
            annotations.append({"y": domain[1], "xref": "paper", "x": 0.5, "yref": "paper", "text": subplot_titles[r],
                                "showarrow": False, "font": {"size": 16}, "xanchor": "center", "yanchor": "bottom"})
    if annotations:
        layout["annotations"] = annotations
    return figure(**layout)


def _axis_names(row: int) -> tuple[str, str]:
    """What panel ``row``'s traces and shapes refer to its axes by: "x", "y"; "x2", "y2"..."""
    return ("x", "y") if row == 1 else (f"x{row}", f"y{row}")


def _axis_key(letter: str, row: int) -> str:
    """The layout's key of panel ``row``'s ``letter`` axis: "xaxis", "xaxis2"..."""
    return f"{letter}axis{row if row > 1 else ''}"


def axis(fig: Figure, letter: str, row: int = 1) -> dict[str, Any]:
    """The layout's ``letter`` ("x" or "y") axis of panel ``row``, created empty if need be."""
    return fig["layout"].setdefault(_axis_key(letter, row), {})


def add_trace(fig: Figure, kind: str, row: int | None = None, **props: Any) -> None:
    """Add a ``kind`` trace ("scatter", "bar") with ``props``; in panel ``row`` of a subplot grid."""
    trace = {"type": kind, **props}
    if row is not None:
        trace["xaxis"], trace["yaxis"] = _axis_names(row)
    fig["data"].append(trace)


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


def ok_latency(requests: pd.DataFrame, metric: str, latency: pd.DataFrame | None = None) -> pd.Series:
    """``metric`` of each request, NaN where it did not end ok (or the metric is undefined).

    ``latency`` is :func:`~testbed.records.schema.latency_columns` of ``requests`` when the
    caller has it (a report draws several figures from one run's latencies).
    """
    return (latency_columns(requests) if latency is None else latency)[metric].where(requests["status"] == "ok")


def _check_metric(metric: str) -> None:
    if metric not in LATENCY_TITLES:
        raise ValueError(f"unknown latency metric {metric!r}; expected one of {sorted(LATENCY_TITLES)}")


def latency_cdf(
    requests: pd.DataFrame | Mapping[str, pd.DataFrame],
    metric: str = "ttft",
    by: str | None = "request_class",
    counting_failures: bool = False,
    latency: pd.DataFrame | None = None,
) -> Figure:
    """Empirical CDF of a latency metric over successful requests, one curve per group and run.

    The curve is drawn through the quantiles at :data:`CDF_POINTS` evenly spaced probabilities
    (plus the 99.9th), which is the CDF itself at that resolution whatever the request count.
    With ``counting_failures`` the share is of *all* requests, so a curve tops out at the share
    answered: comparing runs over successes only flatters the one that fails its slow requests
    (survivorship), which is what an A/B comparison must not do. ``latency``: see :func:`ok_latency`
    (one run only).
    """
    _check_metric(metric)
    probabilities = np.unique(np.concatenate([np.linspace(0, 1, CDF_POINTS + 1), [0.99, 0.999]]))
    fig = figure()
    for label, frame in _runs(requests).items():
        values_ok = ok_latency(frame, metric, latency)  # once per run; each group takes its rows
        groups = [("all", values_ok)]
        if by is not None and by in frame and frame[by].nunique() > 1:
            groups += [(str(name), group) for name, group in values_ok.groupby(frame[by], observed=True)]
        for group_name, group in groups:
            # Sorted first: the same quantiles, and a sorted array partitions at 400 points in a
            # fifth of the time the unsorted one takes.
            values = np.sort(group.dropna().to_numpy())
            if len(values) == 0:
                continue
            answered = len(values) / len(group) if counting_failures else 1.0
            name = " · ".join(part for part in (label, group_name) if part)
            add_trace(fig, "scatter", x=np.quantile(values, probabilities), y=probabilities * answered, mode="lines", name=name,
                      hovertemplate="%{x:.3s}s: %{y:.1%}<extra>" + name + "</extra>")
    fig["layout"] |= {
        "title": title(f"CDF of {LATENCY_TITLES[metric]} "
                       + ("(all requests: a failed one never arrives)" if counting_failures else "(successful requests)")),
        "xaxis": {"title": title(metric), "type": "log", **seconds_ticks([x for t in fig["data"] for x in t["x"]])},
        "yaxis": {"title": title("share of requests"), "tickformat": ".0%", "range": [0, 1.02]},
        "legend": {"orientation": "h", "y": -0.2},
        "margin": {"t": 50, "b": 40, "l": 60, "r": 20},
    }
    return fig


def _latency_and_availability_layout(fig: Figure, metric: str, latencies: list[float], width: float, heading: str) -> Figure:
    """Axes and layout of the two-panel figures: latency (log scale) above availability, by arrival bin."""
    axis(fig, "y", 1).update(title=title(metric), type="log", **seconds_ticks(latencies))
    axis(fig, "y", 2).update(title=title("availability"), tickformat=".0%", range=[0, 1.05])
    axis(fig, "x", 2).update(title=title(f"arrival time (s), bins of {width:g} s"))
    fig["layout"] |= {
        "title": title(heading),
        "legend": {"orientation": "h", "y": -0.25},
        "margin": {"t": 50, "b": 40, "l": 60, "r": 20},
    }
    return fig


def compare_over_time(
    requests: Mapping[str, pd.DataFrame],
    faults: pd.DataFrame | None = None,
    metric: str = "ttft",
    percentile: float = 99,
    bin_s: float | None = None,
) -> Figure:
    """Runs side by side over time: a latency percentile of what was answered, and availability.

    Read the two panels together: a run that fails its slow requests looks fast in the upper one
    and pays in the lower one, at the same moment.
    """
    _check_metric(metric)
    runs = _runs(requests)
    horizon = max((float(f["arrival"].max()) for f in runs.values() if len(f)), default=1.0)
    width = bin_s or _time_bin(horizon)
    fig = subplots(2, vertical_spacing=0.06, row_heights=[0.6, 0.4])
    latencies: list[float] = []
    for color, (label, frame) in zip(("#1f77b4", "#d62728", "#2ca02c", "#9467bd"), runs.items()):
        bins = (frame["arrival"] // width * width).rename("bin")
        latency = ok_latency(frame, metric).groupby(bins).quantile(percentile / 100)
        availability = (frame["status"] == "ok").groupby(bins).mean()
        latencies += latency.tolist()
        add_trace(fig, "scatter", row=1, x=(latency.index + width / 2).to_numpy(), y=latency.to_numpy(), mode="lines",
                  name=f"{label} p{percentile:g} {metric}", line={"color": color}, legendgroup=label)
        add_trace(fig, "scatter", row=2, x=(availability.index + width / 2).to_numpy(), y=availability.to_numpy(), mode="lines",
                  name=f"{label} availability", line={"color": color, "dash": "dot"}, legendgroup=label)
    shade_faults(fig, faults, end=horizon, panels=2)
    return _latency_and_availability_layout(
        fig, metric, latencies, width,
        f"p{percentile:g} {LATENCY_TITLES[metric]} and availability over time, run by run (faults shaded)",
    )


def shade_faults(fig: Figure, faults: pd.DataFrame | None, end: float | None = None, panels: int = 1) -> Figure:
    """Shade the union of fault windows (a fault never repaired is shaded to ``end``), in each of
    the ``panels`` of a :func:`subplots` grid."""
    axes = [_axis_names(row) for row in range(1, panels + 1)]
    shapes = fig["layout"].setdefault("shapes", [])
    for start, stop in fault_windows(faults):
        if end is not None:
            stop = min(stop, end)  # a fault still active (or never repaired) at the end of the run
        elif math.isinf(stop):
            stop = start
        if stop <= start:
            continue
        shapes += [{"fillcolor": FAULT_FILL, "layer": "below", "line": {"width": 0}, "type": "rect",
                    "x0": start, "x1": stop, "xref": x, "y0": 0, "y1": 1, "yref": f"{y} domain"} for x, y in axes]
    if not shapes:
        del fig["layout"]["shapes"]
    return fig


def add_hline(fig: Figure, y: float, line: dict[str, Any], text: str) -> None:
    """A horizontal line across the plot at ``y`` labelled ``text`` at its right end, as
    ``Figure.add_hline(y, line=..., annotation_text=...)`` draws it."""
    fig["layout"].setdefault("shapes", []).append(
        {"line": line, "type": "line", "x0": 0, "x1": 1, "xref": "x domain", "y0": y, "y1": y, "yref": "y"}
    )
    fig["layout"].setdefault("annotations", []).append(
        {"showarrow": False, "text": text, "x": 1, "xanchor": "right", "xref": "x domain", "y": y, "yanchor": "bottom", "yref": "y"}
    )


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
    latency: pd.DataFrame | None = None,
) -> Figure:
    """Latency percentiles and availability per arrival-time bin, with fault windows shaded.

    The lower panel (share of requests ending ``ok``) shows what the latency panel cannot: in an
    outage the slow requests are often the few that still succeed. ``latency``: see :func:`ok_latency`.
    """
    _check_metric(metric)
    horizon = float(requests["arrival"].max()) if len(requests) else 1.0
    width = bin_s or _time_bin(horizon)
    bins = (requests["arrival"] // width * width).rename("bin")
    grouped = ok_latency(requests, metric, latency).groupby(bins)
    fig = subplots(2, vertical_spacing=0.06, row_heights=[0.7, 0.3])
    latencies: list[float] = []
    qs = [p / 100 for p in percentiles]
    by_bin = grouped.quantile(qs).unstack().reindex(columns=qs)  # one sort for every percentile; bins x qs
    for p, q in zip(percentiles, qs):
        series = by_bin[q]
        latencies += series.tolist()
        add_trace(fig, "scatter", row=1, x=(series.index + width / 2).to_numpy(), y=series.to_numpy(), mode="lines",
                  name=f"p{p:g} {metric}")
    availability = (requests["status"] == "ok").groupby(bins).mean()
    add_trace(fig, "scatter", row=2, x=(availability.index + width / 2).to_numpy(), y=availability.to_numpy(), mode="lines",
              name="availability", line={"color": "#2ca02c"})
    end = float(requests["finish"].max()) if len(requests) else horizon
    shade_faults(fig, faults, end=end, panels=2)
    return _latency_and_availability_layout(fig, metric, latencies, width, f"{LATENCY_TITLES[metric]} over time (faults shaded)")


def _alert_labels(alerts: pd.DataFrame) -> tuple[str | None, list[str] | None]:
    """Which column holds an alert's firing time, and a label per alert (detector, severity, target)."""
    time_col = next((c for c in ("time", "fired_at", "start", "at") if c in alerts), None)
    parts = [c for c in ("detector", "alert", "name", "severity", "target") if c in alerts]
    if not parts:
        return time_col, None
    return time_col, [" ".join(str(v) for v in row) for row in alerts[parts].itertuples(index=False)]


def fault_timeline(faults: pd.DataFrame, alerts: pd.DataFrame | None = None, limit: int = 200) -> Figure:
    """One bar per fault (injected → repaired), with when health checks detected it, when the
    SLA held again, and when alerts fired (if the run has alerts)."""
    if faults is None or faults.empty:
        return figure(title=title("no faults in this run"))
    fig = figure()
    shown = faults.head(limit)
    labels = [f"{kind} {target}" for kind, target in zip(shown["kind"], shown["target"])]
    finite_end = shown["end"].replace([np.inf], np.nan)
    horizon = float(np.nanmax(finite_end.to_numpy())) if finite_end.notna().any() else float(shown["start"].max()) + 1
    ends = finite_end.fillna(horizon)
    add_trace(fig, "bar", y=labels, x=(ends - shown["start"]).to_numpy(), base=shown["start"].tolist(), orientation="h",
              name="fault active", marker={"color": "rgba(214, 39, 40, 0.5)"},
              hovertemplate="%{y}<br>%{base:.1f} s → %{x:.1f} s long<extra></extra>")
    markers = (("detected_at", "detected by health checks", "diamond", "#1f77b4"), ("recovered_at", "SLA held again", "star", "#2ca02c"))
    for column, name, symbol, colour in markers:
        if column in shown and shown[column].notna().any():
            add_trace(fig, "scatter", y=labels, x=shown[column].to_numpy(), mode="markers", name=name,
                      marker={"symbol": symbol, "size": 11, "color": colour})
    if alerts is not None and not alerts.empty:
        time_col, alert_labels = _alert_labels(alerts)
        if time_col is not None:
            add_trace(fig, "scatter", x=alerts[time_col].to_numpy(), y=["alerts"] * len(alerts), mode="markers", name="alert fired",
                      marker={"symbol": "triangle-down", "size": 11, "color": "#ff7f0e"}, text=alert_labels)
    fig["layout"] |= {
        "title": title("fault timeline" + (f" (first {limit} of {len(faults)})" if len(faults) > limit else "")),
        "xaxis": {"title": title("time (s)")},
        "yaxis": {"autorange": "reversed"},
        "height": max(260, 120 + 28 * len(shown)),
        "legend": {"orientation": "h", "y": -0.3},
        "margin": {"t": 50, "b": 40, "l": 20, "r": 20},
    }
    return fig


def availability_by_region(
    requests: pd.DataFrame | Mapping[str, pd.DataFrame], column: str = "client_region", target: float | None = None
) -> Figure:
    """Share of requests ending ``ok`` per client region (one bar group per run), with the
    availability target as a line when there is one."""
    fig = figure()
    lowest = 1.0 if target is None else target
    for label, frame in _runs(requests).items():
        share = (frame["status"] == "ok").groupby(string_labels(frame[column]), observed=True).mean()
        lowest = min([lowest, *share.tolist()])
        add_trace(fig, "bar", x=share.index.tolist(), y=share.to_numpy(), name=label or "availability",
                  text=[f"{v:.2%}" for v in share], textposition="auto")
    if target is not None:
        add_hline(fig, target, line={"color": "#d62728", "dash": "dash"}, text=f"target {target:.2%}")
    fig["layout"] |= {
        "title": title(f"availability by {column.replace('_', ' ')}"),
        # Availabilities differ in the last digits: start the axis just below the lowest bar.
        "yaxis": {"title": title("share ok"), "tickformat": ".1%", "range": [max(0.0, lowest - max(0.1 * (1 - lowest), 0.01)), 1.0]},
        "barmode": "group",
        "margin": {"t": 50, "b": 40, "l": 60, "r": 20},
    }
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


FLEET_PANELS = ("throughput (completed requests/s)", "queue depth (requests waiting)",
                "utilisation (mean over replicas)", "replicas up (as health checks see them)")
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#d62728"]


def fleet_over_time(
    timeseries: pd.DataFrame,
    health: pd.DataFrame | None = None,
    faults: pd.DataFrame | None = None,
    by: str = "region",
) -> Figure:
    """Throughput, queue depth, utilisation and replicas up over time, one line per region.

    These are the panels that show a surviving region saturating during a failover: its
    throughput levels off at capacity while its queue grows and its utilisation pins at 100%.
    Faults are shaded as in the latency figures.
    """
    fig = subplots(4, vertical_spacing=0.05, subplot_titles=FLEET_PANELS)
    if timeseries.empty:
        fig["layout"]["title"] = title("no fleet samples in this run")
        return fig
    frame = timeseries.assign(group=string_labels(timeseries[by]))
    lengths = _interval_lengths(frame["time"].to_numpy())
    per_sample = frame.groupby(["group", "time"], observed=True).agg(
        completed=("completed", "sum"), queue_depth=("queue_depth", "sum"), utilisation=("utilisation", "mean")
    ).reset_index()
    per_sample["throughput"] = per_sample["completed"] / per_sample["time"].map(lengths).clip(lower=1e-9)
    up = replicas_up(timeseries, health, by=by)
    end = float(frame["time"].max())
    for i, (group, rows) in enumerate(per_sample.groupby("group", observed=True)):
        colour = PALETTE[i % len(PALETTE)]
        for row, column in enumerate(("throughput", "queue_depth", "utilisation"), start=1):
            add_trace(fig, "scatter", row=row, x=rows["time"].to_numpy(), y=rows[column].to_numpy(), mode="lines", name=group,
                      legendgroup=group, showlegend=row == 1, line={"color": colour})
        steps = up[up["group"] == group].sort_values("time", kind="stable")
        add_trace(fig, "scatter", row=4, x=[*steps["time"].tolist(), end], y=[*steps["up"].tolist(), int(steps["up"].iloc[-1])],
                  mode="lines", name=group, legendgroup=group, showlegend=False, line={"color": colour, "shape": "hv"})
    shade_faults(fig, faults, end=end, panels=4)
    for row in range(1, 5):
        axis(fig, "y", row)["rangemode"] = "tozero"
    axis(fig, "y", 3).update(tickformat=".0%", range=[0, 1.05])
    axis(fig, "x", 4)["title"] = title("time (s)")
    fig["layout"] |= {
        "title": title(f"fleet by {by.replace('_', ' ')} over time (faults shaded)"),
        "height": 760, "legend": {"orientation": "h", "y": -0.08},
        "margin": {"t": 70, "b": 40, "l": 60, "r": 20},
    }
    return fig


def availability_over_time(
    requests: pd.DataFrame, faults: pd.DataFrame | None = None, by: str = "client_region",
    target: float | None = None, bin_s: float | None = None,
) -> Figure:
    """Share of requests ending ``ok`` per arrival-time bin, one line per ``by`` group (client
    region by default: availability as each region's users saw it), faults shaded."""
    fig = figure()
    horizon = float(requests["arrival"].max()) if len(requests) else 1.0
    width = bin_s or _time_bin(horizon)
    bins = (requests["arrival"] // width * width + width / 2).rename("bin")
    share = (requests["status"] == "ok").groupby([string_labels(requests[by]), bins], observed=True).mean()
    for group, series in share.groupby(level=0):
        add_trace(fig, "scatter", x=series.index.get_level_values(1).to_numpy(), y=series.to_numpy(), mode="lines", name=group)
    if target is not None:
        add_hline(fig, target, line={"color": "#d62728", "dash": "dash"}, text=f"target {target:.2%}")
    end = float(requests["finish"].max()) if len(requests) else horizon
    shade_faults(fig, faults, end=end)
    fig["layout"] |= {
        "title": title(f"availability by {by.replace('_', ' ')} over time (faults shaded)"),
        "xaxis": {"title": title(f"arrival time (s), bins of {width:g} s")},
        "yaxis": {"title": title("share ok"), "tickformat": ".0%", "range": [0, 1.05]},
        "legend": {"orientation": "h", "y": -0.25},
        "margin": {"t": 50, "b": 40, "l": 60, "r": 20},
    }
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


def topology_graph(topology: Topology, max_nodes: int = 64) -> Figure:
    """The containment tree (providers, regions, zones, racks, and nodes when there are at most
    ``max_nodes``) with each failure domain's replica count, and the inter-region links' RTTs."""
    levels = ["fleet", "provider", "region", "zone", "rack", "node"]
    if len(topology.failure_domains("node")) > max_nodes:
        levels.remove("node")
    positions = _tree_layout(topology, levels)
    fig = figure()
    edge_x: list[float | None] = []
    edge_y: list[float | None] = []
    for parent, child in topology.graph.edges():
        if parent in positions and child in positions:
            edge_x += [positions[parent][0], positions[child][0], None]
            edge_y += [positions[parent][1], positions[child][1], None]
    add_trace(fig, "scatter", x=edge_x, y=edge_y, mode="lines", line={"color": "#bbbbbb", "width": 1}, hoverinfo="skip", showlegend=False)
    region_y = -levels.index("region")
    annotations = []
    for link, lift in zip(topology.spec.links, link_lifts(topology, positions)):
        a, b = (positions[end] for end in link.between)
        mid = (a[0] + b[0]) / 2
        xs = np.linspace(0, 1, 21)
        add_trace(fig, "scatter", x=a[0] + (b[0] - a[0]) * xs, y=region_y + lift * 4 * xs * (1 - xs), mode="lines",
                  line={"color": "#17becf", "dash": "dot"}, hoverinfo="skip", showlegend=False)
        annotations.append({"x": mid, "y": region_y + lift, "text": f"{link.rtt * 1000:g} ms", "showarrow": False,
                            "font": {"color": "#0e7c86", "size": 11}, "bgcolor": "rgba(255, 255, 255, 0.9)",
                            "bordercolor": "#17becf", "borderpad": 2})
    for level in levels:
        nodes = [n for n, data in topology.graph.nodes(data=True) if data["level"] == level]
        hover = []
        for n in nodes:
            replicas = len(topology.domain_replicas(n))
            tier = topology.graph.nodes[n].get("tier")
            hover.append(f"{n}<br>{level}{f' ({tier} tier)' if tier else ''}<br>{replicas} replicas fail with it")
        show_text = level in ("provider", "region") or len(nodes) <= 12
        add_trace(
            fig, "scatter",
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
    if annotations:
        fig["layout"]["annotations"] = annotations
    fig["layout"] |= {
        "title": title(f"{topology.spec.name}: {len(topology.replicas)} replicas on {topology.device_count} devices "
                       "(failure domains; replicas in brackets; fallback regions square)"),
        "xaxis": {"visible": False},
        "yaxis": {"visible": False},
        "legend": {"orientation": "h", "y": -0.05},
        "margin": {"t": 50, "b": 20, "l": 20, "r": 20},
        "height": 480,
    }
    return fig
