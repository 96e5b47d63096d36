"""report.html for a campaign: a heat map of verdicts over the matrix and the paired comparisons.

One self-contained file: plotly's JavaScript is embedded once, inline, so the report opens
offline, from a CI artifact or an e-mail. Cells are named by their settings (the hash ids are
only file names), each links to its runnable scenario and, with ``keep_records``, to each run's
own report; forest plots carry their metric's unit and list the largest effects first.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from testbed.campaign.matrix import short_key
from testbed.campaign.metrics import metric_units
from testbed.report.markdown import format_value

if TYPE_CHECKING:
    from testbed.campaign.driver import CampaignResult


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222} table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "td,th{padding:3px 9px;border-bottom:1px solid #ddd;text-align:right} th{background:#f4f4f4}"
    "td:first-child,th:first-child{text-align:left} .pass{color:#137333;font-weight:600} .fail,.error{color:#b3261e;font-weight:700}"
    "a{color:#1a56a8}"
)


def write_html(result: CampaignResult, path: str | Path) -> Path:
    """Write the campaign's HTML report to ``path`` and return it."""
    path = Path(path)
    figures = [verdict_heatmap(result), *comparison_figures(result)]
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_height="420px") for i, fig in enumerate(figures)]
    spec = result.campaign.spec
    body = "\n".join(
        [
            f"<h1>Campaign {html.escape(spec.name)}</h1>",
            f"<p>{html.escape(spec.description.strip())}</p>" if spec.description else "",
            f"<p>{len(result.campaign.cells)} cells x {len(result.campaign.seeds)} seeds, {spec.plane} plane; "
            f"{result.errored} errored runs. Paired comparisons use the same seeds (same arrivals, same faults).</p>",
            parts[0],
            "<h2>Cells</h2>",
            cells_table(result, path.parent),
            "<h2>Metrics: mean and interval across seeds</h2>",
            metrics_table(result),
            "<h2>Paired comparisons</h2>" if len(parts) > 1 else "",
            *parts[1:],
        ]
    )
    document = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Campaign {html.escape(spec.name)}</title><style>{STYLE}</style>"
        f"</head><body>\n{body}\n</body></html>\n"
    )
    path.write_text(document, encoding="utf-8")
    return path


