"""Run a whole campaign: every cell x seed, journaled as it goes, then summarised and reported.

Output directory (default ``out/campaigns/<name>``):

* ``journal.jsonl`` — one JSON row per run, appended and fsynced as each finishes;
* ``results.parquet`` — the runs as a table (parameters and metrics as columns);
* ``cells.parquet``, ``metrics.parquet``, ``comparisons.parquet`` — the summary;
* ``report.md`` and ``report.html`` — for terminals and pull requests, and for a browser (offline);
* ``cells/<cell id>.yaml`` — each cell's scenario, runnable with ``testbed run`` to reproduce a run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from testbed.campaign.executors import make_executor
from testbed.campaign.journal import Journal
from testbed.campaign.run import RunTask, run_key
from testbed.campaign.spec import Campaign, CampaignSpec, load_campaign, resolve
from testbed.campaign.summary import cell_table, comparisons, metric_table, results_frame

RowCallback = Callable[[dict[str, Any]], None]


@dataclass
class CampaignResult:
    """A finished (or resumed-and-finished) campaign: its rows and what they add up to."""

    campaign: Campaign
    out_dir: Path
    rows: list[dict[str, Any]]
    reused: int
    results: pd.DataFrame
    cells: pd.DataFrame
    metrics: pd.DataFrame
    comparisons: pd.DataFrame

    @property
    def passed(self) -> bool:
        """True when every cell passed on every seed (errored runs count against it)."""
        return bool((self.cells["verdict"] == "pass").all())

    @property
    def errored(self) -> int:
        return int((self.results["status"] == "errored").sum()) if len(self.results) else 0


def run_campaign(
    spec_or_path: str | Path | CampaignSpec | Campaign,
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    retry_errors: bool = False,
    on_row: RowCallback | None = None,
) -> CampaignResult:
    """Run every cell x seed of a campaign and write its journal, tables and reports.

    ``resume`` keeps the runs already in the journal (same cell, seed and scenario digest) and
    does only the rest; ``retry_errors`` also redoes the runs that errored. ``on_row`` is called
    with each row as it is journaled (the CLI's progress bar). Bad specs raise
    :class:`~testbed.spec.SpecError`; bad options raise ``ValueError``.
    """
    campaign = _campaign(spec_or_path)
    if campaign.spec.plane == "live" and (workers != 1 or executor != "local"):
        raise ValueError("plane: live runs one at a time in this process (each brings a real stack up and down): use --workers 1 --executor local")
    out = Path(out_dir) if out_dir is not None else Path("out") / "campaigns" / campaign.spec.name
    out.mkdir(parents=True, exist_ok=True)
    _write_cell_scenarios(campaign, out)
    records_dir = str((out / "runs").resolve()) if campaign.spec.keep_records else None
    with Journal(out / "journal.jsonl", resume=resume) as journal:
        done = journal.finished(campaign.digests, retry_errors=retry_errors)
        tasks = [t for t in tasks_of(campaign, records_dir) if t.key not in done]
        rows = [done[t.key] for t in tasks_of(campaign, None) if t.key in done]
        runner = make_executor(executor, workers, address) if tasks else None
        try:
            for row in runner.map_unordered(tasks) if runner else ():
                journal.append(row)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
        finally:
            if runner is not None:
                runner.close()
    return summarise(campaign, rows, out, reused=len(done))


def _campaign(spec_or_path: str | Path | CampaignSpec | Campaign) -> Campaign:
    if isinstance(spec_or_path, Campaign):
        return spec_or_path
    if isinstance(spec_or_path, CampaignSpec):
        return resolve(spec_or_path, source=f"campaign {spec_or_path.name!r}")
    return load_campaign(spec_or_path)


def tasks_of(campaign: Campaign, records_dir: str | None) -> list[RunTask]:
    """Every run of the campaign, cell by cell, seed by seed."""
    spec = campaign.spec
    return [
        RunTask(
            campaign=spec.name,
            cell=cell.id,
            label=cell.label,
            params=cell.params,
            seed=seed,
            digest=campaign.digests[cell.id],
            scenario=campaign.scenarios[cell.id],
            plane=spec.plane,
            steady_state=spec.steady_state,
            records_dir=records_dir,
        )
        for cell in campaign.cells
        for seed in campaign.seeds
    ]


def summarise(campaign: Campaign, rows: list[dict[str, Any]], out: Path, reused: int = 0) -> CampaignResult:
    """Tables and reports from the rows; written next to the journal."""
    from testbed.campaign.html import write_html
    from testbed.campaign.markdown import markdown_report

    wanted = {run_key(cell.id, seed) for cell in campaign.cells for seed in campaign.seeds}
    rows = [r for r in rows if r["key"] in wanted]
    results = results_frame(rows, campaign)
    result = CampaignResult(
        campaign=campaign,
        out_dir=out,
        rows=rows,
        reused=reused,
        results=results,
        cells=cell_table(results, campaign),
        metrics=metric_table(results, campaign),
        comparisons=comparisons(results, campaign),
    )
    results.to_parquet(out / "results.parquet", index=False)
    result.cells.to_parquet(out / "cells.parquet", index=False)
    result.metrics.to_parquet(out / "metrics.parquet", index=False)
    result.comparisons.to_parquet(out / "comparisons.parquet", index=False)
    (out / "report.md").write_text(markdown_report(result))
    write_html(result, out / "report.html")
    return result


def _write_cell_scenarios(campaign: Campaign, out: Path) -> None:
    cells_dir = out / "cells"
    cells_dir.mkdir(exist_ok=True)
    for cell in campaign.cells:
        header = f"# campaign {campaign.spec.name}, cell {cell.id}: {cell.label}\n"
        (cells_dir / f"{cell.id}.yaml").write_text(header + campaign.scenarios[cell.id].to_yaml())
