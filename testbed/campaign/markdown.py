"""report.md for a campaign: verdicts per cell, intervals across seeds, paired comparisons.

Plain Markdown tables, so the report reads in a terminal and renders in a pull request.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from testbed.campaign.matrix import short_key
from testbed.campaign.metrics import metric_units
from testbed.report.markdown import format_value

if TYPE_CHECKING:
    from testbed.campaign.driver import CampaignResult

MAX_COMPARISONS = 60


def markdown_report(result: CampaignResult) -> str:
    campaign = result.campaign
    spec = campaign.spec
    units = metric_units(next(iter(campaign.scenarios.values())))
    level = f"{spec.confidence * 100:g}%"
    lines = [f"# Campaign {spec.name}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [
        f"{len(campaign.cells)} cells x {len(campaign.seeds)} seeds = {campaign.runs} runs on the {spec.plane} plane "
        f"({result.reused} taken from the journal); {result.errored} errored. "
        f"Intervals: {level}, {'Student t' if spec.ci == 't' else 'bootstrap'} across seeds.",
        "",
        "## Verdicts per cell",
        "",
    ]
    keys = list(spec.matrix)
    header = [*(short_key(k) for k in keys), "runs", "passed", f"pass rate ({level} CI)", "errored", "verdict", "scenario", "runs' reports"]
    lines += [_row(header), _row(["---"] * len(header))]
    for cell in result.cells.to_dict("records"):
        rate = "n/a" if math.isnan(cell["pass_rate"]) else f"{cell['pass_rate']:.0%} [{cell['pass_ci_low']:.0%}, {cell['pass_ci_high']:.0%}]"
        verdict = {"pass": "pass", "fail": "**FAIL**", "error": "**error**"}[cell["verdict"]]
        scenario = f"[{cell['cell']}.yaml](cells/{cell['cell']}.yaml)"
        lines.append(_row([*(cell[k] for k in keys), cell["runs"], cell["passed"], rate, cell["errored"], verdict, scenario,
                           _run_links(result, cell["cell"])]))
    lines += _metric_lines(result, units, level)
    lines += _comparison_lines(result, units, level)
    lines += _error_lines(result)
    return "\n".join(lines) + "\n"


def _metric_lines(result: CampaignResult, units: dict[str, str], level: str) -> list[str]:
    metrics = result.metrics
    if metrics.empty:
        return []
    names = list(dict.fromkeys(metrics["metric"]))
    lines = ["", f"## Metrics: mean [{level} CI] across seeds", "", _row(["cell", *names]), _row(["---"] * (len(names) + 1))]
    for _, group in metrics.groupby("cell", sort=False):
        by_metric = group.set_index("metric")
        values = [_mean_ci(by_metric.loc[m], units.get(m, "")) for m in names]
        lines.append(_row([group["label"].iloc[0], *values]))
    return lines


def _comparison_lines(result: CampaignResult, units: dict[str, str], level: str) -> list[str]:
    table = result.comparisons
    if not table.empty:
        table = table[table["n"] > 0]  # pairs with an errored side have nothing to compare
    if table.empty:
        return []
    lines = [
        "",
        "## Paired comparisons (same seeds: same arrivals, same faults)",
        "",
        f"Each line changes one parameter from a to b with the others held at `context`; "
        f"difference = b - a, mean [{level} CI] over common seeds, p from a paired t-test.",
        "",
        _row(["parameter", "a → b", "context", "metric", "n", "a", "b", "b - a", "p"]),
        _row(["---"] * 9),
    ]
    for row in table.head(MAX_COMPARISONS).to_dict("records"):
        unit = units.get(row["metric"], "")
        diff = f"{_fmt(row['mean_diff'], unit)} [{_fmt(row['ci_low'], unit)}, {_fmt(row['ci_high'], unit)}]"
        p = "n/a" if math.isnan(row["p_value"]) else f"{row['p_value']:.3g}"
        lines.append(_row([short_key(row["parameter"]), f"{row['a']} → {row['b']}", row["context"], row["metric"],
                           row["n"], _fmt(row["mean_a"], unit), _fmt(row["mean_b"], unit), diff, p]))
    if len(table) > MAX_COMPARISONS:
        lines += ["", f"({len(table) - MAX_COMPARISONS} more in comparisons.parquet)"]
    return lines


def _run_links(result: CampaignResult, cell_id: str) -> str:
    """Links to the reports of a cell's runs that kept their records (``keep_records``)."""
    links = [
        f"[seed {seed}](runs/{cell_id}-s{seed}/report.md)"
        for seed in result.campaign.seeds
        if (Path(result.out_dir) / "runs" / f"{cell_id}-s{seed}" / "report.md").exists()
    ]
    return ", ".join(links) or "—"


def _error_lines(result: CampaignResult) -> list[str]:
    frame = result.results
    if not len(frame):
        return []
    errored = frame[frame["status"] == "errored"]
    if errored.empty:
        return []
    lines = ["", "## Errored runs (tracebacks in journal.jsonl)", ""]
    for row in errored.to_dict("records"):
        first = str(row["error"]).splitlines()[0]
        lines.append(f"- {row['label']} (cells/{row['cell']}.yaml), seed {row['seed']}: {first}")
    return lines


def _mean_ci(row: object, unit: str) -> str:
    mean, low, high = row["mean"], row["ci_low"], row["ci_high"]  # type: ignore[index]
    if math.isnan(low):
        return _fmt(mean, unit)
    return f"{_fmt(mean, unit)} [{_fmt(low, unit)}, {_fmt(high, unit)}]"


def _fmt(value: float, unit: str) -> str:
    return format_value(float(value), unit) if unit else f"{value:.4g}"


def _row(cells: list[object]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