def _row(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def run_links(result: CampaignResult, cell_id: str, out_dir: Path) -> list[str]:
    """Links to each run of a cell that kept its records (``keep_records``): its report, by seed."""
    links = []
    for seed in result.campaign.seeds:
        folder = out_dir / "runs" / f"{cell_id}-s{seed}"
        page = next((folder / name for name in ("report.html", "report.md") if (folder / name).exists()), None)
        if page is not None:
            links.append(f"<a href='{html.escape(page.relative_to(out_dir).as_posix())}'>seed {seed}</a>")
    return links


def cells_table(result: CampaignResult, out_dir: Path) -> str:
    """One row per cell, named by its settings: runs, pass rate with its interval, verdict, and
    links to the cell's scenario (``testbed run`` reproduces it) and to its runs' reports."""
    keys = list(result.campaign.spec.matrix)
    level = f"{result.campaign.spec.confidence * 100:g}%"
    head = [*(html.escape(short_key(k)) for k in keys), "runs", "passed", f"pass rate ({level} CI)", "errored", "verdict", "scenario", "runs' reports"]
    rows = [_row(head, "th")]
    for cell in result.cells.to_dict("records"):
        rate = "n/a" if math.isnan(cell["pass_rate"]) else f"{cell['pass_rate']:.0%} [{cell['pass_ci_low']:.0%}, {cell['pass_ci_high']:.0%}]"
        verdict = f"<span class='{cell['verdict']}'>{cell['verdict']}</span>"
        scenario = f"<a href='cells/{cell['cell']}.yaml'>{cell['cell']}.yaml</a>"
        links = ", ".join(run_links(result, cell["cell"], out_dir)) or "—"
        rows.append(_row([*(html.escape(str(cell[k])) for k in keys), str(cell["runs"]), str(cell["passed"]), rate,
                          str(cell["errored"]), verdict, scenario, links]))
    return "<table>" + "".join(rows) + "</table>"


def metrics_table(result: CampaignResult) -> str:
    """Each cell's metrics (rows named by settings), mean [interval] across seeds, in their units."""
    metrics = result.metrics
    if metrics.empty:
        return "<p>(no runs finished)</p>"
    units = metric_units(next(iter(result.campaign.scenarios.values())))
    names = list(dict.fromkeys(metrics["metric"]))
    rows = [_row(["cell", *(html.escape(n) for n in names)], "th")]
    for _, group in metrics.groupby("cell", sort=False):
        by_metric = group.set_index("metric")
        values = []
        for name in names:
            m, unit = by_metric.loc[name], units.get(name, "")
            mean = format_value(float(m["mean"]), unit) if unit else f"{m['mean']:.4g}"
            if not math.isnan(m["ci_low"]):
                low = format_value(float(m["ci_low"]), unit) if unit else f"{m['ci_low']:.4g}"
                high = format_value(float(m["ci_high"]), unit) if unit else f"{m['ci_high']:.4g}"
                mean += f" <small>[{low}, {high}]</small>"
            values.append(mean)
        rows.append(_row([html.escape(str(group["label"].iloc[0])), *values]))
    return "<div style='overflow-x:auto'><table style='white-space:nowrap'>" + "".join(rows) + "</table></div>"


def verdict_heatmap(result: CampaignResult) -> go.Figure:
    """Pass rate per cell: the last matrix key across, the other keys' combinations down."""
    keys = list(result.campaign.spec.matrix)
    cells = result.cells.to_dict("records")
    across = keys[-1] if keys else None
    x_values = list(dict.fromkeys(c[across] for c in cells)) if across else ["base"]
    y_of = {id(c): ", ".join(f"{short_key(k)}={c[k]}" for k in keys[:-1]) or " " for c in cells}
    y_values = list(dict.fromkeys(y_of.values()))
    z = np.full((len(y_values), len(x_values)), np.nan)
    text = [["" for _ in x_values] for _ in y_values]
    for c in cells:
        i, j = y_values.index(y_of[id(c)]), x_values.index(c[across] if across else "base")
        ran = c["passed"] + c["failed"]
        z[i, j] = c["pass_rate"] if not math.isnan(c["pass_rate"]) else np.nan
        text[i][j] = f"{c['verdict']}<br>{c['passed']}/{ran} passed" + (f"<br>{c['errored']} errored" if c["errored"] else "")
    figure = go.Figure(
        go.Heatmap(
            z=z, x=[str(v) for v in x_values], y=y_values, text=text, texttemplate="%{text}", zmin=0, zmax=1,
            colorscale=[[0, "#d73027"], [0.5, "#fee08b"], [1, "#1a9850"]], colorbar={"title": "pass rate"},
            hovertemplate="%{y} %{x}<br>%{text}<extra></extra>",
        )
    )
    figure.update_layout(
        title="Verdicts over the matrix (share of seeds that passed; blank = every run errored)",
        xaxis_title=short_key(across) if across else "", margin={"l": 200},
    )
    return figure


AXIS = {"s": ("seconds", {"ticksuffix": " s"}), "share": ("percentage points", {"tickformat": "+.2%"})}


def comparison_figures(result: CampaignResult) -> list[go.Figure]:
    """One forest plot per metric: each paired comparison's mean difference b - a with its
    interval, in the metric's unit, the largest effect at the top."""
    table = result.comparisons
    if table.empty:
        return []
    units = metric_units(next(iter(result.campaign.scenarios.values())))
    figures = []
    for metric, group in table.groupby("metric", sort=False):
        group = group[np.isfinite(group["mean_diff"].to_numpy(dtype=float))]
        if group.empty:
            continue
        group = group.iloc[np.argsort(-np.abs(group["mean_diff"].to_numpy(dtype=float)), kind="stable")]
        unit = units.get(str(metric), "")
        labels = [
            f"{short_key(r['parameter'])}: {r['a']} → {r['b']} ({r['context']})" for r in group.to_dict("records")
        ]
        diff = group["mean_diff"].to_numpy(dtype=float)
        low = np.nan_to_num(diff - group["ci_low"].to_numpy(dtype=float))
        high = np.nan_to_num(group["ci_high"].to_numpy(dtype=float) - diff)
        p = group["p_value"].to_numpy(dtype=float)
        shown = [_signed(v, unit) for v in diff]
        figure = go.Figure(
            go.Scatter(
                x=diff, y=labels, mode="markers", error_x={"type": "data", "array": high, "arrayminus": low},
                customdata=np.stack([p, shown], axis=1),
                hovertemplate="%{y}<br>b - a = %{customdata[1]}<br>p = %{customdata[0]:.3g}<extra></extra>",
            )
        )
        figure.add_vline(x=0, line_dash="dot", line_color="grey")
        axis_unit, ticks = AXIS.get(unit, (unit, {}))
        figure.update_layout(
            title=f"{metric}: paired difference b - a (mean and interval over common seeds; largest effect first)",
            xaxis={"title": f"b - a ({axis_unit})" if axis_unit else "b - a", **ticks},
            yaxis={"autorange": "reversed"},
            height=max(250, 60 + 28 * len(labels)), margin={"l": 420}, showlegend=False,
        )
        figures.append(figure)
    return figures


def _signed(value: float, unit: str) -> str:
    text = format_value(float(value), unit) if unit else f"{value:.4g}"
    return text if text.startswith("-") or text == "n/a" else "+" + text
