"""Plotly figures of a run, built from its records only, as :class:`plotly.graph_objects.Figure`.

Each builder is its namesake in :mod:`testbed.report.figures` (which says what it draws) with the
figure dict made a Figure, validated by plotly, for the explorer, notebooks and anything that
wants to restyle a figure. The same pictures whether a run was simulated or live, and the same
ones report.html shows: it embeds the dicts as they are, skipping the graph-object machinery.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec

import plotly.graph_objects as go

from testbed.report import figures
from testbed.report.figures import LABEL_SHARE, LABEL_WIDTH, LANE_HEIGHT, LATENCY_TITLES, link_lifts, replicas_up, seconds_ticks

__all__ = [
    "LABEL_SHARE", "LABEL_WIDTH", "LANE_HEIGHT", "LATENCY_TITLES", "availability_by_region", "availability_over_time",
    "compare_over_time", "fault_timeline", "fleet_over_time", "latency_cdf", "link_lifts", "percentiles_over_time",
    "replicas_up", "seconds_ticks", "topology_graph",
]

P = ParamSpec("P")


def _as_figure(build: Callable[P, figures.Figure]) -> Callable[P, go.Figure]:
    @functools.wraps(build)
    def figure(*args: P.args, **kwargs: P.kwargs) -> go.Figure:
        return go.Figure(build(*args, **kwargs))

    return figure


latency_cdf = _as_figure(figures.latency_cdf)
compare_over_time = _as_figure(figures.compare_over_time)
percentiles_over_time = _as_figure(figures.percentiles_over_time)
fault_timeline = _as_figure(figures.fault_timeline)
availability_by_region = _as_figure(figures.availability_by_region)
fleet_over_time = _as_figure(figures.fleet_over_time)
availability_over_time = _as_figure(figures.availability_over_time)
topology_graph = _as_figure(figures.topology_graph)
