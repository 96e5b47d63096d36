"""report.html for a campaign: a heat map of verdicts over the matrix and the paired comparisons.

One self-contained file: plotly's JavaScript is embedded once, inline, so the report opens
offline, from a CI artifact or an e-mail, with nothing else beside it.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from testbed.campaign.matrix import short_key

if TYPE_CHECKING:
    from testbed.campaign.driver import CampaignResult


def write_html(result: CampaignResult, path: str | Path) -> Path:
    """Write the campaign's HTML report to ``path`` and return it."""
    figures = [verdict_heatmap(result), *comparison_figures(result)]
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_height="420px") for i, fig in enumerate(figures)]
    spec = result.campaign.spec
    cells = result.cells.drop(columns=["label"]).to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0)
    body = "\n".join(
        [
            f"<h1>Campaign {html.escape(spec.name)}</h1>",
            f"<p>{html.escape(spec.description.strip())}</p>" if spec.description else "",
            f"<p>{len(result.campaign.cells)} cells x {len(result.campaign.seeds)} seeds, {spec.plane} plane; "
            f"{result.errored} errored runs. Paired comparisons use the same seeds (same arrivals, same faults).</p>",
            parts[0],
            "<h2>Cells</h2>",
            cells,
            "<h2>Paired comparisons</h2>" if len(parts) > 1 else "",
            *parts[1:],
        ]
    )
    document = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Campaign {html.escape(spec.name)}</title>"
        "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
        "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}</style>"
        f"</head><body>\n{body}\n</body></html>\n"
    )
    path = Path(path)
    path.write_text(document, encoding="utf-8")
    return path


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


def comparison_figures(result: CampaignResult) -> list[go.Figure]:
    """One forest plot per metric: each paired comparison's mean difference b - a with its interval."""
    table = result.comparisons
    if table.empty:
        return []
    figures = []
    for metric, group in table.groupby("metric", sort=False):
        group = group[np.isfinite(group["mean_diff"].to_numpy(dtype=float))]
        if group.empty:
            continue
        labels = [
            f"{short_key(r['parameter'])}: {r['a']} → {r['b']} ({r['context']})" for r in group.to_dict("records")
        ]
        diff = group["mean_diff"].to_numpy(dtype=float)
        low = np.nan_to_num(diff - group["ci_low"].to_numpy(dtype=float))
        high = np.nan_to_num(group["ci_high"].to_numpy(dtype=float) - diff)
        p = group["p_value"].to_numpy(dtype=float)
        figure = go.Figure(
            go.Scatter(
                x=diff, y=labels, mode="markers", error_x={"type": "data", "array": high, "arrayminus": low},
                customdata=p, hovertemplate="%{y}<br>b - a = %{x:.4g}<br>p = %{customdata:.3g}<extra></extra>",
            )
        )
        figure.add_vline(x=0, line_dash="dot", line_color="grey")
        figure.update_layout(
            title=f"{metric}: paired difference b - a (mean and interval over common seeds)",
            height=max(250, 60 + 28 * len(labels)), margin={"l": 420}, showlegend=False,
        )
        figures.append(figure)
    return figures
