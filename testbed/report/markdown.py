"""Run reports: a short Markdown summary for terminals and pull requests.

It reads only the run's records (requests, fleet series, verdicts), so a simulated and a live
run of the same scenario produce comparable reports.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from testbed.records.result import Result
from testbed.records.schema import STATUSES, latency_columns, string_labels
from testbed.units import format_duration


def latency_summary(requests: pd.DataFrame, percentiles: tuple[float, ...] = (50, 90, 99)) -> pd.DataFrame:
    """TTFT / TPOT / e2e percentiles (seconds) of successful requests, one row per SLA class.

    The quantiles are the ones ``DataFrame.quantile`` gives per class (numpy's, over the values
    that are not NaN), taken in numpy from sorted arrays, where a frame and a groupby per class
    cost more than the quantiles.
    """
    ok = (requests["status"] == "ok").to_numpy()
    latencies = latency_columns(requests)
    values = {metric: latencies[metric].to_numpy()[ok] for metric in ("ttft", "tpot", "e2e")}
    classes = string_labels(requests["request_class"][ok])
    codes = classes.cat.codes.to_numpy()
    qs = np.array([p / 100 for p in percentiles])
    groups = [("all", np.ones(len(codes), dtype=bool)), *((str(name), codes == i) for i, name in enumerate(classes.cat.categories))]
    rows = []
    for name, members in groups:
        row: dict[str, object] = {"class": name, "requests": int(members.sum())}
        for metric, column in values.items():
            sample = np.sort(column[members])
            sample = sample[~np.isnan(sample)]
            quantiles = np.quantile(sample, qs) if len(sample) else np.full(len(qs), math.nan)
            for p, value in zip(percentiles, quantiles):
                row[f"{metric}_p{p:g}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def outcome_counts(requests: pd.DataFrame) -> dict[str, int]:
    """How every request ended: the conservation ledger."""
    counts = requests["status"].value_counts()
    return {status: int(counts.get(status, 0)) for status in STATUSES if status != "pending"}


def availability_by(requests: pd.DataFrame, column: str) -> pd.Series:
    """Share of requests ending ok, grouped by ``column`` (e.g. region)."""
    return (requests["status"] == "ok").groupby(requests[column], observed=True).mean()


def availability_by_provider(requests: pd.DataFrame) -> pd.Series:
    """Share of requests ending ok per client provider (the first part of the client region).

    Counted per client region, then summed per provider: the same shares as grouping every
    row by its provider's name, without splitting a string per request.
    """
    ok = (requests["status"] == "ok").groupby(string_labels(requests["client_region"]), observed=True).agg(["sum", "count"])
    provider = ok.index.astype(str).str.split("/").str[0]
    totals = ok.groupby(provider).sum()
    return (totals["sum"] / totals["count"]).rename("status")


def served_by_region(requests: pd.DataFrame) -> pd.DataFrame:
    """Successful requests per serving region: how many, and how many were failed over, served
    by the fallback tier, retried or hedged — where a failover's traffic went."""
    served = requests[requests["status"] == "ok"]
    rows = [
        {
            "region": str(region), "requests": len(group), "failed over": int(group["failed_over"].sum()),
            "fallback tier": int(group["fallback"].sum()), "retried": int((group["retries"] > 0).sum()),
            "hedged": int(group["hedged"].sum()),
        }
        for region, group in served.groupby("region", observed=True)
    ]
    return pd.DataFrame(rows, columns=["region", "requests", "failed over", "fallback tier", "retried", "hedged"])


def fleet_load(timeseries: pd.DataFrame) -> pd.DataFrame:
    """Mean utilisation, queue depth and running batch per region over the run's samples."""
    if timeseries.empty:
        return pd.DataFrame(columns=["region", "utilisation", "queue depth", "running batch"])
    load = timeseries.groupby("region", observed=True).agg(
        utilisation=("utilisation", "mean"), queue_depth=("queue_depth", "mean"), running=("running", "mean")
    )
    return pd.DataFrame(
        {"region": load.index.astype(str), "utilisation": load["utilisation"].to_numpy(),
         "queue depth": load["queue_depth"].to_numpy(), "running batch": load["running"].to_numpy()}
    )


def format_value(value: float, unit: str) -> str:
    """A metric value for people: milliseconds or seconds, percentages, or a number and its unit."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit == "share":
        return f"{value * 100:.3f}%"
    return f"{value:,.2f} {unit}"


def fault_lines(result: Result) -> list[str]:
    """The fault timeline: what was injected, when health checks noticed, when the SLA recovered."""
    faults = result.faults
    if faults.empty:
        return []
    lines = ["", f"## Faults ({len(faults):,})", "", "| kind | target | start | end | detected after | SLA recovered after |", "|---|---|---|---|---|---|"]
    for row in faults.head(50).to_dict("records"):
        detected = row["detected_at"] - row["start"]
        recovered = row.get("recovered_at", math.nan) - row["start"]
        end = "never" if math.isinf(row["end"]) else f"{row['end']:.1f} s"
        held = recovered == 0
        recovered_text = "held throughout" if held else format_value(recovered, "s")
        lines.append(
            f"| {row['kind']} | {row['target']} | {row['start']:.1f} s | {end} | {format_value(detected, 's')} | {recovered_text} |"
        )
    if len(faults) > 50:
        lines.append(f"| … {len(faults) - 50:,} more in faults.parquet | | | | | |")
    return lines


def _elastic_lines(stats: dict) -> list[str]:
    """Cost next to the verdicts, for elastic fleets: what the SLA above was bought for."""
    if "cost_usd" not in stats:
        return []
    return [
        "",
        "## Fleet cost and elasticity",
        "",
        "| device-hours | cost | goodput requests | goodput per $ | cold starts | spot preemptions | migrations (checker) | degraded |",
        "|---|---|---|---|---|---|---|---|",
        f"| {stats['device_hours']:.2f} | ${stats['cost_usd']:,.2f} | {stats['goodput_requests']:,} | "
        f"{stats['goodput_per_dollar']:,.0f} | {stats['cold_starts']} | {stats['spot_preemptions']} | "
        f"{stats['migrations']} ({'ok' if stats['migration_check_ok'] else 'TOKENS LOST OR DUPLICATED'}) | "
        f"{stats['degraded_requests']:,} |",
    ]


def markdown_report(result: Result, latency: pd.DataFrame | None = None) -> str:
    """The report.md of a run: outcome, verdicts, latency, per-region availability, fleet load.

    ``latency`` is the run's :func:`latency_summary` when the caller has it already (write_run
    computes it once for both reports).
    """
    scenario, requests = result.scenario, result.requests
    counts = outcome_counts(requests)
    lines = [
        f"# {scenario.name}",
        "",
        scenario.description.strip(),
        "",
        f"- seed: {result.seed}; duration: {format_duration(scenario.duration)}; "
        f"topology: {scenario.topology.name}; batching: {scenario.serving.batching.policy}; "
        f"routing: {scenario.serving.routing.policy}",
        f"- requests: {len(requests):,} — " + ", ".join(f"{k} {v:,}" for k, v in counts.items()),
        f"- overall: **{'PASS' if result.passed else 'FAIL'}**",
        "",
        "## SLA verdicts",
        "",
        "| objective | limit | observed | margin | verdict |",
        "|---|---|---|---|---|",
    ]
    for v in result.sla:
        op = "≤" if v.bound == "max" else "≥"
        lines.append(
            f"| {v.objective} | {op} {format_value(v.limit, v.unit)} | {format_value(v.observed, v.unit)} | "
            f"{format_value(v.margin, v.unit)} | {'pass' if v.passed else '**FAIL**'} |"
        )
    if not result.sla:
        lines.append("| (no objectives) | | | | |")
    lines += _elastic_lines(result.stats)
    lines += ["", "## Latency of successful requests", "", "| class | requests | ttft p50 | ttft p99 | tpot p50 | tpot p99 | e2e p50 | e2e p99 |", "|---|---|---|---|---|---|---|---|"]
    for r in (latency_summary(requests) if latency is None else latency).to_dict("records"):
        cells = [format_value(r[c], "s") for c in ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "e2e_p50", "e2e_p99")]
        lines.append(f"| {r['class']} | {r['requests']:,} | " + " | ".join(cells) + " |")
    lines += ["", "## Availability by client region", "", "| client region | availability |", "|---|---|"]
    for region, share in availability_by(requests, "client_region").items():
        lines.append(f"| {region} | {format_value(share, 'share')} |")
    by_provider = availability_by_provider(requests)
    lines += ["", "| client provider | availability |", "|---|---|"]
    lines += [f"| {provider} | {format_value(share, 'share')} |" for provider, share in by_provider.items()]
    served = served_by_region(requests)
    if len(served):
        lines += ["", "## Where requests were served", "", "| " + " | ".join(served.columns) + " |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(f"{v:,}" if not isinstance(v, str) else v for v in row) + " |" for row in served.itertuples(index=False)]
    lines += fault_lines(result)
    from testbed.observe.render import scorecard_markdown

    lines += scorecard_markdown(result)
    if not result.timeseries.empty:
        lines += ["", "## Fleet load by region (means over samples)", "", "| region | utilisation | queue depth | running batch |", "|---|---|---|---|"]
        for region, utilisation, queue, running in fleet_load(result.timeseries).itertuples(index=False):
            lines.append(f"| {region} | {utilisation:.1%} | {queue:.2f} | {running:.2f} |")
    if result.stats:
        lines += ["", f"_simulated {result.stats.get('requests', 0):,} requests in {result.stats.get('wall_s', 0):.2f} s wall time_"]
    return "\n".join(lines) + "\n"
